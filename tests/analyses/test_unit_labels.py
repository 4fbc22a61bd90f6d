"""Unit labels: a network with planted detectors (tests/helpers/planted_detectors.py) built through a real
build gets exactly its planted labels; every AUC equals scikit-learn's on arrays recomputed independently
(the model run by hand, the targets from the IDX labels and the pixels); the beam search finds what an
exhaustive enumeration finds; the p-value is calibrated; a bad concepts file is a one-line SpecError."""

import itertools
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from reportgen.analyses import unit_labels as ul
from reportgen.pipeline import build
from reportgen.errors import SpecError
from reportgen.idx import load_idx_split
from reportgen.spec import load_spec
from tests.helpers.planted_detectors import MEAN, PLANTED, RANDOM_UNIT, STD, is_dark, planted_cnn
from tests.helpers.tiny import FASHION_DIR

SPEC = f"""
title: planted
seed: 0
model:
  factory: tests.helpers.planted_detectors:planted_cnn
  mean: [{MEAN}]
  std: [{STD}]
  input_size: 28
  classes: [T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot]
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 3000
  samples: 1
  concepts: concepts.csv
layers:
  - name: detectors
    filters: [0, 1, 2, 3, 4]
    embedding: none
feature_vis: {{enabled: false}}
circuit: {{enabled: false}}
attribution: {{enabled: false}}
concepts: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unit_labels")
    images, _ = load_idx_split(FASHION_DIR, "test")
    rows = [f"test[{i}],dark" for i in np.flatnonzero(is_dark(images))]
    (tmp / "concepts.csv").write_text("image,concepts\n" + "\n".join(rows) + "\n")
    (tmp / "spec.yaml").write_text(SPEC)
    out = build(load_spec(tmp / "spec.yaml"), progress=False, log=lambda *_: None)
    return out, json.loads((out / "report.json").read_text())


def test_planted_units_get_exactly_their_labels(built):
    _, report = built
    layer = report["layers"][0]
    units = layer["unit_labels"]["units"]
    for u, text in PLANTED.items():
        assert units[u]["significant"] and units[u]["label"]["text"] == text and units[u]["auc"] >= 0.95, units[u]
    assert not units[RANDOM_UNIT]["significant"]
    filters = {f["index"]: f["unit_labels"] for f in layer["filters"]}
    assert filters[2]["label"]["terms"] == [{"target": 8, "name": "Bag", "negated": False},
                                            {"target": 10, "name": "dark", "negated": False}]
    assert filters[3]["label"]["ops"] == ["AND"] and filters[3]["label"]["terms"][1]["negated"]
    summary = layer["unit_labels"]
    assert summary["labelled"] == sum(u["significant"] for u in units) and len(units) == layer["channels"]
    trouser = next(c for c in summary["classes"] if c["name"] == "Trouser")
    assert 0 in trouser["detectors"] and trouser["selective"][0]["unit"] == 0
    assert report["unit_labels"]["classes"][1]["unit"] == 0      # the best Trouser unit of the model


def _pooled_by_hand(index: np.ndarray) -> np.ndarray:
    """The `detectors` layer's pooled output on the images, by running the model (not the dataset pass)."""
    images, _ = load_idx_split(FASHION_DIR, "test")
    model, got = planted_cnn(), []
    handle = model.detectors.register_forward_hook(lambda _m, _i, out: got.append(out.mean((2, 3))))
    x = (torch.from_numpy(images[index]).float()[:, None] / 255 - MEAN) / STD
    with torch.no_grad():
        for s in range(0, len(x), 500):
            model(x[s:s + 500])
    handle.remove()
    return torch.cat(got).numpy()


def test_aucs_equal_scikit_learn_on_independently_recomputed_arrays(built):
    out, report = built
    layer = report["layers"][0]
    data = np.load(out / layer["unit_labels"]["data"])
    index = data["dataset_index"]
    assert len(index) == layer["unit_labels"]["images"] == 3000
    activation = _pooled_by_hand(index)
    np.testing.assert_allclose(data["activation"], activation, rtol=1e-5, atol=1e-7)
    images, labels = load_idx_split(FASHION_DIR, "test")
    columns = {t: labels[index] == t for t in range(10)} | {10: is_dark(images[index])}   # classes, then "dark"
    units = layer["unit_labels"]["units"]
    for u in np.random.default_rng(0).choice(len(units), 20, replace=False):
        label = units[u]["label"]
        holds = columns[label["terms"][0]["target"]]
        for op, term in zip(label["ops"], label["terms"][1:]):
            col = ~columns[term["target"]] if term["negated"] else columns[term["target"]]
            holds = holds & col if op == "AND" else holds | col
        assert units[u]["positives"] == holds.sum()
        assert units[u]["auc"] == pytest.approx(roc_auc_score(holds, activation[:, u]), abs=1e-4)


def test_filter_evidence_matches_references(built):
    out, report = built
    layer = report["layers"][0]
    data = np.load(out / layer["unit_labels"]["data"])
    x, targets = data["activation"], data["targets"]
    f = next(f for f in layer["filters"] if f["index"] == 1)["unit_labels"]
    holds = targets[:, 5] | targets[:, 7]
    fpr, tpr, _ = roc_curve(holds, x[:, 1], drop_intermediate=False)
    np.testing.assert_allclose(f["roc"]["tpr"], np.interp(f["roc"]["fpr"], fpr, tpr), atol=1e-3)
    means = [x[targets[:, c], 1].mean() for c in range(10)]
    np.testing.assert_allclose([c["mean"] for c in f["class_means"]], means, rtol=1e-5)


def _formulas(n_targets: int, max_terms: int):
    """Every left-to-right formula of up to `max_terms` distinct targets: (terms, ops) as the search writes them."""
    ops = {"AND": False, "OR": False, "AND NOT": True}
    for k in range(1, max_terms + 1):
        for targets in itertools.permutations(range(n_targets), k):
            for joins in itertools.product(ops, repeat=k - 1):
                terms = [ul.Term(targets[0])] + [ul.Term(t, ops[j]) for t, j in zip(targets[1:], joins)]
                yield ul.UnitLabel(terms, [j.split()[0] for j in joins], 0, 1, False, 0)


def test_beam_search_finds_the_exhaustive_best():
    """With a beam wider than every formula, the search's pick is the exhaustive best (with scikit-learn's AUC),
    shorter formulas kept unless a longer one gains MIN_GAIN."""
    rng = np.random.default_rng(3)
    n, t = 400, 4
    matrix = rng.random((n, t)) < [0.5, 0.3, 0.4, 0.2]
    scores = rng.normal(size=(n, 6))
    scores[:, 0] += 2 * (matrix[:, 0] & ~matrix[:, 2])
    scores[:, 1] += 2 * (matrix[:, 1] | matrix[:, 3])
    scores[:, 2] += 1.0 * ((matrix[:, 0] | matrix[:, 1]) & matrix[:, 3])
    names = list("abcd")
    got = ul.label_scores(scores, ul.Targets(matrix, names), ul.LabelSettings(permutations=99, beam=200))
    least = np.ceil(ul.MIN_SHARE * n)
    for u in range(scores.shape[1]):
        best = {}
        for f in _formulas(t, 3):
            holds = f.mask(matrix)
            if least <= holds.sum() <= n - least:
                auc = roc_auc_score(holds, scores[:, u])
                k = len(f.terms)
                best[k] = max(best.get(k, -1), auc)
        chosen = best[1]
        for k in (2, 3):
            if best[k] >= chosen + ul.MIN_GAIN:
                chosen = best[k]
        assert got[u].auc == pytest.approx(chosen, abs=1e-12), (u, got[u].text(names))
        assert got[u].auc == pytest.approx(roc_auc_score(got[u].mask(matrix), scores[:, u]), abs=1e-12)
    assert got[0].text(names) == "a AND NOT c" and got[1].text(names) == "b OR d"


@pytest.mark.parametrize("ties", [False, True])
def test_p_value_is_calibrated(ties):
    """Units of noise, independent of the classes: significant at alpha at most about alpha of the time (the
    search-corrected p-value; with ties, a ReLU unit silent on half the images, conservative)."""
    _, labels = load_idx_split(FASHION_DIR, "test")
    alpha, runs, units, n = 0.05, 20, 50, 500
    hits = 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        y = labels[rng.choice(len(labels), n, replace=False)]
        scores = rng.normal(size=(n, units))
        if ties:
            scores = np.maximum(scores, 0)
        got = ul.label_scores(scores, ul.Targets(np.eye(10, dtype=bool)[y], [str(c) for c in range(10)]),
                              ul.LabelSettings(alpha=alpha, min_auc=0.5, permutations=199, seed=seed))
        hits += sum(g.significant for g in got)     # min_auc 0.5: the p-value alone decides
    rate = hits / (runs * units)
    assert rate <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / (runs * units))
    assert rate >= (0.0 if ties else alpha / 4)   # not blind either


def test_a_significant_but_weak_unit_gets_no_label():
    """On 5000 images a unit that only leans to a class (AUC about 0.6) has p far below alpha, yet is no detector:
    it is labelled at min_auc 0.5 and not at the default 0.75, while a strong unit is labelled at both."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, 5000)
    weak = rng.normal(size=5000) + 0.36 * (y == 2)          # AUC ≈ Φ(0.36/√2) ≈ 0.60
    strong = rng.normal(size=5000) + 3.0 * (y == 2)
    targets = ul.Targets(np.eye(10, dtype=bool)[y], [str(c) for c in range(10)])
    scores = np.stack([weak, strong], 1)
    lax = ul.label_scores(scores, targets, ul.LabelSettings(min_auc=0.5, permutations=199))
    default = ul.label_scores(scores, targets, ul.LabelSettings(permutations=199))
    assert roc_auc_score(y == 2, weak) < 0.65 and lax[0].p_value <= 0.01 and lax[0].significant
    assert not default[0].significant and default[0].p_value == lax[0].p_value
    assert lax[1].significant and default[1].significant and default[1].text(targets.names) == "2"


def test_text_brackets_where_the_operator_changes():
    label = ul.UnitLabel([ul.Term(0), ul.Term(1), ul.Term(2, True)], ["OR", "AND"], 0.9, 0.01, True, 5)
    assert label.text(["Bag", "Coat", "dark"]) == "(Bag OR Coat) AND NOT dark"
    matrix = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]], bool)
    assert label.mask(matrix).tolist() == [True, False, False, True]


@pytest.mark.parametrize("text, message", [
    ("img,concepts\n", "concepts.csv: line 1: the header must be 'image,concepts', not 'img,concepts'"),
    ("image,concepts\ntest[3],dark,x\n", "concepts.csv: line 2: 3 columns; give 2 (image,concepts), concepts "
                                          "separated by ';'"),
    ("image,concepts\ntest[3],dark\nnope.png,dark\n", "concepts.csv: line 3: no image 'nope.png' in the dataset "
                                                      "(give its name as the report shows it, e.g. 'test[0]', or "
                                                      "its index 0 to 9)"),
    ("image,concepts\n3,dark\ntest[3],light\n", "concepts.csv: line 3: image 'test[3]' is listed again (first on "
                                                "line 2)"),
    ("image,concepts\n3,dark;;x\n", "concepts.csv: line 2: an empty concept name in 'dark;;x'"),
    ("image,concepts\n3,Bag\n", "concepts.csv: line 2: concept 'Bag' is also a class's name; rename the concept"),
    ("image,concepts\n", "concepts.csv: no rows after the header"),
])
def test_bad_concepts_files_name_the_line(tmp_path, text, message):
    path = tmp_path / "concepts.csv"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        ul.read_concepts(path, [f"test[{i}]" for i in range(10)], ["Bag"])
    assert str(err.value) == f"dataset.concepts: {message}"


def test_concepts_file_reads_names_and_indices(tmp_path):
    path = tmp_path / "concepts.csv"
    path.write_text("image,concepts\ntest[2],dark; striped\n7,striped\n")
    matrix, names = ul.read_concepts(path, [f"test[{i}]" for i in range(10)], ["Bag"])
    assert names == ["dark", "striped"]
    assert np.flatnonzero(matrix[:, 0]).tolist() == [2] and np.flatnonzero(matrix[:, 1]).tolist() == [2, 7]
