"""DeepDream on the demo model: the loop raises the layer's activation norm (measured here by running the model's
layers by hand) by at least the factor stated below, keeps pixels in [0, 1], is deterministic for a seed and
leaves no hook; the nudge towards a filter raises that channel; a build shows the sections (layer and filter
pages, report.json) and `enabled: false` removes them with the reason."""

import json
from importlib import resources

import numpy as np
import pytest
import torch

from reportgen.analyses.adversarial import AdversarialExamples
from reportgen.analyses.deepdream import DeepDream
from reportgen.analyses.dream import Dream, amplify, channels, dream
from reportgen.pipeline import build
from reportgen.demo import fashion_cnn
from reportgen.idx import load_idx_split
from reportgen.spec import load_spec
from tests.helpers.tiny import FASHION_DIR

MEAN, STD = [0.2860], [0.3530]
# Measured with the defaults (3 octaves of 10 steps, lr 0.05, seed 0) on test images 0-3: norm ratios 1.32-1.53
# at features.conv2_relu (block1_conv2), 1.61-1.84 at features.conv5_relu (block3_conv1).
FACTOR = 1.25
LAYERS = {"features.conv2_relu": 6, "features.conv5_relu": 17}   # path → modules of `features` up to it


@pytest.fixture(scope="module")
def demo():
    model = fashion_cnn.build()
    model.load_state_dict(torch.load(resources.files("reportgen.demo") / "fashion_cnn.pt", map_location="cpu"))
    images, _ = load_idx_split(FASHION_DIR, "test")
    return model.eval(), torch.from_numpy(images[:4]).float()[:, None] / 255      # (4, 1, 28, 28) in [0, 1]


def by_hand(model, upto: int, x01: torch.Tensor) -> torch.Tensor:
    """The layer's output: the first `upto` modules of `features` on the normalized input, no hooks."""
    h = (x01 - MEAN[0]) / STD[0]
    with torch.no_grad():
        for module in list(model.features)[:upto]:
            h = module(h.clone())                # the ReLUs are in-place
    return h


@pytest.mark.parametrize("layer", LAYERS)
def test_dream_raises_the_layer_activation_norm(demo, layer):
    model, x = demo
    assert "features." + list(dict(model.features.named_children()))[LAYERS[layer] - 1] == layer
    dreamed = dream(model, layer, x, amplify, MEAN, STD, Dream(seed=0))
    before, after = (by_hand(model, LAYERS[layer], y).flatten(1).norm(dim=1) for y in (x, dreamed))
    ratio = after / before
    assert (ratio >= FACTOR).all(), ratio
    assert dreamed.min() >= 0 and dreamed.max() <= 1 and dreamed.shape == x.shape
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_dream_is_deterministic_for_a_seed(demo):
    model, x = demo
    runs = [dream(model, "features.conv5_relu", x[:2], amplify, MEAN, STD, Dream(seed=s, steps=3)) for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])        # the jitter's rolls follow the seed


def test_without_jitter_one_octave_is_plain_normalized_gradient_ascent(demo):
    """One octave, one step, no jitter: x + lr · g / mean|g|, g the gradient of the mean squared activation
    computed here with autograd on the hand-run layers."""
    model, x = demo
    leaf = x[:1].clone().requires_grad_(True)
    h = (leaf - MEAN[0]) / STD[0]
    for module in list(model.features)[:6]:
        h = module(h.clone())
    (g,) = torch.autograd.grad(h.pow(2).mean(), leaf)
    expected = (x[:1] + 0.05 * g / g.abs().mean()).clamp(0, 1)
    got = dream(model, "features.conv2_relu", x[:1], amplify, MEAN, STD, Dream(octaves=1, steps=1, jitter=0))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_nudging_towards_a_filter_raises_that_channel(demo):
    model, x = demo
    units = torch.tensor([0, 5, 9])
    start = x[:1].expand(3, -1, -1, -1)
    nudged = dream(model, "features.conv5_relu", start, channels(units), MEAN, STD, Dream(seed=0))
    before = by_hand(model, 17, start)[torch.arange(3), units].mean((1, 2))
    after = by_hand(model, 17, nudged)[torch.arange(3), units].mean((1, 2))
    assert (after > 1.5 * before).all(), (before, after)


SPEC = """
title: deepdream
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
  limit: 100
  samples: 2
layers:
  - name: block1_conv2
    filters: [0, 1]
deepdream: {{enabled: {enabled}, images: 2, steps: 4, filters: 1}}
adversarial: {{enabled: {enabled}, images: 1, steps: 5}}
"""


def _build(tmp_path, enabled: bool):
    tmp_path.mkdir()
    (tmp_path / "spec.yaml").write_text(SPEC.format(checkpoint=resources.files("reportgen.demo") / "fashion_cnn.pt",
                                                    root=FASHION_DIR, enabled=str(enabled).lower()))
    out = build(load_spec(tmp_path / "spec.yaml"), tmp_path / "site", progress=False, log=lambda *_: None,
                analyses=[DeepDream(), AdversarialExamples()])
    return out, json.loads((out / "report.json").read_text())


def test_build_shows_the_sections_and_enabled_false_removes_them(demo, tmp_path):
    model, _ = demo
    out, report = _build(tmp_path / "on", True)
    layer = report["layers"][0]
    part = layer["deepdream"]
    assert [d["dataset_index"] for d in part["images"]] == [s["dataset_index"] for s in report["samples"]]
    assert part["octaves"] == [[14, 14], [20, 20], [28, 28]]
    # the reported ratio, recomputed from the dreamed PNG by hand (8-bit rounding: 2% slack)
    from PIL import Image
    for d in part["images"]:
        img = torch.from_numpy(np.asarray(Image.open(out / d["image"]), np.float32) / 255)[None, None]
        orig = torch.from_numpy(np.asarray(Image.open(out / d["original"]), np.float32) / 255)[None, None]
        ratio = float(by_hand(model, 6, img).norm() / by_hand(model, 6, orig).norm())
        assert ratio == pytest.approx(d["norm_ratio"], rel=0.02)
    assert layer["filters"][0]["deepdream"]["channel_ratio"] > 1 and layer["filters"][1]["deepdream"] is None
    assert "DeepDream" in (out / layer["page"]).read_text()
    assert "DeepDream towards this filter" in (out / layer["filters"][0]["page"]).read_text()
    assert "DeepDream towards" not in (out / layer["filters"][1]["page"]).read_text()
    assert report["adversarial"]["images"] and (out / "adversarial.html").is_file()
    assert 'href="adversarial.html"' in (out / "index.html").read_text()

    out, report = _build(tmp_path / "off", False)
    absent = {a["name"]: a["absent"] for a in report["analyses"]}
    assert absent == {"deepdream": "turned off in the spec (deepdream.enabled: false)",
                      "adversarial": "turned off in the spec (adversarial.enabled: false)"}
    assert report["layers"][0]["deepdream"] is None and report["adversarial"] is None
    assert "DeepDream" not in (out / report["layers"][0]["page"]).read_text()
    assert not (out / "adversarial.html").exists()
