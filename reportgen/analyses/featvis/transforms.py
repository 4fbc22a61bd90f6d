"""Transformation robustness: a random small shift, scale and rotation of every image at every step.

An image that excites a filter only at one exact alignment is adversarial noise; asking it to work under
small random warps keeps the features that survive them (Distill, "Feature Visualization",
"Transformation Robustness"). Where Lucid chains pad, jitter, scale, rotate and jitter again (five resamplings
of an enlarged canvas), `RandomAffine` draws the composed warp and resamples once with `grid_sample`, on the
whole batch and at the image's own size: one cheap op, and less blur from repeated interpolation. Pixels
moved in from outside take the value 0 of the normalized input, i.e. the dataset's mean colour, which plays
the role of Lucid's constant padding.
"""

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RandomAffine:
    """Per-image random warp, drawn uniformly in each range.

    translate: largest shift, as a fraction of the image side along each axis (1/16 = 8 px at 128 px).
    scale: (low, high) zoom factors.
    degrees: largest rotation either way.
    """
    translate: float = 1 / 16
    scale: tuple[float, float] = (0.9, 1.1)
    degrees: float = 10.0

    def matrices(self, generators: Sequence[torch.Generator], aspect: float = 1.0) -> torch.Tensor:
        """(N, 2, 3) affine matrices for `F.affine_grid`, matrix i drawn from generators[i] only.

        aspect: the images' H / W. affine_grid's coordinates span [-1, 1] along each axis, so a rotation by the
        angle in pixels is R scaled by H/W and W/H off the diagonal (the identity scaling for a square).
        """
        draws = torch.stack([torch.rand(4, generator=g) for g in generators])    # (N, 4) in [0, 1)
        shift = (draws[:, :2] * 2 - 1) * self.translate * 2     # affine_grid's coordinates span 2 per side
        zoom = self.scale[0] + draws[:, 2] * (self.scale[1] - self.scale[0])
        angle = (draws[:, 3] * 2 - 1) * math.radians(self.degrees)
        # affine_grid maps output coordinates to input ones, so sampling with 1/zoom enlarges by zoom.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        return torch.stack([torch.stack([cos, -sin * aspect, shift[:, 0]], dim=1),
                            torch.stack([sin / aspect, cos, shift[:, 1]], dim=1)], dim=1)

    def __call__(self, images: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Warp (N, C, H, W) `images` (normalized, so 0 is the mean colour); same shape out."""
        theta = self.matrices(generators, images.shape[-2] / images.shape[-1]).to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)      # (N, H, W, 2)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
