"""Grad-CAM (Selvaraju et al. 2017): which regions of a layer's feature maps the class score relies on."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ModelError
from ...hooks import find_module, removing
from ._common import check_batch, class_scores, input_leaf, last_conv, to_map


def _activation_and_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                           layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` on `x` (a leaf requiring grad); return (output of `layer` (B, K, h, w), scores (B,)).

    The activation is the layer's own output, before any in-place op that follows it (such as
    torchvision VGG's `ReLU(inplace=True)` after each conv) can overwrite it.
    """
    module = find_module(model, layer)
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ModelError(f"Grad-CAM needs a layer with a (B, C, H, W) output; {layer!r} gives {shape}")
        captured.append(output)
        # the model continues on a copy, so in-place successors leave `output` as it is
        return output.clone()

    with torch.enable_grad(), removing(module.register_forward_hook(keep)):
        logits = model(x)
    if not captured:
        raise ModelError(f"layer {layer!r} is not used by the model's forward")
    return captured[-1], class_scores(logits, target)


def layer_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """Grad-CAM at the layer's own resolution: ReLU(Σ_k α_k A_k), α_k = spatial mean of ∂score/∂A_k.

    Returns a tensor (B, 1, h, w) where (h, w) is the layer's output size.
    """
    check_batch(x, target)
    x = input_leaf(x)
    activation, scores = _activation_and_scores(model, x, target, layer or last_conv(model))
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(scores.sum(), activation)          # (B, K, h, w)
    weights = grad.mean(dim=(2, 3), keepdim=True)                         # (B, K, 1, 1)
    return F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None = None) -> np.ndarray:
    """Grad-CAM of the logit `target` at module path `layer`, upsampled to the input size.

    x: (B, C, H, W) normalized input; target: (B,) class indices; layer: a module with a
    (B, K, h, w) output, by default the last `nn.Conv2d` in `model.named_modules()` order (its
    pre-activation output, as in the paper's "last convolutional layer"). The (h, w) map is
    upsampled bilinearly (align_corners=False, as in Selvaraju et al.) to (H, W).
    Returns float32 (B, H, W), ≥ 0.
    """
    return to_map(upsample(layer_cam(model, x, target, layer), x.shape[-2:])[:, 0])


def upsample(cam: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """(B, 1, h, w) → (B, 1, H, W), bilinear with half-pixel centres."""
    return F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
