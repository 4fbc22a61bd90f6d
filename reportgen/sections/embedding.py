"""The representation explorer: pooled features of a layer → t-SNE / PCA → an embedded Bokeh plot with
thumbnails, plus the nearest-neighbour panel (feature space vs pixel space) and trustworthiness.
"""

import re

import numpy as np
from bokeh.settings import settings as bokeh_settings
from markupsafe import Markup
from PIL import Image

from ..analyses import embedding as emb
from ..render import images as im
from ..render import plots

EMBED_VERSION = "embed-1"
THUMB_MAX = 64          # thumbnails larger than this are downscaled for the sprite sheet
PIXEL_SPACE = 32        # images are compared in pixel space at this size (keeps 5k×224 px tractable)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# Bokeh's default "simple" ids count up across the process (two builds in one process would differ);
# UUIDs are renumbered per plot by stable_ids, so every build writes the same bytes.
bokeh_settings.simple_ids.set_value(False)


def stable_ids(script: str, div: str, prefix: str) -> tuple[str, str]:
    """Bokeh's components() uses random UUIDs; replace them so rebuilds are byte-identical."""
    ids: dict[str, str] = {}
    for u in _UUID.findall(div + script):
        ids.setdefault(u, f"{prefix}-{len(ids)}")
    for u, v in ids.items():
        script, div = script.replace(u, v), div.replace(u, v)
    return script, div


class EmbeddingSection:
    def __init__(self, job, evidence, pages, writer):
        self.job, self.ev, self.pages, self.w = job, evidence, pages, writer
        self.scripts = None
        self._sprite = None

    def _thumbs(self, indices: np.ndarray) -> np.ndarray:
        """(N, h, w, C) uint8 thumbnails (at most THUMB_MAX px)."""
        out = []
        for i in indices.tolist():
            img = im.to_hwc(self.job.dataset.image(i))
            if img.shape[0] > THUMB_MAX:
                pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
                pil = pil.resize((THUMB_MAX, THUMB_MAX), Image.BILINEAR)
                img = im.to_hwc(np.asarray(pil))
            out.append(img)
        return np.stack(out)

    def sprite(self, indices: np.ndarray):
        """One sprite sheet for the pooled subset, shared by every explorer of the site."""
        if self._sprite is None:
            path = self.w.root / "img" / "sprite.webp"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sprite = (indices, plots.write_sprite_sheet(self._thumbs(indices), path))
            self.w.written.add("img/sprite.webp")
            self.scripts = plots.copy_bokehjs(self.w.root / "static")
        return self._sprite[1]

    def attach(self, layers, layer_sections: list[dict]) -> None:
        """The explorer of every layer whose `embedding` asks for one (pages at depth 2)."""
        from ..render.pages import json_only
        for layer, section in zip(layers, layer_sections):
            methods = {"tsne": ["tsne"], "pca": ["pca"], "both": ["tsne", "pca"], "none": []}[layer.embedding]
            section["explorer"] = self.section(layer.path, layer.name, methods, 2) if methods else None
            section["embedding"] = json_only(section["explorer"]["explorers"]) if section["explorer"] else None

    def section(self, key: str, title: str, methods: list[str], page_depth: int) -> dict | None:
        """Explorers for the pooled features of evidence layer `key` (a layer path or the penultimate)."""
        e = self.ev.layers.get(key)
        if e is None:
            return None
        idx, feats = e.pooled_array()
        cap = self.job.spec.embedding.max_points
        if len(idx) > cap:   # a seeded subset, the same for every layer (they share the sprite sheet)
            keep = np.sort(np.random.default_rng([self.job.spec.seed, 2]).permutation(len(idx))[:cap])
            idx, feats = idx[keep], feats[keep]
        if len(idx) < 3:
            return None
        labels = self.job.dataset.labels[idx]
        preds_map = dict(zip(self.ev.pred_index.tolist(), self.ev.preds.tolist()))
        preds = np.array([preds_map.get(int(i), -1) for i in idx])
        same_classes = self.job.model.classes == self.job.dataset.classes
        plot_preds = preds if same_classes else labels   # another label space: nothing to mark as wrong
        sprite = self.sprite(idx)
        neighbours = emb.nearest_neighbours(feats, np.arange(len(idx)), k=min(6, len(idx) - 1))
        out = {"title": title, "count": int(len(idx)), "same_classes": same_classes, "explorers": []}
        for method in methods:
            if method == "tsne" and len(idx) < 30:
                continue   # t-SNE is meaningless on a handful of points
            key_parts = (EMBED_VERSION, key, method, self.job.spec.seed, idx.tolist())
            cached = self.job.cache.get_or_compute(
                "embedding", self.job.key(*key_parts), lambda m=method: {"points": emb.embed(feats, m, self.job.spec.seed)})
            points = cached["points"]
            trust = emb.trustworthiness(feats, points, k=10, seed=self.job.spec.seed)
            slug = re.sub(r"[^A-Za-z0-9]", "-", f"{key}-{method}")
            script, div = plots.explorer_plot(
                points, labels, plot_preds, idx, self.job.dataset.classes, sprite=sprite,
                sprite_url="../" * page_depth + "img/sprite.webp", title="", neighbours=neighbours,
                panel_id=f"panel-{slug}")
            script, div = stable_ids(script, div, f"rg-{slug}")
            record = emb.embedding_record(method, points, idx, labels, preds, trust)
            out["explorers"].append(record | {"script": Markup(script), "div": Markup(div), "panel": f"panel-{slug}",
                                              "name": {"tsne": "t-SNE", "pca": "PCA"}[method]})
        out["neighbours"] = self._neighbour_panel(idx, feats, labels)
        return out

    def _neighbour_panel(self, idx, feats, labels) -> list[dict]:
        """8 queries: their 8 nearest neighbours in feature space beside the 8 nearest in pixel space."""
        queries = emb.choose_queries(labels, n=min(8, len(idx)), seed=self.job.spec.seed)
        k = min(8, len(idx) - 1)
        pixels = self._thumbs(idx).astype(np.float32)
        if pixels.shape[1] > PIXEL_SPACE:
            pixels = np.stack([np.asarray(Image.fromarray(p.squeeze().astype(np.uint8)).resize(
                (PIXEL_SPACE, PIXEL_SPACE), Image.BILINEAR), np.float32) for p in pixels])
        pixels = pixels.reshape(len(idx), -1)
        by_feat = emb.nearest_neighbours(feats, queries, k=k)
        by_pix = emb.nearest_neighbours(pixels, queries, k=k)
        frac_f = emb.same_class_fraction(by_feat, labels, queries)
        frac_p = emb.same_class_fraction(by_pix, labels, queries)
        rows = []
        for q, nf, npx, ff, fp in zip(queries, by_feat, by_pix, frac_f, frac_p):
            rows.append({"query": self.pages.image_ref(int(idx[q])),
                         "feature": [self.pages.image_ref(int(idx[j])) for j in nf],
                         "pixel": [self.pages.image_ref(int(idx[j])) for j in npx],
                         "feature_same": float(f"{ff:.4g}"), "pixel_same": float(f"{fp:.4g}")})
        return rows
