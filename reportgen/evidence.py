"""The dataset pass as a build stage: cached per layer, recorded in fixed shards split across ranks, plus the
layers' receptive fields.

`gather_evidence(ctx)` sets `ctx.evidence` (record.Evidence) and `ctx.evidence_key`; only layers without a
cached result are recorded, in one pass cut into shards of whole batches (`_sharded_pass`): each shard is
cached when done, so a killed build resumes with the missing shards only, and shards merge in shard order,
so 1 or N processes give the same bytes. `receptive_fields(ctx)` needs only the model (checked before the pass).
"""

import numpy as np
from tqdm import tqdm

from .artifacts import Cache
from .data import sample_indices
from .distributed import PeerLost, fixed_shards
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


def pass_params(ctx) -> dict:
    return ctx.spec.record.model_dump(mode="json") | {"samples": ctx.samples.tolist()}   # every record key


def pass_keys(ctx) -> tuple[str, dict[str, str]]:
    """(the pass's key, {layer path or PENULTIMATE: the cache key of its part}): known before the pass."""
    params = pass_params(ctx)
    keys = {l.path: ctx.key(RECORD_VERSION, "layer", l.path, params) for l in ctx.layers}
    keys[PENULTIMATE] = ctx.key(RECORD_VERSION, "predictions", params)
    return ctx.key(RECORD_VERSION, params), keys


def pass_cost(ctx) -> Work | None:
    """The pass's work for the up-front estimate: every image read and run forward, unless all is cached."""
    if all(ctx.cache.has("record", k) for k in pass_keys(ctx)[1].values()):
        return None
    return Work(forward=len(ctx.indices), batch=ctx.spec.dataset.batch_size, loads=len(ctx.indices))


def gather_evidence(ctx) -> None:
    ctx.evidence_key, keys = pass_keys(ctx)
    hits = {p: ctx.cache.load("record", k) for p, k in keys.items()}
    missing = {l.path: l.channels for l in ctx.layers if hits[l.path] is None}
    if not missing and hits[PENULTIMATE] is not None:
        ctx.log(f"dataset pass: reusing cached results for {len(ctx.layers)} layers")
    else:
        ev = _sharded_pass(ctx, missing)
        for path in missing:   # as stored: a cold build reads what a warm one would
            hits[path] = ctx.cache.save("record", keys[path], layer_to_arrays(ev.layers[path]))
        hits[PENULTIMATE] = ctx.cache.save("record", keys[PENULTIMATE], _predictions_to_arrays(ev))
        ctx.computed.append("record")
    ctx.evidence = _evidence(ctx, hits)


def _sharded_pass(ctx, layers: dict[str, int]) -> Evidence:
    """The pass over `layers` {path: channels}, in fixed shards (distributed.fixed_shards).

    Each shard is cached as soon as it is recorded, by whichever rank recorded it (so it outlives a rank that
    stops later); only shards that some rank cannot load are recorded, round-robin over the ranks; all are
    merged in shard order, so the evidence is the same bytes for any number of processes, and a resumed
    build records only the missing shards.
    """
    paths, what = list(layers), plan(ctx, layers)
    shards = fixed_shards(ctx.indices, ctx.spec.dataset.batch_size) or [ctx.indices]   # no image: one empty shard
    keys = [ctx.key(RECORD_VERSION, "shard", pass_params(ctx), paths, ctx.spec.dataset.batch_size, n)
            for n in range(len(shards))]
    cache = Cache(ctx.cache.root, ctx.cache.enabled)   # every rank writes its own shards
    found = {n: hit for n, k in enumerate(keys) if (hit := cache.load("record-shard", k)) is not None}
    try:
        # agreed before anyone records (so no rank sees another's fresh shard): what any rank lacks
        todo = sorted(set().union(*ctx.group.all_gather([n for n in range(len(shards)) if n not in found])))
        if len(shards) > 1:   # what a resumed build reuses
            ctx.log(f"dataset pass: {len(todo)} of {len(shards)} shards to record"
                    + (f" ({len(shards) - len(todo)} cached)" if len(todo) < len(shards) else ""))
        recorded, mine = {}, ctx.group.shard_list(todo, 1)
        with tqdm(total=sum(len(shards[n]) for n in mine), unit="img", desc="dataset pass", leave=False,
                  disable=not (ctx.progress and ctx.group.is_main)) as bar:   # one bar across the shards
            for n in mine:
                ev = record(ctx.model.module, ctx.model.normalize, ctx.dataset, shards[n], what, progress=bar)
                recorded[n] = cache.save("record-shard", keys[n], _to_arrays(ev, paths))
        for part in ctx.group.all_gather(recorded):
            found.update(part)
    except PeerLost as exc:
        cached = sum(cache.has("record-shard", k) for k in keys)
        raise PeerLost(exc.cause, "the dataset pass",
                       f"{cached} of {len(keys)} shards are cached; rerun to compute only the rest") from None
    ev = _from_arrays(found[0], paths)
    for n in range(1, len(shards)):   # shard order: float sums added in one order for any world size
        ev.merge(_from_arrays(found[n], paths))
    return ev


def _to_arrays(ev: Evidence, paths: list[str]) -> dict:
    """All of `ev` as plain arrays (layers by their position in `paths`); `_from_arrays` reads it back."""
    out = _predictions_to_arrays(ev)
    for n, path in enumerate(paths):
        out.update({f"l{n}_{k}": v for k, v in layer_to_arrays(ev.layers[path]).items()})
    return out


def _from_arrays(d: dict, paths: list[str]) -> Evidence:
    layers = {path: layer_from_arrays(_prefixed(d, f"l{n}_")) for n, path in enumerate(paths)}
    pen = _prefixed(d, "pen_")
    if pen:
        layers[PENULTIMATE] = layer_from_arrays(pen)
    return Evidence(layers, d["pred_index"], d["preds"], d["top5"], dict(zip(d["prob_index"].tolist(), d["probs"])),
                    [(int(i), m) for i, m in d["meta"]["skipped"]])


def _prefixed(d: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}


def _predictions_to_arrays(ev: Evidence) -> dict:
    order = sorted(ev.sample_probs)
    out = {"pred_index": ev.pred_index, "preds": ev.preds, "top5": ev.top5, "prob_index": np.array(order, np.int64),
           "probs": np.stack([ev.sample_probs[i] for i in order]) if order else np.zeros((0, 1)),
           "meta": {"skipped": [[int(i), m] for i, m in ev.skipped]}}
    if PENULTIMATE in ev.layers:
        out.update({f"pen_{k}": v for k, v in layer_to_arrays(ev.layers[PENULTIMATE]).items()})
    return out


def _evidence(ctx, hits: dict) -> Evidence:
    paths = [l.path for l in ctx.layers]
    ev = _from_arrays(hits[PENULTIMATE] | {f"l{n}_{k}": v for n, p in enumerate(paths) for k, v in hits[p].items()},
                      paths)
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
