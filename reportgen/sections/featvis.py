"""Synthesized images: each spec filter's "what it wants to see" (regularized gradient ascent, batched
across filters), optionally the plain ascent beside it, and class-model images for the overview.
"""

import numpy as np
from tqdm import tqdm

from ..analyses.featvis import Objective, Optimizer, Parameterization, RandomAffine, synthesize

FEATVIS_VERSION = "featvis-1"
CURVE_POINTS = 48   # the activation curve is stored and drawn at this many steps


def _settings(job) -> dict:
    s = job.spec.feature_vis
    return {"size": s.size or job.model.input_size, "steps": s.steps, "lr": s.lr, "objective": s.objective}


def _run(job, layer_path, units, objective, regularize, label, variants: int = 1) -> dict:
    """Cached synthesis of `units`, split across ranks in whole batches (each unit's image depends only on
    (seed, unit), so a split run equals a single-process one)."""
    st = _settings(job)
    diversity = job.spec.feature_vis.diversity if variants > 1 else 0.0
    key = job.key(FEATVIS_VERSION, layer_path, list(units), st | {"objective": objective}, regularize, job.spec.seed,
                  variants, diversity)
    hit = job.cache.load("featvis", key)
    if hit is not None:
        return hit
    batch = 64 if job.device == "cpu" else 256
    mine = job.group.shard_list(list(units), batch)
    parts = {}
    if mine:
        with tqdm(total=len(mine) * variants * st["steps"], unit="img·step", desc=label, leave=False,
                  disable=not (job.progress and job.group.is_main)) as bar:
            param = Parameterization(job.model.channels, job.model.mean, job.model.std, size=st["size"],
                                     fourier=regularize)
            res = synthesize(job.model.module, Objective(layer_path, mine, objective, variants, diversity), param,
                             RandomAffine() if regularize else None,
                             Optimizer(steps=st["steps"], lr=st["lr"], seed=job.spec.seed, batch_size=batch),
                             device=job.device, progress=bar.update)
        # a unit's variants are adjacent in the result: variant v of unit u is row n with n % variants == v
        parts = {(int(u), n % variants): (res.images[n], float(res.activation[n]), res.curve[n])
                 for n, u in enumerate(res.units)}
    merged = {}
    for p in job.group.all_gather(parts):
        merged.update(p)
    rows = [(u, v) for u in units for v in range(variants)]    # (unit, variant), variants adjacent
    out = {"units": np.array(units, np.int64), "images": np.stack([merged[r][0] for r in rows]),
           "activation": np.array([merged[r][1] for r in rows], np.float64),
           "curve": np.stack([merged[r][2] for r in rows])}
    job.cache.save("featvis", key, out)
    return out


def compute(job) -> dict:
    """{layer path: result} for every spec layer, plus 'plain:' results and the class-model images."""
    s = job.spec.feature_vis
    out = {}
    for layer in job.layers:
        objective = s.objective if len(layer.output_shape) == 3 else "channel"
        out[layer.path] = _run(job, layer.path, layer.filters, objective, True, f"synthesis {layer.name}",
                               variants=s.variants)
        if s.compare_plain:
            out["plain:" + layer.path] = _run(job, layer.path, layer.filters, objective, False, f"plain {layer.name}")
    classes = [c for c in s.classes if 0 <= c < len(job.model.classes)]
    if classes:
        out["(classes)"] = _run(job, None, classes, "logit", True, "class models")
    return out


def _curve(values: np.ndarray) -> dict:
    pick = np.unique(np.linspace(0, len(values) - 1, min(CURVE_POINTS, len(values))).round().astype(int))
    v = values[pick]
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo or 1.0
    pts = " ".join(f"{100 * i / max(len(v) - 1, 1):.1f},{40 - 38 * (x - lo) / span:.1f}" for i, x in enumerate(v))
    return {"steps": [int(p) + 1 for p in pick], "values": [float(f"{x:.4g}") for x in v], "svg": pts,
            "min": float(f"{lo:.4g}"), "max": float(f"{hi:.4g}")}


def layout(job, results: dict, writer, layer_sections) -> list[dict]:
    """Attach `feature_vis` to every filter section; return the class-model images for the overview."""
    st = _settings(job)
    for layer, section in zip(job.layers, layer_sections):
        res, plain = results.get(layer.path), results.get("plain:" + layer.path)
        if res is None:
            continue
        variants = len(res["images"]) // max(len(section["filters"]), 1)
        for j, f in enumerate(section["filters"]):
            n = j * variants
            fv = {"image": writer.image(f"layers/{layer.slug}/img/f{f['index']}_vis.png", res["images"][n]),
                  "activation": float(f"{res['activation'][n]:.4g}"), "steps": st["steps"], "size": st["size"],
                  "objective": st["objective"] if len(layer.output_shape) == 3 else "channel",
                  "curve": _curve(res["curve"][n]), "plain": None,
                  "variants": [{"image": writer.image(f"layers/{layer.slug}/img/f{f['index']}_vis{v}.png",
                                                      res["images"][n + v]),
                                "activation": float(f"{res['activation'][n + v]:.4g}")} for v in range(1, variants)]}
            if plain is not None:
                fv["plain"] = {"image": writer.image(f"layers/{layer.slug}/img/f{f['index']}_plain.png",
                                                     plain["images"][j]),
                               "activation": float(f"{plain['activation'][j]:.4g}")}
            f["feature_vis"] = fv
    classes = results.get("(classes)")
    if classes is None:
        return []
    return [{"label": int(c), "class": job.model.classes[int(c)], "activation": float(f"{a:.4g}"),
             "image": writer.image(f"img/class_{int(c)}.png", img)}
            for c, a, img in zip(classes["units"], classes["activation"], classes["images"])]
