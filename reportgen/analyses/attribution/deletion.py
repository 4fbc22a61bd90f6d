"""Deletion and insertion curves (Petsiuk et al. 2018, "RISE: Randomized Input Sampling for Explanation of
Black-box Models", section 4.2): does removing the pixels a map ranks first take the decision away faster
than removing pixels at random, and does inserting them first bring it back faster?

- deletion: the image, with the top `counts[k]` pixels of `order` (every channel) taken from a baseline image
  (here a blurred copy), k = 0..steps;
- insertion: the baseline, with the top `counts[k]` pixels of `order` put back.

Each curve is the model's softmax probability of the target class at each step, against the share of pixels
changed; its area (trapezoid rule over that share, in [0, 1]) is small for a good deletion order and large for
a good insertion order. Pure functions of tensors and arrays: the analysis (`attribution_trust.py`) picks the
baseline and the orders.
"""

import numpy as np
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur


def pixel_order(values: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """(H, W) map → (H*W,) flat pixel indices, the largest value first; equal values in the order of `tiebreak`
    ((H*W,) distinct keys, e.g. a seeded permutation), so a map's flat regions are not removed in raster order."""
    return np.lexsort((tiebreak, -values.astype(np.float64).ravel()))


def step_counts(pixels: int, steps: int) -> np.ndarray:
    """(steps + 1,) pixels changed at each point of a curve: 0, ⌊pixels/steps⌋, …, pixels."""
    return (np.arange(steps + 1) * pixels) // steps


def perturbed(start: torch.Tensor, end: torch.Tensor, order: np.ndarray, counts: np.ndarray) -> torch.Tensor:
    """(S, C, H, W): `start` (C, H, W) with its first `counts[k]` pixels of `order` taken from `end`, for each k."""
    _, h, w = start.shape
    rank = torch.empty(h * w, dtype=torch.long, device=start.device)
    rank[torch.as_tensor(order, device=start.device)] = torch.arange(h * w, device=start.device)
    taken = rank.view(1, 1, h, w) < torch.as_tensor(counts, device=start.device).view(-1, 1, 1, 1)   # (S, 1, H, W)
    return torch.where(taken, end.unsqueeze(0), start.unsqueeze(0))


def blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, H, W) → the same, Gaussian-blurred with `sigma` px (kernel radius 2σ, reflected borders)."""
    h, w = x.shape[-2:]
    size = [min(2 * int(np.ceil(2 * sigma)) + 1, 2 * (side - 1) + 1) for side in (w, h)]   # reflection needs < side
    return gaussian_blur(x, size, [sigma, sigma]) if min(size) > 1 else x.clone()


@torch.no_grad()
def curve_probs(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) → (N, K) float64 softmax probabilities of the model (eval mode), in one forward."""
    return model(inputs).float().softmax(1).double().cpu().numpy()


def area(counts: np.ndarray, values: np.ndarray) -> float:
    """Area under a curve over the share of pixels changed (counts / counts[-1]), trapezoid rule."""
    return float(np.trapezoid(values, counts / counts[-1]))
