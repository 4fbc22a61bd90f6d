"""Objectives: what each image of a batch maximizes, read off the activation of the target layer.

An objective maps `(acts, units)` to one value per image: acts is the layer's output (N, K, ...) for the
N images of a batch, units (N,) the channel (or class) image i is for. Values are per image, never summed
across the batch, so that the gradient of their sum reaches each image from its own objective only.
"""

from typing import Callable

import torch
import torch.nn.functional as F

from reportgen.errors import ModelError

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _pick(acts: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """(N, ...) the channel units[i] of image i."""
    return acts[torch.arange(acts.shape[0], device=acts.device), units]


def channel_mean(acts: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """(N,) mean of image i's channel over all positions ((N, K) activations: the unit itself)."""
    picked = _pick(acts, units)
    return picked.reshape(picked.shape[0], -1).mean(dim=1)


def centre_neuron(acts: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """(N,) the channel's value at the centre position (H // 2, W // 2) of (N, K, H, W) activations."""
    if acts.dim() != 4:
        raise ModelError(f"the 'neuron' objective needs a convolutional layer's (N, C, H, W) output; "
                         f"this layer gives shape {tuple(acts.shape)}. Use objective 'channel'.")
    h, w = acts.shape[2] // 2, acts.shape[3] // 2
    return _pick(acts[:, :, h, w], units)


def logit(acts: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """(N,) the class score units[i] of image i, from (N, classes) outputs (a classifier's logits)."""
    if acts.dim() != 2:
        raise ModelError(f"the 'logit' objective needs (N, classes) outputs; this layer gives shape "
                         f"{tuple(acts.shape)}. Leave the layer out to use the model's output.")
    return _pick(acts, units)


OBJECTIVES: dict[str, Objective] = {"channel": channel_mean, "neuron": centre_neuron, "logit": logit}


def diversity_penalty(acts: torch.Tensor, variants: int) -> torch.Tensor:
    """(N,) mean cosine similarity of each image's Gram matrix to those of the other variants of its unit.

    acts: (N, K, ...) with N = units × variants, the variants of a unit adjacent. Gram matrices of the whole
    layer compare *styles* (which channels fire together), so variants are pushed to reach their filter by
    different combinations of features, not by a mere shift (Distill, "Feature Visualization", "Diversity").
    """
    n, k = acts.shape[:2]
    flat = acts.reshape(n, k, -1)                                               # (N, K, L)
    gram = flat @ flat.transpose(1, 2) / flat.shape[2]                          # (N, K, K)
    gram = F.normalize(gram.reshape(n // variants, variants, k * k), dim=2)     # (U, V, K*K)
    cosine = gram @ gram.transpose(1, 2)                                        # (U, V, V)
    others = (cosine.sum(dim=2) - cosine.diagonal(dim1=1, dim2=2)) / (variants - 1)
    return others.reshape(n)
