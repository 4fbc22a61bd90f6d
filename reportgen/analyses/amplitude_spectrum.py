"""The mean amplitude spectrum of the user's images: the magnitude MACO's images keep (`feature_vis.param: maco`).

For every image size feature visualization synthesizes at, the mean over a seeded subset of the dataset
(at most MAX_IMAGES of the images used) of |rfft2(image)| per channel, numpy's default norm, in [0, 1] pixel
space. An image is taken as the model sees it (the dataset's resize and crop to the model's input), then
brought to the synthesis size the way a synthesized image meets the model: at the same scale, so a smaller
canvas is a centre crop and only a larger one is scaled up (antialiased bilinear) to cover it, then cropped.

Its own analysis rather than a step of FeatureVis: it is computed once per build for all layers (per size, not
per layer), from the data rather than the model, and cached on its own, so changing the optimizer's settings
does not recompute it and a changed dataset does (its fingerprint and the images used are in every key).
FeatureVis `uses` it and reads it with `amplitude_for`; no download, so it works offline and for any domain
(grayscale, medical, satellite).
"""

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ..analysis import Analysis
from ..errors import DataError, ReportgenError

MAX_IMAGES = 256


def mean_amplitude(images: np.ndarray) -> np.ndarray:
    """(n, C, H, W) pixels in [0, 1] -> (C, H, W//2+1) float64 mean |rfft2|.

    The rfft2 columns that hold both signs of a row frequency (the first, and the last for an even width) are
    averaged with their mirror, A(k) = A(-k), which a real image's |spectrum| is up to rounding: the
    magnitude of a real image, as `maco_image` needs.
    """
    amp = np.abs(np.fft.rfft2(images.astype(np.float64))).mean(axis=0)
    w = images.shape[-1]
    for col in (0, w // 2) if w % 2 == 0 else (0,):
        column = amp[..., :, col]
        amp[..., :, col] = (column + np.roll(column[..., ::-1], 1, axis=-1)) / 2
    return amp


def at_size(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, C, H, W) -> (n, C, h, w) at the model's scale: centre-cropped, scaled up first only where (h, w) does
    not fit inside (H, W)."""
    (big_h, big_w), (h, w) = images.shape[-2:], size
    scale = max(1.0, h / big_h, w / big_w)
    if scale > 1:
        cover = (max(h, round(big_h * scale)), max(w, round(big_w * scale)))
        images = F.interpolate(images, size=cover, mode="bilinear", antialias=True, align_corners=False)
        big_h, big_w = cover
    top, left = (big_h - h) // 2, (big_w - w) // 2
    return images[..., top:top + h, left:left + w]


def subset(indices: np.ndarray, seed: int, limit: int = MAX_IMAGES) -> np.ndarray:
    """The dataset indices the spectrum is the mean of: `limit` of `indices` drawn with `seed`, sorted."""
    rng = np.random.default_rng([seed, 0x4D41434F])   # "MACO": its own stream, not another subset's
    return np.sort(rng.choice(np.asarray(indices), size=min(limit, len(indices)), replace=False))


def _name(size) -> str:
    return f"amplitude_{int(size[0])}x{int(size[1])}"


def amplitude_for(ctx, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W//2+1) the dataset's mean amplitude at `size`, from this build's `amplitude_spectrum` result."""
    art = ctx.artifact(AmplitudeSpectrum.name)
    if art is None or _name(size) not in art:
        raise ReportgenError(f"feature_vis.param: maco needs the dataset's amplitude spectrum at {size[0]}x{size[1]} "
                             f"px, which the amplitude_spectrum analysis did not compute")
    return art[_name(size)]


class SpectrumInfo(BaseModel):
    images: int = Field(description="dataset images the mean amplitude spectrum is taken over")
    sizes: list[list[int]] = Field(description="[height, width] of each size it was computed at")


class AmplitudeSpectrum(Analysis):
    """The dataset's mean amplitude spectrum at each synthesis size, for MACO (see the module docstring)."""
    name = "amplitude_spectrum"
    spec_key = "feature_vis"
    version = 1
    SiteResult = SpectrumInfo

    def enabled(self, ctx, layer=None) -> bool:
        s = ctx.spec.feature_vis
        return s.enabled and "maco" in (s.param, *s.compare)

    def turned_off(self, ctx) -> str:
        if not ctx.spec.feature_vis.enabled:
            return super().turned_off(ctx)
        return "only MACO needs it: feature_vis.param is not maco and feature_vis.compare lists no maco"

    def _sizes(self, ctx) -> list[tuple[int, int]]:
        from .feature_vis import image_size   # here: feature_vis imports this module
        return sorted({tuple(image_size(ctx, layer)) for layer in ctx.layers})

    def key_parts(self, ctx) -> tuple:
        return (self._sizes(ctx),)

    def compute(self, ctx, layer):
        pixels = []
        used = []
        for i in subset(ctx.indices, ctx.spec.seed):
            try:
                pixels.append(ctx.dataset.image(int(i)))
            except DataError:     # an unreadable image is skipped here as in the dataset pass
                continue
            used.append(int(i))
        if not pixels:
            raise ReportgenError("no readable dataset image to take the amplitude spectrum of")
        batch = torch.from_numpy(np.stack(pixels)).double() / 255            # (n, C, H, W) in [0, 1]
        return {"indices": np.array(used, np.int64),
                **{_name(size): mean_amplitude(at_size(batch, size).numpy()) for size in self._sizes(ctx)}}

    def report(self, ctx, artifact, out):
        sizes = sorted(tuple(int(x) for x in k.removeprefix("amplitude_").split("x"))
                       for k in artifact if k.startswith("amplitude_"))
        out.site({"images": int(len(artifact["indices"])), "sizes": [list(s) for s in sizes]})
