"""Assemble the report: artifacts → report.json (every number on the pages) → images and pages.

The report dict is the single source for the pages: templates render from it, so a number on a
page and in report.json cannot disagree. Nothing here computes an analysis; it only lays out.
"""

import numpy as np
from markupsafe import Markup

from ..record import HIST_EDGES
from . import images as im
from . import plots
from .site import SiteWriter


def _r(x, digits: int = 6):
    """Round floats for report.json (stable text across platforms)."""
    return None if x is None or not np.isfinite(x) else float(f"{float(x):.{digits}g}")


class Pages:
    """Lays out one build's report. `job` carries spec, model, dataset, layers, indices, samples."""

    def __init__(self, job, evidence, writer: SiteWriter, receptive_fields: dict):
        self.job, self.ev, self.w, self.rf = job, evidence, writer, receptive_fields
        self.preds = dict(zip(evidence.pred_index.tolist(), evidence.preds.tolist()))

    # -- small helpers -------------------------------------------------------------------------
    def true_name(self, label: int) -> str:
        names = self.job.dataset.classes
        return names[label] if 0 <= label < len(names) else str(label)

    def pred_name(self, pred: int) -> str:
        names = self.job.model.classes
        return names[pred] if 0 <= pred < len(names) else f"output {pred}"

    def thumb(self, index: int) -> str:
        """The dataset image as the model saw it, written once per site."""
        return self.w.image(f"img/data/{index}.png", im.to_hwc(self.job.dataset.image(index)))

    def image_ref(self, index: int) -> dict:
        label = int(self.job.dataset.labels[index])
        pred = self.preds.get(index)
        return {"dataset_index": index, "label": label, "class": self.true_name(label),
                "pred": pred, "pred_class": None if pred is None else self.pred_name(pred),
                "name": self.job.dataset.names[index], "image": self.thumb(index)}

    # -- report sections -----------------------------------------------------------------------
    def model_section(self) -> dict:
        m = self.job.model
        return {"sha256": m.sha256, "num_classes": len(m.classes), "source": m.source, "input_size": m.input_size,
                "channels": m.channels, "mean": m.mean, "std": m.std,
                "architecture": [{"path": li.path, "alias": li.alias, "type": li.type,
                                  "output_shape": list(li.output_shape), "params": li.params}
                                 for li in self.job.layer_infos]}

    def dataset_section(self) -> dict:
        d, spec = self.job.dataset, self.job.spec.dataset
        return {"format": d.format, "split": spec.split, "size": d.size, "used": int(len(self.job.indices)),
                "fingerprint": d.fingerprint, "classes": d.classes,
                "skipped": [{"dataset_index": int(i), "error": msg} for i, msg in self.ev.skipped[:20]],
                "skipped_count": len(self.ev.skipped)}

    def accuracy(self) -> float | None:
        labels = self.job.dataset.labels[self.ev.pred_index]
        if len(labels) == 0 or len(self.job.model.classes) != len(self.job.dataset.classes):
            return None  # the model's outputs are not the dataset's classes: no accuracy to state
        return _r(float((labels == self.ev.preds).mean()))

    def samples_section(self) -> list[dict]:
        out = []
        for i in self.job.samples.tolist():
            probs = self.ev.sample_probs.get(i)
            if probs is None:
                continue  # unreadable sample image
            top = np.argsort(-probs, kind="stable")[:3]
            out.append(self.image_ref(i) | {"top3": [{"label": int(c), "class": self.pred_name(int(c)),
                                                      "prob": _r(probs[c], 4)} for c in top]})
        return out

    def layer_section(self, layer) -> dict:
        e = self.ev.layers[layer.path]
        base = f"layers/{layer.slug}"
        maps = []
        for i in sorted(e.sample_maps):
            m = e.sample_maps[i].astype(np.float32)                      # (C, H, W)
            tiles = np.stack([im.colorize(im.normalize01(c), "viridis") for c in m])
            cols = int(np.ceil(np.sqrt(len(tiles))))
            maps.append({"dataset_index": i, "image": self.thumb(i),
                         "grid": self.w.image(f"{base}/img/maps_{i}.png", im.grid(tiles, cols)),
                         "columns": cols})
        return {"name": layer.name, "path": layer.path, "conv_path": layer.conv_path, "slug": layer.slug,
                "output_shape": list(layer.output_shape), "channels": layer.channels, "page": f"{base}/index.html",
                "activation_maps": maps, "filters": [self.filter_section(layer, f) for f in layer.filters]}

    def filter_section(self, layer, f: int) -> dict:
        e = self.ev.layers[layer.path]
        base = f"layers/{layer.slug}"
        width = layer.output_shape[2] if len(layer.output_shape) == 3 else 1
        rf = self.rf.get(layer.path)
        top, patches = [], []
        for rank in range(len(e.top.scores)):
            i, score, loc = int(e.top.index[rank, f]), float(e.top.scores[rank, f]), int(e.top.loc[rank, f])
            y, x = divmod(loc, width)
            top.append(self.image_ref(i) | {"score": _r(score), "location": [y, x]})
            if rf is not None:
                box = [int(v) for v in rf.box(y, x)]
                img = self.job.dataset.image(i)
                patches.append({"dataset_index": i, "box": box,
                                "patch": self.w.image(f"{base}/img/f{f}_patch{rank}.png", im.crop(img, box)),
                                "outlined": self.w.image(f"{base}/img/f{f}_box{rank}.png", im.draw_box(img, box))})
        bottom = []
        if e.bottom is not None:
            for rank in range(len(e.bottom.scores)):
                i = int(e.bottom.index[rank, f])
                bottom.append(self.image_ref(i) | {"score": _r(float(e.bottom.scores[rank, f]))})
        means = e.class_means()[:, f]
        order = [c for c in np.argsort(-np.nan_to_num(means, nan=-np.inf), kind="stable") if np.isfinite(means[c])]
        top_classes = [{"label": int(c), "class": self.true_name(int(c)), "mean": _r(means[c])} for c in order[:5]]
        overlays = [{"dataset_index": i, "image": self.w.image(
            f"{base}/img/f{f}_map_{i}.png", im.overlay(self.job.dataset.image(i), e.sample_maps[i][f].astype(np.float32)))}
            for i in sorted(e.sample_maps)]
        return {"index": f, "page": f"{base}/f{f}.html", "top_images": top, "top_patches": patches,
                "bottom_images": bottom, "top_classes": top_classes, "histogram": self.histogram(e.hist[f]),
                "activation_overlays": overlays,
                # sections filled by later analyses (None = absent; the page says why when it matters)
                "feature_vis": None, "circuit": None, "circuit_info": None, "circuit_absent": None, "guided_backprop": None}

    @staticmethod
    def histogram(counts: np.ndarray) -> dict:
        """Occupied bins only: `edges` has one more entry than `counts` (bin i is [edges[i], edges[i+1]))."""
        nz = np.nonzero(counts)[0]
        if len(nz) == 0:
            return {"edges": [], "counts": []}
        lo, hi = nz[0], nz[-1]
        # bucketize's bin b holds values in (edges[b-1], edges[b]]; outer bins are open-ended
        edges = np.concatenate([[-np.inf], HIST_EDGES, [np.inf]])
        return {"edges": [_r(v) for v in edges[lo:hi + 2]] , "counts": [int(c) for c in counts[lo:hi + 1]]}


def json_only(value):
    """The report without page-only parts (Bokeh script/div, the explorer's and attribution page's layout)."""
    if isinstance(value, dict):
        return {k: json_only(v) for k, v in value.items()
                if k not in ("script", "div", "explorer", "attribution_page")}
    if isinstance(value, list):
        return [json_only(v) for v in value]
    return value


def write_pages(writer: SiteWriter, report: dict, bokeh_scripts: list[str] | None) -> None:
    """Every page of the site from `report`, then report.json (its JSON part)."""
    def bokeh(depth):
        return Markup(plots.script_tags(bokeh_scripts, depth)) if bokeh_scripts else ""
    writer.copy_static()
    writer.page("index.html", "index.html", report=report, crumbs=[], bokeh=bokeh(0))
    if report["attribution_page"]:
        writer.page("attribution.html", "attribution.html", report=report,
                    crumbs=[{"title": "Attribution", "page": None}])
    writer.page("build.html", "build.html", report=report, crumbs=[{"title": "How this was built", "page": None}])
    for layer in report["layers"]:
        writer.page(layer["page"], "layer.html", report=report, layer=layer, bokeh=bokeh(2),
                    crumbs=[{"title": layer["name"], "page": None}])
        fs = layer["filters"]
        for n, f in enumerate(fs):
            writer.page(f["page"], "filter.html", report=report, layer=layer, f=f,
                        prev=fs[n - 1] if n else None, next=fs[n + 1] if n + 1 < len(fs) else None,
                        crumbs=[{"title": layer["name"], "page": layer["page"]},
                                {"title": f"filter {f['index']}", "page": None}])
    writer.json("report.json", json_only(report))
