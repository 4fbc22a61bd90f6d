"""Adversarial examples by projected gradient descent (Madry et al. 2018) and the smallest L∞ budget that flips a
prediction, found by bisection; from arrays and a model (no report, no context).

Written here rather than taken from torchattacks/foolbox: the attack is ten lines, runs in the model's pixel
space [0, 1] with the model's own normalization, and needs a per-image budget for a vectorized bisection.
PGD starts at the clean image (no random start), so a result depends only on the image, the budget and the
steps: deterministic, and the bisection's answers do not move between runs.

A `Goal` says what the attack wants: `untargeted(labels)` any class but the clean prediction (ascending its
cross-entropy), `targeted(targets)` the given class (descending its cross-entropy).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import standardize

STEP_FACTOR = 2.5       # PGD's step is 2.5 ε / steps: enough to cross the ball and come back (Madry et al.)


@dataclass(frozen=True)
class Goal:
    """What the attack wants for each image: the class `labels` (B,) reached (where `targeted` (B,) is True) or
    left (elsewhere). Goals of different kinds concatenate (`join`), so one batch runs both attacks."""
    labels: torch.Tensor
    targeted: torch.Tensor

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,) per-image loss the attack ascends."""
        ce = F.cross_entropy(logits.float(), self.labels.to(logits.device), reduction="none")
        return torch.where(self.targeted.to(logits.device), -ce, ce)

    def reached(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the top-1 class is the target (targeted) or is not the clean class (untargeted)."""
        top = logits.argmax(1).cpu()
        return torch.where(self.targeted, top == self.labels, top != self.labels)


def untargeted(labels: torch.Tensor) -> Goal:
    return Goal(labels.long().cpu(), torch.zeros(len(labels), dtype=torch.bool))


def targeted(targets: torch.Tensor) -> Goal:
    return Goal(targets.long().cpu(), torch.ones(len(targets), dtype=torch.bool))


def join(goals: list[Goal]) -> Goal:
    """The goals one after the other, for their images stacked in the same order."""
    return Goal(torch.cat([g.labels for g in goals]), torch.cat([g.targeted for g in goals]))


def pgd(model: nn.Module, x01: torch.Tensor, goal: Goal, budget: torch.Tensor, steps: int, mean, std) -> torch.Tensor:
    """`x01` (B, C, H, W) in [0, 1] moved by signed-gradient steps on `goal.loss`, each projected back into the
    L∞ ball of radius `budget` (B,) around it and into [0, 1] → the adversarial images (B, C, H, W)."""
    eps = budget.to(x01.device, torch.float32).view(-1, 1, 1, 1)
    alpha = STEP_FACTOR * eps / steps
    clean = x01.detach().float()
    x = clean.clone()
    for _ in range(steps):
        leaf = x.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(goal.loss(model(standardize(leaf, mean, std))).sum(), leaf)
        x = torch.minimum(torch.maximum(x.detach() + alpha * grad.sign(), clean - eps), clean + eps).clamp(0, 1)
    return x


def logits_of(model: nn.Module, x01: torch.Tensor, mean, std) -> torch.Tensor:
    with torch.no_grad():
        return model(standardize(x01, mean, std)).float()


def smallest_budget(model: nn.Module, x01: torch.Tensor, goal: Goal, steps: int, max_budget: float,
                    tolerance: float, mean, std, progress=lambda n: None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the smallest L∞ budget (to `tolerance`) at which PGD reaches `goal`, by bisection on
    [0, max_budget] → (budget (B,), flipped (B,) bool); where even `max_budget` does not flip, budget is
    `max_budget` and flipped False. All images bisect together (their budgets differ). `progress(1)` per PGD run.

    Bisection assumes that a larger budget flips whenever a smaller one does; where PGD breaks that, the
    answer is still a budget that flips with a smaller one (by `tolerance`) that did not.
    """
    n = len(x01)
    hi = torch.full((n,), float(max_budget))
    lo = torch.zeros(n)
    flipped = goal.reached(logits_of(model, pgd(model, x01, goal, hi, steps, mean, std), mean, std))
    progress(1)
    while (hi - lo)[flipped].gt(tolerance).any():
        mid = (lo + hi) / 2
        ok = goal.reached(logits_of(model, pgd(model, x01, goal, mid, steps, mean, std), mean, std))
        hi = torch.where(flipped & ok, mid, hi)
        lo = torch.where(flipped & ~ok, mid, lo)
        progress(1)
    return hi, flipped
