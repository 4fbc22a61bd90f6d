"""The model zoo: torchvision's families with random weights at a small input, one inner layer each, default
sections (feature visualization shortened), built on a small ImageFolder. Shared by tests/test_zoo.py."""

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reportgen.pipeline import build
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
    # in the styles of popular repositories: akamaster's CIFAR ResNet-20 (functional ReLUs, option-A pad
    # shortcut) and a U-Net-like fusion (torch.cat of an interpolated coarse map with a fine one)
    ("factory:tests.helpers.cifar_resnet:resnet20", "layer2", 32),
    ("factory:tests.helpers.zoo:fusion_net", "fuse", 48),
]


class FusionNet(nn.Module):
    """A fine and a coarse path, the coarse one upsampled with `interpolate` and concatenated to the fine one."""

    def __init__(self):
        super().__init__()
        self.fine = nn.Conv2d(3, 8, 3, padding=1)
        self.coarse = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fuse = nn.Conv2d(16, 12, 3, padding=1)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        fine = torch.relu(self.fine(x))
        coarse = F.relu(self.coarse(fine))
        up = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        out = self.fuse(torch.cat([fine, up], dim=1)).relu()
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


def fusion_net() -> FusionNet:
    torch.manual_seed(0)
    return FusionNet()

SPEC = """
title: zoo {name}
seed: 0
model:
  {source}
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
# the opt-in sections too: every family through inversion, DeepDream, PGD and Gram matrices
inversion: {{enabled: true, images: 1, steps: 2}}
deepdream: {{enabled: true, images: 1, octaves: 2, steps: 2, filters: 1}}
adversarial: {{enabled: true, images: 1, steps: 2, tolerance: 0.02}}
texture: {{enabled: true, steps: 2}}
"""


def build_zoo_model(tmp: Path, name: str, layer: str, size: int) -> tuple[dict, float, list[str]]:
    """Build one zoo model's report in `tmp`: (report.json, seconds, log lines)."""
    if not (tmp / "images").is_dir():
        write_imagefolder(tmp / "images", per_class=4, classes=("a", "b", "c"), size=(48, 40))
    source = f"factory: {name.removeprefix('factory:')}" if name.startswith("factory:") else f"torchvision: {name}"
    (tmp / "spec.yaml").write_text(SPEC.format(name=name, source=source, layer=layer, size=size))
    lines: list[str] = []
    t0 = time.perf_counter()
    out = build(load_spec(tmp / "spec.yaml"), progress=False, log=lines.append)
    return json.loads((out / "report.json").read_text()), time.perf_counter() - t0, lines
