"""Objectives: what each image of a batch maximizes, read off the activation of the target layer.

`Objective` says what to maximize: a layer, its units, the kind of score and how many diverse variants.
A score (`OBJECTIVES[kind]`) maps `(acts, units)` to one value per image: acts is the layer's output
(N, K, ...) for the N images of a batch, units (N,) the channel (or class) image i is for. Values are per
image, never summed across the batch, so that the gradient of their sum reaches each image from its own
objective only.
"""

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from reportgen.errors import ModelError, SpecError

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


OBJECTIVES: dict[str, Score] = {"channel": channel_mean, "neuron": centre_neuron, "logit": logit}


@dataclass(frozen=True)
class Objective:
    """What to maximize: `units` of `layer`, one image per (unit, variant), variants of a unit adjacent.

    layer: module name from `model.named_modules()`; None is the model's output (for kind 'logit').
    units: channels (or classes) to visualize, stored as a tuple.
    kind: 'channel' (mean over positions), 'neuron' (centre position) or 'logit' (a class score).
    variants, diversity: images per unit, and how much of its objective an image gives up to look unlike
        the other variants of its unit (a weight relative to the objective's size; 0.1–0.5 works).
    """
    layer: str | None
    units: Sequence[int]
    kind: str = "channel"
    variants: int = 1
    diversity: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "units", tuple(int(u) for u in self.units))
        if self.kind not in OBJECTIVES:
            raise SpecError("objective", f"{self.kind!r} is not one of {', '.join(map(repr, OBJECTIVES))}.")
        if any(u < 0 for u in self.units):
            raise SpecError("units", f"units must be non-negative channel or class indices; "
                                     f"got {list(self.units)!r}.")
        if self.variants < 1:
            raise SpecError("variants", f"must be at least 1; got {self.variants!r}.")
        if self.diversity and self.variants < 2:
            raise SpecError("diversity", "a diversity term needs at least 2 variants per unit.")

    @property
    def score(self) -> Score:
        return OBJECTIVES[self.kind]


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
