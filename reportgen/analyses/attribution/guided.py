"""Guided backpropagation (Springenberg et al. 2015) and guided Grad-CAM (Selvaraju et al. 2017).

Guided backprop is the input gradient where every ReLU passes back only positive gradients,
and only where its input was positive: ∂in = max(∂out, 0) · [in > 0]. The ReLU's own backward
already applies [in > 0]; a forward hook on each `nn.ReLU` puts a gate after it whose backward
clamps the gradient at 0. Forward hooks (unlike full backward hooks) are allowed on in-place
ReLUs, and the model's modules are never swapped, so nothing about the model changes once the
hooks are removed. ReLUs called as functions (`F.relu`) cannot be hooked and stay plain.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ...errors import ModelError
from ...hooks import removing, run_until
from ._common import channel_max_abs, check_batch, check_input, class_scores, input_leaf
from .gradcam import layer_cam, upsample


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through."""

    @staticmethod
    def forward(ctx, t):
        # a copy, not `t` itself: returning an input from a Function confuses later in-place ops
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


def _gate(_module, _inputs, output):
    return _PositiveGradient.apply(output)


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Within the block, every `nn.ReLU` of `model` backpropagates the guided way."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ModelError("guided backpropagation needs nn.ReLU modules, and the model has none "
                         "(ReLUs called as functions cannot be hooked)")
    with removing() as stack:
        for relu in relus:
            stack.callback(relu.register_forward_hook(_gate).remove)
        yield


def guided_gradient(model: nn.Module, x: torch.Tensor,
                    score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Guided-backprop gradient (B, C, H, W) of `score(x_leaf)` (a scalar built from `model`) w.r.t. x."""
    x = input_leaf(x)
    with torch.enable_grad(), guided_relus(model):
        (grad,) = torch.autograd.grad(score(x), x)
    return grad


def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Guided backprop of the logit `target`: float32 (B, H, W), max |gradient| over colour channels.

    x: (B, C, H, W) normalized input; target: (B,) class indices.
    """
    check_batch(x, target)
    return channel_max_abs(guided_gradient(model, x, lambda xx: class_scores(model(xx), target).sum()))


def guided_grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None = None) -> np.ndarray:
    """Guided backprop × Grad-CAM (upsampled bilinearly to the input), max |·| over colour channels.

    Same inputs as `grad_cam` (default layer: the last nn.Conv2d). Returns float32 (B, H, W), ≥ 0.
    The two factors are computed in separate passes, so the Grad-CAM part is the plain one.
    """
    check_batch(x, target)
    cam = upsample(layer_cam(model, x, target, layer), x.shape[-2:])      # (B, 1, H, W)
    grad = guided_gradient(model, x, lambda xx: class_scores(model(xx), target).sum())
    return channel_max_abs(grad * cam)


def guided_backprop_unit(model: nn.Module, x: torch.Tensor, layer: str, channel: int) -> np.ndarray:
    """Guided backprop of the strongest unit of filter `channel` at module path `layer`, per image.

    x: (B, C, H, W) normalized input. The unit is the argmax over positions of the layer's output
    (B, K, h, w) at `channel` (first position on ties); a (B, K) output has one unit per channel.
    Returns float32 (B, H, W), max |gradient| over colour channels. A filter that is zero
    everywhere behind a ReLU gives a zero map.
    """
    check_input(x)

    def unit_score(xx: torch.Tensor) -> torch.Tensor:
        act = run_until(model, layer, xx)                                  # the forward stops at `layer`
        if act.dim() not in (2, 4):
            raise ModelError(f"layer {layer!r} must give a (B, C, H, W) or (B, C) output, not {tuple(act.shape)}")
        if not 0 <= channel < act.shape[1]:
            raise ModelError(f"filter {channel} is out of range: {layer!r} has {act.shape[1]} channels")
        units = act[:, channel].reshape(len(act), -1)                     # (B, h·w) or (B, 1)
        return units.gather(1, units.argmax(dim=1, keepdim=True)).sum()

    return channel_max_abs(guided_gradient(model, x, unit_score))
