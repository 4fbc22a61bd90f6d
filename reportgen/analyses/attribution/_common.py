"""What every attribution method shares: input checks, class scores, conversions to maps.

Kept apart so each method module holds only its algorithm (as pytorch-grad-cam's `base_cam.py`
holds the mechanism and each CAM overrides one step).
"""

import numpy as np
import torch
from torch import nn

from ...errors import ModelError


def check_input(x: torch.Tensor) -> None:
    """The input of every method: a float tensor (B, C, H, W)."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (B, C, H, W), got {x.dtype} of shape {tuple(x.shape)}")


def check_batch(x: torch.Tensor, target: torch.Tensor) -> None:
    """The contract of every class method: `x` (B, C, H, W) float, `target` (B,) integer class indices."""
    check_input(x)
    if target.shape != (x.shape[0],) or target.is_floating_point():
        raise ValueError(f"target must be an integer tensor ({x.shape[0]},), got {target.dtype} "
                         f"of shape {tuple(target.shape)}")


def class_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) entries `logits[b, target[b]]` of the model output (B, K); ModelError if a class is missing."""
    if logits.dim() != 2:
        raise ModelError(f"attribution needs a model output of shape (B, classes), got {tuple(logits.shape)}")
    n_classes = logits.shape[1]
    bad = target[(target < 0) | (target >= n_classes)]
    if bad.numel():
        raise ModelError(f"target class {int(bad[0])} is out of range: the model has {n_classes} outputs")
    return logits.gather(1, target.to(logits.device, torch.long).view(-1, 1))[:, 0]


def last_conv(model: nn.Module) -> str:
    """Module path of the last `nn.Conv2d` in `model.named_modules()` order (registration order)."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError("the model has no nn.Conv2d layer; name a layer with a (B, C, H, W) output")
    return convs[-1]


def input_leaf(x: torch.Tensor) -> torch.Tensor:
    """A fresh leaf copy of `x` that requires grad, so the caller's tensor and graph stay untouched."""
    return x.detach().clone().requires_grad_(True)


def channel_max_abs(grad: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) → float32 numpy (B, H, W): the largest |value| over channels (Simonyan et al.)."""
    return grad.detach().abs().amax(dim=1).float().cpu().numpy()


def to_map(t: torch.Tensor) -> np.ndarray:
    """A (B, H, W) tensor as float32 numpy."""
    return t.detach().float().cpu().numpy()
