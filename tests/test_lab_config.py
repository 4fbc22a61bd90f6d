"""The lab reproduction config builds offline: a stand-in state_dict where torchvision's weights API caches it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from reportgen.pipeline import build
from reportgen.models import weights_cache_path
from reportgen.spec import load_spec


@pytest.mark.slow
def test_vgg19_lab_config_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.VGG19_Weights.IMAGENET1K_V1
    path = weights_cache_path(weights)
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg19().state_dict(), path)      # the real loading code reads this file

    spec = load_spec(Path(__file__).resolve().parents[1] / "configs" / "vgg19_block3_conv1.yaml")
    rng = np.random.default_rng(0)
    for cls in ("tabby", "goldfish"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)).save(tmp_path / "images" / cls / f"{i}.jpg")
    # the lab's own choices, made small enough for a test: filters 31 and 9, a few steps
    spec.dataset.root = tmp_path / "images"
    spec.dataset.samples = 2
    spec.layers[0].filters = [9, 31]
    spec.layers = spec.layers[:1]
    spec.layers[0].embedding = "pca"
    spec.feature_vis.steps = 2
    spec.feature_vis.size = 96
    spec.feature_vis.classes = [1]
    spec.attribution.images = 2
    spec.attribution.sanity_check = False
    spec.record.top_k = 3
    spec.spec_path = tmp_path
    out = build(spec, out=tmp_path / "site", progress=False, log=lambda *_: None)

    report = json.loads((out / "report.json").read_text())
    assert report["model"]["source"] == "torchvision vgg19 (VGG19_Weights.IMAGENET1K_V1)"
    assert report["model"]["num_classes"] == 1000
    # folders named like the weights' categories are labelled with those outputs (tabby 281, goldfish 1)
    assert {(s["name"].split("/")[0], s["label"], s["class"]) for s in report["samples"]} <= {
        ("tabby", 281, "tabby"), ("goldfish", 1, "goldfish")}
    block3 = next(l for l in report["layers"] if l["name"] == "block3_conv1")
    assert [f["index"] for f in block3["filters"]] == [9, 31]
    f31 = block3["filters"][1]
    # the lab's circuit: 128 input channels ranked by L2 of their 3×3 kernels, read from the weights directly
    w = torch.load(path, weights_only=True)["features.10.weight"][31]        # (128, 3, 3)
    l2 = w.flatten(1).norm(dim=1).numpy()
    assert [c["channel"] for c in f31["circuits"]["terms"][0]["conv"]["channels"]] == np.argsort(-l2, kind="stable")[:10].tolist()
    # block3_conv1 reads block2_pool = block2_conv2's channels; expand gave those channels pages
    src = f31["circuits"]["terms"][0]["conv"]["channels"][0]["sources"][0]
    assert src["layer"] == "block2_conv2" and src["page"] and (out / src["page"]).is_file()
    assert f31["feature_vis"]["size"] == [96, 96] and (out / f31["feature_vis"]["image"]).is_file()
    # the added block2_conv2 is synthesized on a canvas of 4 of its receptive fields (3×3, 3×3, pool 2,
    # 3×3, 3×3: 1 + 2 + 2 + 1 + 4 + 4 = 14 px; ×4 = 56, rounded up to 16 px: 64), not the spec's 96 px
    block2 = next(l for l in report["layers"] if l["name"] == "block2_conv2")
    assert block2["filters"] and {tuple(f["feature_vis"]["size"]) for f in block2["filters"]} == {(64, 64)}
    assert Image.open(out / block2["filters"][0]["feature_vis"]["image"]).size == (64, 64)
    assert {a["method"] for a in report["attribution"]["records"]} == {"occlusion", "saliency", "gradcam", "guided_backprop",
                                                            "guided_gradcam"}
