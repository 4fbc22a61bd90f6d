"""A network with planted detectors: the demo CNN's class probabilities wired into channels whose labels are
known, on real Fashion-MNIST images.

Layer `detectors` (UNITS channels, 1×1): unit 0 is the probability of Trouser, unit 1 of Sandal OR Sneaker,
unit 2 fires for the Bags the model is sure of (p > 0.5) on dark images only (mean pixel below DARK: the user
concept "dark"), unit 3 for sure Ankle boots on images that are not dark, unit 4 is a pseudo-random hash of the
pixels (no class, no concept), and the rest seeded mixtures of two classes' probabilities and the hash (labels
found by the search, checked against scikit-learn by the tests). The weights are the demo's (the cache keys on
weights: build these with --no-cache after editing this file).
"""

from importlib import resources

import numpy as np
import torch
from torch import nn

from reportgen.demo.fashion_cnn import FashionCNN

UNITS = 32
DARK = 0.3           # mean pixel (0..1) below which an image is "dark"
MEAN, STD = 0.2860, 0.3530
PLANTED = {0: "Trouser", 1: "Sandal OR Sneaker", 2: "Bag AND dark", 3: "Ankle boot AND NOT dark"}
RANDOM_UNIT = 4


def is_dark(pixels: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 → (N,) bool: the concept "dark", as the network computes it."""
    return pixels.reshape(len(pixels), -1).mean(1) / 255 < DARK


class PlantedDetectors(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = FashionCNN()
        weights = resources.files("reportgen.demo") / "fashion_cnn.pt"
        with resources.as_file(weights) as path:
            self.backbone.load_state_dict(torch.load(path, weights_only=True))
        # any fixed random unit is labelled by chance with probability alpha (test_unit_labels checks the rate);
        # this hash's unit, at seed 1, is not
        self.register_buffer("hash_w", torch.from_numpy(np.random.default_rng(1).normal(size=(784,))))
        rng = np.random.default_rng(0)
        pairs = rng.integers(0, 10, (UNITS - 5, 2))
        weights = rng.uniform(0.2, 1.0, (UNITS - 5, 3))
        self.register_buffer("mix", torch.zeros(UNITS - 5, 11, dtype=torch.float64))   # 10 classes + the hash
        for u, ((a, b), (wa, wb, wh)) in enumerate(zip(pairs, weights)):
            self.mix[u, a] += wa
            self.mix[u, b] += wb
            self.mix[u, 10] += wh
        self.detectors = nn.Identity()            # the layer the report labels: (B, UNITS, 1, 1)
        self.fc = nn.Linear(UNITS, 10)

    def forward(self, x):
        p = self.backbone(x).double().softmax(1)                              # (B, 10)
        raw = x.double() * STD + MEAN                                        # back to pixels in 0..1
        dark = (raw.flatten(1).mean(1) < DARK).double()
        noise = torch.frac(torch.sin(raw.flatten(1) @ self.hash_w.to(raw.dtype) * 1000) * 43758.5453).abs()   # class-blind
        sure = (p - 0.5).clamp(min=0)                                        # 0 unless the model is sure
        units = torch.stack([p[:, 1], p[:, 5] + p[:, 7], sure[:, 8] * dark, sure[:, 9] * (1 - dark), noise], 1)
        mixed = torch.cat([p, noise[:, None]], 1) @ self.mix.T                # (B, UNITS - 5)
        out = self.detectors(torch.cat([units, mixed], 1).float()[:, :, None, None])
        return self.fc(out.flatten(1))


def planted_cnn() -> PlantedDetectors:
    torch.manual_seed(0)
    return PlantedDetectors().eval()
