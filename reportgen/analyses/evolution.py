"""Evolution: how the model changed across the checkpoints of `model.checkpoints` (oldest first; the report is
built for the last one). Two analyses, on the Evolution page:

- `evolution` (site): accuracy and mean cross-entropy loss of every checkpoint on the images used (one forward
  per checkpoint, as no dataset pass keeps the logits).
- `evolution_layers` (per spec layer): linear CKA (Kornblith et al. 2019, "Similarity of neural network
  representations revisited", ICML) between every pair of checkpoints on the layer's pooled features of the
  same images (each checkpoint's dataset pass, `reportgen.checkpoints`), and per spec filter a strip over the
  checkpoints: the unit of each checkpoint whose pooled activation correlates best (Pearson r) with the final
  filter's on those images ("drifted" when it is not the same index), its top images and top classes from
  that checkpoint's pass, and its synthesized image. The last checkpoint's image is `feature_vis`' own; earlier
  checkpoints' are synthesized with EARLIER_STEPS_SHARE of `feature_vis.steps` (Fourier, channel objective) to
  keep a build with N checkpoints within 1 + 0.6 (N − 1) times the cost of one.
"""

import dataclasses
from functools import reduce

import numpy as np
import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

from ..analysis import Analysis
from ..checkpoints import checkpoint_passes, earlier_pass_work, identities
from ..report import class_name, rounded
from ..timing import Work
from .accuracy import labels_are_outputs
from .feature_vis import image_size, optimizer_for
from .featvis import Objective, Parameterization, RandomAffine, synthesize

EARLIER_STEPS_SHARE = 0.25    # of feature_vis.steps, for the earlier checkpoints' images (the last: feature_vis')
MIN_EARLIER_STEPS = 16
TOP_CLASSES = 3


# ---- the math, from arrays ----

def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n examples, x (n, p) and y (n, q): with centred columns,
    ‖yᵀx‖²_F / (‖xᵀx‖_F ‖yᵀy‖_F) (Kornblith et al. 2019, eq. 5 with linear kernels). NaN when one is constant."""
    x = np.asarray(x, np.float64) - np.mean(x, 0, dtype=np.float64)
    y = np.asarray(y, np.float64) - np.mean(y, 0, dtype=np.float64)
    denominator = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / denominator) if denominator > 0 else float("nan")


def cka_matrix(features: list[np.ndarray]) -> np.ndarray:
    """(k, k) linear CKA between every pair of representations (symmetric; 1 on the diagonal)."""
    k = len(features)
    out = np.ones((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            out[i, j] = out[j, i] = linear_cka(features[i], features[j])
        if not np.isfinite(linear_cka(features[i], features[i])):
            out[i, :] = out[:, i] = np.nan
    return out


def correlations(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(F, C) Pearson r between each column of ref (n, F) and each column of other (n, C); NaN for a constant
    column."""
    a = np.asarray(ref, np.float64) - np.mean(ref, 0, dtype=np.float64)
    b = np.asarray(other, np.float64) - np.mean(other, 0, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a.T @ b) / np.outer(na, nb)
    r[~np.isfinite(r)] = np.nan
    return r


def best_matches(ref: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each column of ref, the column of other it correlates best with, and that r: ((F,), (F,)); −1 and NaN
    where no correlation is defined (a constant column)."""
    r = correlations(ref, other)
    defined = np.isfinite(r).any(1)
    best = np.where(defined, np.argmax(np.where(np.isfinite(r), r, -np.inf), 1), -1)
    return best, np.where(defined, r[np.arange(len(r)), np.maximum(best, 0)], np.nan)


# ---- site: accuracy and loss per checkpoint ----

class CheckpointScore(BaseModel):
    name: str
    sha256: str
    accuracy: float | None       # top-1 on the images used (None: the labels are not the model's outputs)
    loss: float | None           # mean cross-entropy of the true class on them


class EvolutionSite(BaseModel):
    page: str
    images: int                  # images each checkpoint was run on
    checkpoints: list[CheckpointScore]
    scores_absent: str | None    # why accuracy and loss are not stated
    earlier_steps: int | None    # synthesis steps of the earlier checkpoints' images (None: feature_vis is off)
    final_steps: int             # feature_vis.steps, of the last checkpoint's images


def _no_checkpoints(ctx) -> str | None:
    if not ctx.spec.model.checkpoints:
        return "the spec names no model.checkpoints (give 2 or more checkpoints of the model to compare them)"
    return None


def earlier_steps(ctx) -> int:
    return max(MIN_EARLIER_STEPS, round(ctx.spec.feature_vis.steps * EARLIER_STEPS_SHARE))


class Evolution(Analysis):
    """Accuracy and loss of every checkpoint of `model.checkpoints`, and the Evolution page."""
    name = "evolution"
    version = 1
    templates = {"overview": "analyses/evolution_overview.html"}
    SiteResult = EvolutionSite

    def enabled(self, ctx, layer=None) -> bool:
        return bool(ctx.spec.model.checkpoints)   # asked for by naming checkpoints: no note in other reports

    def turned_off(self, ctx) -> str:
        return _no_checkpoints(ctx)

    def applies(self, ctx, layer=None):
        return _no_checkpoints(ctx)

    def key_parts(self, ctx):
        return (identities(ctx), ctx.spec.dataset.batch_size)

    def cost(self, ctx, layer=None):
        # the loss forward of every checkpoint, and the earlier checkpoints' passes (run here when not cached)
        n = len(ctx.indices) * len(identities(ctx)) + earlier_pass_work(ctx)
        return Work(forward=n, batch=ctx.spec.dataset.batch_size, loads=n)

    def compute(self, ctx, layer):
        passes = checkpoint_passes(ctx)
        images = np.asarray(ctx.evidence.pred_index, np.int64)   # the readable images used
        labels = ctx.dataset.labels[images].astype(np.int64)
        why = labels_are_outputs(ctx)
        hits, losses = np.zeros(len(passes)), np.zeros(len(passes))
        step = ctx.spec.dataset.batch_size
        with tqdm(total=len(passes) * len(images), unit="img", desc="checkpoint accuracy", leave=False,
                  disable=not (ctx.progress and ctx.group.is_main) or why is not None) as bar, torch.no_grad():
            for j, p in enumerate(passes if why is None else []):
                model = p.model(ctx)
                for s in range(0, len(images), step):
                    logits = model(ctx.batch(images[s:s + step])).float().cpu()
                    target = torch.from_numpy(labels[s:s + step])
                    hits[j] += float((logits.argmax(1) == target).sum())
                    losses[j] += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
                    bar.update(len(target))
        n = max(len(images), 1)
        return {"accuracy": hits / n, "loss": losses / n, "meta": {"images": len(images), "absent": why}}

    def report(self, ctx, art, out):
        why = art["meta"]["absent"]
        rel = out.page("evolution.html", "analyses/evolution.html", "Evolution")
        out.site({"page": rel, "images": art["meta"]["images"], "scores_absent": why,
                  "earlier_steps": earlier_steps(ctx) if ctx.spec.feature_vis.enabled else None,
                  "final_steps": ctx.spec.feature_vis.steps,
                  "checkpoints": [{"name": name, "sha256": sha,
                                   "accuracy": None if why else rounded(art["accuracy"][j], 4),
                                   "loss": None if why else rounded(art["loss"][j], 4)}
                                  for j, (name, sha) in enumerate(identities(ctx))]})


# ---- per layer: CKA and the filters' strips ----

class TopImage(BaseModel):
    dataset_index: int
    image: str
    score: float | None


class ClassMean(BaseModel):
    label: int
    class_: str = Field(alias="class")
    mean: float | None


class StripEntry(BaseModel):
    checkpoint: str
    unit: int | None             # the matched unit of this checkpoint (None: the filter is constant here)
    r: float | None              # Pearson r of its pooled activation with the final filter's, on the same images
    same_index_r: float | None   # r of this checkpoint's unit with the filter's own index
    drifted: bool                # the best match is not the filter's own index
    top_images: list[TopImage]
    top_classes: list[ClassMean]
    image: str | None            # synthesized for `unit` (the last checkpoint: feature_vis' image)
    activation: float | None
    steps: int | None


class FilterEvolution(BaseModel):
    strip: list[StripEntry]


class LayerEvolution(BaseModel):
    checkpoints: list[str]
    images: int                  # pooled images compared (the same in every checkpoint)
    cka: list[list[float | None]] = Field(description="(k, k) linear CKA between every pair of checkpoints")
    consecutive: list[float | None]    # CKA of checkpoint i with i + 1
    to_final: list[float | None]       # CKA of checkpoint i with the last
    drifted: int                 # spec filters whose best match drifted in some checkpoint


class EvolutionLayers(Analysis):
    """Per spec layer: CKA between checkpoints, and each spec filter's matched unit, images and classes per
    checkpoint."""
    name = "evolution_layers"
    version = 1
    uses = ("feature_vis",)      # the last checkpoint's image in each strip
    per_layer = True
    templates = {"filter": "analyses/evolution_filter.html", "layer": "analyses/evolution_layer.html"}
    LayerResult = LayerEvolution
    FilterResult = FilterEvolution

    def enabled(self, ctx, layer=None) -> bool:
        # asked for by naming checkpoints; the spec's layers only
        return bool(ctx.spec.model.checkpoints) and (layer is None or not layer.expanded)

    def turned_off(self, ctx) -> str:
        return _no_checkpoints(ctx)

    def applies(self, ctx, layer=None):
        if layer is None:
            return _no_checkpoints(ctx)
        if ctx.spec.record.pooled_limit < 2:
            return "record.pooled_limit is below 2: the pass keeps no pooled features to compare"
        return None

    def key_parts(self, ctx):
        s = ctx.spec.feature_vis
        return (identities(ctx), s.enabled, s.steps, s.lr, s.settle, s.size, s.precision, s.batch_size,
                EARLIER_STEPS_SHARE)

    def cost(self, ctx, layer):
        if not ctx.spec.feature_vis.enabled:
            return None
        opt = optimizer_for(ctx.spec.feature_vis, image_size(ctx, layer), "channel", ctx.spec.seed, ctx.device)
        n = len(layer.filters) * (len(identities(ctx)) - 1)
        return Work(backward=n * earlier_steps(ctx), batch=max(1, min(n, opt.batch_size)), layer=layer.path,
                    size=image_size(ctx, layer), autocast=opt.autocast)

    def compute(self, ctx, layer):
        passes = checkpoint_passes(ctx)
        pooled = [p.evidence.layers[layer.path].pooled_array() for p in passes]
        common = reduce(np.intersect1d, [idx for idx, _ in pooled])     # the same images (all readable in all)
        feats = [f[np.searchsorted(idx, common)].astype(np.float64) for idx, f in pooled]
        filters = np.asarray(layer.filters, np.int64)
        final = feats[-1][:, filters]
        k, nf = len(passes), len(filters)
        match, r, same = np.full((k, nf), -1, np.int64), np.full((k, nf), np.nan), np.full((k, nf), np.nan)
        for j in range(k):
            match[j], r[j] = best_matches(final, feats[j])
            same[j] = np.diag(correlations(final, feats[j][:, filters]))
        match[-1] = filters     # the last checkpoint is the filter itself
        tops, scores, means = [], [], []
        for j, p in enumerate(passes):
            e = p.evidence.layers[layer.path]
            unit = np.maximum(match[j], 0)
            tops.append(e.top.index[:, unit].T)           # (nf, K)
            scores.append(e.top.scores[:, unit].T)
            means.append(e.class_means()[:, unit].T)      # (nf, classes)
        out = {"checkpoint_cka": cka_matrix(feats), "match": match, "r": r, "same_r": same,
               "top_index": np.stack(tops), "top_scores": np.stack(scores).astype(np.float64),
               "class_means": np.stack(means), "meta": {"images": len(common)}}
        if ctx.spec.feature_vis.enabled:
            out |= self._synthesize(ctx, layer, passes[:-1], match[:-1])
        return out

    def _synthesize(self, ctx, layer, passes, match: np.ndarray) -> dict:
        """Each earlier checkpoint's matched units, synthesized in that checkpoint's model."""
        size = image_size(ctx, layer)
        param = Parameterization(ctx.model.channels, ctx.model.mean, ctx.model.std, size=size, fourier=True)
        optimizer = dataclasses.replace(optimizer_for(ctx.spec.feature_vis, size, "channel", ctx.spec.seed,
                                                      ctx.device), steps=earlier_steps(ctx))
        units = [sorted(set(int(u) for u in row if u >= 0)) for row in match]
        out = {}
        with tqdm(total=sum(map(len, units)) * optimizer.steps, unit="img·step", leave=False,
                  desc=f"earlier checkpoints' images {layer.name}",
                  disable=not (ctx.progress and ctx.group.is_main)) as bar:
            for j, (p, mine) in enumerate(zip(passes, units)):
                if not mine:
                    continue
                res = synthesize(p.model(ctx), Objective(layer.path, mine, "channel"), param, RandomAffine(),
                                 optimizer, device=ctx.device, progress=bar.update)
                out |= {f"synth{j}_units": np.asarray(mine, np.int64), f"synth{j}_images": res.images,
                        f"synth{j}_activation": res.activation.astype(np.float64)}
        return out

    def report(self, ctx, artifacts, out):
        names = [name for name, _ in identities(ctx)]
        for path, art in artifacts.items():
            layer = ctx.layer(path)
            cka = art["checkpoint_cka"]
            k = len(names)
            earlier = art["match"][:-1]
            drifted = ((earlier >= 0) & (earlier != np.asarray(layer.filters)[None, :])).any(0)
            out.layer(path, {"checkpoints": names, "images": art["meta"]["images"],
                             "cka": [[rounded(v, 4) for v in row] for row in cka],
                             "consecutive": [rounded(cka[i, i + 1], 4) for i in range(k - 1)],
                             "to_final": [rounded(cka[i, -1], 4) for i in range(k)],
                             "drifted": int(drifted.sum())})
            for n, f in enumerate(layer.filters):
                out.filter(path, f, {"strip": [self._entry(ctx, out, layer, art, names, j, n, f) for j in range(k)]})

    def _entry(self, ctx, out, layer, art, names, j: int, n: int, f: int) -> dict:
        unit = int(art["match"][j, n])
        last = j == len(names) - 1
        entry = {"checkpoint": names[j], "unit": unit if unit >= 0 else None,
                 "r": rounded(1.0 if last else art["r"][j, n], 4), "same_index_r": rounded(art["same_r"][j, n], 4),
                 "drifted": unit >= 0 and unit != f, "top_images": [], "top_classes": [],
                 "image": None, "activation": None, "steps": None}
        if unit < 0:
            return entry
        entry["top_images"] = [{"dataset_index": int(i), "image": out.image_ref(int(i))["image"],
                                "score": rounded(float(s), 4)}
                               for i, s in zip(art["top_index"][j, n], art["top_scores"][j, n]) if i >= 0]
        means = art["class_means"][j, n]
        order = [c for c in np.argsort(-np.nan_to_num(means, nan=-np.inf), kind="stable") if np.isfinite(means[c])]
        entry["top_classes"] = [{"label": int(c), "class": class_name(ctx.dataset.classes, int(c), str(c)),
                                 "mean": rounded(means[c], 4)} for c in order[:TOP_CLASSES]]
        if last:
            vis = out.filter_data(layer.path, f).get("feature_vis")
            if vis:
                entry |= {"image": vis["image"], "activation": vis["activation"], "steps": vis["steps"]}
        elif f"synth{j}_units" in art:
            row = int(np.searchsorted(art[f"synth{j}_units"], unit))
            pixels = art[f"synth{j}_images"][row]
            entry |= {"image": out.image(f"layers/{layer.slug}/img/evolution_{j}_u{unit}.png", lambda: pixels),
                      "activation": rounded(float(art[f"synth{j}_activation"][row]), 4),
                      "steps": earlier_steps(ctx)}
        return entry
