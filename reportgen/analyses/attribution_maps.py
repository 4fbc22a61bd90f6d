"""Attribution of sample images: occlusion, saliency, Grad-CAM, guided backprop and guided Grad-CAM, each with
a randomized-weights sanity check (Adebayo et al.), on a page of their own with the raw maps as NPZ; and
guided backprop of each spec filter's strongest unit on its top images, on the filter pages.
"""


import numpy as np
import torch
from pydantic import BaseModel

from ..analysis import Analysis
from ..data import sample_indices
from ..errors import ModelError, SpecError
from ..report import rounded
from ..render import images as im
from ..timing import Work
from . import attribution as at
from .attribution.occlusion import default_stride, default_window, window_positions


def attribution_images(ctx) -> np.ndarray:
    spec = ctx.spec.attribution
    if isinstance(spec.images, list):
        bad = [i for i in spec.images if not 0 <= i < ctx.dataset.size]
        if bad:
            raise SpecError("attribution.images", f"dataset index {bad[0]} is out of range (0-{ctx.dataset.size - 1})")
        return np.array(spec.images, np.int64)
    readable = ctx.evidence.pred_index          # images the dataset pass could read, sorted
    return sample_indices(readable, spec.images, ctx.spec.seed)


def _window(ctx) -> tuple[int, int]:
    """(window, stride) of occlusion: the spec's, else a square window from the shorter input side."""
    s = ctx.spec.attribution
    window = s.window or default_window(min(ctx.model.input_size))
    return window, s.stride or default_stride(window)


def gradcam_layer(ctx) -> str:
    """`attribution.layer`, else the last Conv2d that the forward uses (an auxiliary head's conv, unused in
    eval mode, is not) whose map is larger than 1×1 (Grad-CAM of a 1×1 map is one number), else the last one."""
    if ctx.spec.attribution.layer:
        return ctx.spec.attribution.layer
    convs = [i for i in ctx.layer_infos if i.type == "Conv2d" and len(i.output_shape) == 3]
    if not convs:
        raise ModelError("the model uses no Conv2d; name Grad-CAM's layer with attribution.layer")
    spatial = [i for i in convs if i.output_shape[1] * i.output_shape[2] > 1]
    return (spatial or convs)[-1].path


def _methods(ctx) -> dict:
    window, stride = _window(ctx)
    layer = gradcam_layer(ctx)
    return {"occlusion": lambda m, x, t: at.occlusion(m, x, t, window=window, stride=stride, baseline=0.0),
            "saliency": at.saliency,
            "gradcam": lambda m, x, t: at.grad_cam(m, x, t, layer),
            "guided_backprop": at.guided_backprop,
            "guided_gradcam": lambda m, x, t: at.guided_grad_cam(m, x, t, layer)}


class AttributionRecord(BaseModel):
    dataset_index: int
    target: int
    target_class: str
    target_kind: str             # "predicted" or "true"
    prob: float | None           # the model's probability of the target
    method: str
    image: str                   # the map over the image
    array: str                   # its name in `npz`
    randomized_similarity: float | None   # Spearman ρ with the map of the weight-randomized model


class ActivationCensus(BaseModel):
    """The activations guided backprop changed, by kind (torch's names: "relu", "relu6", "silu", "gelu", …),
    with their calls in one forward pass (a module called twice counts twice)."""
    guided: dict[str, int]       # ReLU-like: f′(in) · max(∂out, 0) · [in > 0]
    gradient: dict[str, int]     # gates and squashing functions (sigmoid, hardsigmoid, tanh): ordinary gradient


class Attribution(BaseModel):
    window: int                  # occlusion window and stride, input pixels
    stride: int
    layer: str                   # Grad-CAM's layer
    methods: list[str]
    npz: str
    images: list[dict]           # image references, in page order
    records: list[AttributionRecord]
    sanity: dict[str, float]     # method → mean randomized similarity
    guided: ActivationCensus | None   # the activations the guided methods changed; None without one


GUIDED_METHODS = ("guided_backprop", "guided_gradcam")
BACKWARDS = {"saliency": 1, "gradcam": 1, "guided_backprop": 1, "guided_gradcam": 2}   # per image, for `cost`


class AttributionMaps(Analysis):
    name = "attribution"
    key_excludes = ("trust",)    # attribution.trust scores the maps (attribution_trust): not part of them
    spec_key = "attribution"
    version = 3
    SiteResult = Attribution

    def cost(self, ctx, layer=None):
        s = ctx.spec.attribution
        n = len(s.images) if isinstance(s.images, list) else min(s.images, len(ctx.indices))
        runs = n * (2 if s.target == "both" else 1) * (2 if s.sanity_check else 1)   # the sanity check reruns
        window, stride = _window(ctx)
        windows = np.prod([len(window_positions(side, window, stride)[0]) for side in ctx.model.input_size])
        return (Work(forward=n, backward=runs * sum(BACKWARDS.get(m, 0) for m in s.methods), batch=8, loads=n),
                Work(forward=runs * windows * ("occlusion" in s.methods), batch=128))   # occlusion's batches

    def compute(self, ctx, layer):
        s = ctx.spec.attribution
        fns = _methods(ctx)
        kinds = ["predicted", "true"] if s.target == "both" else [s.target]
        same_space = ctx.model.classes == ctx.dataset.classes

        def work(mine: list[int]) -> dict:
            part = {}
            # the sanity check's model, re-initialized once per shard from the seed (the same on every rank)
            randomized = at.randomized_copy(ctx.model.module, ctx.spec.seed) if s.sanity_check and mine else None
            for start in range(0, len(mine), 8):
                chunk = mine[start:start + 8]
                x = ctx.batch(chunk)
                with torch.no_grad():
                    probs = ctx.model.module(x).float().softmax(1).cpu().numpy()
                targets = {"predicted": probs.argmax(1),
                           "true": ctx.dataset.labels[chunk] if same_space else probs.argmax(1)}
                for n, i in enumerate(chunk):
                    part[(i, "probs")] = probs[n]
                for kind in kinds:
                    t = torch.as_tensor(targets[kind], dtype=torch.long, device=ctx.device)
                    for m in s.methods:
                        maps = fns[m](ctx.model.module, x, t)
                        sim = at.map_similarity(maps, fns[m](randomized, x, t)) \
                            if s.sanity_check else np.full(len(chunk), np.nan)
                        for n, i in enumerate(chunk):
                            part[(i, kind, m)] = (maps[n].astype(np.float32), int(targets[kind][n]), float(sim[n]))
            return part

        idx = attribution_images(ctx)
        merged = ctx.sharded(idx.tolist(), 8, work)
        out = {"index": idx, "meta": {"entries": [], "guided": None}}
        if any(m in GUIDED_METHODS for m in s.methods):
            out["meta"]["guided"] = at.activation_census(ctx.model.module, ctx.batch(idx[:1]))
        for i in idx.tolist():                 # the page's order: images, then target kinds, then methods
            out[f"probs_{i}"] = merged[(i, "probs")]
            for kind in kinds:
                for m in s.methods:
                    data, target, sim = merged[(i, kind, m)]
                    out[f"{m}_{kind}_{i}"] = data
                    out["meta"]["entries"].append({"array": f"{m}_{kind}_{i}", "dataset_index": int(i),
                                                   "target_kind": kind, "method": m, "target": target,
                                                   "similarity": sim if np.isfinite(sim) else None})
        return out

    def report(self, ctx, res, out):
        entries = res["meta"]["entries"]
        window, stride = _window(ctx)
        npz = out.npz("data/attribution.npz", lambda: {e["array"]: res[e["array"]] for e in entries})
        records = []
        for e in entries:
            i, m = e["dataset_index"], e["method"]
            records.append({
                "dataset_index": i, "target": e["target"], "target_kind": e["target_kind"], "method": m,
                "target_class": ctx.model.classes[e["target"]] if e["target"] < len(ctx.model.classes) else str(e["target"]),
                "prob": rounded(res[f"probs_{i}"][e["target"]], 4),
                "image": out.image(f"attribution/{m}_{e['target_kind']}_{i}.png",
                                   lambda i=i, m=m, a=res[e["array"]]: _overlay(ctx.dataset.image(i), m, a)),
                "array": e["array"], "randomized_similarity": rounded(e["similarity"], 3)})
        sims: dict[str, list] = {}
        for r in records:
            if r["randomized_similarity"] is not None:
                sims.setdefault(r["method"], []).append(r["randomized_similarity"])
        out.site({"window": window, "stride": stride,
                  "layer": gradcam_layer(ctx),
                  "methods": list(ctx.spec.attribution.methods), "npz": npz,
                  "images": [out.image_ref(int(i)) for i in res["index"]], "records": records,
                  "sanity": {m: rounded(np.mean(v), 3) for m, v in sims.items()},
                  "guided": res["meta"]["guided"]})
        out.page("attribution.html", "attribution.html", "Attribution")


def _overlay(image: np.ndarray, method: str, values: np.ndarray) -> np.ndarray:
    """Occlusion is signed (diverging map, 0 = no change); the gradient maps are magnitudes (inferno)."""
    if method == "occlusion":
        return im.overlay(image, values, symmetric=True, cmap="diverging")
    return im.overlay(image, np.abs(values), cmap="inferno")


class GuidedImage(BaseModel):
    dataset_index: int
    image: str


class GuidedBackprop(Analysis):
    """Guided backprop of each spec filter's strongest unit on its top images (Springenberg et al.), the unit
    the dataset pass found, computed on a crop of the image holding its receptive field where that gives the
    same map (`attribution.guided_backprop_unit_crops`); the layer's part says which activations between the
    input and the layer were guided."""
    name = "guided_backprop"
    key_excludes = ("trust",)    # attribution.trust scores the maps (attribution_trust): not part of them
    spec_key = "attribution"
    version = 4
    per_layer = True
    templates = {"filter": "analyses/guided_backprop.html"}
    FilterResult = list[GuidedImage]
    LayerResult = ActivationCensus
    TOP = 4   # top images per filter

    def applies(self, ctx, layer=None):
        if layer is not None and len(layer.output_shape) != 3:
            return "guided backprop needs a spatial layer"
        return at.guided_unsupported(ctx.model.module)

    def cost(self, ctx, layer):
        n = self.TOP * len(layer.filters)
        size = at.unit_crop_size(ctx.receptive_fields.get(layer.path))      # None: the whole image
        return Work(backward=n, batch=self.TOP, loads=n, layer=layer.path, size=size)

    def compute(self, ctx, layer):
        top = ctx.evidence.layers[layer.path].top
        first = top.index[:1, layer.filters[0]].tolist() if layer.filters else ctx.indices[:1].tolist()
        out = {"meta": {"activations": at.activation_census(ctx.model.module, ctx.batch(first), layer.path)}}
        field = ctx.receptive_fields.get(layer.path)
        field = field if at.unit_crop_size(field) else None                 # None: the whole image
        for f in layer.filters:
            idx = top.index[:self.TOP, f].tolist()
            units = np.stack(np.divmod(top.loc[:self.TOP, f], layer.output_shape[2]), 1)    # (k, 2): y, x
            maps, cropped = at.guided_backprop_unit_crops(ctx.model.module, ctx.batch(idx), layer.path, f, units,
                                                          top.scores[:self.TOP, f], field)
            if field is not None and not cropped.all():
                ctx.log(f"guided backprop of {layer.name}: a crop of filter {f}'s receptive field changed its "
                        "unit's value (a global op on the way?); the whole image for the rest of the layer")
                field = None
            out[f"index_{f}"] = np.array(idx, np.int64)
            out[f"maps_{f}"] = maps
        return out

    def report(self, ctx, artifacts, out):
        for path, art in artifacts.items():
            slug = ctx.layer(path).slug
            out.layer(path, art["meta"]["activations"])
            for f in ctx.layer(path).filters:
                out.filter(path, f, [
                    {"dataset_index": int(i),
                     "image": out.image(f"layers/{slug}/img/f{f}_gb{n}.png",
                                        lambda m=m: im.colorize(im.normalize01(m), "inferno"))}
                    for n, (i, m) in enumerate(zip(art[f"index_{f}"], art[f"maps_{f}"]))])
