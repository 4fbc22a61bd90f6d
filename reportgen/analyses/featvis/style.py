"""Texture and style (Gatys, Ecker & Bethge 2015, 2016): images matched on the Gram matrices of several layers
and, for a style transfer, on one layer's activations too.

The loop (`synthesize`) matches one tensor per image (objective kind 'match'). `statistics_model` makes that
tensor: a module that runs the model once, keeps the outputs of the layers named by its `Part`s, and returns
each part (a Gram matrix, or the activations themselves) flattened and scaled, all in one (N, D) vector. With
each part scaled by sqrt(weight) / ‖the part's target‖, the squared distance of two vectors is the weighted
sum of the parts' squared relative distances, so one layer with large activations does not drown the others.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from reportgen.hooks import capturing

from .objectives import gram_matrix


@dataclass(frozen=True)
class Part:
    """One part of the matched vector: the output of `layer` (module path), as its Gram matrix (`gram`, style and
    texture) or as is (content), multiplied by `scale`."""
    layer: str
    gram: bool = True
    scale: float = 1.0


class Statistics(nn.Module):
    """(N, C, H, W) normalized input -> (N, D): every part's values, flattened and scaled, concatenated."""

    def __init__(self, model: nn.Module, run, parts: list[Part]):
        super().__init__()
        self.model = model          # a submodule, so `frozen` and eval mode reach its weights
        self._run, self.parts = run, list(parts)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each part's values (N, ...) unscaled: a Gram matrix (N, C, C) or the layer's output."""
        outs = self._run(x)
        return [gram_matrix(a.float()) if p.gram else a.float() for p, a in zip(self.parts, outs)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([v.flatten(1) * p.scale for p, v in zip(self.parts, self.split(x))], dim=1)


@contextmanager
def statistics_model(model: nn.Module, parts: list[Part]) -> Iterator[Statistics]:
    """A `Statistics` module for `parts` of `model`; the hooks it needs are removed on exit, errors too."""
    with capturing(model, [p.layer for p in parts]) as run:
        yield Statistics(model, run, parts)


def scaled(parts: list[Part], targets: list[torch.Tensor], weights: list[float]) -> list[Part]:
    """`parts` with scale sqrt(weight) / ‖target‖ (targets: each part's unscaled values for one image)."""
    return [Part(p.layer, p.gram, float(w ** 0.5 / t.float().norm().clamp(min=1e-12)))
            for p, t, w in zip(parts, targets, weights)]
