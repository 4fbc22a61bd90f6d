"""The model zoo: torchvision's families with random weights at a small input, one inner layer each, default
sections (feature visualization shortened), built on a small ImageFolder. Shared by tests/test_zoo.py."""

import json
import time
from pathlib import Path

from reportgen.build import build
from reportgen.spec import load_spec
from tests.helpers.tiny import write_imagefolder

# (torchvision name, inner layer by module path, input size)
ZOO = [
    ("alexnet", "features.3", 64),
    ("vgg11_bn", "features.8", 64),
    ("resnet18", "layer2.0", 64),
    ("resnet50", "layer3.1", 64),
    ("densenet121", "features.denseblock2", 64),
    ("mobilenet_v2", "features.4", 64),
    ("mobilenet_v3_small", "features.3", 64),
    ("efficientnet_b0", "features.3", 64),
    ("googlenet", "inception3b", 64),
    ("inception_v3", "Mixed_5b", 80),
    ("shufflenet_v2_x0_5", "stage2", 64),
    ("squeezenet1_0", "features.4", 64),
    ("regnet_x_400mf", "trunk_output.block2", 64),
    ("convnext_tiny", "features.1", 64),
    ("mnasnet0_5", "layers.9", 64),
]

SPEC = """
title: zoo {name}
seed: 0
model:
  torchvision: {name}
  input_size: {size}
dataset:
  format: imagefolder
  root: images
  samples: 2
  batch_size: 8
layers:
  - name: {layer}
    filters: [0, 1]
    embedding: pca
feature_vis:
  steps: 4
  classes: [0]
attribution:
  images: 1
  sanity_check: false
"""


def build_zoo_model(tmp: Path, name: str, layer: str, size: int) -> tuple[dict, float, list[str]]:
    """Build one zoo model's report in `tmp`: (report.json, seconds, log lines)."""
    if not (tmp / "images").is_dir():
        write_imagefolder(tmp / "images", per_class=4, classes=("a", "b", "c"), size=(48, 40))
    (tmp / "spec.yaml").write_text(SPEC.format(name=name, layer=layer, size=size))
    lines: list[str] = []
    t0 = time.perf_counter()
    out = build(load_spec(tmp / "spec.yaml"), progress=False, log=lines.append)
    return json.loads((out / "report.json").read_text()), time.perf_counter() - t0, lines
