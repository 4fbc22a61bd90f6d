"""The representation explorer: a layer's pooled features → t-SNE / PCA points (with their trustworthiness),
each point's nearest neighbours, and the nearest-neighbour panel (feature space vs pixel space);
drawn as an embedded Bokeh plot with thumbnails. Per spec layer (`layers[].embedding`) and, on the
overview, for the features before the classifier.

With `model.checkpoints`, every explorer also maps the same images (the same dataset indices) at each
earlier checkpoint, and a slider switches the plot between them in the browser. The maps are aligned so
that a point's motion means a change of the features, not of the map: the last checkpoint's map is the
one built without checkpoints; going back one checkpoint at a time, each t-SNE starts from the next
later checkpoint's map as it is (its scale kept) with a mild early exaggeration (4, not 12: enough to
let clusters regroup), and each map, PCA or t-SNE, is then turned onto the later one by a similarity
Procrustes fit (rotation or reflection, one scale, translation), which removes PCA's arbitrary signs and
t-SNE's drift in orientation while leaving the shape alone.

Measured on the demo (2000 test images, penultimate features, checkpoints final → epoch 1 → 0.1 → 0
chained; motion = squared displacement from the later map over the later map's spread; trustworthiness
k = 10): this initialization moves the points 0.056, 0.17, 0.34 with trustworthiness 0.994, 0.995, 0.994;
t-SNEs from PCA turned onto the later map move them 0.35, 0.32, 0.69 (0.994, 0.995, 0.995); the later map
rescaled to std 1e-4 with exaggeration 12 (Kobak & Berens' alignment, Nat. Commun. 2019) 0.24, 0.27, 0.64;
no exaggeration 0.051, 0.14, 0.30 but trustworthiness down to 0.991. Each t-SNE costs as much as the
last checkpoint's.
"""

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel
from torch import nn

from .. import checkpoints
from ..analysis import Analysis
from ..errors import ReportgenError
from ..record import PENULTIMATE
from ..render import images as im
from ..render import plots
from ..report import rounded
from ..timing import Work
from . import embedding as emb

THUMB_MAX = 64          # thumbnails with a longer side than this are downscaled for the sprite sheet
PIXEL_SPACE = 32        # images are compared in pixel space at most this long (keeps 5k×224 px tractable)
SPRITE = "img/sprite-{}.webp"   # "{}": the sheet number (plots.sprite_layout)
PANEL_NEIGHBOURS = 6    # neighbours shown when a point is clicked
METHODS = {"tsne": ["tsne"], "pca": ["pca"], "both": ["tsne", "pca"], "none": []}


def fit_within(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(h, w) of an image of `size` (H, W) scaled down, aspect kept, so that its longer side is at most
    `longest` (each side rounded, at least 1 px); unchanged if it already fits."""
    h, w = size
    if max(h, w) <= longest:
        return h, w
    scale = longest / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resized(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 → (h, w, C), bilinear; the same array if it is that size already."""
    if img.shape[:2] == size:
        return img
    pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    return im.to_hwc(np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR)))


def thumbnails(ctx, indices) -> np.ndarray:
    """(N, h, w, C) uint8 thumbnails of dataset images: the model's input (H, W) scaled down, aspect kept, to
    at most THUMB_MAX px on the longer side (`fit_within`)."""
    size = fit_within(ctx.model.input_size, THUMB_MAX)
    return np.stack([_resized(im.to_hwc(ctx.dataset.image(i)), size) for i in np.asarray(indices).tolist()])


def explore(ctx, key: str, methods: list[str]) -> dict:
    """Points, trustworthiness and neighbours of the pooled features of evidence layer `key`.

    Memory grows with the points only by their features, points and neighbour lists: images are read a
    chunk at a time (`pixel_neighbours`), and one exact k-NN graph serves t-SNE and the neighbour panel.
    """
    e = ctx.evidence.layers[key]
    idx, feats = e.pooled_array()
    cap = ctx.spec.embedding.max_points
    if len(idx) > cap:   # a seeded subset, the same for every layer (they share the sprite sheet)
        keep = np.sort(np.random.default_rng([ctx.spec.seed, 2]).permutation(len(idx))[:cap])
        idx, feats = idx[keep], feats[keep]
    out = {"index": idx, "meta": {"methods": []}}
    if len(idx) < 3:
        return out
    graph = emb.knn_graph(emb.neighbour_space(feats, ctx.spec.seed), min(emb.TSNE_NEIGHBOURS, len(idx) - 1))
    out["neighbours"] = graph[:, :PANEL_NEIGHBOURS]
    for method in methods:
        if method == "tsne" and len(idx) < 30:
            continue   # t-SNE is meaningless on a handful of points
        points = emb.embed(feats, method, ctx.spec.seed, graph=graph)
        out[f"points_{method}"] = points
        out["meta"]["methods"].append({"method": method,
                                       "trust": emb.trustworthiness(feats, points, k=10, seed=ctx.spec.seed)})
    labels = ctx.dataset.labels[idx]
    queries = emb.choose_queries(labels, n=min(8, len(idx)), seed=ctx.spec.seed)
    k = min(8, len(idx) - 1)
    out.update(queries=queries, by_feature=emb.nearest_neighbours(feats, queries, k=k),
               by_pixel=pixel_neighbours(ctx, idx, queries, k))
    if _checkpoint_names(ctx) and out["meta"]["methods"]:
        out.update(checkpoint_frames(ctx, key, idx, {m["method"]: (out[f"points_{m['method']}"], m["trust"])
                                                     for m in out["meta"]["methods"]}))
        out["meta"]["checkpoints"] = _checkpoint_names(ctx)
    return out


def checkpoint_frames(ctx, key: str, idx: np.ndarray, final: dict[str, tuple[np.ndarray, float]]) -> dict:
    """The images `idx` mapped at every checkpoint, oldest first, the last being `final` ({method: ((N, 2)
    points, trustworthiness)}): `frames_{method}` (K, N, 2) float32 points, `frame_trust_{method}` (K,)
    trustworthiness, `frame_preds` (K, N) each checkpoint's predicted class. Each earlier map is aligned to
    the next later one (module docstring)."""
    passes = checkpoints.checkpoint_passes(ctx)
    frames = {m: [np.asarray(p, np.float32)] for m, (p, _) in final.items()}
    trust = {m: [t] for m, (_, t) in final.items()}
    preds = [_predictions(passes[-1], idx)]
    for cp in reversed(passes[:-1]):
        feats = _features(cp, key, idx)
        for m in final:
            points = embed_like(feats, m, ctx.spec.seed, frames[m][0])
            frames[m].insert(0, points)
            trust[m].insert(0, emb.trustworthiness(feats, points, k=10, seed=ctx.spec.seed))
        preds.insert(0, _predictions(cp, idx))
    out = {f"frames_{m}": np.stack(f) for m, f in frames.items()}
    out.update({f"frame_trust_{m}": np.array(t, np.float64) for m, t in trust.items()})
    out["frame_preds"] = np.stack(preds).astype(np.int64)
    return out


def _features(cp, key: str, idx: np.ndarray) -> np.ndarray:
    """(N, C) pooled features of dataset images `idx` in checkpoint `cp`'s dataset pass."""
    have, feats = cp.evidence.layers[key].pooled_array()
    rows = np.searchsorted(have, idx)   # `have` is sorted
    if len(have) == 0 or (rows >= len(have)).any() or (have[np.minimum(rows, len(have) - 1)] != idx).any():
        raise ReportgenError(f"checkpoint {cp.name!r}: its dataset pass pooled other images than the last one's")
    return feats[rows]


def _predictions(cp, idx: np.ndarray) -> np.ndarray:
    """(N,) checkpoint `cp`'s predicted class of dataset images `idx`."""
    by_index = dict(zip(cp.evidence.pred_index.tolist(), cp.evidence.preds.tolist()))
    return np.array([by_index[int(i)] for i in idx], np.int64)


def embed_like(features: np.ndarray, method: str, seed: int, later: np.ndarray) -> np.ndarray:
    """(N, 2) float32 map of `features` aligned to `later` (N, 2), the same images' map at a later checkpoint:
    t-SNE initialized from `later`, or PCA, then fitted onto `later` (`procrustes`)."""
    if method == "pca":
        return procrustes(emb.embed(features, "pca", seed), later)
    x = emb.neighbour_space(features, seed)
    graph = emb.knn_graph(x, min(emb.TSNE_NEIGHBOURS, len(x) - 1))
    # the later map at its own scale, not rescaled small: the points keep their places (module docstring)
    return procrustes(tsne_from(x, graph, np.array(later, np.float64), seed), later)


ALIGNED_EXAGGERATION = 4   # early exaggeration of a t-SNE started from a later checkpoint's map (module docstring)


def tsne_from(x: np.ndarray, graph: np.ndarray, init: np.ndarray, seed: int) -> np.ndarray:
    """`embedding.embed`'s t-SNE (the same affinities, iterations and one thread) started from `init` (N, 2)
    instead of the PCA of `x`, with early exaggeration ALIGNED_EXAGGERATION."""
    from openTSNE import TSNEEmbedding, affinity
    from openTSNE.nearest_neighbors import PrecomputedNeighbors
    from threadpoolctl import threadpool_limits

    settings = emb.tsne_settings(x.shape[0])
    with threadpool_limits(1):
        aff = affinity.Uniform(knn_index=PrecomputedNeighbors(graph, np.zeros(graph.shape)), n_jobs=1)
        e = TSNEEmbedding(init, aff, negative_gradient_method=settings.gradient, n_jobs=1, random_state=seed)
        e = e.optimize(settings.exaggeration_iterations, exaggeration=ALIGNED_EXAGGERATION, momentum=0.5)
        e = e.optimize(settings.iterations, momentum=0.8)
    return np.asarray(e, dtype=np.float32)


def procrustes(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`points` (N, 2) moved onto `reference` (N, 2) by the similarity transform (rotation or reflection, one
    scale, translation) that minimizes the squared distances between corresponding rows; float32."""
    a = np.asarray(points, np.float64)
    b = np.asarray(reference, np.float64)
    a0, b0 = a - a.mean(0), b - b.mean(0)
    u, s, vt = np.linalg.svd(a0.T @ b0)
    norm = (a0 ** 2).sum()
    scale = s.sum() / norm if norm > 0 else 0.0
    return (a0 @ (u @ vt) * scale + b.mean(0)).astype(np.float32)


def pixel_neighbours(ctx, idx: np.ndarray, queries: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """(Q, k) positions in `idx` of the k nearest images to each query by raw pixels (thumbnails at most
    PIXEL_SPACE px), as `embedding.nearest_neighbours`; the images are read `chunk` at a time."""
    def pixels(positions) -> np.ndarray:   # (n, h*w*C) float64
        thumbs = thumbnails(ctx, idx[positions])
        small = fit_within(thumbs.shape[1:3], PIXEL_SPACE)
        return np.stack([_resized(t, small) for t in thumbs]).reshape(len(thumbs), -1).astype(np.float64)
    q = pixels(queries)
    dist = np.concatenate([((pixels(np.arange(s, min(s + chunk, len(idx))))[None] - q[:, None]) ** 2).sum(-1)
                           for s in range(0, len(idx), chunk)], axis=1)   # (Q, N)
    return emb.nearest_by_distance(dist, queries, k)


class EmbeddingFrame(BaseModel):
    """The same images mapped at one checkpoint of `model.checkpoints` (aligned to the later ones)."""
    name: str                    # the checkpoint's name in the spec
    points: list[list[float]]    # [x, y, pred] per point, in the order of Embedding.points
    trustworthiness: float | None


class Embedding(BaseModel):
    method: str                  # "tsne" or "pca"
    points: list[list[float]]    # [x, y, dataset_index, label, pred] per point
    trustworthiness: float | None
    plot: str                    # the interactive plot drawn for the page
    checkpoints: list[EmbeddingFrame] | None = None   # oldest first, the last one's points being `points`


class NeighbourRow(BaseModel):
    query: dict
    feature: list[dict]          # nearest by the layer's pooled features
    pixel: list[dict]            # nearest by raw pixels (at most 32 px)
    feature_same: float | None   # fraction of the query's class among them
    pixel_same: float | None


class Explorer(BaseModel):
    count: int
    same_classes: bool           # the model's outputs are the dataset's classes (misclassified marked)
    explorers: list[Embedding]
    neighbours: list[NeighbourRow]


def lay_out(ctx, art: dict, out, slug: str) -> dict | None:
    idx = art["index"]
    if len(idx) < 3:
        return None
    labels = ctx.dataset.labels[idx]
    preds = np.array([ctx.predictions.get(int(i), -1) for i in idx])
    same = ctx.model.classes == ctx.dataset.classes
    sprite = _sprite(ctx, out, idx)
    explorers = []
    for m in art["meta"]["methods"]:
        method, points = m["method"], art[f"points_{m['method']}"]
        record = emb.embedding_record(method, points, idx, labels, preds, m["trust"])
        plot_id = f"{slug}-{method}"
        frames = _frames(art, method, labels, same)
        out.widget(plot_id, lambda root, p=points, pid=plot_id, f=frames: plots.explorer_components(
            p, labels, preds if same else labels, idx, ctx.dataset.classes, sprite=sprite,
            sprite_url=root + SPRITE, neighbours=art["neighbours"], panel_id=f"panel-{pid}", id_prefix=f"rg-{pid}",
            frames=f))
        if frames is not None:
            record["checkpoints"] = [
                {"name": name, "trustworthiness": rounded(float(t), 4),
                 "points": [[round(float(x), 4), round(float(y), 4), int(c)] for (x, y), c in zip(pts, pr)]}
                for name, pts, pr, t in zip(frames.names, frames.points, art["frame_preds"],
                                            art[f"frame_trust_{method}"])]
        explorers.append(record | {"trustworthiness": rounded(m["trust"], 4), "plot": plot_id})
    same_f = emb.same_class_fraction(art["by_feature"], labels, art["queries"])
    same_p = emb.same_class_fraction(art["by_pixel"], labels, art["queries"])
    ref = out.image_ref
    rows = [{"query": ref(int(idx[q])), "feature": [ref(int(idx[j])) for j in nf],
             "pixel": [ref(int(idx[j])) for j in npx], "feature_same": rounded(ff, 4), "pixel_same": rounded(fp, 4)}
            for q, nf, npx, ff, fp in zip(art["queries"], art["by_feature"], art["by_pixel"], same_f, same_p)]
    return {"count": int(len(idx)), "same_classes": same, "explorers": explorers, "neighbours": rows}


def _frames(art: dict, method: str, labels: np.ndarray, same: bool) -> plots.Frames | None:
    """The plot's checkpoints (None without): their names, maps and predictions (their true labels where the
    model's outputs are not the dataset's classes, as for the last one's plot)."""
    if f"frames_{method}" not in art:
        return None
    points = art[f"frames_{method}"]
    preds = art["frame_preds"] if same else np.broadcast_to(labels, points.shape[:2])
    return plots.Frames(list(art["meta"]["checkpoints"]), points, preds)


def _sprite(ctx, out, idx: np.ndarray) -> plots.SpriteLayout:
    """The sprite sheets of the pooled subset's thumbnails, shared by every explorer of the site; each sheet
    reads only its own images when it is written."""
    layout = plots.sprite_layout(len(idx), fit_within(ctx.model.input_size, THUMB_MAX), Path(SPRITE).name)
    for sheet in range(layout.sheets):
        out.file(SPRITE.format(sheet), lambda s=sheet: _sheet_bytes(ctx, idx[layout.tiles(s)], layout.columns))
    return layout


def _cost(ctx, methods: list[str]) -> tuple[Work, ...]:
    """t-SNE of the pooled features (at most `embedding.max_points`) and their thumbnails; one more t-SNE
    per earlier checkpoint."""
    n = min(ctx.spec.record.pooled_limit, len(ctx.indices), ctx.spec.embedding.max_points)
    tsne = n if "tsne" in methods else 0
    return (Work(tsne_points=tsne, loads=n),) + (Work(tsne_points=tsne),) * (len(_checkpoint_names(ctx)[1:]))


def _checkpoint_names(ctx) -> list[str]:
    """`model.checkpoints`' names, oldest first; [] without."""
    return [e.name for e in ctx.spec.model.checkpoints or []]


def _checkpoint_key(ctx) -> tuple:
    """The checkpoints' names and weights, what the maps of earlier checkpoints depend on; () without
    `model.checkpoints`, so that the key of a build without them is unchanged."""
    return tuple(checkpoints.identities(ctx))


def _sheet_bytes(ctx, idx, columns: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(SPRITE).name.format(0)
        plots.write_sprite_sheet(thumbnails(ctx, idx), path, columns)
        return path.read_bytes()


class LayerExplorer(Analysis):
    """The explorer of each spec layer whose `embedding` asks for one (t-SNE, PCA or both)."""
    name = "explorer"
    spec_key = "embedding"
    version = 4   # 4: maps of earlier checkpoints (model.checkpoints)
    per_layer = True
    templates = {"layer": "analyses/explorer_layer.html"}
    LayerResult = Explorer

    def enabled(self, ctx, layer=None):
        return layer is None or bool(METHODS[layer.embedding])     # layers[].embedding: none asks for none

    def cost(self, ctx, layer):
        return _cost(ctx, METHODS[layer.embedding])

    def key_parts(self, ctx):
        return _checkpoint_key(ctx)

    def compute(self, ctx, layer):
        return explore(ctx, layer.path, METHODS[layer.embedding])

    def report(self, ctx, artifacts, out):
        for path, art in artifacts.items():
            out.layer(path, lay_out(ctx, art, out, ctx.layer(path).slug))


class OverviewExplorer(Analysis):
    """The explorer of the features the classifier reads (the last Linear layer's input), on the overview."""
    name = "overview_explorer"
    spec_key = "embedding"
    version = 4   # 4: maps of earlier checkpoints (model.checkpoints)
    templates = {"overview": "analyses/explorer_overview.html"}
    SiteResult = Explorer

    def applies(self, ctx, layer=None):
        has_linear = any(isinstance(m, nn.Linear) for m in ctx.model.module.modules())
        return None if has_linear else "the model has no final Linear layer whose input features to show"

    def cost(self, ctx, layer=None):
        return _cost(ctx, ["tsne"])

    def key_parts(self, ctx):
        return _checkpoint_key(ctx)

    def compute(self, ctx, layer):
        return explore(ctx, PENULTIMATE, ["tsne"])

    def report(self, ctx, art, out):
        out.site(lay_out(ctx, art, out, "penultimate"))
