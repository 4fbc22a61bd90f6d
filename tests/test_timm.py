"""timm models (`model.timm`): a whole build with random weights, the input compared with timm's own eval
transform, a checkpoint and timm's pretrained-file override loading the exact weights, and bad names and
conflicting keys refused with one line naming the key.

timm's `test_*` models are its own tiny architectures (a few hundred thousand parameters, 160 px data
configs): real timm code paths at test speed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image

from reportgen.pipeline import build
from reportgen.data import load_dataset
from reportgen.errors import ModelError, SpecError
from reportgen.layers import list_layers
from reportgen.models import load_model
from reportgen.spec import DatasetSpec, ModelSpec, load_spec

REPO = Path(__file__).resolve().parents[1]
# three ImageNet-1k synsets (outputs 0, 1, 2: tench, goldfish, great white shark)
WNIDS = ("n01440764", "n01443537", "n01484850")


def write_jpeg(path: Path, size: tuple[int, int], seed: int = 0, noise: float = 20) -> Path:
    """A colour gradient with noise, (width, height): resampling filters differ on the noise visibly."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 64], axis=-1)
    arr = np.clip(arr + rng.normal(0, noise, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)
    return path


def fed_to_model(model, path: Path) -> torch.Tensor:
    """reportgen's float input (1, C, H, W) for one image file, through the dataset reader."""
    root = path.parent.parent
    ds = load_dataset(DatasetSpec(format="imagefolder", root=root), model.input_size, model.resize_size,
                      model.channels, model.interpolation)
    index = ds.names.index(path.relative_to(root).as_posix())
    return model.normalize(torch.from_numpy(ds.image(index))[None])


def timm_reference(name: str, path: Path) -> torch.Tensor:
    """timm's own eval transform for `name` (the independent reference), (1, C, H, W)."""
    config = timm.data.resolve_data_config({}, model=timm.create_model(name))
    with Image.open(path) as img:
        return timm.data.create_transform(**config)(img.convert("RGB"))[None]


SPEC = """
title: timm {name}
model:
  timm: {name}
  pretrained: false
dataset:
  format: imagefolder
  root: images
  samples: 2
  batch_size: 8
layers:
  - name: stages.1.blocks.1.conv_dw
    filters: [0, 1]
    embedding: none
  - name: stages.1
    filters: [0]
    embedding: pca
feature_vis:
  steps: 3
  classes: [0]
attribution:
  images: 1
  window: 40
  stride: 40
  sanity_check: false
inversion: {{enabled: true, images: 1, steps: 2}}
deepdream: {{enabled: true, images: 1, octaves: 2, steps: 2}}
adversarial: {{enabled: true, images: 1, steps: 2, tolerance: 0.02}}
texture: {{enabled: true, steps: 2}}
"""


@pytest.mark.slow
def test_timm_model_builds_with_its_data_config(tmp_path):
    """test_convnext (random weights) through the whole build: input size 160 from timm's data config, ImageNet
    classes from its pretrained cfg (so WNID folders are labelled by output index), every section of a
    depthwise conv present, and only circuits absent for a stage output (no single conv produces it)."""
    for c, wnid in enumerate(WNIDS):
        for i in range(2):
            write_jpeg(tmp_path / "images" / wnid / f"img{i}.jpg", (200, 150), seed=10 * c + i)
    (tmp_path / "spec.yaml").write_text(SPEC.format(name="test_convnext"))
    lines: list[str] = []
    out = build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lines.append)
    report = json.loads((out / "report.json").read_text())

    model = report["model"]
    assert model["source"] == "timm test_convnext (random weights)"
    assert model["input_size"] == [160, 160] and model["num_classes"] == 1000
    # timm's eval transform for test_convnext: bicubic, crop_pct 0.95 → scaled to cover floor(160 / 0.95) = 168
    assert (model["resize_size"], model["interpolation"]) == ([168, 168], "bicubic")
    # test_convnext's cfg normalizes with 0.5, not the ImageNet statistics reportgen assumes without one
    assert (model["mean"], model["std"]) == ([0.5] * 3, [0.5] * 3)
    assert report["dataset"]["used"] == 6
    # the WNID folders are read as ImageNet's outputs 0-2, named as torchvision names them
    assert model["class_ids"][:3] == list(WNIDS)
    assert report["dataset"]["classes"][:3] == ["tench", "goldfish", "great white shark"]
    conv_dw, stage = report["layers"]
    assert (conv_dw["path"], stage["path"]) == ("stages.1.blocks.1.conv_dw", "stages.1")
    assert conv_dw["absent"] == {} and stage["absent"] == {}
    for f in stage["filters"]:          # a stage's output: a residual sum whose terms recompute the unit
        c = f["circuits"]
        assert c["kind"] == "sum" and [t["skip"] for t in c["terms"]][-1] is True
        assert c["check"] <= 1e-3 * max(1.0, abs(f["top_images"][0]["score"]))
    for f in conv_dw["filters"]:
        assert f["top_images"] and f["feature_vis"]["image"] and f["guided_backprop"]
    absent = [a["name"] for a in report["analyses"] if a["absent"]]
    # MACO's spectrum: only param/compare maco asks for it; the evolution parts: only model.checkpoints
    assert absent == ["amplitude_spectrum", "evolution", "evolution_layers"], absent
    assert not any(line.startswith("warning") for line in lines), lines


@pytest.mark.parametrize("name, size", [
    ("test_convnext", (320, 240)),   # bicubic, crop_pct 0.95 → resize 168, crop 160
    ("test_resnet", (320, 240)),     # bilinear
    ("resnet10t", (256, 192)),       # bicubic, crop_pct 0.875, 176 px → resize 201
])
def test_input_equals_timms_eval_transform(tmp_path, name, size):
    """Same pixels as timm's create_transform(**resolve_data_config(model)) where torchvision's Resize truncates
    the longer side to the same integer that reportgen rounds it to (these aspect ratios)."""
    path = write_jpeg(tmp_path / "images" / "a" / "img.jpg", size)
    model = load_model(ModelSpec(timm=name, pretrained=False), tmp_path)
    ours, reference = fed_to_model(model, path), timm_reference(name, path)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_input_close_to_timms_eval_transform_when_rounding_differs(tmp_path):
    """An aspect ratio where the longer side is 1 px apart: 168 · 299/197 = 254.98, which reportgen rounds to 255
    and torchvision's Resize (in timm's transform) truncates to 254; a sub-pixel shift, close but not equal."""
    path = write_jpeg(tmp_path / "images" / "a" / "img.jpg", (299, 197), noise=2)
    model = load_model(ModelSpec(timm="test_convnext", pretrained=False), tmp_path)
    ours, reference = fed_to_model(model, path), timm_reference("test_convnext", path)
    assert ours.shape == reference.shape == (1, 3, 160, 160)
    error = (ours - reference).abs().mean()
    assert error < 0.02   # normalized units (this model's std is 0.5: 0.02 is 1.3 grey levels)
    model.resize_size = (176, 176)   # the check must be able to fail: a crop_pct of 0.91 instead of 0.95
    assert (fed_to_model(model, path) - reference).abs().mean() > 3 * error


def reference_outputs(module: torch.nn.Module, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return x, module.eval()(x)


def test_checkpoint_with_module_prefix_loads_the_saved_model(tmp_path):
    """A fine-tuned 5-class test_resnet saved from DataParallel (`module.` keys): the head's size is read off
    the checkpoint and the loaded model computes exactly what the saved one did."""
    torch.manual_seed(0)
    saved = timm.create_model("test_resnet", num_classes=5)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in saved.state_dict().items()}},
               tmp_path / "finetuned.pth")
    model = load_model(ModelSpec(timm="test_resnet", checkpoint=tmp_path / "finetuned.pth"), tmp_path)
    x, expected = reference_outputs(saved)
    with torch.inference_mode():
        assert torch.equal(model.module(x), expected)
    assert model.source == "timm test_resnet + finetuned.pth"
    assert model.classes == [f"class {i}" for i in range(5)] and model.class_ids is None
    assert (model.input_size, model.resize_size, model.interpolation) == ((160, 160), (168, 168), "bilinear")
    names = ["ant", "bee", "cat", "dog", "eel"]   # model.classes wins over what timm knows
    assert load_model(ModelSpec(timm="test_resnet", checkpoint=tmp_path / "finetuned.pth", classes=names),
                      tmp_path).classes == names


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    torch.save(timm.create_model("test_convnext").state_dict(), tmp_path / "other.pth")
    with pytest.raises(SpecError) as info:
        load_model(ModelSpec(timm="test_resnet", checkpoint=tmp_path / "other.pth"), tmp_path)
    assert info.value.key == "model.checkpoint"
    assert str(info.value).startswith("model.checkpoint: checkpoint 'other.pth' (a state_dict) does not fit "
                                      "timm test_resnet: ")


def test_pretrained_file_is_read_by_timms_loader(tmp_path):
    """timm's file override (pretrained_cfg_overlay file): the weights in the file, ImageNet's classes kept."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    saved = timm.create_model("test_convnext")
    save_file(saved.state_dict(), tmp_path / "weights.safetensors")
    spec = load_spec_text(tmp_path, "model:\n  timm: test_convnext.r160_in1k\n  pretrained_file: weights.safetensors\n")
    assert spec.model.pretrained is True
    model = load_model(spec.model, tmp_path)
    x, expected = reference_outputs(saved)
    with torch.inference_mode():
        assert torch.equal(model.module(x), expected)
    assert model.source == "timm test_convnext.r160_in1k (weights.safetensors)"
    assert model.classes[:2] == ["tench", "goldfish"] and model.class_ids[:2] == list(WNIDS[:2])

    torch.save(timm.create_model("test_convnext", num_classes=5).state_dict(), tmp_path / "five.pth")
    with pytest.raises(SpecError) as info:
        load_model(ModelSpec(timm="test_convnext", pretrained_file=tmp_path / "five.pth"), tmp_path)
    assert info.value.key == "model.pretrained_file" and "five.pth is not timm's weights for test_convnext" \
        in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SpecError, match=r"^model.pretrained_file: no file '.*missing.pth'$"):
        load_model(ModelSpec(timm="test_convnext", pretrained_file=tmp_path / "missing.pth"), tmp_path)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in tmp_path, offline (no network retries in a test)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_pretrained_weights_come_from_the_hugging_face_cache(tmp_path, offline_hub):
    """The default (pretrained: true) reads the weights timm names for the model from the hub's cache, laid out
    as huggingface_hub lays out a download of timm/test_resnet.r160_in1k."""
    from safetensors.torch import save_file

    repo, revision = offline_hub / "models--timm--test_resnet.r160_in1k", "0" * 40
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    torch.manual_seed(0)
    saved = timm.create_model("test_resnet")
    save_file(saved.state_dict(), repo / "snapshots" / revision / "model.safetensors")
    model = load_model(load_spec_text(tmp_path, "model: {timm: test_resnet}\n").model, tmp_path)
    x, expected = reference_outputs(saved)
    with torch.inference_mode():
        assert torch.equal(model.module(x), expected)
    assert model.source == "timm test_resnet" and model.class_ids[0] == WNIDS[0]


def test_pretrained_weights_missing_offline_is_a_clear_error(tmp_path, offline_hub):
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(timm="test_resnet"), tmp_path)
    message = str(info.value)
    assert message.startswith("timm's weights for 'test_resnet' are not cached and cannot be downloaded (")
    assert message.endswith("give a local copy as model.pretrained_file, or set model.pretrained: false for "
                            "random weights") and "\n" not in message


def test_grey_input_averages_the_normalization(tmp_path):
    """model.channels: 1 builds timm's in_chans=1 variant (its first conv takes one channel)."""
    model = load_model(ModelSpec(timm="resnet10t", pretrained=False, channels=1), tmp_path)
    assert model.channels == 1 and model.module.conv1[0].in_channels == 1
    assert model.mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert model.std == pytest.approx([(0.229 + 0.224 + 0.225) / 3])


def test_timm_layer_names_are_listed_with_their_shapes():
    module = timm.create_model("test_convnext").eval()
    shapes = {li.path: li.output_shape for li in list_layers(module, (160, 160), 3)}
    # test_convnext: a stride-4 stem to 40 × 40, stages of 1, 2, 4, 2 blocks and 24, 32, 48, 64 channels,
    # stages 1-3 halve the size
    assert shapes["stages.0.blocks.0.conv_dw"] == (24, 40, 40)
    assert shapes["stages.1.blocks.1.conv_dw"] == (32, 20, 20)
    assert shapes["stages.3.blocks.1.conv_dw"] == (64, 5, 5)
    assert shapes["head.fc"] == (1000,)


def load_spec_text(tmp_path: Path, model_yaml: str):
    (tmp_path / "spec.yaml").write_text(model_yaml + "dataset: {format: imagefolder, root: images}\n"
                                                    "layers: [{name: stem}]\n")
    return load_spec(tmp_path / "spec.yaml")


@pytest.mark.parametrize("model_yaml, key, message", [
    ("model:\n  timm: resnet18\n  torchvision: resnet18\n", "model", "give either 'timm' or 'torchvision', not both"),
    ("model:\n  timm: resnet18\n  factory: a:b\n", "model", "give either 'timm' or 'factory', not both"),
    ("model:\n  torchvision: resnet18\n  pretrained: true\n", "model",
     "'pretrained' and 'pretrained_file' are for timm models ('timm: NAME')"),
    ("model:\n  timm: resnet18\n  checkpoint: a.pth\n  pretrained: true\n", "model",
     "'checkpoint' gives the weights; remove 'pretrained'/'pretrained_file' (or remove 'checkpoint' to load "
     "timm's weights)"),
    ("model:\n  timm: resnet18\n  pretrained: false\n  pretrained_file: w.pth\n", "model",
     "'pretrained: false' asks for random weights but 'pretrained_file' gives weights; remove one of them"),
    ("model:\n  timm: resnet18\n  weights: DEFAULT\n", "model",
     "'weights' is for torchvision models; use 'checkpoint' for your own weights"),
])
def test_conflicting_model_keys_are_refused(tmp_path, model_yaml, key, message):
    with pytest.raises(SpecError) as info:
        load_spec_text(tmp_path, model_yaml)
    assert (info.value.key, info.value.message) == (key, message)


def test_pretrained_defaults_to_true_unless_a_checkpoint_gives_the_weights(tmp_path):
    assert load_spec_text(tmp_path, "model:\n  timm: resnet18\n").model.pretrained is True
    assert load_spec_text(tmp_path, "model:\n  timm: resnet18\n  checkpoint: a.pth\n").model.pretrained is False
    assert load_spec_text(tmp_path, "model:\n  torchvision: resnet18\n").model.pretrained is None


def test_unknown_tag_lists_the_model_tags(tmp_path):
    with pytest.raises(SpecError) as info:
        load_model(ModelSpec(timm="test_resnet.imagenet", pretrained=False), tmp_path)
    assert str(info.value) == ("model.timm: test_resnet has no pretrained tag 'imagenet'; choose one of: "
                               "test_resnet.r160_in1k")


def test_unknown_name_exits_2_with_close_matches(tmp_path):
    (tmp_path / "spec.yaml").write_text("model: {timm: resnet10, pretrained: false}\n"
                                        "dataset: {format: imagefolder, root: .}\nlayers: [{name: stem}]\n")
    r = subprocess.run([sys.executable, "-m", "reportgen", "layers", "spec.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "error: model.timm: no timm model 'resnet10'; closest: resnet10t, resnet101, resnet101s\n"
