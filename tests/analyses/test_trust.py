"""Trust scores of synthesized images: each score against an independent computation (scipy, scikit-learn,
a hand-written forward on the saved PNGs), and each check separating good pictures from bad ones on a network
with a planted "fooling" path (tests/helpers/fooling.py)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import spearmanr
from sklearn.neighbors import NearestNeighbors

from reportgen.analyses import trust
from reportgen.pipeline import build
from reportgen.idx import load_idx_split
from reportgen.spec import load_spec
from tests.helpers.fooling import fooling_cnn
from tests.helpers.tiny import FASHION_DIR

SPEC = f"""
title: fooling
seed: 0
model:
  factory: tests.helpers.fooling:fooling_cnn
  mean: [0.5]
  std: [0.25]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 500
  samples: 1
layers:
  - name: features.r2
    filters: [0, 1]
    embedding: none
feature_vis: {{compare: [plain], variants: 2, diversity: 0.2, classes: []}}
circuit: {{enabled: false}}
attribution: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    (tmp / "spec.yaml").write_text(SPEC)
    out = build(load_spec(tmp / "spec.yaml"), progress=False, log=lambda *_: None)
    return out, json.loads((out / "report.json").read_text())


def test_spearman_knn_and_foreign_share_match_references():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    assert trust.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, rel=1e-12)
    assert trust.spearman(np.ones(5), b[:5]) is None
    ref, query = rng.normal(size=(9, 6)), rng.normal(size=(4, 6)) + 3
    spread = NearestNeighbors(n_neighbors=4).fit(ref).kneighbors(ref)[0][:, 1:].mean()   # itself excluded
    expected = NearestNeighbors(n_neighbors=3).fit(ref).kneighbors(query)[0].mean(1) / spread
    np.testing.assert_allclose(trust.knn_ratio(query, ref), expected, rtol=1e-12)
    assert trust.knn_ratio(ref[:1], ref) < 1 < trust.knn_ratio(query, ref).min()   # a photo vs far pictures
    # natural drive: channels 0 and 1 carry 90 %; the picture puts 3 of its 4 units through channel 3
    assert trust.foreign_share(np.array([1.0, 0, 0, 3]), np.array([6.0, 3, 1, 0])) == pytest.approx(0.75)
    assert trust.foreign_share(np.array([1.0, 2, 0, 0]), np.array([6.0, 3, 1, 0])) == 0.0


def test_pictures_through_the_photos_path_are_not_flagged(built):
    """Both units' synthesized and plain-ascent pictures reach them as photos do (the hidden path stays off)."""
    _, report = built
    layer = report["layers"][0]
    for f in layer["filters"]:
        for scores in (f["trust"], f["trust"]["compared"]["plain"]):
            assert scores["path"]["foreign_share"] < trust.FOREIGN_FLAG and "foreign_path" not in scores["flags"]
    assert layer["trust"]["flagged"]["foreign_path"] == 0
    assert layer["trust"]["thresholds"]["foreign"] == trust.FOREIGN_FLAG


def test_a_picture_through_the_planted_path_is_flagged():
    """The path check on the picture a manipulated visualization would show: a 2-px checkerboard drives unit 0
    through the hidden channel, which the unit's top photos never use; a bright photo-like picture is not."""
    model = fooling_cnn()
    images, _ = load_idx_split(FASHION_DIR, "test")
    photos = (torch.from_numpy(images[:500]).float()[:, None] / 255 - 0.5) / 0.25
    conv = trust._Conv(model, "features.r2")
    nat = trust.read(model, "features.r2", conv.path, photos, whole=True)
    top = nat.layer[:, 0].flatten(1).max(1).values.argsort(descending=True)[:9].tolist()   # as the pass ranks
    _, positions = nat.units(top, [0] * 9, "channel")
    natural = conv.contributions(nat.conv_input[top], [0] * 9, positions).mean(0)
    assert natural[3] == 0 and natural[0] > 0                     # photos reach unit 0 by brightness only

    def foreign(picture: np.ndarray) -> float:
        got = trust.read(model, "features.r2", conv.path, _input(picture), whole=False)
        _, pos = got.units([0], [0], "channel")
        return trust.foreign_share(conv.contributions(got.conv_input, [0], pos)[0], natural)

    i, j = np.indices((28, 28))
    board = (((i // 2 + j // 2) % 2) * 255).astype(np.uint8)     # 2-px squares, as the hidden kernel
    assert foreign(board) > 0.9 > trust.FOREIGN_FLAG
    assert foreign(images[top[0]]) == 0.0                         # a top photo itself


def _input(pixels: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(pixels).float()[None, None] / 255 - 0.5) / 0.25


def test_scores_agree_with_a_recomputation_from_the_saved_pictures(built):
    """Reload each PNG, run the model by hand (unfold for the contributions), score with scipy and scikit-learn."""
    out, report = built
    model = fooling_cnn()
    images, _ = load_idx_split(FASHION_DIR, "test")
    c1, c2 = model.features.c1, model.features.c2

    def forward(x):
        hidden = F.relu(c1(x))                                     # (B, 4, H', W'): conv2's input
        unit = F.relu(c2(hidden))
        return hidden, unit, unit.mean((2, 3)).numpy()       # the final Linear's input

    for f in report["layers"][0]["filters"]:
        t, k = f["trust"], f["index"]
        natural = np.array(t["natural"])
        with torch.no_grad():
            hidden, unit, pen = forward(torch.cat([_input(images[i]) for i in natural]))
            best = unit[:, k].mean((1, 2)).max().item()
            nat_contrib = []
            for n in range(len(natural)):
                y, x = divmod(int(unit[n, k].flatten().argmax()), unit.shape[-1])
                nat_contrib.append(c2.weight[k, :, 0, 0] * hidden[n, :, y, x])
            nat_contrib = torch.stack(nat_contrib).mean(0).double().numpy()
            for name, scores in [("main", t)] + list(t["compared"].items()):
                png = f["feature_vis"]["image"] if name == "main" else f"{f['feature_vis']['image'][:-len('_vis.png')]}_{name}.png"
                pixels = np.asarray(Image.open(out / png))
                p_hidden, p_unit, p_pen = forward(_input(pixels))
                assert scores["activation_ratio"] == pytest.approx(p_unit[0, k].mean().item() / best, rel=1e-3)
                y, x = divmod(int(p_unit[0, k].flatten().argmax()), p_unit.shape[-1])
                contrib = (c2.weight[k, :, 0, 0] * p_hidden[0, :, y, x]).double().numpy()
                assert scores["path"]["agreement"] == pytest.approx(spearmanr(contrib, nat_contrib).statistic, rel=1e-3)
                spread = NearestNeighbors(n_neighbors=4).fit(pen).kneighbors(pen)[0][:, 1:].mean()
                near = NearestNeighbors(n_neighbors=3).fit(pen).kneighbors(p_pen)[0].mean()
                assert scores["naturalness"] == pytest.approx(near / spread, rel=1e-3)


DEMO_SPEC = """
title: naturalness
seed: 0
model:
  factory: reportgen.demo.fashion_cnn:build
  checkpoint: {checkpoint}
  mean: [0.2860]
  std: [0.3530]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {root}
  split: test
  limit: 1000
  samples: 1
layers:
  - name: block2_conv2
    filters: 0-7
    embedding: none
  - name: block3_conv1
    filters: 0-7
    embedding: none
feature_vis: {{compare: [maco, plain], classes: []}}
circuit: {{enabled: false}}
attribution: {{enabled: false}}
"""


def test_the_plain_ascent_is_less_natural_than_fourier_and_maco_images(tmp_path):
    """On the trained demo CNN, per layer (8 filters each): the plain pixel ascent's images lie farther from the
    filters' photos in the model's penultimate features than the Fourier and the MACO images of the same units."""
    from importlib.resources import files

    (tmp_path / "spec.yaml").write_text(DEMO_SPEC.format(checkpoint=files("reportgen.demo") / "fashion_cnn.pt",
                                                         root=FASHION_DIR))
    out = build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda *_: None)
    report = json.loads((out / "report.json").read_text())
    for layer in report["layers"]:
        t = [f["trust"] for f in layer["filters"]]
        fourier = np.mean([x["naturalness"] for x in t])
        maco, plain = (np.mean([x["compared"][p]["naturalness"] for x in t]) for p in ("maco", "plain"))
        assert plain > fourier and plain > maco, (layer["name"], plain, fourier, maco)
        assert sum(x["compared"]["plain"]["naturalness"] > x["naturalness"] for x in t) >= 6
