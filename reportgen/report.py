"""The Report: every number and name on the pages, assembled from the dataset pass and the analyses.

`assemble(ctx, outcomes, site)` builds it; rendering reads nothing else. `Built.data` is exactly what
`report.json` holds (schema in schema.py, versioned by `SCHEMA_VERSION`, JSON Schema in docs/report.schema.json):
numbers, names and site-relative file paths, never colours, markup or prose. Besides the data, `Built`
carries what rendering draws: `figures` (site path → a function returning the image), `files` (site path →
a function returning bytes) and `widgets` (interactive plots, drawn per page).

Reading it from Python:

    import json; report = json.load(open("site/report.json"))
    report["layers"][0]["filters"][3]["top_images"][0]["dataset_index"]
    report["layers"][0]["filters"][3]["circuits"]["channels"][0]["l2"]   # an analysis' part: its name
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import __version__
from .provenance import provenance
from .record import HIST_EDGES
from .render import images as im
from .schema import SCHEMA_VERSION
from .search import INDEX_FILE, index_script, search_index


def rounded(x, digits: int = 6):
    """Floats for report.json: `digits` significant digits (stable text across platforms), None if not finite."""
    return None if x is None or not np.isfinite(x) else float(f"{float(x):.{digits}g}")


@dataclass
class Built:
    """The Report's data plus what rendering draws from it."""
    data: dict
    figures: dict[str, Callable[[], np.ndarray]] = field(default_factory=dict)   # site path → uint8 image
    files: dict[str, Callable[[], bytes]] = field(default_factory=dict)          # site path → bytes
    widgets: dict[str, Callable[[str], tuple[str, str]]] = field(default_factory=dict)  # id → (root → script, div)
    templates: dict[str, list[tuple[str, str]]] = field(default_factory=dict)    # place → [(analysis, template)]
    page_templates: dict[str, str] = field(default_factory=dict)                 # page → template
    template_folders: list[str] = field(default_factory=list)                   # analyses outside the package


class Layout:
    """The view of the report an analysis lays its result out through (`Analysis.report(ctx, artifact, out)`)."""

    def __init__(self, ctx, built: Built, name: str):
        self.ctx, self.built, self.name = ctx, built, name
        self.report = built.data
        self._layers = {l["path"]: l for l in built.data["layers"]}

    # where the data goes: under the analysis' name
    def site(self, data) -> None:
        self.report[self.name] = data

    def layer(self, path: str, data) -> None:
        self._layers[path][self.name] = data

    def filter(self, path: str, index: int, data) -> None:
        self.filter_data(path, index)[self.name] = data

    def layer_data(self, path: str) -> dict:
        return self._layers[path]

    def filter_data(self, path: str, index: int) -> dict:
        return next(f for f in self._layers[path]["filters"] if f["index"] == index)

    # what rendering draws
    def image(self, rel: str, draw: Callable[[], np.ndarray]) -> str:
        self.built.figures.setdefault(rel, draw)
        return rel

    def file(self, rel: str, make: Callable[[], bytes]) -> str:
        self.built.files[rel] = make
        return rel

    def npz(self, rel: str, arrays: Callable[[], dict]) -> str:
        """A compressed .npz of `arrays()` (name → array) in the site: raw numbers for readers to recompute from."""
        def make() -> bytes:
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays())
            return buf.getvalue()
        return self.file(rel, make)

    def widget(self, wid: str, draw: Callable[[str], tuple[str, str]]) -> str:
        self.built.widgets[wid] = draw
        return wid

    def page(self, rel: str, template: str, title: str) -> str:
        self.built.page_templates[rel] = template
        self.report["pages"].insert(-1, {"title": title, "page": rel})   # the build page stays last
        return rel

    def image_ref(self, index: int) -> dict:
        return image_ref(self.ctx, self.built, index)


def image_ref(ctx, built: Built, index: int) -> dict:
    """A dataset image as the pages show it: names, labels, prediction, and its thumbnail."""
    label = int(ctx.dataset.labels[index])
    pred = ctx.predictions.get(index)
    rel = f"img/data/{index}.png"
    built.figures.setdefault(rel, lambda: im.to_hwc(ctx.dataset.image(index)))
    return {"dataset_index": index, "name": ctx.dataset.names[index], "label": label,
            "class": class_name(ctx.dataset.classes, label, str(label)),
            "pred": pred, "pred_class": None if pred is None else class_name(ctx.model.classes, pred, f"output {pred}"),
            "image": rel}


def class_name(names: list[str], i: int, fallback: str) -> str:
    return names[i] if 0 <= i < len(names) else fallback


def assemble(ctx, outcomes: dict, site) -> Built:
    """The core report from the dataset pass, then each analysis' part, in dependency order."""
    built = Built(data={})
    built.data.update(
        schema_version=SCHEMA_VERSION, title=ctx.spec.title, seed=ctx.spec.seed, reportgen_version=__version__,
        model=_model(ctx), dataset=_dataset(ctx), samples=_samples(ctx, built),
        layers=[_layer(ctx, built, l) for l in ctx.layers],
        analyses=[{"name": o.analysis.name, "version": o.analysis.version, "absent": o.absent}
                  for o in outcomes.values()],
        pages=[{"title": "How this was built", "page": "build.html"}],
        provenance=provenance(ctx.spec, site, ctx.model.sha256, ctx.dataset.fingerprint))
    built.page_templates["build.html"] = "build.html"
    for name, o in outcomes.items():
        a = o.analysis
        if a.template_folder:
            built.template_folders.append(a.template_folder)
        for place, template in a.templates.items():
            built.templates.setdefault(place, []).append((name, template))
        # every declared part exists (null until laid out), so templates can test it and the schema holds
        if a.SiteResult:
            built.data[name] = None
        for layer in built.data["layers"]:
            if a.LayerResult:
                layer[name] = None
            for f in layer["filters"] if a.FilterResult else []:
                f[name] = None
            if layer["path"] in o.layers_absent:
                layer["absent"][name] = o.layers_absent[layer["path"]]
        if o.absent is None:
            a.report(ctx, o.artifact, Layout(ctx, built, name))
    entries = search_index(built.data)   # from the finished data: every analysis' labels are in
    built.files[INDEX_FILE] = lambda: index_script(entries)
    return built


def _model(ctx) -> dict:
    m = ctx.model
    return {"sha256": m.sha256, "num_classes": len(m.classes), "class_ids": m.class_ids, "source": m.source,
            "input_size": list(m.input_size), "resize_size": list(m.resize_size), "interpolation": m.interpolation,
            "channels": m.channels, "mean": m.mean, "std": m.std,
            "architecture": [{"path": li.path, "alias": li.alias, "type": li.type,
                              "output_shape": list(li.output_shape), "params": li.params} for li in ctx.layer_infos]}


def _dataset(ctx) -> dict:
    d, ev = ctx.dataset, ctx.evidence
    return {"format": d.format, "split": ctx.spec.dataset.split, "size": d.size, "used": int(len(ctx.indices)),
            "fingerprint": d.fingerprint, "classes": d.classes, "class_ids": d.class_ids,
            "skipped": [{"dataset_index": int(i), "error": msg} for i, msg in ev.skipped[:20]],
            "skipped_count": len(ev.skipped)}


def _samples(ctx, built) -> list[dict]:
    out = []
    for i in ctx.samples.tolist():
        probs = ctx.evidence.sample_probs.get(i)
        if probs is None:
            continue  # unreadable sample image
        top = np.argsort(-probs, kind="stable")[:3]
        out.append(image_ref(ctx, built, i) | {"top3": [
            {"label": int(c), "class": class_name(ctx.model.classes, int(c), f"output {int(c)}"),
             "prob": rounded(probs[c], 4)} for c in top]})
    return out


def _layer(ctx, built, layer) -> dict:
    e = ctx.evidence.layers[layer.path]
    base = f"layers/{layer.slug}"
    maps = []
    for i in sorted(e.sample_maps):
        cols = int(np.ceil(np.sqrt(layer.channels)))
        maps.append({"dataset_index": i, "image": image_ref(ctx, built, i)["image"], "columns": cols,
                     "grid": _figure(built, f"{base}/img/maps_{i}.png", _map_grid, e.sample_maps[i], cols)})
    return {"name": layer.name, "path": layer.path, "conv_path": layer.conv_path, "slug": layer.slug,
            "output_shape": list(layer.output_shape), "channels": layer.channels, "page": f"{base}/index.html",
            "activation_maps": maps, "absent": {}, "filters": [_filter(ctx, built, layer, f) for f in layer.filters]}


def _figure(built, rel, draw, *args) -> str:
    built.figures.setdefault(rel, lambda: draw(*args))
    return rel


def _map_grid(maps: np.ndarray, cols: int) -> np.ndarray:
    tiles = np.stack([im.colorize(im.normalize01(c), "viridis") for c in maps.astype(np.float32)])  # (C, H, W, 3)
    return im.grid(tiles, cols)


def _filter(ctx, built, layer, f: int) -> dict:
    e = ctx.evidence.layers[layer.path]
    base = f"layers/{layer.slug}"
    width = layer.output_shape[2] if len(layer.output_shape) == 3 else 1
    rf = ctx.receptive_fields.get(layer.path)
    image = ctx.dataset.image
    top, patches = [], []
    for rank in range(len(e.top.scores)):
        i, score, loc = int(e.top.index[rank, f]), float(e.top.scores[rank, f]), int(e.top.loc[rank, f])
        y, x = divmod(loc, width)
        top.append(image_ref(ctx, built, i) | {"score": rounded(score), "location": [y, x]})
        if rf is not None:
            box = [int(v) for v in rf.box(y, x)]
            patches.append({"dataset_index": i, "box": box,
                            "patch": _figure(built, f"{base}/img/f{f}_patch{rank}.png",
                                             lambda i=i, box=box: im.crop(image(i), box)),
                            "outlined": _figure(built, f"{base}/img/f{f}_box{rank}.png",
                                                lambda i=i, box=box: im.draw_box(image(i), box))})
    bottom = []
    if e.bottom is not None:
        for rank in range(len(e.bottom.scores)):
            i, loc = int(e.bottom.index[rank, f]), int(e.bottom.loc[rank, f])
            bottom.append(image_ref(ctx, built, i) | {"score": rounded(float(e.bottom.scores[rank, f])),
                                                      "location": list(divmod(loc, width))})
    means = e.class_means()[:, f]
    order = [c for c in np.argsort(-np.nan_to_num(means, nan=-np.inf), kind="stable") if np.isfinite(means[c])]
    top_classes = [{"label": int(c), "class": class_name(ctx.dataset.classes, int(c), str(c)),
                    "mean": rounded(means[c])} for c in order[:5]]
    overlays = [{"dataset_index": i, "image": _figure(
        built, f"{base}/img/f{f}_map_{i}.png",
        lambda i=i: im.overlay(image(i), e.sample_maps[i][f].astype(np.float32)))} for i in sorted(e.sample_maps)]
    return {"index": f, "page": f"{base}/f{f}.html", "top_images": top, "top_patches": patches,
            "bottom_images": bottom, "top_classes": top_classes, "histogram": histogram(e.hist[f]),
            "activation_overlays": overlays}


def histogram(counts: np.ndarray) -> dict:
    """Occupied bins only: `edges` has one more entry than `counts` (bin i is (edges[i], edges[i+1]])."""
    nz = np.nonzero(counts)[0]
    if len(nz) == 0:
        return {"edges": [], "counts": []}
    lo, hi = nz[0], nz[-1]
    # the record's bin b holds values in (edges[b-1], edges[b]]; the outer bins are open-ended
    edges = np.concatenate([[-np.inf], HIST_EDGES, [np.inf]])
    return {"edges": [rounded(v) for v in edges[lo:hi + 2]], "counts": [int(c) for c in counts[lo:hi + 1]]}
