"""The streaming pass: exact shard merge, no hook left behind, evidence equal to a direct computation."""

import numpy as np
import pytest
import torch

from reportgen.topk import merge_topk
from reportgen.data import load_dataset
from reportgen.record import HIST_EDGES, RecordPlan, record
from reportgen.spec import DatasetSpec
from tests.helpers.tiny import FASHION_DIR, tiny_cnn

LAYERS = {"features.r2": 6, "features.c3": 8}


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn().eval()
    ds = load_dataset(DatasetSpec(format="fashion-mnist", root=FASHION_DIR), 28, 28, 1)
    norm = lambda x: (x.float() / 255 - 0.5) / 0.25  # noqa: E731
    return model, ds, norm


def run(setup, indices, **kw):
    model, ds, norm = setup
    plan = RecordPlan(LAYERS, num_classes=10, k=5, negatives=True, pooled=set(range(0, 10000, 3)),
                      samples={4, 77, 130}, batch_size=16, **kw)
    return record(model, norm, ds, indices, plan, progress=False)


def test_shards_merge_exactly(setup):
    indices = np.arange(0, 480, 2)                      # 240 images, 15 batches of 16
    whole = run(setup, indices)
    parts = [run(setup, indices[s]) for s in (slice(0, 96), slice(96, 176), slice(176, None))]
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    for path in LAYERS:
        a, b = whole.layers[path], merged.layers[path]
        for x, y in [(a.top.scores, b.top.scores), (a.top.index, b.top.index), (a.top.loc, b.top.loc),
                     (a.bottom.index, b.bottom.index), (a.hist, b.hist), (a.class_count, b.class_count)]:
            assert np.array_equal(x, y)
        assert np.allclose(a.class_sum, b.class_sum, rtol=1e-12)
        assert np.array_equal(a.pooled_array()[0], b.pooled_array()[0])
        assert np.array_equal(a.pooled_array()[1], b.pooled_array()[1])
        assert a.sample_maps.keys() == b.sample_maps.keys() == {4, 130}
    assert np.array_equal(whole.pred_index, merged.pred_index) and np.array_equal(whole.preds, merged.preds)
    assert np.array_equal(whole.top5, merged.top5)


def test_evidence_matches_direct_forward(setup):
    model, ds, norm = setup
    indices = np.arange(200)
    ev = run(setup, indices)
    x = norm(torch.from_numpy(np.stack([ds.image(i) for i in indices])))
    out = {}
    hooks = [dict(model.named_modules())[p].register_forward_hook(lambda m, i, o, p=p: out.update({p: o.clone()}))
             for p in LAYERS]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    for path in LAYERS:
        flat = out[path].flatten(2)
        mx, loc = flat.max(2)
        e = ev.layers[path]
        for f in range(LAYERS[path]):
            order = np.lexsort((indices, -mx[:, f].numpy()))[:5]
            assert e.top.index[:, f].tolist() == indices[order].tolist()
            assert e.top.loc[:, f].tolist() == loc[order, f].tolist()
            low = np.lexsort((indices, mx[:, f].numpy()))[:5]
            assert e.bottom.index[:, f].tolist() == indices[low].tolist()
        expected_hist = np.stack([np.bincount(np.searchsorted(HIST_EDGES, mx[:, f].numpy(), side="left"),
                                              minlength=len(HIST_EDGES) + 1) for f in range(LAYERS[path])])
        assert np.array_equal(e.hist, expected_hist)
        assert np.allclose(e.sample_maps[77].astype(np.float32), out[path][77].numpy(), atol=1e-2)
    assert np.array_equal(ev.preds, logits.argmax(1).numpy())
    assert np.array_equal(ev.top5, logits.topk(5, 1).indices.numpy())


def test_no_hook_remains_even_on_error(setup):
    model, ds, norm = setup

    def broken(x):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        record(model, broken, ds, np.arange(4), RecordPlan(LAYERS, num_classes=10), progress=False)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_merge_topk_breaks_ties_by_index():
    scores = np.array([[1.0], [2.0], [1.0], [2.0]], np.float32)
    index = np.array([[9], [7], [3], [8]])
    s, i, _ = merge_topk(scores, index, index, k=3)
    assert i[:, 0].tolist() == [7, 8, 3]
