"""The dataset pass as a build stage: cached per layer, split across ranks, plus the layers' receptive fields.

`gather_evidence(ctx)` sets `ctx.evidence` (record.Evidence) and `ctx.evidence_key`; only layers without a
cached result are recorded, in one pass. `receptive_fields(ctx)` needs only the model (checked before the pass).
"""

import numpy as np

from .data import sample_indices
from .errors import ModelError, SpecError
from .graph import receptive_field
from .graph import receptive_fields as graph_receptive_fields
from .graph.receptive import whole_image
from .record import PENULTIMATE, Evidence, RecordPlan, layer_from_arrays, layer_to_arrays, record
from .timing import Work

RECORD_VERSION = "record-3"  # bump when the pass's results change meaning (2: skipped images named from the root;
                             # 3: each image's top-5 classes)


def plan(ctx, layers: dict[str, int]) -> RecordPlan:
    """What the pass records for `layers` {path: channels}, from the spec's `record` and `dataset` sections."""
    r, d = ctx.spec.record, ctx.spec.dataset
    return RecordPlan(layers=layers, num_classes=len(ctx.dataset.classes), k=r.top_k, negatives=r.negatives,
                      pooled=set(sample_indices(ctx.indices, r.pooled_limit, ctx.spec.seed + 7).tolist()),
                      samples=set(ctx.samples.tolist()), batch_size=d.batch_size, workers=d.workers,
                      device=ctx.device, raise_errors=d.on_error == "raise")


def pass_keys(ctx) -> tuple[str, dict[str, str]]:
    """(the pass's key, {layer path or PENULTIMATE: the cache key of its part}): known before the pass."""
    params = ctx.spec.record.model_dump(mode="json") | {"samples": ctx.samples.tolist()}   # every record key
    keys = {l.path: ctx.key(RECORD_VERSION, "layer", l.path, params) for l in ctx.layers}
    keys[PENULTIMATE] = ctx.key(RECORD_VERSION, "predictions", params)
    return ctx.key(RECORD_VERSION, params), keys


def pass_cost(ctx) -> Work | None:
    """The pass's work for the up-front estimate: every image read and run forward, unless all is cached."""
    if all(ctx.cache.has("record", k) for k in pass_keys(ctx)[1].values()):
        return None
    return Work(forward=len(ctx.indices), loads=len(ctx.indices))


def gather_evidence(ctx) -> None:
    ctx.evidence_key, keys = pass_keys(ctx)
    hits = {p: ctx.cache.load("record", k) for p, k in keys.items()}
    missing = {l.path: l.channels for l in ctx.layers if hits[l.path] is None}
    if not missing and hits[PENULTIMATE] is not None:
        ctx.log(f"dataset pass: reusing cached results for {len(ctx.layers)} layers")
    else:
        mine = ctx.group.shard_batches(ctx.indices, ctx.spec.dataset.batch_size)
        ev = record(ctx.model.module, ctx.model.normalize, ctx.dataset, mine, plan(ctx, missing),
                    progress=ctx.progress and ctx.group.is_main)
        parts = ctx.group.all_gather(ev)   # exact merge of every rank's shard (rank order)
        ev = parts[0]
        for part in parts[1:]:
            ev.merge(part)
        for path in missing:   # as stored: a cold build reads what a warm one would
            hits[path] = ctx.cache.save("record", keys[path], layer_to_arrays(ev.layers[path]))
        hits[PENULTIMATE] = ctx.cache.save("record", keys[PENULTIMATE], _predictions_to_arrays(ev))
        ctx.computed.append("record")
    ctx.evidence = _evidence(ctx, hits)


def _predictions_to_arrays(ev: Evidence) -> dict:
    order = sorted(ev.sample_probs)
    out = {"pred_index": ev.pred_index, "preds": ev.preds, "top5": ev.top5, "prob_index": np.array(order, np.int64),
           "probs": np.stack([ev.sample_probs[i] for i in order]) if order else np.zeros((0, 1)),
           "meta": {"skipped": [[int(i), m] for i, m in ev.skipped]}}
    if PENULTIMATE in ev.layers:
        out.update({f"pen_{k}": v for k, v in layer_to_arrays(ev.layers[PENULTIMATE]).items()})
    return out


def _evidence(ctx, hits: dict) -> Evidence:
    p = hits[PENULTIMATE]
    layers = {l.path: layer_from_arrays(hits[l.path]) for l in ctx.layers}
    pen = {k[4:]: v for k, v in p.items() if k.startswith("pen_")}
    if pen:
        layers[PENULTIMATE] = layer_from_arrays(pen)
    ev = Evidence(layers, p["pred_index"], p["preds"], p["top5"], dict(zip(p["prob_index"].tolist(), p["probs"])),
                  [(int(i), m) for i, m in p["meta"]["skipped"]])
    if ev.skipped:
        names = ", ".join(ctx.dataset.names[i] for i, _ in ev.skipped[:3])
        ctx.log(f"warning: {len(ev.skipped)} unreadable images skipped (first: {names})")
    if len(ev.pred_index) == 0:
        raise SpecError("dataset.root", "no readable image in the dataset")
    return ev


def receptive_fields(ctx) -> dict:
    """{layer path: ReceptiveField} for every spatial layer, before the pass: analytic where the graph's ops
    are known, else the exact gradient support of a linearized copy (named in the log); the whole image, with
    a warning, only where torch.fx cannot trace the model or a layer is not in its graph."""
    size = ctx.model.input_size
    size = (size, size) if isinstance(size, int) else tuple(size)  # (H, W)
    spatial = [l for l in ctx.layers if len(l.output_shape) == 3]
    if not spatial:
        return {}
    try:
        fields = graph_receptive_fields(ctx.model.module, [l.path for l in spatial], size, ctx.model.channels)
    except ModelError:
        fields = {}
        for l in spatial:  # one layer's failure is not every layer's
            try:
                fields[l.path] = receptive_field(ctx.model.module, l.path, size, ctx.model.channels)
            except ModelError as exc:
                ctx.log(f"warning: receptive field of {l.name}: {exc}; its patches are the whole image")
                fields[l.path] = whole_image(l.path, size, tuple(l.output_shape[1:]))
    by_gradient = [l for l in spatial if fields[l.path].method == "gradient"]
    if by_gradient:
        ctx.log(f"receptive fields of {', '.join(l.name for l in by_gradient)} from the input gradient of a "
                f"linearized copy (exact): {fields[by_gradient[0].path].note}")
    return fields
