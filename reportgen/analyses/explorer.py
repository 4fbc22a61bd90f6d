"""The representation explorer: a layer's pooled features → t-SNE / PCA points (with their trustworthiness),
each point's nearest neighbours, and the nearest-neighbour panel (feature space vs pixel space);
drawn as an embedded Bokeh plot with thumbnails. Per spec layer (`layers[].embedding`) and, on the
overview, for the features before the classifier.
"""

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel
from torch import nn

from ..analysis import Analysis
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
    return out


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


class Embedding(BaseModel):
    method: str                  # "tsne" or "pca"
    points: list[list[float]]    # [x, y, dataset_index, label, pred] per point
    trustworthiness: float | None
    plot: str                    # the interactive plot drawn for the page


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
        out.widget(plot_id, lambda root, p=points, pid=plot_id: plots.explorer_components(
            p, labels, preds if same else labels, idx, ctx.dataset.classes, sprite=sprite,
            sprite_url=root + SPRITE, neighbours=art["neighbours"], panel_id=f"panel-{pid}", id_prefix=f"rg-{pid}"))
        explorers.append(record | {"trustworthiness": rounded(m["trust"], 4), "plot": plot_id})
    same_f = emb.same_class_fraction(art["by_feature"], labels, art["queries"])
    same_p = emb.same_class_fraction(art["by_pixel"], labels, art["queries"])
    ref = out.image_ref
    rows = [{"query": ref(int(idx[q])), "feature": [ref(int(idx[j])) for j in nf],
             "pixel": [ref(int(idx[j])) for j in npx], "feature_same": rounded(ff, 4), "pixel_same": rounded(fp, 4)}
            for q, nf, npx, ff, fp in zip(art["queries"], art["by_feature"], art["by_pixel"], same_f, same_p)]
    return {"count": int(len(idx)), "same_classes": same, "explorers": explorers, "neighbours": rows}


def _sprite(ctx, out, idx: np.ndarray) -> plots.SpriteLayout:
    """The sprite sheets of the pooled subset's thumbnails, shared by every explorer of the site; each sheet
    reads only its own images when it is written."""
    layout = plots.sprite_layout(len(idx), fit_within(ctx.model.input_size, THUMB_MAX), Path(SPRITE).name)
    for sheet in range(layout.sheets):
        out.file(SPRITE.format(sheet), lambda s=sheet: _sheet_bytes(ctx, idx[layout.tiles(s)], layout.columns))
    return layout


def _cost(ctx, methods: list[str]) -> Work:
    """t-SNE of the pooled features (at most `embedding.max_points`) and their thumbnails."""
    n = min(ctx.spec.record.pooled_limit, len(ctx.indices), ctx.spec.embedding.max_points)
    return Work(tsne_points=n if "tsne" in methods else 0, loads=n)


def _sheet_bytes(ctx, idx, columns: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(SPRITE).name.format(0)
        plots.write_sprite_sheet(thumbnails(ctx, idx), path, columns)
        return path.read_bytes()


class LayerExplorer(Analysis):
    """The explorer of each spec layer whose `embedding` asks for one (t-SNE, PCA or both)."""
    name = "explorer"
    spec_key = "embedding"
    version = 3
    per_layer = True
    templates = {"layer": "analyses/explorer_layer.html"}
    LayerResult = Explorer

    def enabled(self, ctx, layer=None):
        return layer is None or bool(METHODS[layer.embedding])     # layers[].embedding: none asks for none

    def cost(self, ctx, layer):
        return _cost(ctx, METHODS[layer.embedding])

    def compute(self, ctx, layer):
        return explore(ctx, layer.path, METHODS[layer.embedding])

    def report(self, ctx, artifacts, out):
        for path, art in artifacts.items():
            out.layer(path, lay_out(ctx, art, out, ctx.layer(path).slug))


class OverviewExplorer(Analysis):
    """The explorer of the features the classifier reads (the last Linear layer's input), on the overview."""
    name = "overview_explorer"
    spec_key = "embedding"
    version = 3
    templates = {"overview": "analyses/explorer_overview.html"}
    SiteResult = Explorer

    def applies(self, ctx, layer=None):
        has_linear = any(isinstance(m, nn.Linear) for m in ctx.model.module.modules())
        return None if has_linear else "the model has no final Linear layer whose input features to show"

    def cost(self, ctx, layer=None):
        return _cost(ctx, ["tsne"])

    def compute(self, ctx, layer):
        return explore(ctx, PENULTIMATE, ["tsne"])

    def report(self, ctx, art, out):
        out.site(lay_out(ctx, art, out, "penultimate"))
