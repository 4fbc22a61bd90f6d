"""Concepts: per spec layer, a non-negative factorization of its activations over image patches (CRAFT, Fel et al.
2023, "CRAFT: Concept Recursive Activation FacTorization for Explainability", CVPR), each concept shown by its
top patches, a synthesized image of its direction, its label and its importance for each class.

A layer's (C, h, w) maps of `concepts.images` images (a seeded subset of those the pass saw) give one row per
position: A (rows, C) ≈ W (rows, k) H (k, C), by scikit-learn's NMF. H_k is concept k's direction in channel
space, W its coefficient at each patch. Where there are more positions than ROW_LIMIT, each image contributes a
seeded sample of its positions. A must be non-negative: a post-ReLU layer is; elsewhere the negative values are
clipped to 0 and their share of the activations' absolute mass is reported (`clipped_share`).

- Top patches: the rows with the largest W_k, one per image, cut at the position's receptive field.
- Image: `feature_vis`' loop maximizing the mean over positions of <H_k / |H_k|, activation> (objective
  "direction"), Fourier parameterization, `feature_vis.steps`; none when feature_vis is turned off.
- Label: the class (expression) whose images the concept's presence (its mean coefficient over an image's
  positions, W solved for every position with H fixed) separates best, as units are labelled (unit_labels).
- Importance for class c: the mean drop of the class-c logit on the class-c images when the concept's part
  W_k H_k is removed from the layer's output (never more than the positive activation present) and the rest
  of the model runs: an ablation, as CRAFT's C-Deletion removes concepts; CRAFT's Sobol indices, which need
  thousands of masked forwards per image, are left out for cost. k + 1 forwards per image.
"""

import numpy as np
import torch
from pydantic import BaseModel, Field
from sklearn.decomposition import NMF
from tqdm import tqdm

from ..analysis import Analysis
from ..hooks import find_module, removing, stopping_at
from ..report import class_name, rounded
from ..render import images as im
from ..timing import Work
from .feature_vis import _cost as synthesis_cost, image_size, optimizer_for
from .featvis import Objective, Parameterization, RandomAffine, synthesize
from .featvis.objectives import DIRECTION
from .unit_labels import UnitLabels, label_scores, label_settings, layer_targets

ROW_LIMIT = 40_000      # positions factorized per layer: NMF's time and the cached W grow with them
NMF_ITER = 400          # scikit-learn's coordinate descent stops earlier at its tolerance (1e-4)
BATCH = 32
TOP_CHANNELS = 5        # channels listed per concept (its direction's largest weights)


# ---- the factorization, from arrays (no report, no context) ----

def factorize(a: np.ndarray, k: int, seed: int) -> tuple[NMF, np.ndarray, np.ndarray]:
    """A (rows, C) ≥ 0 → (the fitted NMF, W (rows, k), H (k, C)), concepts ordered by their share of the
    reconstruction (largest first). W is solved with H fixed (`NMF.transform`), as for any other rows."""
    nmf = NMF(n_components=k, init="nndsvda", solver="cd", max_iter=NMF_ITER, random_state=seed)
    nmf.fit(a)
    w = nmf.transform(a)
    order = np.argsort(-shares(w, nmf.components_), kind="stable")
    nmf.components_ = nmf.components_[order]      # transform() then gives W in this order too
    return nmf, w[:, order], nmf.components_


def shares(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """(k,) each concept's share of the reconstruction's total: sum(W_k ⊗ H_k) / sum(W H)."""
    mass = w.sum(0) * h.sum(1)
    return mass / mass.sum() if mass.sum() > 0 else mass


def relative_error(a: np.ndarray, w: np.ndarray, h: np.ndarray) -> float:
    """‖A − W H‖_F / ‖A‖_F."""
    return float(np.linalg.norm(a - w @ h) / np.linalg.norm(a))


def top_rows(w: np.ndarray, image_of_row: np.ndarray, n: int) -> np.ndarray:
    """(k, n) for each concept the rows with the largest coefficient, at most one per image (its best), −1 where
    fewer images have the concept at all."""
    out = np.full((w.shape[1], n), -1, np.int64)
    for j in range(w.shape[1]):
        seen: set[int] = set()
        picked = []
        for r in np.argsort(-w[:, j], kind="stable"):
            if w[r, j] <= 0 or len(picked) == n:
                break
            if int(image_of_row[r]) not in seen:
                seen.add(int(image_of_row[r]))
                picked.append(r)
        out[j, :len(picked)] = picked
    return out


def removed(out: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The layer's output (B, C, ...) without one concept: minus W_k H_k (w (B, positions), h (C,)), never more
    than the positive activation present, so a post-ReLU output stays non-negative."""
    part = (w[:, None, :] * h[None, :, None]).reshape(out.shape)
    return out - torch.minimum(part, out.clamp(min=0))


def rows_of(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) or (B, C) → (B, positions, C)."""
    return maps.reshape(maps.shape[0], maps.shape[1], -1).transpose(1, 2)


# ---- the analysis ----

class TopChannel(BaseModel):
    channel: int
    weight: float                # in the unit-length direction


class ConceptPatch(BaseModel):
    dataset_index: int
    location: list[int] = Field(min_length=2, max_length=2, description="[y, x] in the layer's output")
    box: list[int] = Field(description="the receptive field cut, as a filter's top patches (x0, y0, x1, y1)")
    coefficient: float           # W at this position
    patch: str


class ClassImportance(BaseModel):
    label: int
    class_: str = Field(alias="class")
    drop: float | None           # mean drop of the class logit on the class's images with the concept removed
    images: int                  # the class's images among those factorized


class ConceptLabel(BaseModel):
    text: str                    # the formula over classes ("Sandal OR Sneaker")
    auc: float | None            # how well the concept's presence per image separates the formula's images
    p_value: float               # corrected for the search, as for unit labels
    significant: bool            # p_value ≤ unit_labels' alpha; otherwise the concept has no label
    positives: int               # images where the formula holds


class Concept(BaseModel):
    index: int
    share: float                 # of the reconstruction's total, sum(W_k ⊗ H_k) / sum(W H)
    direction: list[float]       # H_k / |H_k|, one weight per channel
    top_channels: list[TopChannel]
    patches: list[ConceptPatch]
    image: str | None            # synthesized for the direction (None: feature_vis is turned off)
    activation: float | None     # the objective on it: mean over positions of <direction, activation>
    natural: float | None        # the same objective's largest value on the factorized images
    label: ConceptLabel          # as a unit's label (unit_labels), from the concept's presence per image
    importance: list[ClassImportance]


class LayerConcepts(BaseModel):
    page: str
    k: int
    images: int                  # images factorized
    rows: int                    # positions factorized (all, or a seeded sample per image beyond ROW_LIMIT)
    positions: int               # positions of one image's map
    reconstruction_error: float  # ‖A − W H‖_F / ‖A‖_F
    clipped_share: float         # share of the activations' absolute mass below 0, clipped before factorizing
    concepts: list[Concept]


class ConceptsLink(BaseModel):
    layer: str
    page: str
    k: int
    reconstruction_error: float


class Concepts(Analysis):
    """Per spec layer: CRAFT-style NMF concepts with patches, images, labels and class importance."""
    name = "concepts"
    spec_key = "concepts"
    version = 1
    per_layer = True
    templates = {"layer": "analyses/concepts_layer.html", "overview": "analyses/concepts_overview.html"}
    LayerResult = LayerConcepts
    SiteResult = list[ConceptsLink]

    def enabled(self, ctx, layer=None) -> bool:
        return ctx.spec.concepts.enabled and (layer is None or not layer.expanded)   # the spec's layers only

    def applies(self, ctx, layer=None):
        if layer is None:
            return None
        if ctx.spec.concepts.k >= layer.channels:
            return (f"concepts.k ({ctx.spec.concepts.k}) is not below the layer's {layer.channels} channels: "
                    f"the factorization would reduce nothing")
        return None

    def key_parts(self, ctx):
        s = ctx.spec.feature_vis     # the synthesized images follow feature_vis' loop settings
        labels = ctx.spec.unit_labels.model_dump(mode="json", exclude={"enabled"})   # and the labels its search
        return (s.enabled, s.steps, s.lr, s.settle, s.progressive, s.size, s.precision, labels,
                *UnitLabels().key_parts(ctx))

    def _images(self, ctx) -> np.ndarray:
        """A seeded subset of the images the pass read (sorted dataset indices)."""
        seen = np.asarray(ctx.evidence.pred_index, np.int64)
        n = min(ctx.spec.concepts.images, len(seen))
        return np.sort(np.random.default_rng(ctx.spec.seed).choice(seen, n, replace=False))

    def cost(self, ctx, layer):
        n, k = min(ctx.spec.concepts.images, len(ctx.indices)), ctx.spec.concepts.k
        works = (Work(forward=n, batch=BATCH, loads=n, layer=layer.path),
                 Work(forward=n * (k + 1), batch=BATCH, loads=n))
        return works + ((synthesis_cost(ctx, layer, "channel", k),) if ctx.spec.feature_vis.enabled else ())

    def compute(self, ctx, layer):
        s, seed = ctx.spec.concepts, ctx.spec.seed
        images = self._images(ctx)
        model = ctx.model.module
        positions = int(np.prod(layer.output_shape[1:])) if len(layer.output_shape) == 3 else 1
        per_image = max(1, ROW_LIMIT // len(images))
        bar = tqdm(total=len(images) * (s.k + 2), unit="img", desc=f"concepts {layer.name}", leave=False,
                   disable=not (ctx.progress and ctx.group.is_main))
        # 1. the rows: every position, or a seeded sample of each image's
        rows, where, negative, total = [], [], 0.0, 0.0
        with bar:
            with stopping_at(model, layer.path) as run, torch.no_grad():
                for b in range(0, len(images), BATCH):
                    chunk = images[b:b + BATCH]
                    maps = rows_of(run(ctx.batch(chunk)).float()).cpu().numpy().astype(np.float64)   # (B, P, C)
                    negative += float(-maps.clip(max=0).sum())
                    total += float(np.abs(maps).sum())
                    for i, m in zip(chunk, maps):
                        keep = np.arange(positions) if positions <= per_image else \
                            np.sort(np.random.default_rng([seed, int(i)]).choice(positions, per_image, replace=False))
                        rows.append(m[keep].clip(min=0))
                        where.append(np.stack([np.full(len(keep), i), keep], 1))
                    bar.update(len(chunk))
            a, where = np.concatenate(rows), np.concatenate(where)
            if not a.any():
                raise ValueError("the layer's activations are 0 (or negative) at every position of these images")
            nmf, w, h = factorize(a, s.k, seed)
            # 2. per image: the concepts' presence (W at every position), their removal's effect on the logits
            presence, drop, natural = self._effects(ctx, layer, images, nmf, h, bar)
        out = {"images": images, "h": h, "w": w.astype(np.float32), "rows": where,
               "top": top_rows(w, where[:, 0], s.patches), "error": np.float64(relative_error(a, w, h)),
               "clipped_share": np.float64(negative / total if total else 0.0), "presence": presence,
               "drop": drop, "natural": natural,
               "meta": {"positions": positions, "labels": self._labels(ctx, images, presence)}}
        if ctx.spec.feature_vis.enabled:
            out |= self._synthesize(ctx, layer, h)
        return out

    def _effects(self, ctx, layer, images, nmf: NMF, h: np.ndarray, bar) -> tuple[np.ndarray, ...]:
        """(presence (N, k) the mean coefficient over each image's positions, drop (N, k) of the true class's
        logit with each concept removed, natural (N, k) the direction objective on each image)."""
        k = len(h)
        labels = ctx.dataset.labels
        direction = torch.from_numpy(h / np.linalg.norm(h, axis=1, keepdims=True)).float()
        presence, drop, natural = np.zeros((len(images), k)), np.zeros((len(images), k)), np.zeros((len(images), k))
        state: dict = {}

        def hook(_m, _i, output):
            if state.get("w") is None:                 # the plain run: keep the output
                state["out"] = output.detach().float()
                return None
            j = state["j"]
            return removed(output, state["w"][:, :, j].to(output.device, output.dtype),
                           torch.from_numpy(h[j]).to(output.device, output.dtype))

        with removing(find_module(ctx.model.module, layer.path).register_forward_hook(hook)), torch.no_grad():
            for b in range(0, len(images), BATCH):
                chunk, sl = images[b:b + BATCH], slice(b, b + BATCH)
                x = ctx.batch(chunk)
                state["w"] = None
                target = torch.from_numpy(labels[chunk].astype(np.int64))[:, None]
                plain = ctx.model.module(x).float().cpu().gather(1, target)[:, 0]
                a = rows_of(state["out"]).cpu()                                       # (B, P, C)
                natural[sl] = (a @ direction.T).mean(1).numpy()
                flat = a.clamp(min=0).reshape(-1, a.shape[2]).double().numpy()
                w = torch.from_numpy(nmf.transform(flat)).float().reshape(len(chunk), a.shape[1], k)   # (B, P, k)
                presence[sl] = w.mean(1).numpy()
                state["w"] = w
                bar.update(len(chunk))
                for j in range(k):
                    state["j"] = j
                    drop[sl, j] = (plain - ctx.model.module(x).float().cpu().gather(1, target)[:, 0]).numpy()
                    bar.update(len(chunk))
        return presence, drop, natural

    def _labels(self, ctx, images: np.ndarray, presence: np.ndarray) -> list[dict]:
        """Each concept's label, as a unit's: the formula over the classes (and `dataset.concepts`) that its
        presence per image separates best, with `unit_labels`' settings."""
        targets, _ = layer_targets(ctx, images)
        settings = label_settings(ctx)
        return [{"text": got.text(targets.names), "auc": got.auc if np.isfinite(got.auc) else None,
                 "p_value": got.p_value, "significant": got.significant, "positives": got.positives}
                for got in label_scores(presence, targets, settings)]

    def _synthesize(self, ctx, layer, h: np.ndarray) -> dict:
        size = image_size(ctx, layer)
        param = Parameterization(ctx.model.channels, ctx.model.mean, ctx.model.std, size=size, fourier=True)
        optimizer = optimizer_for(ctx.spec.feature_vis, size, "channel", ctx.spec.seed, ctx.device)
        with tqdm(total=len(h) * optimizer.steps, unit="img·step", desc=f"concept images {layer.name}", leave=False,
                  disable=not (ctx.progress and ctx.group.is_main)) as bar:
            res = synthesize(ctx.model.module, Objective(layer.path, range(len(h)), DIRECTION, directions=h.tolist()),
                             param, RandomAffine(), optimizer, device=ctx.device, progress=bar.update)
        return {"synth_images": res.images, "synth_activation": res.activation.astype(np.float64)}

    def report(self, ctx, artifacts, out):
        links = []
        for path, art in artifacts.items():
            layer = ctx.layer(path)
            rel = out.page(f"concepts/{layer.slug}.html", "analyses/concepts_page.html", f"Concepts: {layer.name}")
            part = self._layer(ctx, layer, art, out) | {"page": rel}
            out.layer(path, part)
            links.append({"layer": layer.name, "page": rel, "k": part["k"],
                          "reconstruction_error": part["reconstruction_error"]})
        out.site(links)

    def _layer(self, ctx, layer, art, out) -> dict:
        h, w, where = art["h"], art["w"], art["rows"]
        unit = h / np.linalg.norm(h, axis=1, keepdims=True)
        share = shares(w.astype(np.float64), h)
        width = layer.output_shape[2] if len(layer.output_shape) == 3 else 1
        rf = ctx.receptive_fields.get(layer.path)
        labels = ctx.dataset.labels[art["images"]]
        base = f"layers/{layer.slug}/img"
        concepts = []
        for j in range(len(h)):
            patches = []
            for r in art["top"][j][art["top"][j] >= 0]:
                i, pos = int(where[r, 0]), int(where[r, 1])
                y, x = divmod(pos, width)
                box = [int(v) for v in rf.box(y, x)] if rf is not None and len(layer.output_shape) == 3 else \
                    [0, 0, *reversed(ctx.model.input_size)]      # no spatial map: the whole image
                patches.append({"dataset_index": i, "location": [y, x], "box": box,
                                "coefficient": rounded(float(w[r, j]), 4),
                                "patch": out.image(f"{base}/concept{j}_patch{len(patches)}.png",
                                                   lambda i=i, box=box: im.crop(ctx.dataset.image(i), box))})
            order = np.argsort(-np.abs(unit[j]), kind="stable")[:TOP_CHANNELS]
            label = art["meta"]["labels"][j]
            label = label | {"auc": rounded(label["auc"], 4), "p_value": rounded(label["p_value"], 4)}
            image = activation = None
            if "synth_images" in art:
                pixels = art["synth_images"][j]
                image = out.image(f"{base}/concept{j}_vis.png", lambda pixels=pixels: pixels)
                activation = rounded(float(art["synth_activation"][j]), 4)
            concepts.append({
                "index": j, "share": rounded(float(share[j]), 4),
                "direction": [rounded(float(v), 4) for v in unit[j]],
                "top_channels": [{"channel": int(c), "weight": rounded(float(unit[j, c]), 4)} for c in order],
                "patches": patches, "image": image, "activation": activation,
                "natural": rounded(float(art["natural"][:, j].max()), 4), "label": label,
                "importance": self._importance(ctx, art["drop"][:, j], labels)})
        return {"k": len(h), "images": len(art["images"]), "rows": len(where), "positions": art["meta"]["positions"],
                "reconstruction_error": rounded(float(art["error"]), 4),
                "clipped_share": rounded(float(art["clipped_share"]), 4), "concepts": concepts}

    def _importance(self, ctx, drop: np.ndarray, labels: np.ndarray) -> list[dict]:
        out = []
        for c in range(len(ctx.model.classes)):
            mine = drop[labels == c]
            out.append({"label": c, "class": class_name(ctx.dataset.classes, c, str(c)), "images": len(mine),
                        "drop": rounded(float(mine.mean()), 4) if len(mine) else None})
        return out
