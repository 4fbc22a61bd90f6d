"""Tiny models for the feature-visualization tests: fast at 16–24 px, seeded, torchvision-style in-place ReLUs."""

from collections import OrderedDict

import torch
from torch import nn


class CallCounter(nn.Module):
    """Identity that counts its calls: put after the target layer to prove the forward stopped before it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def conv_net(in_channels: int = 3, classes: int = 5, seed: int = 0) -> nn.Module:
    """conv1(8, 5×5) → relu1 (in place) → pool1 (2×2) → conv2(8) → relu2 (in place) → after → pool → fc; eval.

    conv2's receptive field is 9×9 px, large enough for the 'neuron' objective to be robust to jitter.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 8, 5, padding=2)),
            ("relu1", nn.ReLU(inplace=True)),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(8, 8, 3, padding=1)),
            ("relu2", nn.ReLU(inplace=True)),
            ("after", CallCounter()),
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(8, classes)),
        ]))
    return model.eval()
