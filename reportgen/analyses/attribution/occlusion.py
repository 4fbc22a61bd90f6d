"""Occlusion (Zeiler & Fergus 2014): how much the class probability drops when a window is greyed out."""

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ...errors import SpecError
from ._common import check_batch, class_scores
from .occluded import OccludedForward


def default_window(input_size: int) -> int:
    """The side of the square occlusion window used when none is given, for an input whose shorter side is
    `input_size`: a sixth of it, at least 2 px (a 1-px window would only show single-pixel noise), never
    more than the input. One square window for both axes, so a non-square image is probed by the same
    patch everywhere (a window of a sixth of each side would be a stretched patch)."""
    return min(input_size, max(2, input_size // 6))


def default_stride(window: int) -> int:
    """The stride used when none is given: half the window, at least 1 px (windows overlap by half)."""
    return max(1, window // 2)


def window_positions(n: int, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Spans [starts, stops) of the windows along a dim of size n: every `stride` from 0, the last one
    clipped at the border so that every pixel is covered (Captum's `Occlusion` places them so)."""
    count = -(-(n - window) // stride) + 1
    starts = np.arange(count) * stride
    return starts, np.minimum(starts + window, n)


def occlusion(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, window: int = 0, stride: int = 0,
              baseline: float | Sequence[float] = 0.0, batch_size: int = 128) -> np.ndarray:
    """Occlusion map of the probability of class `target`.

    x: (B, C, H, W) normalized input; target: (B,) class indices. A square window of `window`
    pixels (0: `default_window` of the smaller input side), moved by `stride` (0: `default_stride`) from
    the top-left corner, the last row and column of windows clipped at the border, is filled
    with `baseline` (one value, or one per channel, in normalized space; 0 is the dataset mean
    when the input is standardized with the dataset's statistics).
    Returns float32 (B, H, W): at each pixel, the mean over the windows covering it of
    softmax(model(x))[target] − softmax(model(x occluded by that window))[target]. This is Captum's
    `Occlusion` with a window spanning all channels, the same strides and baseline, on
    `softmax(model(·))`, any of its (identical) channels.
    Occluded images are evaluated `batch_size` at a time, incrementally where the model allows
    (see `occluded.py`); the result depends on neither.
    """
    check_batch(x, target)
    size = min(x.shape[-2:])
    window = window or default_window(size)
    stride = stride or default_stride(window)
    if window > size:
        raise SpecError("attribution.window",
                        f"window {window} is larger than the input ({x.shape[-2]}×{x.shape[-1]})")
    if stride > window:
        raise SpecError("attribution.stride", f"stride {stride} is larger than the window {window}: "
                                              "some pixels would never be occluded")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    values = torch.as_tensor(baseline, dtype=x.dtype).flatten()
    if values.numel() not in (1, x.shape[1]):
        raise ValueError(f"baseline must be one value or {x.shape[1]} (one per channel), got {values.numel()}")
    rows, cols = (window_positions(n, window, stride) for n in x.shape[-2:])
    forward = OccludedForward(model, x, rows, cols, (window, window), values.expand(x.shape[1]))

    probability = class_scores(forward.clean.float().softmax(dim=1), target)                  # (B,)
    occluded = forward.target_probabilities(target.to(x.device, torch.long), batch_size)      # (B, I, J)
    drop = (probability[:, None, None] - occluded).double().cpu()
    return _spread(drop, rows, cols, x.shape[-2:])


def _spread(drop: torch.Tensor, rows, cols, shape) -> np.ndarray:
    """Per pixel, the mean of `drop` (B, I, J) over the windows covering it → float32 (B, H, W)."""
    # cover[i, y]: window i covers pixel y, along rows (I, H) and columns (J, W)
    cover_r, cover_c = (torch.as_tensor((np.arange(n) >= lo[:, None]) & (np.arange(n) < hi[:, None]),
                                        dtype=torch.float64) for (lo, hi), n in zip((rows, cols), shape))
    total = torch.einsum("iy,bij,jx->byx", cover_r, drop, cover_c)
    count = cover_r.sum(0)[:, None] * cover_c.sum(0)[None, :]
    return (total / count).float().numpy()
