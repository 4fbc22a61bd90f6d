"""How far to trust each synthesized image: scores per filter, from the image and the filter's top natural images.

A feature visualization can show a pattern that drives the unit through a path natural images never use
(Geirhos et al. 2023, "Don't trust your eyes: on the (un)reliability of feature visualizations"). Each filter's
synthesized image gets four numbers, all measured on the image as the page shows it (uint8, float32 model):

- activation ratio: the feature-vis objective on the synthesized image ÷ its largest value on the filter's
  top natural images (the same objective: mean over positions, or the centre unit). Below 1 the picture drives
  the unit less than a photo of the dataset does: it under-shows what the unit responds to.
- path: the conv producing the layer, read at the unit's strongest position, per input channel: its
  contribution (kernel × input window, BatchNorm folded: they add up to the pre-activation). `agreement` is
  Spearman's ρ between the synthesized image's contributions and the natural images' mean contributions;
  `input_agreement` the same for the input activations summed over the unit's window (the layer below);
  `foreign_share` the share of the synthesized image's positive contribution carried by input channels outside
  the natural images' main path (the fewest channels carrying NATURAL_PATH of their positive contribution).
  A foreign share above FOREIGN_FLAG means the picture excites the unit mostly through channels natural images
  do not use: what it shows is not what the unit detects in photos.
- naturalness: in the model's own penultimate features (the last Linear layer's input), the synthesized
  image's mean distance to its K nearest top natural images ÷ the natural images' mean distance to their K
  nearest others (a k-NN realism ratio in the spirit of Kynkäänniemi et al. 2019, "Improved precision and recall
  metric for assessing generative models"): 1 is as close as the photos are to each other; above UNNATURAL the
  model sees the picture as something else than the unit's photos. The synthesized image is resized to the
  model's input size (bilinear, antialiased) for this.
- stability: with `feature_vis.variants` ≥ 2, the mean pairwise ρ of the variants' input-channel contributions:
  do different starts reach the unit by the same path? Below UNSTABLE they do not.

Comparison images of the same filter (the plain ascent, other parameterizations) get the same scores, beside
the main image's. Thresholds and their reasoning: README, "How far to trust each picture".
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from ..analysis import Analysis
from ..models import standardize
from ..errors import ModelError
from ..graph import find_conv
from ..graph.fold import effective_weights
from ..hooks import removing, stopping_at
from ..record import PENULTIMATE, recording_hooks
from ..report import rounded
from ..timing import Work
from . import kernels as kx
from .featvis.objectives import OBJECTIVES

NATURAL_PATH = 0.9     # the natural images' main path carries this share of their positive contribution
FOREIGN_FLAG = 0.5     # more than half of the picture's drive through channels off that path: flagged
WEAK = 1.0             # activation ratio below: the picture drives the unit less than a photo
UNNATURAL = 2.0        # naturalness above: twice as far from the photos as they are from each other
UNSTABLE = 0.5         # stability below: the variants reach the unit by different paths
NEIGHBOURS = 3         # K of the k-NN distances


# ---- the scores, from arrays (no report, no context) ----

def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's ρ of two vectors; None where either is constant (ρ is undefined)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def foreign_share(picture: np.ndarray, natural: np.ndarray, keep: float = NATURAL_PATH) -> float | None:
    """Share of `picture`'s positive per-channel contribution outside the fewest channels that carry `keep` of
    `natural`'s positive contribution; None where either has no positive contribution."""
    pos_nat, pos_pic = np.clip(natural, 0, None), np.clip(picture, 0, None)
    if pos_nat.sum() <= 0 or pos_pic.sum() <= 0:
        return None
    order = np.argsort(-pos_nat, kind="stable")
    carried = np.cumsum(pos_nat[order]) / pos_nat.sum()
    main = order[:int(np.searchsorted(carried, keep - 1e-12)) + 1]
    return float(1 - pos_pic[main].sum() / pos_pic.sum())


def knn_ratio(query: np.ndarray, reference: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray | None:
    """(Q,) each query row's mean Euclidean distance to its k nearest `reference` rows ÷ the reference rows' mean
    distance to their k nearest other reference rows; None with fewer than 2 references or a zero spread."""
    if len(reference) < 2:
        return None
    k = min(k, len(reference) - 1)
    ref = reference.astype(np.float64)
    within = np.linalg.norm(ref[:, None] - ref[None], axis=2)
    np.fill_diagonal(within, np.inf)
    spread = np.sort(within, axis=1)[:, :k].mean()
    if not spread > 0:
        return None
    to_ref = np.linalg.norm(query.astype(np.float64)[:, None] - ref[None], axis=2)
    return np.sort(to_ref, axis=1)[:, :k].mean(1) / spread


# ---- reading the model ----

@dataclass
class Read:
    """One batch read: the layer's output (B, K, ...), the conv's input (B, Cin, H, W) or None, the penultimate
    features (B, D) or None."""
    layer: torch.Tensor
    conv_input: torch.Tensor | None
    penultimate: np.ndarray | None

    def units(self, rows: list[int], units: list[int], kind: str) -> tuple[np.ndarray, torch.Tensor]:
        """For pairs (image rows[i], channel units[i]): the objective `kind` (P,) and the channel's strongest
        position (P, 2) (the first on ties, as the dataset pass takes it)."""
        picked = self.layer[torch.tensor(rows, dtype=torch.long), torch.tensor(units, dtype=torch.long)].float()
        objective = OBJECTIVES[kind](picked[:, None], torch.zeros(len(rows), dtype=torch.long))
        flat = picked.reshape(len(rows), -1)
        arg = flat.argmax(1)
        width = picked.shape[-1] if picked.dim() == 3 else 1
        return objective.numpy().astype(np.float64), torch.stack([arg // width, arg % width], 1)


def read(model: nn.Module, layer: str, conv: str | None, x: torch.Tensor, whole: bool) -> Read:
    """`model` on `x`: the output of module `layer` and the input of module `conv`; with `whole`, the forward
    runs on to the final Linear's input (else it stops at the layer, so images of any size pass)."""
    modules = dict(model.named_modules())
    got: dict = {}

    def keep(name, value) -> None:     # a hook returning a value would replace the module's input or output
        got.setdefault(name, value.detach().cpu().clone())

    with removing() as stack, torch.no_grad():
        if conv:
            stack.callback(modules[conv].register_forward_pre_hook(lambda _m, inp: keep("conv", inp[0])).remove)
        if whole:   # the dataset pass's hooks: the layer's output and the final Linear's input
            with recording_hooks(model, [layer], lambda path, t: keep("pen" if path == PENULTIMATE else "layer", t)):
                model(x)
        else:
            with stopping_at(model, layer) as run:
                got["layer"] = run(x).detach().cpu().clone()
    if "pen" in got:
        got["pen"] = got["pen"].flatten(1).float().numpy()
    return Read(got["layer"], got.get("conv"), got.get("pen"))


class _Conv:
    """The conv producing a layer, BatchNorm folded: per-input-channel contributions at positions."""

    def __init__(self, model: nn.Module, layer: str):
        path, conv, bn = find_conv(model, layer)
        self.path, self.conv = path, conv
        self.weight = effective_weights(conv, bn)[0].cpu()
        self.ones = torch.ones_like(self.weight)

    def contributions(self, x: torch.Tensor, filters: list[int], positions: torch.Tensor,
                      window: bool = False) -> np.ndarray:
        """(B, Cin/groups): image i's input channels' contributions to filter filters[i] at positions[i] (with
        `window`: the input summed over the unit's window instead)."""
        c = self.conv
        w = self.ones if window else self.weight
        if not len(filters):
            return np.zeros((0, 0))
        out = np.zeros((len(filters), w.shape[1]))
        # one call per distinct filter, on all the images that ask for it (a filter's top images come together)
        for f in sorted(set(filters)):
            rows = [i for i, g in enumerate(filters) if g == f]
            out[rows] = kx.channel_contributions(w, x[rows].cpu(), f, positions[rows], c.stride, c.padding,
                                                 c.dilation, c.groups).numpy()
        return out


def pictures_input(images: np.ndarray, size: tuple[int, int] | None, mean, std, device) -> torch.Tensor:
    """(N, H, W, C) uint8 pictures → the model's normalized input, resized to `size` (None: as they are)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().to(device) / 255
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return standardize(x, mean, std)


# ---- the analysis ----

class PathCheck(BaseModel):
    agreement: float | None          # Spearman ρ: per-input-channel contributions, picture vs natural mean
    input_agreement: float | None    # Spearman ρ: input activations over the unit's window
    foreign_share: float | None      # the picture's positive contribution off the natural images' main path


class Scores(BaseModel):
    activation_ratio: float | None   # the objective on the picture ÷ its largest on the top natural images
    path: PathCheck | None           # None: no conv produces the layer
    naturalness: float | None        # k-NN distance ratio in penultimate features (1 = as photos among themselves)
    flags: list[str]                 # of "weak", "foreign_path", "unnatural": the checks it fails


class FilterTrust(Scores):
    stability: float | None          # mean pairwise ρ of the variants' contributions (feature_vis.variants ≥ 2)
    natural: list[int]               # dataset indices of the natural images compared with
    compared: dict[str, Scores]      # the same scores for the filter's other pictures ("plain", ...)


class Quantiles(BaseModel):
    count: int                       # filters measured
    min: float
    q25: float
    median: float
    q75: float
    max: float


class Thresholds(BaseModel):
    weak: float                          # activation ratio below: "weak"
    foreign: float                       # foreign share above: "foreign_path"
    natural_path: float                  # share of the natural images' drive their main path carries
    unnatural: float                     # naturalness above: "unnatural"
    unstable: float                      # stability below: "unstable"
    neighbours: int                      # K of the k-NN distances


class LayerTrust(BaseModel):
    thresholds: Thresholds
    filters: int
    flagged: dict[str, int]              # flag → filters with it
    distribution: dict[str, Quantiles]   # score → its spread over the layer's filters (where measured)
    unmeasured: dict[str, str]           # score → why it is not measured on this layer


def _flags(activation_ratio, path, naturalness) -> list[str]:
    flags = []
    if activation_ratio is not None and activation_ratio < WEAK:
        flags.append("weak")
    if path is not None and path["foreign_share"] is not None and path["foreign_share"] > FOREIGN_FLAG:
        flags.append("foreign_path")
    if naturalness is not None and naturalness > UNNATURAL:
        flags.append("unnatural")
    return flags


class Trust(Analysis):
    """Per filter: how far to trust its synthesized image (activation ratio, path, naturalness, stability)."""
    name = "trust"
    spec_key = "trust"
    version = 1
    per_layer = True
    requires = ("feature_vis",)
    templates = {"filter_top": "analyses/trust.html", "layer": "analyses/trust_layer.html",
                 "grid": "analyses/trust_grid.html"}
    FilterResult = FilterTrust
    LayerResult = LayerTrust

    def enabled(self, ctx, layer=None) -> bool:
        return ctx.spec.trust.enabled and ctx.spec.feature_vis.enabled

    def turned_off(self, ctx) -> str:
        if ctx.spec.trust.enabled:
            return "no synthesized images to score: feature_vis.enabled is false"
        return super().turned_off(ctx)

    def applies(self, ctx, layer=None):
        if layer is None:
            return None
        if not layer.filters:
            return "no filters"
        vis = ctx.outcomes.get("feature_vis")
        if vis is not None and layer.path in vis.layers_absent:
            return "no synthesized images on this layer to score"
        return None

    def cost(self, ctx, layer):
        n = len(layer.filters) * min(ctx.spec.trust.natural, ctx.spec.record.top_k)
        s = ctx.spec.feature_vis
        pictures = len(layer.filters) * (s.variants + len([p for p in s.compare if p != s.param]))
        return (Work(forward=n, batch=32, loads=n), Work(forward=2 * pictures, batch=32))

    def compute(self, ctx, layer):
        vis = ctx.artifact("feature_vis", layer)
        model, kind = ctx.model.module, _objective(ctx, layer)
        try:
            conv = _Conv(model, layer.path)
        except ModelError:
            conv = None
        filters = [int(f) for f in vis["units"]]
        variants = len(vis["images"]) // max(1, len(filters))
        natural = self._natural(ctx, layer, conv, filters, kind)
        # the main images (feature_vis.param, variants adjacent), then each compared parameterization's
        pictures = {"main": vis["images"]} | {k[:-len("_images")]: v for k, v in vis.items() if k.endswith("_images")}
        out = {"filters": np.array(filters, np.int64), "natural_index": natural["index"],
               "natural_objective": natural["objective"],
               "meta": {"variants": variants, "path": conv is not None,
                        "penultimate": natural["penultimate"] is not None}}
        for name, images in pictures.items():
            per = variants if name == "main" else 1
            units = [f for f in filters for _ in range(per)]
            scores = self._pictures(ctx, layer, conv, images, units, kind, natural["penultimate"] is not None)
            for key, value in scores.items():
                out[f"{name}_{key}"] = value
        if conv is not None:
            out["natural_contribution"] = natural["contribution"]
            out["natural_window"] = natural["window"]
        if natural["penultimate"] is not None:
            out["natural_penultimate"] = natural["penultimate"]
        return out

    def _natural(self, ctx, layer, conv, filters: list[int], kind: str) -> dict:
        """The filters' top natural images read at the layer (each image once, however many filters it is top
        for): objective (F, N), mean contributions and window sums (F, Cin), penultimate features (F, N, D);
        N = trust.natural (or as many as were recorded)."""
        top = ctx.evidence.layers[layer.path].top
        n = min(ctx.spec.trust.natural, len(top.index))
        index = np.stack([top.index[:n, f] for f in filters]) if filters else np.zeros((0, n), np.int64)
        union = sorted(set(index.ravel().tolist()))
        objective = np.zeros(index.shape)
        cin = conv.weight.shape[1] if conv else 0
        contribution, window = np.zeros((len(filters), cin)), np.zeros((len(filters), cin))
        pen = None
        for s in range(0, len(union), 32):
            chunk = union[s:s + 32]
            row_of = {i: r for r, i in enumerate(chunk)}
            pairs = [(a, b) for a in range(len(filters)) for b in range(n) if int(index[a, b]) in row_of]
            got = read(ctx.model.module, layer.path, conv.path if conv else None, ctx.batch(chunk), whole=True)
            rows, units = [row_of[int(index[a, b])] for a, b in pairs], [filters[a] for a, _ in pairs]
            values, positions = got.units(rows, units, kind)
            for k, (a, b) in enumerate(pairs):
                objective[a, b] = values[k]
            if conv is not None:
                x = got.conv_input[torch.tensor(rows, dtype=torch.long)]
                c = conv.contributions(x, units, positions)
                w = conv.contributions(x, units, positions, window=True)
                for k, (a, _) in enumerate(pairs):
                    contribution[a] += c[k] / n
                    window[a] += w[k] / n
            if got.penultimate is not None:
                if pen is None:
                    pen = np.zeros((len(filters), n, got.penultimate.shape[1]), np.float32)
                for k, (a, b) in enumerate(pairs):
                    pen[a, b] = got.penultimate[rows[k]]
        return {"index": index, "objective": objective, "contribution": contribution, "window": window,
                "penultimate": pen}

    def _pictures(self, ctx, layer, conv, images: np.ndarray, units: list[int], kind: str, whole: bool) -> dict:
        """Picture i (for channel units[i]) read at the layer at its own size (objective, contributions, window
        sums) and, with `whole`, at the model's input size (penultimate features)."""
        m = ctx.model
        objective, contribution, window, pen = [], [], [], []
        for s in range(0, len(images), 32):
            chunk, u = images[s:s + 32], units[s:s + 32]
            rows = list(range(len(chunk)))
            got = read(m.module, layer.path, conv.path if conv else None,
                       pictures_input(chunk, None, m.mean, m.std, ctx.device), whole=False)
            values, positions = got.units(rows, u, kind)
            objective.append(values)
            if conv is not None:
                contribution.append(conv.contributions(got.conv_input, u, positions))
                window.append(conv.contributions(got.conv_input, u, positions, window=True))
            if whole:
                pen.append(read(m.module, layer.path, None, pictures_input(chunk, m.input_size, m.mean, m.std,
                                                                            ctx.device), whole=True).penultimate)
        out = {"objective": np.concatenate(objective) if objective else np.zeros(0)}
        if conv is not None:
            out |= {"contribution": np.concatenate(contribution), "window": np.concatenate(window)}
        if whole:
            out["penultimate"] = np.concatenate(pen)
        return out

    def report(self, ctx, artifacts, out):
        for path, art in artifacts.items():
            meta = art["meta"]
            variants = meta["variants"]
            records = {}
            for a, f in enumerate(art["filters"].tolist()):
                record = self._scores(art, "main", a * variants, a)
                others = {name: self._scores(art, name, a, a) for name in _compared(art)}
                stability = None
                if variants > 1 and meta["path"]:
                    rows = art["main_contribution"][a * variants:(a + 1) * variants]
                    rhos = [spearman(rows[i], rows[j]) for i in range(variants) for j in range(i + 1, variants)]
                    rhos = [r for r in rhos if r is not None]
                    stability = rounded(float(np.mean(rhos)), 4) if rhos else None
                if stability is not None and stability < UNSTABLE:
                    record["flags"].append("unstable")
                records[f] = record | {"stability": stability, "compared": others,
                                       "natural": [int(i) for i in art["natural_index"][a]]}
                out.filter(path, f, records[f])
            out.layer(path, _layer_summary(records, meta))

    def _scores(self, art, name: str, row: int, a: int) -> dict:
        """The scores of picture `row` of `name`, against filter `a`'s natural images."""
        best = float(art["natural_objective"][a].max()) if art["natural_objective"].size else 0.0
        ratio = float(art[f"{name}_objective"][row]) / best if best > 0 else None
        path = None
        if f"{name}_contribution" in art:
            c, nat = art[f"{name}_contribution"][row], art["natural_contribution"][a]
            path = {"agreement": _round(spearman(c, nat)),
                    "input_agreement": _round(spearman(art[f"{name}_window"][row], art["natural_window"][a])),
                    "foreign_share": _round(foreign_share(c, nat))}
        naturalness = None
        if f"{name}_penultimate" in art:
            got = knn_ratio(art[f"{name}_penultimate"][row:row + 1], art["natural_penultimate"][a])
            naturalness = float(got[0]) if got is not None else None
        ratio, naturalness = _round(ratio), _round(naturalness)
        return {"activation_ratio": ratio, "path": path, "naturalness": naturalness,
                "flags": _flags(ratio, path, naturalness)}


def _compared(art) -> list[str]:
    """The comparison pictures scored beside the main one ("plain", ...): every `<name>_objective` array."""
    return [k[:-len("_objective")] for k in art if k.endswith("_objective") and k not in ("main_objective",
                                                                                        "natural_objective")]


def _round(v: float | None) -> float | None:
    return rounded(v, 4) if v is not None and np.isfinite(v) else None


def _objective(ctx, layer) -> str:
    return ctx.spec.feature_vis.objective if len(layer.output_shape) == 3 else "channel"


SCORES = {"activation_ratio": lambda r: r["activation_ratio"],
          "path_agreement": lambda r: r["path"] and r["path"]["agreement"],
          "foreign_share": lambda r: r["path"] and r["path"]["foreign_share"],
          "naturalness": lambda r: r["naturalness"],
          "stability": lambda r: r["stability"]}


def _layer_summary(records: dict, meta: dict) -> dict:
    distribution = {}
    for name, get in SCORES.items():
        values = np.array([v for r in records.values() if (v := get(r)) is not None], np.float64)
        if len(values):
            q = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
            distribution[name] = {"count": len(values)} | {k: rounded(float(v), 4) for k, v in
                                                            zip(("min", "q25", "median", "q75", "max"), q)}
    unmeasured = {}
    if not meta["path"]:
        unmeasured["path_agreement"] = unmeasured["foreign_share"] = "no Conv2d produces this layer"
    if not meta["penultimate"]:
        unmeasured["naturalness"] = "the model has no final Linear layer to read penultimate features from"
    if meta["variants"] < 2:
        unmeasured["stability"] = "one image per filter (feature_vis.variants: 1)"
    flagged = {flag: sum(flag in r["flags"] for r in records.values())
               for flag in ("weak", "foreign_path", "unnatural", "unstable")}
    thresholds = {"weak": WEAK, "foreign": FOREIGN_FLAG, "natural_path": NATURAL_PATH, "unnatural": UNNATURAL,
                  "unstable": UNSTABLE, "neighbours": NEIGHBOURS}
    return {"thresholds": thresholds, "filters": len(records), "flagged": flagged, "distribution": distribution, "unmeasured": unmeasured}
