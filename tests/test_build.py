"""A whole build on a tiny model and the shipped Fashion-MNIST split; report.json checked by direct computation."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from reportgen.pipeline import build
from reportgen.data import subset_indices
from reportgen.idx import load_idx_split
from reportgen.spec import load_spec
from tests.helpers.tiny import FASHION_DIR, tiny_cnn

SPEC = f"""
title: tiny <b>report</b>
seed: 1
model:
  factory: tests.helpers.tiny:tiny_cnn
  mean: [0.5]
  std: [0.25]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 300
  samples: 3
layers:
  - name: block1_conv2
    filters: [0, 3, 5]
  - name: features.c3
    filters: all
feature_vis: {{enabled: false}}
circuit: {{enabled: true}}
attribution: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    (tmp / "spec.yaml").write_text(SPEC)
    out = build(load_spec(tmp / "spec.yaml"), progress=False, log=lambda *_: None)
    return out, json.loads((out / "report.json").read_text())


def direct_outputs(layer_path):
    """Every used image through the model by hand: (indices, (N, C, H, W) outputs, logits)."""
    images, labels = load_idx_split(FASHION_DIR, "test")
    idx = subset_indices(len(images), 300, seed=1)
    x = (torch.from_numpy(images[idx]).float().unsqueeze(1) / 255 - 0.5) / 0.25
    model = tiny_cnn().eval()
    got = {}
    handle = dict(model.named_modules())[layer_path].register_forward_hook(lambda m, i, o: got.update(out=o.clone()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    return idx, labels, got["out"], logits


def test_top_images_match_direct_computation(site):
    _, report = site
    idx, labels, out, _ = direct_outputs("features.r2")   # block1_conv2 = conv c2 + its ReLU
    scores = out.flatten(2).max(2).values.numpy()         # (N, C)
    layer = report["layers"][0]
    assert layer["path"] == "features.r2"
    for f in layer["filters"]:
        s = scores[:, f["index"]]
        order = np.lexsort((idx, -s))[:9]                  # by score, ties by dataset index
        assert [t["dataset_index"] for t in f["top_images"]] == idx[order].tolist()
        assert np.allclose([t["score"] for t in f["top_images"]], s[order], rtol=1e-4)
        assert [t["label"] for t in f["top_images"]] == labels[idx[order]].tolist()


def test_top_classes_match_direct_computation(site):
    _, report = site
    idx, labels, out, _ = direct_outputs("features.c3")
    means = out.mean((2, 3)).numpy()
    for f in report["layers"][1]["filters"]:
        per_class = np.array([means[labels[idx] == c, f["index"]].mean() for c in range(10)])
        best = np.argsort(-per_class, kind="stable")[:5]
        assert [c["label"] for c in f["top_classes"]] == best.tolist()
        assert np.allclose([c["mean"] for c in f["top_classes"]], per_class[best], rtol=1e-4)


def read_idx(path):
    """An IDX file read by hand (big-endian dims after a 4-byte magic whose last byte is the rank)."""
    data = gzip.decompress(path.read_bytes())
    dims = struct.unpack(f">{data[3]}I", data[4:4 + 4 * data[3]])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(dims)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def test_accuracy_and_samples(site):
    out, report = site
    idx, labels, _, logits = direct_outputs("features.c3")
    assert report["accuracy"]["top1"] == pytest.approx((logits.argmax(1).numpy() == labels[idx]).mean(), abs=1e-6)
    assert report["dataset"] | {"fingerprint": None} == report["dataset"] | {
        "format": "fashion-mnist", "size": 10000, "used": 300, "fingerprint": None}
    assert report["model"]["num_classes"] == 10 and len(report["model"]["sha256"]) == 64

    # every sample's prediction, recomputed apart from reportgen: the IDX files read by hand, the model called once
    images = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    truth = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    samples = report["samples"]
    at = [s["dataset_index"] for s in samples]
    assert len(samples) == 3 and len(set(at)) == 3 and set(at) <= set(idx.tolist())
    x = (torch.from_numpy(images[at].copy()).float().unsqueeze(1) / 255 - 0.5) / 0.25     # (3, 1, 28, 28)
    with torch.no_grad():
        probs = tiny_cnn().eval()(x).softmax(1).numpy()                                  # (3, 10)
    from PIL import Image
    for s, p in zip(samples, probs):
        i, top = s["dataset_index"], np.argsort(-p, kind="stable")[:3]
        assert (s["label"], s["class"]) == (int(truth[i]), FASHION_CLASSES[truth[i]])
        assert (s["pred"], s["pred_class"]) == (int(top[0]), FASHION_CLASSES[top[0]])
        assert [t["label"] for t in s["top3"]] == top.tolist()
        assert [t["class"] for t in s["top3"]] == [FASHION_CLASSES[c] for c in top]
        assert [t["prob"] for t in s["top3"]] == pytest.approx(p[top].tolist(), rel=1e-3)   # 4 significant digits
        assert np.array_equal(np.asarray(Image.open(out / s["image"])), images[i])       # the image shown is it


def test_pages_exist_links_relative_and_escaped(site):
    out, report = site
    index = (out / "index.html").read_text()
    assert "tiny &lt;b&gt;report&lt;/b&gt;" in index and "<b>report</b>" not in index
    for layer in report["layers"]:
        assert (out / layer["page"]).is_file()
        for f in layer["filters"]:
            page = (out / f["page"]).read_text()
            assert 'href="../../index.html"' in page
            for t in f["top_images"]:
                assert (out / t["image"]).is_file()
    assert len(report["layers"][1]["filters"]) == 8          # 'all' on an 8-channel layer
    for html in out.rglob("*.html"):
        text = html.read_text()
        assert "http://" not in text and "https://" not in text and 'src="/' not in text and 'href="/' not in text


def test_circuit_ranking_matches_the_weights(site):
    """L2 ranking, kinds and contributions in report.json, recomputed independently from the weights."""
    _, report = site
    conv = tiny_cnn().features.c3                       # features.c3 = a conv without BN: weights as stored
    w = conv.weight.detach().numpy()                    # (8, 6, 3, 3)
    idx, labels, _, _ = direct_outputs("features.c3")
    for f in report["layers"][1]["filters"]:
        k = w[f["index"]]
        l2 = np.sqrt((k ** 2).sum((1, 2)))
        order = [int(c) for c in np.argsort(-l2, kind="stable") if l2[c] >= 1e-5][:10]
        got = f["circuits"]["terms"][0]["conv"]["channels"]
        assert [c["channel"] for c in got] == order
        for c in got:
            kern = k[c["channel"]]
            pos, neg = int((kern > 0).sum()), int((kern < 0).sum())
            assert c["l2"] == pytest.approx(l2[c["channel"]], rel=1e-4)
            assert c["sum"] == pytest.approx(kern.sum(), rel=1e-4, abs=1e-6)
            assert c["kind_count"] == ("excitatory" if pos > neg else "inhibitory" if neg > pos else "balanced")
            assert c["kind_sum"] == ("excitatory" if kern.sum() > 1e-5 else "inhibitory" if kern.sum() < -1e-5
                                     else "balanced")
        # contributions + bias = the conv output at each top image's argmax (averaged over the top images);
        # every one of c3's 6 input channels is listed (top_n 10), so the sum is complete
        assert len(got) == 6
        mean_pre = np.mean([t["score"] for t in f["top_images"]])
        total = sum(c["contribution"] for c in got)
        assert total + float(conv.bias[f["index"]].detach()) == pytest.approx(mean_pre, rel=1e-3, abs=1e-4)


def test_circuit_sources_name_the_report_layer(site):
    """c3 reads p1 = max-pool of c2's ReLU: the traced producer of every input channel is features.r2, which the
    report shows as layer block1_conv2, whether or not that channel has a filter page."""
    _, report = site
    assert (report["layers"][0]["name"], report["layers"][0]["path"]) == ("block1_conv2", "features.r2")
    for f in report["layers"][1]["filters"]:
        assert [(c["channel"], c["sources"][0]["layer"]) for c in f["circuits"]["terms"][0]["conv"]["channels"]] == [
            (c["channel"], "block1_conv2") for c in f["circuits"]["terms"][0]["conv"]["channels"]]


def test_feature_vis_variants_and_plain_on_the_filter_page(tmp_path):
    spec_text = SPEC.replace("feature_vis: {enabled: false}",
                             "feature_vis: {steps: 6, variants: 2, diversity: 0.5, compare_plain: true}")
    spec_text = spec_text.replace("    filters: all\n", "    filters: [1]\n")
    (tmp_path / "spec.yaml").write_text(spec_text)
    out = build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda *_: None)
    report = json.loads((out / "report.json").read_text())
    fv = report["layers"][1]["filters"][0]["feature_vis"]
    assert fv["steps"] == 6 and fv["size"] == [28, 28] and len(fv["variants"]) == 1 and fv["plain"]
    from PIL import Image
    first, second = (np.asarray(Image.open(out / p)) for p in (fv["image"], fv["variants"][0]["image"]))
    assert first.shape == (28, 28) and not np.array_equal(first, second)
    page = (out / report["layers"][1]["filters"][0]["page"]).read_text()
    assert "Variant 2 (diversity term)" in page and "Plain ascent, no regularizers" in page
