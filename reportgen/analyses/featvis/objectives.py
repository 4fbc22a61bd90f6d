"""Objectives: what each image of a batch maximizes, read off the activation of the target layer.

`Objective` says what to maximize: a layer, its units, the kind of score and how many diverse variants.
A score (`OBJECTIVES[kind]`) maps `(acts, units)` to one value per image: acts is the layer's output
(N, K, ...) for the N images of a batch, units (N,) the channel (or class) image i is for. Values are per
image, never summed across the batch, so that the gradient of their sum reaches each image from its own
objective only.

Kind 'match' is the other way round: units index a table of target activations, and the score is minus the
image's relative distance to its target (feature inversion, texture), climbed to 0.
"""

from dataclasses import dataclass, field
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
DIRECTION = "direction"   # the kind whose score needs `Objective.directions` (not in OBJECTIVES: it has parameters)
MATCH = "match"           # the kind whose score needs `Objective.targets`


def relative_distance(acts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) ‖acts_i − targets_i‖ / ‖targets_i‖ over all of each image's values (float32)."""
    acts, targets = acts.float().flatten(1), targets.float().flatten(1)
    return (acts - targets).norm(dim=1) / targets.norm(dim=1).clamp(min=1e-12)


def feature_match(targets: torch.Tensor) -> Score:
    """Score: (N,) minus the relative distance of image i's activations to targets[units[i]], a (T, ...) table
    in the layer's output shape. At 0 the image gives the layer exactly the target's activations: feature
    inversion (Mahendran & Vedaldi 2015) on a layer's output, texture (Gatys et al. 2015) on Gram matrices."""
    def score(acts: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        if tuple(acts.shape[1:]) != tuple(targets.shape[1:]):
            raise ModelError(f"the targets have shape {tuple(targets.shape[1:])} per image; this layer gives "
                             f"{tuple(acts.shape[1:])}.")
        return -relative_distance(acts, targets.to(acts.device)[units])
    return score


def direction_mean(directions: torch.Tensor) -> Score:
    """Score: (N,) mean over positions of <d / |d|, acts> with d = directions[units[i]], a (D, K) table of
    directions in channel space ((N, K) activations: the projection itself). A CRAFT concept's direction H_k
    (Fel et al. 2023) is maximized as a whole, whatever its length."""
    unit = F.normalize(directions.float(), dim=1)

    def score(acts: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        if acts.shape[1] != unit.shape[1]:
            raise ModelError(f"the directions have {unit.shape[1]} channels; this layer gives shape "
                             f"{tuple(acts.shape)}.")
        d = unit.to(acts.device, acts.dtype)[units]                          # (N, K)
        projected = (acts * d.reshape(*d.shape, *[1] * (acts.dim() - 2))).sum(1)
        return projected.reshape(acts.shape[0], -1).mean(dim=1)
    return score


@dataclass(frozen=True)
class Objective:
    """What to maximize: `units` of `layer`, one image per (unit, variant), variants of a unit adjacent.

    layer: module name from `model.named_modules()`; None is the model's output (for kind 'logit').
    units: channels (or classes) to visualize, stored as a tuple.
    kind: 'channel' (mean over positions), 'neuron' (centre position), 'logit' (a class score), 'direction'
        (mean over positions of the projection on directions[unit], a unit vector in channel space) or 'match'
        (minus the relative distance of the layer's output to targets[unit]: `feature_match`).
    variants, diversity: images per unit, and how much of its objective an image gives up to look unlike
        the other variants of its unit (a weight relative to the objective's size; 0.1–0.5 works).
    """
    layer: str | None
    units: Sequence[int]
    kind: str = "channel"
    variants: int = 1
    diversity: float = 0.0
    directions: Sequence[Sequence[float]] | None = None   # kind 'direction': one row per unit index, (D, K)
    # kind 'match': (T, ...) float target activations, one row per unit index; compared by identity, not value
    targets: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "units", tuple(int(u) for u in self.units))
        if self.directions is not None:   # a tuple of tuples keeps the frozen objective hashable
            object.__setattr__(self, "directions", tuple(tuple(float(v) for v in row) for row in self.directions))
        if self.kind == DIRECTION:
            if not self.directions or any(u >= len(self.directions) for u in self.units):
                raise SpecError("directions", f"the 'direction' objective needs a direction per unit; got "
                                              f"{len(self.directions or ())} for units {list(self.units)!r}.")
        elif self.kind == MATCH:
            if self.targets is None or any(u >= len(self.targets) for u in self.units):
                raise SpecError("targets", f"the 'match' objective needs a target per unit; got "
                                           f"{0 if self.targets is None else len(self.targets)} for units "
                                           f"{list(self.units)!r}.")
            object.__setattr__(self, "targets", torch.as_tensor(self.targets, dtype=torch.float32))
        elif self.kind not in OBJECTIVES:
            raise SpecError("objective", f"{self.kind!r} is not one of {', '.join(map(repr, OBJECTIVES))}.")
        if any(u < 0 for u in self.units):
            raise SpecError("units", f"units must be non-negative channel or class indices; "
                                     f"got {list(self.units)!r}.")
        if self.variants < 1:
            raise SpecError("variants", f"must be at least 1; got {self.variants!r}.")
        if self.diversity and self.variants < 2:
            raise SpecError("diversity", "a diversity term needs at least 2 variants per unit.")

    @property
    def matches(self) -> bool:
        """Units index `targets` (not channels), and the score is minus a distance, not an activation."""
        return self.kind == MATCH

    @property
    def score(self) -> Score:
        if self.kind == DIRECTION:
            return direction_mean(torch.tensor(self.directions))
        if self.kind == MATCH:
            return feature_match(self.targets)
        return OBJECTIVES[self.kind]


def diversity_penalty(acts: torch.Tensor, variants: int) -> torch.Tensor:
    """(N,) mean cosine similarity of each image's Gram matrix to those of the other variants of its unit.

    acts: (N, K, ...) with N = units × variants, the variants of a unit adjacent. Gram matrices of the whole
    layer compare *styles* (which channels fire together), so variants are pushed to reach their filter by
    different combinations of features, not by a mere shift (Distill, "Feature Visualization", "Diversity").
    """
    n, k = acts.shape[:2]
    gram = F.normalize(gram_matrix(acts).reshape(n // variants, variants, k * k), dim=2)     # (U, V, K*K)
    cosine = gram @ gram.transpose(1, 2)                                        # (U, V, V)
    others = (cosine.sum(dim=2) - cosine.diagonal(dim1=1, dim2=2)) / (variants - 1)
    return others.reshape(n)


def gram_matrix(acts: torch.Tensor) -> torch.Tensor:
    """(N, K, ...) -> (N, K, K): G[c, d] = the mean over positions of channel c times channel d. Which channels
    fire together, wherever they fire: a layer's texture (Gatys, Ecker & Bethge 2015)."""
    flat = acts.reshape(acts.shape[0], acts.shape[1], -1)                      # (N, K, L)
    return flat @ flat.transpose(1, 2) / flat.shape[2]
