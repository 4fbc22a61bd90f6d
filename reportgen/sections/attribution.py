"""The attribution page: occlusion, saliency, Grad-CAM, guided backprop and guided Grad-CAM for the sample
images (batched), each with a randomized-weights sanity check; and guided backprop of each spec filter's
strongest unit on its top images (filter pages).
"""

import io

import numpy as np
import torch

from ..analyses import attribution as at
from ..errors import SpecError
from ..data import sample_indices
from ..render import images as im

ATTR_VERSION = "attribution-1"
NAMES = {"occlusion": "Occlusion", "saliency": "Saliency", "gradcam": "Grad-CAM",
         "guided_backprop": "Guided backprop", "guided_gradcam": "Guided Grad-CAM"}
EXPLAIN = {
    "occlusion": "drop in the target's probability when a {window}×{window} window (stride {stride}) filled with the "
                 "training mean covers the pixel (Zeiler & Fergus)",
    "saliency": "|∂ score / ∂ pixel|, max over colour channels (Simonyan et al.)",
    "gradcam": "gradient-weighted activation of the last conv layer <code>{layer}</code>, upsampled (Selvaraju et al.)",
    "guided_backprop": "gradient with negative signals stopped at every ReLU, |·| max over channels (Springenberg et al.)",
    "guided_gradcam": "guided backprop × Grad-CAM",
}


def attribution_images(job) -> np.ndarray:
    spec = job.spec.attribution
    if isinstance(spec.images, list):
        bad = [i for i in spec.images if not 0 <= i < job.dataset.size]
        if bad:
            raise SpecError("attribution.images", f"dataset index {bad[0]} is out of range (0-{job.dataset.size - 1})")
        return np.array(spec.images, np.int64)
    return sample_indices(job.indices, spec.images, job.spec.seed)


def _methods(job):
    s = job.spec.attribution
    size = job.model.input_size
    window = s.window or max(2, size // 6)
    stride = s.stride or max(1, window // 2)
    return {
        "occlusion": lambda m, x, t: at.occlusion(m, x, t, window=window, stride=stride, baseline=0.0),
        "saliency": at.saliency,
        "gradcam": lambda m, x, t: at.grad_cam(m, x, t, s.layer),
        "guided_backprop": at.guided_backprop,
        "guided_gradcam": lambda m, x, t: at.guided_grad_cam(m, x, t, s.layer),
    }, window, stride


def compute(job, progress=print) -> dict:
    """Maps for every (image, target kind, method), sanity similarities; split across ranks by image."""
    s = job.spec.attribution
    idx = attribution_images(job)
    fns, window, stride = _methods(job)
    key = job.key(ATTR_VERSION, idx.tolist(), s.model_dump(mode="json"), window, stride)
    hit = job.cache.load("attribution", key)
    if hit is not None:
        return hit
    mine = job.group.shard_list(idx.tolist(), 8)
    model = job.model.module
    part = {}
    for start in range(0, len(mine), 8):
        chunk = mine[start:start + 8]
        x = job.batch(chunk)
        with torch.no_grad():
            probs = model(x).float().softmax(1).cpu().numpy()
        pred = probs.argmax(1)
        true = job.dataset.labels[chunk]
        same_space = job.model.classes == job.dataset.classes
        kinds = {"predicted": pred, "true": true if same_space else pred}
        wanted = ["predicted", "true"] if s.target == "both" else [s.target]
        for n, i in enumerate(chunk):
            part[(i, "probs")] = probs[n]
        for kind in wanted:
            t = torch.as_tensor(kinds[kind], dtype=torch.long, device=job.device)
            for m in s.methods:
                maps = fns[m](model, x, t)
                sim = at.randomized_similarity(fns[m], model, x, t, seed=job.spec.seed) if s.sanity_check else \
                    np.full(len(chunk), np.nan)
                for n, i in enumerate(chunk):
                    part[(i, kind, m)] = (maps[n].astype(np.float32), int(kinds[kind][n]), float(sim[n]))
    merged = {}
    for p in job.group.all_gather(part):
        merged.update(p)
    out = {"index": idx, "meta": {"window": window, "stride": stride, "entries": []}}
    wanted = ["predicted", "true"] if s.target == "both" else [s.target]
    for i in idx.tolist():                       # the page's order: images, then target kinds, then methods
        out[f"probs_{i}"] = merged[(i, "probs")]
        for kind in wanted:
            for m in s.methods:
                data, target, sim = merged[(i, kind, m)]
                name = f"{m}_{kind}_{i}"
                out[name] = data
                out["meta"]["entries"].append({"array": name, "dataset_index": int(i), "target_kind": kind,
                                               "method": m, "target": target, "similarity": sim})
    job.cache.save("attribution", key, out)
    return out


def guided_unit_maps(job, layer, filters: list[int], top: np.ndarray, k: int = 4) -> dict:
    """{filter: (k', H, W)} guided backprop of the filter's strongest unit on its top-k images."""
    out = {}
    model = job.model.module
    for f in filters:
        idx = top[:k, f].tolist()
        x = job.batch(idx)
        out[f] = at.guided_backprop_unit(model, x, layer.path, f)
    return out


def attach_guided(job, evidence, writer, layer_sections: list[dict]) -> None:
    """Filter pages: guided backprop of each filter's strongest unit on its top images."""
    for layer, section in zip(job.layers, layer_sections):
        if len(layer.output_shape) != 3:
            continue
        e = evidence.layers[layer.path]
        maps = guided_unit_maps(job, layer, layer.filters, e.top.index)
        for f in section["filters"]:
            f["guided_backprop"] = [
                {"dataset_index": int(i),
                 "image": writer.image(f"layers/{layer.slug}/img/f{f['index']}_gb{n}.png",
                                       im.colorize(im.normalize01(m), "inferno"))}
                for n, (i, m) in enumerate(zip(e.top.index[:, f["index"]], maps[f["index"]]))]


def layout(job, result: dict, pages, writer) -> dict:
    """The attribution page's rows and report.json's `attribution[]`; writes overlays and the NPZ."""
    meta = result["meta"]
    arrays = {e["array"]: result[e["array"]] for e in meta["entries"]}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    writer.bytes("data/attribution.npz", buf.getvalue())
    rows, records = [], []
    layer = job.spec.attribution.layer or at._common.last_conv(job.model.module)
    for i in result["index"].tolist():
        img = job.dataset.image(i)
        probs = result.get(f"probs_{i}")
        entries = [e for e in meta["entries"] if e["dataset_index"] == i]
        cells = []
        for e in entries:
            path = writer.image(f"attribution/{e['method']}_{e['target_kind']}_{i}.png",
                               im.overlay(img, np.abs(result[e["array"]]) if e["method"] != "occlusion"
                                          else result[e["array"]], symmetric=e["method"] == "occlusion",
                                          cmap="diverging" if e["method"] == "occlusion" else "inferno"))
            sim = None if not np.isfinite(e["similarity"]) else float(f"{e['similarity']:.3g}")
            cells.append({"method": e["method"], "name": NAMES[e["method"]], "target_kind": e["target_kind"],
                          "target": e["target"], "target_class": pages.pred_name(e["target"]),
                          "prob": None if probs is None else float(f"{probs[e['target']]:.4g}"),
                          "image": path, "similarity": sim})
            records.append({"dataset_index": i, "target": e["target"], "target_kind": e["target_kind"],
                            "method": e["method"], "image": path, "array": e["array"], "randomized_similarity": sim})
        rows.append({"image": pages.image_ref(i), "cells": cells})
    sims = {}
    for r in records:
        if r["randomized_similarity"] is not None:
            sims.setdefault(r["method"], []).append(r["randomized_similarity"])
    explain = {m: EXPLAIN[m].format(window=meta["window"], stride=meta["stride"], layer=layer)
               for m in job.spec.attribution.methods}
    return {"rows": rows, "records": records, "npz": "data/attribution.npz", "explain": explain,
            "names": {m: NAMES[m] for m in job.spec.attribution.methods},
            "sanity": {m: float(f"{np.mean(v):.3g}") for m, v in sims.items()}}
