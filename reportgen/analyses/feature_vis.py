"""Synthesized images: each spec filter's "what it wants to see" (regularized gradient ascent, batched across
filters, with variants, in the parameterization `feature_vis.param`, and optionally others beside it:
`feature_vis.compare`), and the class models of the overview.

Parameterizations, by name: "fourier" (`fourier_image` with random warps), "maco" (`maco_image`, the
magnitude read from the `amplitude_spectrum` analysis, with random warps), "plain" (`pixel_image`, no warp).
"""

import hashlib
from dataclasses import asdict

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

from ..analysis import Analysis
from ..report import rounded
from ..spec import FeatureVisSpec
from ..timing import Work
from .amplitude_spectrum import amplitude_for
from .featvis import Objective, Optimizer, Parameterization, RandomAffine, synthesize

CURVE_POINTS = 48   # the objective curve is kept at this many steps


def _synthesize(ctx, layer, units: list[int], kind: str, param_name: str, label: str, variants: int = 1) -> dict:
    """Images for `units` of `layer` (None: the class logits) in parameterization `param_name`, arrays with the
    variants of a unit adjacent; MACO's also with its `transparency` (n, H, W) and `clipped` (n,).
    Computed and cached one optimizer batch at a time (split across ranks): a build stopped midway loses at
    most the batch it was on."""
    s = ctx.spec.feature_vis
    diversity = s.diversity if variants > 1 else 0.0
    layer_path = layer.path if layer else None
    size = image_size(ctx, layer)
    maco = param_name == "maco"
    param = Parameterization(ctx.model.channels, ctx.model.mean, ctx.model.std, size=size,
                             fourier=param_name != "plain", amplitude=amplitude_for(ctx, size) if maco else None)
    transforms = RandomAffine() if param_name != "plain" else None
    optimizer = _optimizer(ctx, layer, kind)
    key = ctx.key("featvis-part", PART_VERSION, layer_path, kind, variants, diversity, _param_key(param),
                  transforms and asdict(transforms), asdict(optimizer))
    fields = ("images", "activation", "curve") + (("transparency", "clipped") if maco else ())

    with tqdm(total=len(units) * variants * optimizer.steps, unit="img·step", desc=label, leave=False,
              disable=not (ctx.progress and ctx.group.is_main)) as bar:
        def work(part: list[int]) -> dict:
            res = synthesize(ctx.model.module, Objective(layer_path, part, kind, variants, diversity), param,
                             transforms, optimizer, device=ctx.device, progress=bar.update)
            return {"images": res.images, "activation": res.activation.astype(np.float64),
                    "curve": res.curve[:, _curve_steps(optimizer.steps)],
                    **({"transparency": res.transparency, "clipped": res.clipped} if maco else {})}

        # no units: no parts, and the arrays' shapes come from an empty synthesis
        parts = ctx.cached_parts("featvis", key, units, max(1, optimizer.batch_size // variants), work) \
            or [work([])]
    return {"units": np.array(units, np.int64), "curve_steps": _curve_steps(optimizer.steps),
            **{k: np.concatenate([p[k] for p in parts]) for k in fields}}


PART_VERSION = 1        # bump when a part's result changes meaning: the parts' cache keys change


def _param_key(param: Parameterization) -> dict:
    """The parameterization in a cache key: its fields, MACO's amplitude by the hash of its bytes (without one,
    the same dict as before MACO existed, so Fourier and plain parts stay cached)."""
    fields = asdict(param)
    amplitude = fields.pop("amplitude")
    if amplitude is not None:
        fields["amplitude_sha256"] = hashlib.sha256(np.ascontiguousarray(amplitude, np.float64).tobytes()).hexdigest()
    return fields


def _optimizer(ctx, layer, kind: str) -> Optimizer:
    """The loop's settings for a layer (None: the class logits) and its objective `kind`."""
    return optimizer_for(ctx.spec.feature_vis, image_size(ctx, layer), kind, ctx.spec.seed, ctx.device)


def optimizer_for(s: FeatureVisSpec, size: tuple[int, int], kind: str, seed: int, device: str = "cpu") -> Optimizer:
    """The loop's settings from a `feature_vis` spec section, for images of `size` (H, W) maximizing `kind`."""
    batch = s.batch_size or (64 if device == "cpu" else 256)
    # Smaller images need a model that takes any size (not the class logits of a fixed-size flatten) and
    # room left: below 64 px the coarse stages would shrink deep layers to nothing.
    coarse = s.progressive and kind != "logit" and min(size) >= MIN_PROGRESSIVE
    return Optimizer(steps=s.steps, lr=s.lr, seed=seed, batch_size=batch,
                     sizes=PROGRESSIVE_SIZES if coarse else (1.0,), settle=s.settle,
                     autocast=autocast_dtype(s.precision, device))


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """`feature_vis.precision` on `device`: bfloat16, or None for float32 (`auto`: bfloat16 only where the
    device computes it natively; emulated, it is slower than float32)."""
    if precision == "float32":
        return None
    if precision == "bfloat16" or native_bfloat16(device):
        return torch.bfloat16
    return None


def native_bfloat16(device: str) -> bool:
    if str(device).startswith("cuda"):
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if str(device) == "cpu":
        # private helpers of torch.cpu (2.1 and later): absent, assume no native bfloat16
        return any(getattr(torch.cpu, name, lambda: False)()
                   for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def _cost(ctx, layer, kind: str, images: int) -> Work:
    """`images` optimized for the spec's steps, a batch at a time: one backward pass each per step, at the
    size whose area is the steps' mean area (coarse to fine: smaller at first)."""
    opt = _optimizer(ctx, layer, kind)
    scale = float(np.sqrt(np.mean(np.square(opt.sizes))))
    return Work(backward=images * opt.steps, batch=max(1, min(images, opt.batch_size)),
                layer=layer.path if layer else None,
                size=tuple(side * scale for side in image_size(ctx, layer)), autocast=opt.autocast)


PROGRESSIVE_SIZES = (0.5, 0.75, 1.0)    # image side by thirds of the steps (`feature_vis.progressive`)
MIN_PROGRESSIVE = 64


def image_size(ctx, layer=None) -> tuple[int, int]:
    """(H, W) of the synthesized images: `feature_vis.size` (a square), or the model's input size when it is 0.

    A layer that `circuit.expand` added (its channels show what feeds the spec's filters, mostly as circuit
    thumbnails) gets a canvas fitted to its receptive field instead: FIT_FIELDS fields across, rounded up to
    16 px, at least MIN_FITTED, at most the size above. The objective is the channel's mean over positions,
    which a few fields across hold as well as a larger canvas: on VGG19's block2_conv2 (a 14 px field), 64 px
    reach the activation of 128 px in a quarter of the time (benchmarks/feature_vis.py --lab-candidate-size 64
    --lab-candidate '{}' --lab-baseline '{}' --lab-layers block2_conv2)."""
    side = ctx.spec.feature_vis.size
    full = (side, side) if side else tuple(ctx.model.input_size)
    field = ctx.receptive_fields.get(layer.path) if layer is not None and layer.expanded else None
    if field is None:
        return full
    fitted = max(MIN_FITTED, -(-FIT_FIELDS * max(field.size) // 16) * 16)
    return tuple(min(s, fitted) for s in full)


FIT_FIELDS = 4          # receptive fields across an expanded layer's canvas
MIN_FITTED = 64         # px: the smallest fitted canvas (progressive stages need MIN_PROGRESSIVE)


def _curve_steps(steps: int) -> np.ndarray:
    return np.unique(np.linspace(0, steps - 1, min(CURVE_POINTS, steps)).round().astype(np.int64))


class Curve(BaseModel):
    steps: list[int]             # optimization step (1-based) of each value
    values: list[float]          # the objective on the step's warped image, at the step's size (coarse to fine)


class Synthesized(BaseModel):
    image: str
    activation: float | None


class Transparency(BaseModel):
    """MACO's transparency map (`FeatureVisResult.transparency`), as a grey PNG: value / 255 × `scale`."""
    image: str
    scale: float | None = Field(description="the map's largest value, which the PNG's 255 stands for")


class Rendered(BaseModel):
    """One parameterization's image of the filter, as `feature_vis.compare` shows them side by side."""
    param: Literal["fourier", "maco", "plain"]
    image: str
    activation: float | None     # the objective on the final, unwarped image
    transparency: Transparency | None = Field(description="MACO's transparency map (None for the others)")
    clipped: float | None = Field(description="MACO: share of the exact-spectrum image's pixel values clipped to "
                                              "[0, 1] (None for the others)")


class FilterVis(BaseModel):
    image: str
    activation: float | None     # the objective on the final, unwarped image
    steps: int
    size: list[int] = Field(min_length=2, max_length=2, description="[height, width] of the image, pixels")
    objective: str               # "channel" (mean over positions) or "neuron" (the centre unit)
    curve: Curve
    variants: list[Synthesized]  # further images with the diversity term (beyond the first)
    plain: Synthesized | None    # the plain, unregularized ascent, where compared (also in `compare`)
    param: Literal["fourier", "maco"] = Field(description="parameterization of `image` (feature_vis.param)")
    transparency: Transparency | None = Field(description="MACO's transparency map of `image` (param maco)")
    compare: list[Rendered] = Field(description="feature_vis.compare: `param`'s image first (the same file), then "
                                                "each other parameterization compared; empty when none is")


class FeatureVis(Analysis):
    """Each spec filter's synthesized image(s), per layer (units batched across the layer's filters)."""
    name = "feature_vis"
    spec_key = "feature_vis"
    version = 3                         # 3: Fourier gain 8 (FOURIER_GAIN), MACO phases 10x faster (MACO_PHASE_GAIN)
    uses = ("amplitude_spectrum",)      # MACO's magnitude; an analysis of its own (see amplitude_spectrum.py)
    per_layer = True
    templates = {"filter_top": "analyses/feature_vis.html"}
    FilterResult = FilterVis

    def _objective(self, ctx, layer) -> str:
        return ctx.spec.feature_vis.objective if len(layer.output_shape) == 3 else "channel"

    def _others(self, ctx) -> list[str]:
        """The parameterizations compared beside `param`'s, in `compare`'s order."""
        s = ctx.spec.feature_vis
        return [p for p in s.compare if p != s.param]

    def cost(self, ctx, layer):
        s = ctx.spec.feature_vis
        return _cost(ctx, layer, self._objective(ctx, layer), len(layer.filters) * (s.variants + len(self._others(ctx))))

    def compute(self, ctx, layer):
        s = ctx.spec.feature_vis
        out = _synthesize(ctx, layer, layer.filters, self._objective(ctx, layer), s.param,
                          f"synthesis {layer.name}", variants=s.variants)
        for p in self._others(ctx):
            other = _synthesize(ctx, layer, layer.filters, self._objective(ctx, layer), p, f"{p} {layer.name}")
            out.update({f"{p}_{k}": v for k, v in other.items()})
        return out

    def report(self, ctx, artifacts, out):
        s = ctx.spec.feature_vis
        for path, res in artifacts.items():
            layer = ctx.layer(path)
            variants = s.variants
            base = f"layers/{layer.slug}/img"
            for j, f in enumerate(layer.filters):
                n = j * variants

                def image(rel, arr=res["images"], row=n):
                    return out.image(rel, lambda: arr[row])
                main = _rendered(out, res, "", n, s.param, f"{base}/f{f}_vis")
                vis = {"image": main["image"], "activation": main["activation"],
                       "steps": s.steps, "size": list(image_size(ctx, layer)),
                       "objective": self._objective(ctx, layer),
                       "curve": {"steps": [int(t) + 1 for t in res["curve_steps"]],
                                 "values": [rounded(v, 4) for v in res["curve"][n]]},
                       "variants": [{"image": image(f"{base}/f{f}_vis{v}.png", row=n + v),
                                     "activation": rounded(res["activation"][n + v], 4)} for v in range(1, variants)],
                       "plain": None, "param": s.param, "transparency": main["transparency"],
                       "compare": [main] + [_rendered(out, res, f"{p}_", j, p, f"{base}/f{f}_{p}")
                                            for p in self._others(ctx)] if s.compare else []}
                if "plain_images" in res:
                    vis["plain"] = {"image": image(f"{base}/f{f}_plain.png", res["plain_images"], j),
                                    "activation": rounded(res["plain_activation"][j], 4)}
                out.filter(path, f, vis)


def _rendered(out, res: dict, prefix: str, row: int, param: str, stem: str) -> dict:
    """The `Rendered` record of image `row` of the arrays `prefix`images etc. (figures at `stem`.png)."""
    pixels = res[f"{prefix}images"]
    rec = {"param": param, "image": out.image(f"{stem}.png", lambda: pixels[row]),
           "activation": rounded(res[f"{prefix}activation"][row], 4), "transparency": None, "clipped": None}
    if f"{prefix}transparency" in res:
        tmap = res[f"{prefix}transparency"][row]
        rec["transparency"] = {"image": out.image(f"{stem}_transparency.png", lambda: transparency_png(tmap)),
                               "scale": rounded(tmap.max(), 4)}
        rec["clipped"] = rounded(res[f"{prefix}clipped"][row], 4)
    return rec


def transparency_png(tmap: np.ndarray) -> np.ndarray:
    """(H, W) transparency map -> (H, W, 1) uint8, 255 at its largest value (0 everywhere for an all-0 map)."""
    top = float(tmap.max())
    scaled = tmap / top if top > 0 else np.zeros_like(tmap)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)[:, :, None]


class ClassModel(BaseModel):
    label: int
    class_: str = Field(alias="class")
    activation: float | None     # the logit reached
    image: str


class ClassModels(Analysis):
    """Images synthesized to maximize class logits (Simonyan et al.), on the overview."""
    name = "class_models"
    spec_key = "feature_vis"
    version = 3                         # 3: Fourier gain 8 (FOURIER_GAIN)
    templates = {"overview": "analyses/class_models.html"}
    SiteResult = list[ClassModel]

    def _classes(self, ctx) -> list[int]:
        return [c for c in ctx.spec.feature_vis.classes if 0 <= c < len(ctx.model.classes)]

    def applies(self, ctx, layer=None):
        return None if self._classes(ctx) else "feature_vis.classes names no class of the model"

    def cost(self, ctx, layer):
        return _cost(ctx, None, "logit", len(self._classes(ctx)))

    def compute(self, ctx, layer):
        return _synthesize(ctx, None, self._classes(ctx), "logit", "fourier", "class models")

    def report(self, ctx, res, out):
        out.site([{"label": int(c), "class": ctx.model.classes[int(c)], "activation": rounded(a, 4),
                   "image": out.image(f"img/class_{int(c)}.png", lambda img=img: img)}
                  for c, a, img in zip(res["units"], res["activation"], res["images"])])
