"""DeepDream (Mordvintsev, Olah & Tyka 2015): gradient ascent on a real image to amplify what a layer already
sees in it, from arrays and a model (no report, no context).

The classic loop, in the model's pixel space [0, 1] (normalized with the model's mean and std before each
forward): for each octave, smallest first, the image at that scale plus the detail dreamed so far, `steps`
ascent steps, each on a randomly rolled copy (jitter) with the gradient divided by its mean absolute value
per image (so `lr` is a step in pixel units whatever the layer's scale), clipped to [0, 1].

Objectives are `activation (B, C, ...) -> (B,)`: `amplify` (the layer's mean squared activation, the original
DeepDream), `channel(c)` (the mean of channel c per image, for nudging towards one filter).
"""

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..hooks import stopping_at
from ..models import standardize

Objective = Callable[[torch.Tensor], torch.Tensor]    # layer output (B, C, ...) -> (B,)
MIN_SIDE = 8            # px: octaves smaller than this are skipped (deep layers would shrink to nothing)


def amplify(act: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) -> (B,) mean of the squared activations: its gradient is the activation itself."""
    return act.float().pow(2).flatten(1).mean(1)


def channels(units: torch.Tensor) -> Objective:
    """Image b pushes channel units[b] (B,): the mean of that channel over positions."""
    def objective(act: torch.Tensor) -> torch.Tensor:
        picked = act.float()[torch.arange(len(units)), units.to(act.device)]
        return picked.flatten(1).mean(1) if picked.dim() > 1 else picked
    return objective


def activation_norm(model: nn.Module, layer: str, x01: torch.Tensor, mean, std) -> torch.Tensor:
    """(B,) L2 norm of `layer`'s output per image of `x01` (B, C, H, W) in [0, 1]."""
    with stopping_at(model, layer) as run, torch.no_grad():
        return run(standardize(x01, mean, std)).float().flatten(1).norm(dim=1)


@dataclass(frozen=True)
class Dream:
    """The loop's settings (`deepdream` spec section)."""
    octaves: int = 3
    octave_scale: float = 1.4
    steps: int = 10                # per octave
    lr: float = 0.05               # pixel units per step (the gradient is normalized to mean |g| = 1)
    jitter: int = 2                # px, the largest random roll either way
    seed: int = 0

    def sizes(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """Octave sizes, smallest first; those under MIN_SIDE px left out."""
        out = [tuple(round(s / self.octave_scale ** k) for s in size) for k in range(self.octaves)]
        return [s for s in out if min(s) >= MIN_SIDE][::-1] or [tuple(size)]   # the full size always last


def dream(model: nn.Module, layer: str, x01: torch.Tensor, objective: Objective, mean, std, settings: Dream,
          progress: Callable[[int], object] = lambda n: None) -> torch.Tensor:
    """`x01` (B, C, H, W) in [0, 1] dreamed at `layer` for `objective` → (B, C, H, W) in [0, 1].

    Images do not interact (eval mode): the objective is summed over the batch and each image's gradient is
    normalized on its own. Deterministic for `settings.seed` (the jitter's rolls; one roll per step for the batch).
    `progress(steps)` is called after each step.
    """
    gen = torch.Generator().manual_seed(settings.seed)
    size = tuple(x01.shape[-2:])
    base = x01.detach().float()
    detail = torch.zeros_like(base)
    for octave in settings.sizes(size):
        scaled = F.interpolate(base, size=octave, mode="bilinear", align_corners=False) if octave != size else base
        detail = F.interpolate(detail, size=octave, mode="bilinear", align_corners=False)
        x = (scaled + detail).clamp(0, 1)
        for _ in range(settings.steps):
            dy, dx = (torch.randint(-settings.jitter, settings.jitter + 1, (2,), generator=gen).tolist()
                      if settings.jitter else (0, 0))
            x = _ascent_step(model, layer, torch.roll(x, (dy, dx), (2, 3)), objective, mean, std, settings.lr)
            x = torch.roll(x, (-dy, -dx), (2, 3))
            progress(1)
        detail = x - scaled
    return x       # the last octave is the full size (`Dream.sizes`)


def _ascent_step(model, layer, x, objective, mean, std, lr) -> torch.Tensor:
    """One step up the objective's gradient, normalized to mean |g| = 1 per image; clipped to [0, 1]."""
    leaf = x.detach().requires_grad_(True)
    with stopping_at(model, layer) as run, torch.enable_grad():
        (grad,) = torch.autograd.grad(objective(run(standardize(leaf, mean, std))).sum(), leaf)
    scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (x.detach() + lr * grad / scale).clamp(0, 1)
