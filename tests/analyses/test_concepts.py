"""Concepts (CRAFT-style NMF of a layer's activations): the reported factorization against a recomputation by
hand (the model run in the test, scipy's NNLS for the coefficients, numpy for the error), and on a network with
planted concepts (two channel groups, one firing on each of two classes) the directions, labels and importance
it must find."""

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from torch import nn

from reportgen.analyses.concepts import Concepts
from reportgen.analyses.featvis import Objective, Optimizer, Parameterization, RandomAffine, synthesize
from reportgen.analysis import check_analyses, run_analyses
from reportgen.pipeline import build, prepare
from reportgen.evidence import gather_evidence
from reportgen.idx import load_idx_split
from reportgen.schema import report_model
from reportgen.spec import load_spec
from tests.helpers.tiny import FASHION_DIR, tiny_cnn, write_idx

TINY_SPEC = f"""
title: concepts
seed: 0
model:
  factory: tests.helpers.tiny:tiny_cnn
  mean: [0.5]
  std: [0.25]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 300
  samples: 1
layers:
  - name: features.r3
    filters: [0, 1]
    embedding: none
concepts: {{k: 3, images: 60, patches: 4}}
feature_vis: {{steps: 8, classes: []}}
circuit: {{enabled: false}}
attribution: {{enabled: false}}
"""


def _artifact(spec):
    """The layer's cached artifact, read back through the runner (the build stored it)."""
    ctx = prepare(spec, log=lambda *_: None, analyses=[Concepts()])
    ctx.progress = False
    outcomes = check_analyses(ctx, [Concepts()])
    gather_evidence(ctx)
    run_analyses(ctx, outcomes)
    assert not any(c.startswith("concepts") for c in ctx.computed)       # a second run computes nothing
    return next(iter(outcomes["concepts"].artifact.values()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("concepts")
    (tmp / "spec.yaml").write_text(TINY_SPEC)
    spec = load_spec(tmp / "spec.yaml")
    out = build(spec, progress=False, log=lambda *_: None, analyses=[Concepts()])
    return out, json.loads((out / "report.json").read_text()), _artifact(spec)


def _layer_rows(model, images: np.ndarray, where: np.ndarray) -> np.ndarray:
    """A (rows, C): the model run by hand to features.r3 on each row's image, read at the row's position, >= 0."""
    x = (torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.25
    with torch.no_grad():
        maps = model.features(x).flatten(2).transpose(1, 2).double().numpy()     # (B, positions, C)
    return maps[where[:, 0], where[:, 1]]


def test_reconstruction_error_and_top_patches_match_a_recomputation(tiny):
    out, report, art = tiny
    part = report["layers"][0]["concepts"]
    report_model([Concepts()]).model_validate(report)
    images, _ = load_idx_split(FASHION_DIR, "test")
    index = np.array(sorted(set(art["rows"][:, 0].tolist())))
    row_image = np.searchsorted(index, art["rows"][:, 0])
    a = _layer_rows(tiny_cnn(), images[index], np.stack([row_image, art["rows"][:, 1]], 1))
    assert a.min() >= 0 and a.shape == (part["rows"], 8)
    h, w = art["h"], art["w"].astype(np.float64)
    error = np.linalg.norm(a - w @ h) / np.linalg.norm(a)
    assert part["reconstruction_error"] == pytest.approx(error, rel=1e-3)
    assert 0 < error < 0.5
    # W solved again from the saved H by non-negative least squares, row by row: the same top patches
    solved = np.stack([nnls(h.T, row)[0] for row in a])
    for j, concept in enumerate(part["concepts"]):
        got = [(p["dataset_index"], p["location"]) for p in concept["patches"]]
        assert len(got) == 4 and len({i for i, _ in got}) == 4                  # one patch per image
        best_row = np.argmax(solved[:, j])
        y, x = divmod(int(art["rows"][best_row, 1]), 14)
        assert got[0] == (int(art["rows"][best_row, 0]), [y, x])
        assert concept["patches"][0]["coefficient"] == pytest.approx(solved[best_row, j], rel=1e-2)
        assert np.linalg.norm(concept["direction"]) == pytest.approx(1, abs=1e-3)
        assert (out / concept["patches"][0]["patch"]).is_file() and (out / concept["image"]).is_file()


def test_pages_link_the_concepts(tiny):
    out, report, _ = tiny
    part = report["layers"][0]["concepts"]
    assert part["page"] == "concepts/features-r3.html"
    page = (out / part["page"]).read_text()
    assert page.count('<section class="concept"') == 3 and "reconstruction error" in page
    layer_page = (out / report["layers"][0]["page"]).read_text()
    assert f'href="../../{part["page"]}"' in layer_page
    assert f'href="{part["page"]}"' in (out / "index.html").read_text()
    assert report["concepts"] == [{"layer": "features.r3", "page": part["page"], "k": 3,
                                   "reconstruction_error": part["reconstruction_error"]}]


# ---- planted concepts ----

LINE = torch.tensor([[-1.0, -1.0, -1.0], [2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]])   # a bright horizontal line
H_GROUP, V_GROUP = (1.0, 0.6, 0.3), (0.8, 1.0, 0.5)     # each group's channels: one detector at these gains


def planted_cnn() -> nn.Module:
    """conv (1 → 6, 3×3, no padding) + ReLU: channels 0-2 detect horizontal lines, 3-5 vertical lines (each group
    one detector at three gains, so each is one direction in channel space); class 0's logit is the mean of the
    horizontal group, class 1's of the vertical group, the others 0."""
    conv = nn.Conv2d(1, 6, 3)
    fc = nn.Linear(6, 10)
    with torch.no_grad():
        conv.bias.zero_()
        for c, g in enumerate(H_GROUP):
            conv.weight[c, 0] = g * LINE
        for c, g in enumerate(V_GROUP):
            conv.weight[3 + c, 0] = g * LINE.T
        fc.weight.zero_()
        fc.bias.zero_()
        fc.weight[0, :3], fc.weight[1, 3:] = 1.0, 1.0
    return nn.Sequential(OrderedDict(features=nn.Sequential(OrderedDict(c1=conv, r1=nn.ReLU())),
                                     pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=fc)).eval()


def write_lines(root, n: int = 200, seed: int = 0) -> None:
    """MNIST files: class 0 horizontal bright lines, class 1 vertical ones (random spacing and phase), classes
    2-9 flat grey; a little noise on all."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28))
    for i, c in enumerate(labels):
        if c < 2:
            period, phase = rng.integers(4, 8), rng.integers(0, 4)
            lines = np.zeros((28, 28))
            lines[phase::period] = 200
            images[i] = lines if c == 0 else lines.T
        else:
            images[i] = rng.integers(40, 200)
    images += rng.normal(0, 4, images.shape)
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "t10k-images-idx3-ubyte", np.clip(images, 0, 255).round())
    write_idx(root / "t10k-labels-idx1-ubyte", labels)


PLANTED_SPEC = """
title: planted concepts
seed: 0
model:
  factory: tests.analyses.test_concepts:planted_cnn
  mean: [0.5]
  std: [0.5]
  input_size: 28
dataset:
  format: mnist
  root: {root}
  samples: 1
layers:
  - name: features.r1
    filters: [0]
    embedding: none
concepts: {{k: 2, images: 200, patches: 3}}
feature_vis: {{enabled: false, classes: []}}
circuit: {{enabled: false}}
attribution: {{enabled: false}}
"""


def test_planted_concepts_are_found_labelled_and_weighed(tmp_path):
    write_lines(tmp_path / "data")
    (tmp_path / "spec.yaml").write_text(PLANTED_SPEC.format(root=tmp_path / "data"))
    out = build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda *_: None, analyses=[Concepts()])
    part = json.loads((out / "report.json").read_text())["layers"][0]["concepts"]
    planted = {0: np.r_[H_GROUP, 0, 0, 0], 1: np.r_[0, 0, 0, V_GROUP]}        # class → its group's direction
    found = {}
    for c in part["concepts"]:
        d = np.array(c["direction"])
        cls, cosine = max(((k, d @ v / np.linalg.norm(v)) for k, v in planted.items()), key=lambda t: t[1])
        assert cosine >= 0.95, (c["index"], d)
        found[cls] = c
        assert c["label"]["text"] == str(cls) and c["label"]["significant"] and c["label"]["auc"] >= 0.95
        drops = {imp["label"]: imp["drop"] for imp in c["importance"]}
        assert drops[cls] > 0.5 and abs(drops[1 - cls]) < 0.05 * drops[cls]   # only its own class relies on it
        assert all(p["dataset_index"] % 10 == cls for p in c["patches"])        # patches from its class's images
        assert c["image"] is None                                             # feature_vis is off
    assert sorted(found) == [0, 1] and part["reconstruction_error"] < 0.05


def test_the_direction_objective_raises_the_projection():
    model = planted_cnn()
    direction = np.r_[H_GROUP, 0, 0, 0]
    result = synthesize(model, Objective("features.r1", [0], "direction", directions=[direction]),
                        Parameterization(1, [0.5], [0.5], size=28), RandomAffine(), Optimizer(steps=12, seed=0))
    x = (torch.from_numpy(result.images).float().permute(0, 3, 1, 2) / 255 - 0.5) / 0.5
    with torch.no_grad():
        acts = model.features(x)[0]                                       # (6, 26, 26)
        projection = torch.einsum("chw,c->hw", acts, torch.tensor(direction / np.linalg.norm(direction)).float())
    assert result.activation[0] == pytest.approx(projection.mean().item(), rel=1e-4)
    assert result.activation[0] > 2 * max(result.curve[0, 0], 1e-3)        # well above the random start
