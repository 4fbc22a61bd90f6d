"""Feature inversion on the shipped demo model and its own test images: the feature distance falls from the noise
start, is smaller at shallower layers, is what the model run by hand gives on the returned pixels, and is the same
for a seed; a small build puts the section in report.json and on its page, and `enabled: false` takes it out
with the reason."""

import json
from importlib.resources import files

import numpy as np
import pytest
import torch

from reportgen.analyses.featvis import Optimizer, Parameterization
from reportgen.analyses.inversion import Inversion, invert
from reportgen.analyses.texture import Texture
from reportgen.pipeline import build
from reportgen.demo.fashion_cnn import build as demo_cnn
from reportgen.idx import load_idx_split
from reportgen.schema import report_model
from reportgen.spec import InversionSpec, load_spec
from tests.helpers.tiny import FASHION_DIR

MEAN, STD = 0.2860, 0.3530
# the demo's spec layers (block1_conv2, block2_conv2, block3_conv1) as module paths, shallow to deep, and the
# modules that make each from the previous one
LAYERS = ["features.conv2_relu", "features.conv4_relu", "features.conv5_relu"]
CUT = {"features.conv2_relu": 6, "features.conv4_relu": 13, "features.conv5_relu": 17}


@pytest.fixture(scope="module")
def demo():
    model = demo_cnn()
    model.load_state_dict(torch.load(files("reportgen.demo") / "fashion_cnn.pt", weights_only=True))
    model.eval()
    images, _ = load_idx_split(FASHION_DIR, "test")
    x01 = torch.from_numpy(images[:2]).float()[:, None] / 255
    return model, (x01 - MEAN) / STD


def _invert(model, x0, layer, seed=0, steps=None):
    s = InversionSpec()          # the spec's defaults: what the demo report runs
    param = Parameterization(1, (MEAN,), (STD,), size=28)
    return invert(model, layer, x0, param, Optimizer(steps=steps or s.steps, lr=s.lr, seed=seed, batch_size=2))


@pytest.fixture(scope="module")
def inverted(demo):
    model, x0 = demo
    return {layer: _invert(model, x0, layer) for layer in LAYERS}


def _by_hand(model, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's output, from the model's own Sequential cut after the layer's module (no hooks)."""
    with torch.no_grad():
        return model.features[:CUT[layer]](x).flatten(1)


def test_distance_falls_well_below_the_start(inverted):
    # measured with the defaults (256 steps, lr 0.02) on these two images: final / start 0.05 and 0.17 at
    # block1_conv2, at most 0.34 deeper; the start is about 1 (noise shares little with the image)
    for layer, out in inverted.items():
        assert np.all(out["start"] > 0.9), layer
        assert np.all(out["final"] < 0.5 * out["start"]), (layer, out["final"], out["start"])


def test_shallower_layers_are_reconstructed_closer(inverted):
    means = [inverted[layer]["final"].mean() for layer in LAYERS]
    assert means[0] < means[1] < means[2], means
    assert means[0] < 0.5 * means[2], means          # measured 0.11, 0.23, 0.35


def test_distance_is_the_models_own_on_the_returned_pixels(demo, inverted):
    model, x0 = demo
    for layer, out in inverted.items():
        x = (torch.from_numpy(out["pixels"]).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
        target, got = _by_hand(model, layer, x0).numpy(), _by_hand(model, layer, x).numpy()
        expected = np.linalg.norm(got - target, axis=1) / np.linalg.norm(target, axis=1)
        np.testing.assert_allclose(out["final"], expected, rtol=1e-4, atol=1e-6)


def test_same_seed_same_images_other_seed_other_images(demo):
    model, x0 = demo
    a, b = (_invert(model, x0, LAYERS[0], seed=0, steps=16) for _ in range(2))
    c = _invert(model, x0, LAYERS[0], seed=1, steps=16)
    assert np.array_equal(a["pixels"], b["pixels"]) and np.array_equal(a["final"], b["final"])
    assert not np.array_equal(a["pixels"], c["pixels"])


SPEC = f"""
title: inversion
seed: 0
model:
  factory: reportgen.demo.fashion_cnn:build
  checkpoint: {files("reportgen.demo") / "fashion_cnn.pt"}
  mean: [{MEAN}]
  std: [{STD}]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 40
  samples: 2
layers:
  - {{name: block1_conv2, filters: [0]}}
  - {{name: block3_conv1, filters: [0], embedding: none}}
inversion: {{enabled: ENABLED, steps: 4}}
texture: {{enabled: true, steps: 4}}
"""


def _build(tmp_path, enabled: bool):
    (tmp_path / "spec.yaml").write_text(SPEC.replace("ENABLED", str(enabled).lower()))
    out = build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda *_: None,
                analyses=[Inversion(), Texture()])
    return out, json.loads((out / "report.json").read_text())


def test_build_lists_the_section_and_shows_it(tmp_path):
    out, report = _build(tmp_path, True)
    report_model([Inversion(), Texture()]).model_validate(report)
    site = report["inversion"]
    assert site["layers"] == LAYERS[::2] and site["steps"] == 4
    assert [i["dataset_index"] for i in site["images"]] == [r["dataset_index"] for r in
                                                            report["layers"][0]["inversion"]["reconstructions"]]
    page = (out / "inversion.html").read_text()
    for layer in report["layers"]:
        for r in layer["inversion"]["reconstructions"]:
            assert (out / r["image"]).is_file() and f'src="{r["image"]}"' in page
            assert f"distance {r['distance']:.3g}" in page
    assert {"title": "Inversion", "page": "inversion.html"} in report["pages"]
    assert f'src="{report["texture"]["transfer"]["image"]}"' in page


def test_turned_off_it_is_absent_with_the_reason(tmp_path):
    out, report = _build(tmp_path, False)
    status = next(a for a in report["analyses"] if a["name"] == "inversion")
    assert status["absent"] == "turned off in the spec (inversion.enabled: false)"
    assert report["inversion"] is None and all(l["inversion"] is None for l in report["layers"])
    assert "turned off in the spec (inversion.enabled: false)" in (out / "index.html").read_text()
    assert "Images reconstructed" not in (out / "inversion.html").read_text()   # the page stays for the texture
