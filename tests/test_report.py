"""The Report against independent computations: pooled and penultimate features, explorer points and
trustworthiness, the nearest-neighbour panel, patches and their boxes, attribution maps and the NPZ."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness

from reportgen.pipeline import build, prepare
from reportgen.data import subset_indices
from reportgen.evidence import gather_evidence
from reportgen.idx import load_idx_split
from reportgen.record import PENULTIMATE
from reportgen.spec import load_spec
from tests.helpers.tiny import FASHION_DIR, tiny_cnn

SPEC = f"""
title: report checks
seed: 4
model:
  factory: tests.helpers.tiny:tiny_cnn
  mean: [0.5]
  std: [0.25]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 200
  samples: 2
layers:
  - name: features.c3
    filters: [0, 1]
    embedding: pca
feature_vis: {{enabled: false}}
circuit: {{enabled: false}}
attribution: {{images: 3, methods: [saliency, occlusion], sanity_check: false}}
"""
LAYER = "features.c3"     # a module path names that module (Keras aliases name the ReLU after a conv)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    (tmp / "spec.yaml").write_text(SPEC)
    spec = load_spec(tmp / "spec.yaml")
    out = build(spec, progress=False, log=lambda *_: None)
    return spec, out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def direct():
    """Every used image through the model by hand: indices, raw images, c3 outputs, fc inputs, logits."""
    images, labels = load_idx_split(FASHION_DIR, "test")
    idx = subset_indices(len(images), 200, seed=4)
    x = (torch.from_numpy(images[idx]).float().unsqueeze(1) / 255 - 0.5) / 0.25
    model = tiny_cnn().eval()
    got = {}
    hooks = [model.features.c3.register_forward_hook(lambda m, i, o: got.update(c3=o.clone())),
             model.fc.register_forward_pre_hook(lambda m, i: got.update(fc_in=i[0].clone()))]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return {"index": idx, "images": images, "labels": labels, "c3": got["c3"].numpy(),
            "fc_in": got["fc_in"].numpy(), "logits": logits, "model": model}


def test_pooled_and_penultimate_features_match_a_direct_forward(built, direct):
    spec = built[0]
    ctx = prepare(spec, log=lambda *_: None)
    ctx.progress = False
    gather_evidence(ctx)
    order = np.argsort(direct["index"])
    idx, pooled = ctx.evidence.layers[LAYER].pooled_array()
    assert idx.tolist() == direct["index"][order].tolist()
    np.testing.assert_allclose(pooled, direct["c3"].mean((2, 3))[order], rtol=1e-5, atol=1e-6)
    pidx, pen = ctx.evidence.layers[PENULTIMATE].pooled_array()
    assert pidx.tolist() == idx.tolist()
    np.testing.assert_allclose(pen, direct["fc_in"][order], rtol=1e-5, atol=1e-6)


def test_explorer_points_and_trustworthiness(built, direct):
    report = built[2]
    ex = report["layers"][0]["explorer"]
    (pca,) = ex["explorers"]
    pts = np.array(pca["points"])                                  # [x, y, dataset_index, label, pred]
    order = np.argsort(direct["index"])
    feats = direct["c3"].mean((2, 3))[order]
    assert pts[:, 2].astype(int).tolist() == direct["index"][order].tolist()
    assert pts[:, 3].astype(int).tolist() == direct["labels"][direct["index"][order]].tolist()
    preds = direct["logits"].argmax(1).numpy()[order]
    assert pts[:, 4].astype(int).tolist() == preds.tolist()
    ref = PCA(2, svd_solver="full").fit_transform(feats)
    for axis in range(2):   # a principal axis is defined up to its sign
        sign = np.sign(np.dot(ref[:, axis], pts[:, axis]))
        np.testing.assert_allclose(pts[:, axis], sign * ref[:, axis], atol=2e-4)
    assert pca["trustworthiness"] == pytest.approx(trustworthiness(feats, pts[:, :2], n_neighbors=10), abs=2e-3)


def test_nearest_neighbour_panel(built, direct):
    report = built[2]
    rows = report["layers"][0]["explorer"]["neighbours"]
    order = np.argsort(direct["index"])
    used = direct["index"][order]
    feats = direct["c3"].mean((2, 3))[order].astype(np.float64)
    pixels = direct["images"][used].reshape(len(used), -1).astype(np.float64)
    labels = direct["labels"][used]
    assert len(rows) == 8
    for row in rows:
        q = int(np.flatnonzero(used == row["query"]["dataset_index"])[0])
        for space, data in (("feature", feats), ("pixel", pixels)):
            d = ((data - data[q]) ** 2).sum(1)
            d[q] = np.inf
            expected = used[np.argsort(d, kind="stable")[:8]]
            got = [n["dataset_index"] for n in row[space]]
            assert got == expected.tolist(), space
            same = np.mean(labels[np.isin(used, got)] == labels[q])
            assert row[f"{space}_same"] == pytest.approx(same, abs=1e-4)


def test_top_images_patches_and_boxes(built, direct):
    _, out, report = built
    order = np.argsort(direct["index"])
    used, c3 = direct["index"][order], direct["c3"][order]          # (N, 8, 14, 14)
    for f in report["layers"][0]["filters"]:
        maps = c3[:, f["index"]]
        best = np.argsort(-maps.reshape(len(used), -1).max(1), kind="stable")[:len(f["top_images"])]
        assert [t["dataset_index"] for t in f["top_images"]] == used[best].tolist()
        for t, p in zip(f["top_images"], f["top_patches"]):
            n = int(np.flatnonzero(used == t["dataset_index"])[0])
            y, x = np.unravel_index(int(np.argmax(maps[n])), maps[n].shape)
            assert t["location"] == [int(y), int(x)]
            assert t["score"] == pytest.approx(float(maps[n].max()), rel=1e-5)
            # by hand: conv3 p1 ← pool 2 ← conv3 p1 ← conv3 p1: rows 2y-4 … 2y+5 of the 28 px input, clipped
            box = [max(0, 2 * x - 4), max(0, 2 * y - 4), min(28, 2 * x + 6), min(28, 2 * y + 6)]
            assert p["box"] == box and p["dataset_index"] == t["dataset_index"]
            crop = np.asarray(Image.open(out / p["patch"]))
            img = direct["images"][t["dataset_index"]]
            np.testing.assert_array_equal(crop.reshape(crop.shape[0], crop.shape[1], -1)[..., 0],
                                          img[box[1]:box[3], box[0]:box[2]])


def test_attribution_maps_match_the_npz_and_a_direct_gradient(built, direct):
    _, out, report = built
    a = report["attribution"]
    npz = np.load(out / a["npz"])
    assert sorted(npz.files) == sorted(r["array"] for r in a["records"])
    assert {r["method"] for r in a["records"]} == {"saliency", "occlusion"}
    model = direct["model"]
    for r in a["records"]:
        assert (out / r["image"]).is_file()
        i = r["dataset_index"]
        x = ((torch.from_numpy(direct["images"][[i]]).float().unsqueeze(1) / 255 - 0.5) / 0.25).requires_grad_()
        logits = model(x)
        assert r["target"] == int(logits.argmax(1)) and r["target_kind"] == "predicted"
        assert r["prob"] == pytest.approx(float(logits.detach().softmax(1)[0, r["target"]]), abs=1e-4)
        if r["method"] == "saliency":
            (g,) = torch.autograd.grad(logits[0, r["target"]], x)
            np.testing.assert_allclose(npz[r["array"]], g.abs()[0, 0].numpy(), rtol=1e-4, atol=1e-6)
        else:
            assert npz[r["array"]].shape == (28, 28)


def test_sanity_check_similarity_is_spearman_against_the_seeded_randomized_model(tmp_path, direct):
    """The report's randomized_similarity: |saliency| of the model against |saliency| of its copy re-initialized
    from the spec's seed, ranked (scipy), image by image."""
    from scipy.stats import spearmanr

    from reportgen.analyses.attribution import randomized_copy

    (tmp_path / "spec.yaml").write_text(SPEC.replace("methods: [saliency, occlusion], sanity_check: false",
                                                     "methods: [saliency], sanity_check: true"))
    out = build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda *_: None)
    records = json.loads((out / "report.json").read_text())["attribution"]["records"]
    model = direct["model"]
    randomized = randomized_copy(model, 4)
    assert len(records) == 3
    for r in records:
        x = ((torch.from_numpy(direct["images"][[r["dataset_index"]]]).float().unsqueeze(1) / 255 - 0.5) / 0.25)
        maps = []
        for m in (model, randomized):
            xx = x.clone().requires_grad_()
            (g,) = torch.autograd.grad(m(xx)[0, r["target"]], xx)
            maps.append(g.abs()[0, 0].numpy().ravel())
        assert r["randomized_similarity"] == pytest.approx(spearmanr(*maps).statistic, abs=2e-3)
