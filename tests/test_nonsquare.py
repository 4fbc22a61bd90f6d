"""Non-square inputs end to end: `model.input_size: [40, 32]` (height × width) on a small RGB conv net whose second
conv has a 3×5 kernel (so the two axes differ everywhere), over an ImageFolder of twelve 48×40 (width × height)
PNGs. Every section of the report works at 40×32, checked against computations made here, apart from reportgen.
"""

import json
import math
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reportgen.analyses.explorer import fit_within, thumbnails
from reportgen.pipeline import build
from reportgen.cli import main
from reportgen.spec import load_spec
from tests.helpers.tiny import write_imagefolder

H, W = 40, 32                  # the model's input, height × width
SOURCE = (48, 40)              # the PNGs, width × height: covering 40×32 needs no scaling, the crop drops 8 px a side
MEAN, STD = 0.5, 0.25


class SmallNet(nn.Module):
    """3×40×32 → 3 classes: c1 3×3, c2 3×5 stride 2, 2×2 max pool, c3 3×3 (Keras aliases: block1_conv1,
    block1_conv2, block1_pool, block2_conv1)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("c1", nn.Conv2d(3, 6, 3, padding=1)), ("r1", nn.ReLU()),
            ("c2", nn.Conv2d(6, 8, (3, 5), stride=2, padding=(1, 2))), ("r2", nn.ReLU()),
            ("p1", nn.MaxPool2d(2)),
            ("c3", nn.Conv2d(8, 8, 3, padding=1)), ("r3", nn.ReLU())]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def small_net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet()


# (kernel, stride, padding) along (rows, columns) of each layer up to the recorded ReLU, read off SmallNet
C1, C2, P1, C3 = ((3, 1, 1), (3, 1, 1)), ((3, 2, 1), (5, 2, 2)), ((2, 2, 0), (2, 2, 0)), ((3, 1, 1), (3, 1, 1))
CHAINS = {"features.r2": [C1, C2], "features.r3": [C1, C2, P1, C3]}

SPEC = f"""
title: non-square
seed: 1
model:
  factory: tests.test_nonsquare:small_net
  mean: [{MEAN}, {MEAN}, {MEAN}]
  std: [{STD}, {STD}, {STD}]
  input_size: [{H}, {W}]
dataset: {{format: imagefolder, root: images, samples: 3}}
layers:
  - {{name: block1_conv2, filters: [0, 1, 2]}}
  - {{name: block2_conv1, filters: all, embedding: pca}}
record: {{top_k: 4}}
feature_vis: {{steps: 8, classes: [0, 1]}}
attribution: {{images: 2}}
concepts: {{k: 4}}   # below block1_conv2's 8 channels, so every section is there
inversion: {{enabled: true, steps: 4}}   # the opt-in sections too, at 40 × 32
deepdream: {{enabled: true, steps: 2, filters: 1}}
adversarial: {{enabled: true, images: 1, steps: 3}}
texture: {{enabled: true, steps: 4}}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nonsquare")
    write_imagefolder(tmp / "images", per_class=4, classes=("a", "b", "c"), size=SOURCE)
    (tmp / "spec.yaml").write_text(SPEC)
    out = build(load_spec(tmp / "spec.yaml"), progress=False, log=lambda *_: None)
    return tmp, out, json.loads((out / "report.json").read_text())


def model_image(tmp, name: str) -> np.ndarray:
    """(H, W, 3) uint8: the PNG centre-cropped by hand to the model's 40×32 (its width 48 → columns 8..40)."""
    src = np.asarray(Image.open(tmp / "images" / name).convert("RGB"))      # (40, 48, 3)
    left = (SOURCE[0] - W) // 2
    return src[:, left:left + W]


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def receptive_box(chain, y: int, x: int) -> list[int]:
    """[x0, y0, x1, y1] of unit (y, x), by the textbook recursion per axis: jump J (product of strides),
    size R = 1 + Σ (k − 1)·J_before, offset P = Σ p·J_before; rows J·y − P … J·y − P + R, clipped."""
    span = []
    for axis, (n, i) in enumerate(((H, y), (W, x))):
        jump, size, pad = 1, 1, 0
        for layer in chain:
            k, s, p = layer[axis]
            size, pad, jump = size + (k - 1) * jump, pad + p * jump, jump * s
        span.append((max(0, i * jump - pad), min(n, i * jump - pad + size)))
    (y0, y1), (x0, x1) = span
    return [x0, y0, x1, y1]


def test_every_section_is_there_at_height_40_width_32(site):
    tmp, out, report = site
    assert report["schema_version"] >= 3 and report["model"]["input_size"] == [H, W]
    # every section but MACO's spectrum, which only feature_vis.param/compare: maco asks for, and the evolution
    # parts, which only model.checkpoints asks for
    assert [a["name"] for a in report["analyses"] if a["absent"]] == ["amplitude_spectrum", "evolution",
                                                                      "evolution_layers"]
    shapes = {a["path"]: a["output_shape"] for a in report["model"]["architecture"]}
    assert shapes["features.c2"] == [8, 20, 16] and shapes["features.c3"] == [8, 10, 8]    # (C, H, W)
    assert [l["output_shape"] for l in report["layers"]] == [[8, 20, 16], [8, 10, 8]]
    for layer in report["layers"]:
        assert (out / layer["page"]).is_file() and layer["absent"] == {}
        for f in layer["filters"]:
            assert (out / f["page"]).is_file()
            assert f["feature_vis"] and f["circuits"] and f["guided_backprop"] and f["top_patches"]
    assert report["layers"][1]["explorer"]["explorers"][0]["method"] == "pca"
    for part in ("first_layer_filters", "class_models", "overview_explorer", "attribution"):
        assert report[part], part
    assert (out / "attribution.html").is_file() and (out / "build.html").is_file()
    index = (out / "index.html").read_text()
    assert "<dt>Input</dt><dd>3 × 40 × 32, normalized" in index
    assert "output shape for one 40 × 32 (height × width) px image" in index
    assert "input_size:\n  - 40\n  - 32\n" in report["provenance"]["spec_yaml"]


def test_cli_lists_layers_at_height_40_width_32(site, capsys):
    tmp, _, _ = site
    assert main(["layers", str(tmp / "spec.yaml")]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert "8×20×16" in rows["features.c2"] and "8×10×8" in rows["features.r3"]      # C × H × W


def test_dataset_images_are_the_centre_crop(site):
    tmp, out, report = site
    shown = {s["dataset_index"]: s for s in report["samples"]}
    assert len(shown) == 3
    for s in shown.values():
        img = png(out / s["image"])
        assert img.shape == (H, W, 3)
        assert np.array_equal(img, model_image(tmp, s["name"]))
    assert {png(p).shape for p in (out / "img" / "data").glob("*.png")} == {(H, W, 3)}


def test_feature_vis_images_are_40_high_32_wide(site):
    _, out, report = site
    for layer in report["layers"]:
        for f in layer["filters"]:
            vis = f["feature_vis"]
            assert vis["size"] == [H, W]
            assert png(out / vis["image"]).shape == (H, W, 3)
    assert {png(out / c["image"]).shape for c in report["class_models"]} == {(H, W, 3)}
    page = (out / report["layers"][0]["filters"][0]["page"]).read_text()
    # drawn 224 px high, aspect kept; style.css's square box for img.big is overridden
    assert 'width="179" height="224" style="width: 179px; height: 224px"' in page
    assert "8 steps at 40 × 32 (height × width) px" in page


def direct_maps(tmp, names: list[str], path: str) -> np.ndarray:
    """The layer's output for the images, from the model called here on the crops: (N, C, h, w)."""
    x = torch.from_numpy(np.stack([model_image(tmp, n) for n in names])).permute(0, 3, 1, 2).float()
    x = (x / 255 - MEAN) / STD
    model, got = small_net().eval(), {}
    handle = dict(model.named_modules())[path].register_forward_hook(lambda m, i, o: got.update(out=o.clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return got["out"].numpy()


def test_patches_are_the_receptive_field_of_the_top_unit(site):
    tmp, out, report = site
    names = {s["dataset_index"]: s["name"] for l in report["layers"] for f in l["filters"] for s in f["top_images"]}
    for layer in report["layers"]:
        chain = CHAINS[layer["path"]]
        for f in layer["filters"]:
            for t, p in zip(f["top_images"], f["top_patches"]):
                maps = direct_maps(tmp, [names[t["dataset_index"]]], layer["path"])[0, f["index"]]   # (h, w)
                y, x = np.unravel_index(int(np.argmax(maps)), maps.shape)
                assert t["location"] == [int(y), int(x)]
                assert t["score"] == pytest.approx(float(maps.max()), rel=1e-4)
                box = receptive_box(chain, y, x)
                assert p["box"] == box
                x0, y0, x1, y1 = box
                assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H       # inside the 32-wide, 40-high image
                image = model_image(tmp, names[t["dataset_index"]])
                assert np.array_equal(png(out / p["patch"]), image[y0:y1, x0:x1])
                assert png(out / p["outlined"]).shape == (H, W, 3)
    # away from the border a unit of block2_conv1 sees 15 rows × 17 columns (the 3×5 kernel's extra columns)
    assert receptive_box(CHAINS["features.r3"], 5, 4) == [9, 14, 26, 29]


def test_attribution_maps_are_40_by_32(site):
    _, out, report = site
    a = report["attribution"]
    assert (a["window"], a["stride"]) == (5, 2)         # a square window: the shorter side 32 / 6, stride half
    npz = np.load(out / a["npz"])
    assert len(npz.files) == 2 * 5
    assert {npz[name].shape for name in npz.files} == {(H, W)}
    assert {png(out / r["image"]).shape for r in a["records"]} == {(H, W, 3)}


def test_explorer_sprite_tiles_keep_the_aspect(site):
    tmp, out, report = site
    count = report["layers"][1]["explorer"]["count"]
    columns = math.ceil(math.sqrt(count))
    with Image.open(out / "img" / "sprite-0.webp") as sheet:
        assert count == 12 and sheet.size == (columns * W, math.ceil(count / columns) * H)   # tiles 32 wide, 40 high
    # the hover thumbnail: the 40×32 tile at twice its size (84 px / 40 rounded), drawn by the page's script
    page = (out / report["layers"][1]["page"]).read_text()
    assert '["w",64],["h",80]' in page


@pytest.mark.parametrize("size, tile", [((40, 32), (40, 32)), ((100, 80), (64, 51)), ((80, 300), (17, 64)),
                                        ((224, 224), (64, 64)), ((28, 28), (28, 28))])
def test_thumbnails_fit_64_px_on_the_longer_side(size, tile):
    assert fit_within(size, 64) == tile
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, *size), dtype=np.uint8)
    ctx = SimpleNamespace(model=SimpleNamespace(input_size=size), dataset=SimpleNamespace(image=lambda i: images[i]))
    thumbs = thumbnails(ctx, [0, 1])
    assert thumbs.shape == (2, *tile, 3)
    expected = np.asarray(Image.fromarray(images[1].transpose(1, 2, 0)).resize(tile[::-1], Image.BILINEAR))
    assert np.array_equal(thumbs[1], expected)
