"""Saliency (Simonyan, Vedaldi & Zisserman 2014): how strongly each pixel moves the class score."""

import numpy as np
import torch
from torch import nn

from ._common import channel_max_abs, check_batch, class_scores, input_leaf


def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """|∂ logit[target] / ∂ x|, max over colour channels.

    x: (B, C, H, W) normalized input; target: (B,) class indices. Returns float32 (B, H, W), ≥ 0.
    One forward and one backward for the whole batch: the samples do not interact in an
    eval-mode model, so the gradient of the summed scores is each sample's own gradient.
    """
    check_batch(x, target)
    x = input_leaf(x)
    with torch.enable_grad():
        score = class_scores(model(x), target).sum()
        # autograd.grad (not .backward) leaves the parameters' .grad untouched
        (grad,) = torch.autograd.grad(score, x)
    return channel_max_abs(grad)
