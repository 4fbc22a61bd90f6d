"""The accuracy analysis against scikit-learn on logits from a direct forward of the demo model over the shipped
Fashion-MNIST test split; unreadable images left out; the reason it is absent when the labels are not the outputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, top_k_accuracy_score

from reportgen.analyses.accuracy import count_hits
from reportgen.pipeline import build
from reportgen.data import load_dataset, subset_indices
from reportgen.demo import fashion_cnn
from reportgen.idx import load_idx_split
from reportgen.render.filters import pct
from reportgen.spec import load_spec
from tests.helpers.tiny import FASHION_DIR, tiny_cnn, write_corrupt_image, write_imagefolder

DEMO_WEIGHTS = Path(fashion_cnn.__file__).with_name("fashion_cnn.pt")
LIMIT, SEED = 2000, 4
CLASSES = list(range(10))
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

FASHION_SPEC = f"""
seed: {SEED}
model:
  factory: reportgen.demo.fashion_cnn:build
  checkpoint: {DEMO_WEIGHTS}
  mean: [0.2860]
  std: [0.3530]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: {LIMIT}
layers:
  - name: block1_conv2
    filters: [0]
    embedding: none
accuracy:
  confusions: 7
"""


# every analysis registered (the pages expect their parts), the slow ones off: too few pooled points for t-SNE
QUICK = """
record: {pooled_limit: 20}
feature_vis: {enabled: false}
circuit: {enabled: false}
attribution: {enabled: false}
"""


def _build(tmp_path: Path, text: str) -> tuple[Path, dict]:
    (tmp_path / "spec.yaml").write_text(text + QUICK)
    out = build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda *_: None)
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    out, report = _build(tmp_path_factory.mktemp("accuracy"), FASHION_SPEC)
    images, labels = load_idx_split(FASHION_DIR, "test")
    idx = subset_indices(len(images), LIMIT, SEED)
    model = fashion_cnn.build()
    model.load_state_dict(torch.load(DEMO_WEIGHTS, weights_only=True))
    x = (torch.from_numpy(images[idx]).float().unsqueeze(1) / 255 - 0.2860) / 0.3530     # (N, 1, 28, 28)
    with torch.no_grad():
        logits = model.eval()(x).numpy()                                                 # (N, 10)
    return out, report, labels[idx].astype(np.int64), logits


def test_overall_and_per_class_equal_sklearn(fashion):
    _, report, y, logits = fashion
    acc = report["accuracy"]
    assert acc["images"] == LIMIT
    assert acc["top1"] == pytest.approx(top_k_accuracy_score(y, logits, k=1, labels=CLASSES), abs=1e-6)
    assert acc["top5"] == pytest.approx(top_k_accuracy_score(y, logits, k=5, labels=CLASSES), abs=1e-6)
    assert acc["top1"] < acc["top5"] < 1     # the check has something to tell apart

    cm = confusion_matrix(y, logits.argmax(1), labels=CLASSES)
    expected = {c: (int(cm[c].sum()), cm[c, c] / cm[c].sum(),
                    top_k_accuracy_score(y[y == c], logits[y == c], k=5, labels=CLASSES)) for c in CLASSES}
    got = {c["label"]: (c["images"], c["top1"], c["top5"]) for c in acc["classes"]}
    assert sorted(got) == CLASSES
    for c in CLASSES:
        assert got[c] == pytest.approx(expected[c], abs=1e-6)
    worst_first = sorted(CLASSES, key=lambda c: (expected[c][1], expected[c][2], c))
    assert [c["label"] for c in acc["classes"]] == worst_first
    assert [c["class"] for c in acc["classes"]] == [FASHION[c] for c in worst_first]


def test_confused_pairs_equal_sklearn(fashion):
    _, report, y, logits = fashion
    cm = confusion_matrix(y, logits.argmax(1), labels=CLASSES)
    pairs = sorted(((-cm[t, p], t, p) for t in CLASSES for p in CLASSES if t != p and cm[t, p]))[:7]
    got = report["accuracy"]["confusions"]
    assert [(c["label"], c["pred"], c["count"]) for c in got] == [(t, p, -n) for n, t, p in pairs]
    assert [c["share"] for c in got] == pytest.approx([-n / cm[t].sum() for n, t, p in pairs], abs=1e-6)


def test_overview_shows_it(fashion):
    out, report, _, _ = fashion
    acc, page = report["accuracy"], (out / "index.html").read_text()
    assert f"{pct(acc['top1'])} (top-5: {pct(acc['top5'])}) on these {LIMIT} images" in page
    assert 'id="accuracy-h">Accuracy by class</h2>' in page
    worst, pair = acc["classes"][0], acc["confusions"][0]
    assert f"<td>{worst['class']}</td><td class=\"num\">{worst['images']}</td>" in page
    assert f"<td>{pair['class']}</td><td>{pair['pred_class']}</td><td class=\"num\">{pair['count']}</td>" in page


TINY_FOLDER_SPEC = """
model:
  factory: tests.helpers.tiny:tiny_cnn
  mean: [0.5]
  std: [0.25]
  input_size: 28
  channels: 1
dataset:
  format: imagefolder
  root: data
layers:
  - name: features.c3
    filters: [0]
    embedding: none
"""


def test_unreadable_images_are_left_out(tmp_path):
    names = [f"c{i}" for i in range(10)]                 # ten folders: the tiny model's ten outputs
    write_imagefolder(tmp_path / "data", per_class=3, classes=names, size=(28, 28))
    write_corrupt_image(tmp_path / "data" / "c4" / "broken.png")
    _, report = _build(tmp_path, TINY_FOLDER_SPEC)
    assert report["dataset"]["skipped_count"] == 1
    dataset = load_dataset(load_spec(tmp_path / "spec.yaml").dataset, (28, 28), (28, 28), 1)
    readable = [i for i in range(dataset.size) if not dataset.names[i].endswith("broken.png")]
    x = (torch.from_numpy(np.stack([dataset.image(i) for i in readable])).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        preds = tiny_cnn().eval()(x).argmax(1).numpy()
    y = dataset.labels[readable]
    acc = report["accuracy"]
    assert acc["images"] == 30 and {c["label"]: c["images"] for c in acc["classes"]}[4] == 3
    assert acc["top1"] == pytest.approx((preds == y).mean(), abs=1e-6)


def test_absent_when_the_outputs_are_not_the_datasets_classes(tmp_path):
    write_imagefolder(tmp_path / "data", per_class=2, classes=("cat", "dog"), size=(28, 28))
    out, report = _build(tmp_path, TINY_FOLDER_SPEC)
    reason = "the model's 10 outputs are not the dataset's 2 classes: no accuracy to state"
    assert report["accuracy"] is None
    assert next(a for a in report["analyses"] if a["name"] == "accuracy") == {
        "name": "accuracy", "version": 1, "absent": reason}
    page = (out / "index.html").read_text()
    assert f"<dt>Accuracy</dt><dd>not stated: {reason.replace(chr(39), '&#39;')}</dd>" in page
    assert "Accuracy by class" not in page


def many_class_net() -> torch.nn.Module:
    """3×28×28 → 25 outputs: more classes than the overview's table lists."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 25))


def test_many_classes_the_page_lists_the_worst(tmp_path):
    write_imagefolder(tmp_path / "data", per_class=2, classes=[f"k{i:02d}" for i in range(25)], size=(28, 28))
    spec = TINY_FOLDER_SPEC.replace("tests.helpers.tiny:tiny_cnn", "tests.analyses.test_accuracy:many_class_net")
    spec = spec.replace("channels: 1", "channels: 3").replace("features.c3", "'0'")
    out, report = _build(tmp_path, spec.replace("[0.5]", "[0.5, 0.5, 0.5]").replace("[0.25]", "[0.25, 0.25, 0.25]"))
    acc = report["accuracy"]
    assert len(acc["classes"]) == 25 and acc["top5"] is not None          # every class in report.json
    page = (out / "index.html").read_text()
    section = page[page.index('id="accuracy-h"'):page.index("</section>", page.index('id="accuracy-h"'))]
    assert "The 20 classes with the lowest top-1 accuracy of the 25 in the dataset" in section
    listed = [row.split("</td>")[0] for row in section.split("<tr><td>")[1:]]
    assert listed[:20] == [c["class"] for c in acc["classes"][:20]]
    assert len(listed) == 20 + len(acc["confusions"])

def test_counts_by_hand():
    """Five images, three outputs: no top-5 (every image would be a hit); tied pairs ordered by true, predicted."""
    labels, preds = np.array([0, 0, 1, 2, 2]), np.array([0, 2, 0, 1, 0])
    got = count_hits(labels, preds, np.zeros((5, 3), np.int64), outputs=3)
    assert sorted(got) == ["images", "pair_counts", "pairs", "top1"]
    assert got["images"].tolist() == [2, 1, 2] and got["top1"].tolist() == [1, 0, 0]
    assert got["pairs"].tolist() == [[0, 2], [1, 0], [2, 0], [2, 1]] and got["pair_counts"].tolist() == [1, 1, 1, 1]
