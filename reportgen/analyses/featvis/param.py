"""Image parameterizations: how a batch of synthesized images is written as trainable tensors.

`Parameterization` is the configuration (which parameterization, image size (H, W) and channels, the model's
input normalization); its `images(generators, device)` builds the tensors. A parameterization returns an
`ImageParam`: the tensors the optimizer updates, a function that turns them into pixels in [0, 1]
(N, C, H, W) — at the full size, or at a smaller one for coarse-to-fine optimization — and a projection run
after every optimizer step.

- `fourier_image`: the image's 2-D spectrum, scaled by 1/frequency, colours decorrelated, squashed by a
  sigmoid. Gradient ascent then moves low frequencies as easily as high ones and stays inside valid pixels,
  which is what removes the high-frequency noise of plain ascent (Olah et al., Distill 2017, "Feature
  Visualization", section "Preconditioning and Parameterization"). At a smaller size it renders only the
  spectrum's lowest frequencies: the same image, ideally low-passed and resampled.
- `pixel_image`: raw pixels, clipped to [0, 1] after each step: the plain ascent, shown for comparison;
  at a smaller size, resampled with antialiasing.
- `maco_image`: MACO (Fel et al., NeurIPS 2023, "Unlocking feature visualization for deeper networks with
  magnitude constrained optimization"): only the spectrum's phase is trained; its magnitude is fixed to the
  mean amplitude spectrum of the user's own images, so the image keeps their energy at every frequency.

Every image draws its initial values from its own `torch.Generator`, so an image never depends on the
other images of its batch. A size is (H, W), or an int for a square.
"""

from dataclasses import dataclass, field
from typing import Callable, Sequence

import math

import numpy as np
import torch
import torch.nn.functional as F

from reportgen.errors import SpecError

# Square root of the colour covariance of ImageNet photos (RGB), the published statistic Lucid and Distill use:
# decorrelated parameters let each step change luminance and hue independently, as natural images vary.
IMAGENET_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                    [0.27, 0.00, -0.05],
                                    [0.27, -0.09, 0.03]])


@dataclass
class ImageParam:
    """A batch of N images as trainable tensors.

    params: the leaf tensors the optimizer updates.
    image(size=None): (N, C, h, w) float pixels in [0, 1], differentiable w.r.t. `params`; (h, w) = `size`, or
        the full (H, W) when None. A smaller size shows the same image at a lower resolution.
    project(): keeps `params` valid after an optimizer step (a no-op where `image()` is valid by construction).
    unclipped(size=None): where `image()` clips its pixels to [0, 1] (MACO), the float image before the clip;
        None where the pixels are valid by construction.
    """
    params: list[torch.Tensor]
    image: Callable[..., torch.Tensor]
    project: Callable[[], None] = field(default=lambda: None)
    unclipped: Callable[..., torch.Tensor] | None = None


def _per_image_normal(generators: Sequence[torch.Generator], shape: tuple[int, ...], sd: float,
                      device: str | torch.device) -> torch.Tensor:
    """(N, *shape) normal noise, row i drawn from generators[i] (so rows do not depend on each other).

    Drawn on the CPU (the generators' device) and moved, so a seed gives the same image on every device.
    """
    return (torch.stack([torch.randn(shape, generator=g) for g in generators]) * sd).to(device)


def hw(size: int | Sequence[int]) -> tuple[int, int]:
    """A size as (H, W): an int is a square's side."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def frequency_scale(size: int | Sequence[int], decay_power: float = 1.0) -> torch.Tensor:
    """(H, W // 2 + 1) weights 1 / max(f, 1/max(H, W))^decay for the rfft2 bins of an (H, W) image, f the
    frequency in cycles per pixel, sqrt(fy² + fx²) with fy and fx each along its own axis (as Lucid's).

    Normalized so the weights' root mean square is 1: a step that moves every coefficient by about `lr`
    (Adam's) then moves pixels by about `lr × gain` whatever the image size, so one learning rate serves
    28 px and 128 px images alike.
    """
    h, w = hw(size)
    fy = torch.fft.fftfreq(h)[:, None]                   # (H, 1)
    fx = torch.fft.rfftfreq(w)[None, :]                  # (1, W // 2 + 1)
    f = torch.sqrt(fy ** 2 + fx ** 2).clamp(min=1.0 / max(h, w))
    scale = f ** -decay_power
    return scale / scale.pow(2).mean().sqrt()


def _color_matrix(channels: int, decorrelate: bool) -> torch.Tensor:
    """(C, C) map from decorrelated to RGB channels, columns scaled to at most unit norm."""
    if channels != 3 or not decorrelate:
        return torch.eye(channels)
    return IMAGENET_COLOR_SQRT / IMAGENET_COLOR_SQRT.norm(dim=0).max()


# Pixels moved per unit of Adam's step (see `fourier_image`). 8 rather than 4: on VGG19 block3_conv1 (random
# weights, 4 units, 64 steps, 128 px) the mean activation rises 0.395 → 0.471, and 0.109 → 0.117 when the model
# sees the image upsampled to 224 px as lucent's does; on the trained demo CNN (128 steps) the activation ratio
# to the top natural image stays (2.73/3.86/3.74 → 2.83/3.78/3.68 on its three layers) and the naturalness
# ratio improves (1.74/2.60/5.88 → 1.64/2.51/5.30). benchmarks/feature_vis.py --factors gain4.
FOURIER_GAIN = 8.0


def fourier_image(generators: Sequence[torch.Generator], channels: int, size: int | Sequence[int], *,
                  sd: float = 0.01, decay_power: float = 1.0, decorrelate: bool = True, gain: float = FOURIER_GAIN,
                  device: str | torch.device = "cpu") -> ImageParam:
    """Images parameterized by their scaled spectrum, in decorrelated colour space, through a sigmoid.

    generators: one per image (N of them). `gain` multiplies the spectrum before the inverse FFT; it sets
    how far one optimizer step moves the pixels (with Adam, each parameter moves about `lr` per step).
    """
    h, w = hw(size)
    # (N, C, H, W//2+1, 2): real and imaginary parts, a real leaf tensor so every optimizer handles it.
    spectrum = _per_image_normal(generators, (channels, h, w // 2 + 1, 2), sd, device)
    spectrum.requires_grad_(True)
    scale = (frequency_scale(size, decay_power) * gain).to(device)   # (H, W//2+1)
    color = _color_matrix(channels, decorrelate).to(device)          # (C, C)

    def image(size: int | Sequence[int] | None = None) -> torch.Tensor:
        out = hw(size) if size is not None else (h, w)
        coeffs = torch.view_as_complex(spectrum) * scale                        # (N, C, H, W//2+1)
        if out != (h, w):
            coeffs = low_frequencies(coeffs, (h, w), out)
        logits = torch.fft.irfft2(coeffs, s=out, norm="ortho")                  # (N, C, h, w)
        logits = torch.einsum("ij,njhw->nihw", color, logits)
        return torch.sigmoid(logits)

    return ImageParam([spectrum], image)


def low_frequencies(coeffs: torch.Tensor, full: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The rfft2 bins (..., H, W//2+1) of a `full` (H, W) image that a smaller `size` (h, w) keeps, rescaled so
    that the (h, w) inverse transform (norm "ortho") has the pixel values of the (H, W) one: the image
    low-passed to the smaller grid's frequencies and sampled on it."""
    (big_h, big_w), (h, w) = full, size
    if h > big_h or w > big_w:
        raise ValueError(f"size {size} is larger than the image's {full}")
    # fftfreq order: row 0 and the positive frequencies first, the negative ones at the end.
    rows = torch.cat([coeffs[..., :(h + 1) // 2, :], coeffs[..., big_h - h // 2:, :]], dim=-2)
    # "ortho" divides by sqrt(pixels): fewer pixels would brighten every frequency by sqrt(H W / (h w)).
    return rows[..., :w // 2 + 1] * ((h * w) / (big_h * big_w)) ** 0.5


def pixel_image(generators: Sequence[torch.Generator], channels: int, size: int | Sequence[int], *,
                sd: float = 0.01, device: str | torch.device = "cpu") -> ImageParam:
    """Raw pixels around mid-grey, clipped to [0, 1] after each step: plain gradient ascent."""
    pixels = (0.5 + _per_image_normal(generators, (channels, *hw(size)), sd, device)).requires_grad_(True)

    def project() -> None:
        with torch.no_grad():
            pixels.clamp_(0.0, 1.0)

    def image(size: int | Sequence[int] | None = None) -> torch.Tensor:
        if size is None or hw(size) == tuple(pixels.shape[-2:]):
            return pixels
        return F.interpolate(pixels, size=hw(size), mode="bilinear", antialias=True, align_corners=False)

    return ImageParam([pixels], image, project)


# Radians of phase per unit of the trained tensor. Adam moves every entry by about `lr` a step whatever its
# gradient, so at the shared lr (0.05, sized for the Fourier spectrum) raw phases would turn by 0.05 rad a
# step; 10 turns them by about half a radian, the best of 1, 5, 10, 20, 40 (VGG19 block3_conv1, 4 units, 64
# steps at 128 px: mean activation 0.085, 0.117, 0.119, 0.110, 0.080).
MACO_PHASE_GAIN = 10.0


def maco_image(generators: Sequence[torch.Generator], amplitude, size: int | Sequence[int], *,
               gain: float = MACO_PHASE_GAIN, device: str | torch.device = "cpu") -> ImageParam:
    """Images whose rfft2 magnitude is `amplitude` and whose phase alone is trained (MACO).

    amplitude: (C, H, W//2+1) the mean |rfft2| (numpy's default norm) of the dataset's images at the synthesis
        size (H, W), in [0, 1] pixel space, per input channel (`amplitude_spectrum.mean_amplitude`).
    generators: one per image; the phases start uniformly random in [-pi, pi) (a natural-looking random image;
        a near-constant start would stack every frequency into one bright dot).

    The image is irfft2(amplitude · e^(i·phase)) itself, with no squashing or standardization, so its
    amplitude spectrum is exactly `amplitude` (up to float rounding) at every step. The bins that must be real
    for a real image (the DC term, and the Nyquist row/column of an even side) keep phase 0: the DC term makes
    the image's mean brightness, per channel, the dataset's mean brightness; in the first column (and the
    Nyquist one) the trained phase is made odd, phase(-k) = -phase(k), which a real image's spectrum needs.
    Colour channels have independent phases (no colour decorrelation: the magnitude is per input channel).

    Pixels out of [0, 1]: `unclipped()` is the image with the exact spectrum; `image()`, what the model sees
    and the page shows, clips it to [0, 1], which changes the spectrum by as much as pixels lie outside (the
    loop reports that share as `clipped`). At a smaller size (coarse to fine) the image is low-passed to the
    smaller grid's frequencies, as `fourier_image` does.
    """
    h, w = hw(size)
    amp = torch.as_tensor(np.asarray(amplitude), dtype=torch.float32)
    if amp.dim() != 3 or tuple(amp.shape[1:]) != (h, w // 2 + 1):
        raise ValueError(f"amplitude of shape {tuple(amp.shape)} is not the (C, {h}, {w // 2 + 1}) rfft2 "
                         f"magnitude of a {h}x{w} image")
    channels = amp.shape[0]
    amp = amp.to(device)
    draws = torch.stack([torch.rand((channels, h, w // 2 + 1), generator=g) for g in generators])
    # the trained tensor is phase / gain: Adam moves each entry by about lr, so each phase by about lr × gain
    phase = ((draws * 2 - 1) * math.pi / gain).to(device).requires_grad_(True)   # (N, C, H, W//2+1)

    def unclipped(size: int | Sequence[int] | None = None) -> torch.Tensor:
        out = hw(size) if size is not None else (h, w)
        # numpy's norm = 1/(H W) on the inverse, written as "ortho" twice so `low_frequencies` applies as is
        coeffs = torch.polar(amp.expand_as(phase), real_phase(phase * gain, w)) / math.sqrt(h * w)
        if out != (h, w):
            coeffs = low_frequencies(coeffs, (h, w), out)
        return torch.fft.irfft2(coeffs, s=out, norm="ortho")                   # (N, C, h, w)

    return ImageParam([phase], lambda size=None: unclipped(size).clamp(0.0, 1.0), unclipped=unclipped)


def _mirror_rows(x: torch.Tensor) -> torch.Tensor:
    """x[..., k] -> x[..., (-k) mod H]: the frequency -k at the place of k, along the last axis."""
    return torch.roll(torch.flip(x, [-1]), 1, -1)


def real_phase(phase: torch.Tensor, width: int) -> torch.Tensor:
    """(..., H, W//2+1) phases made those of a real (H, width) image's rfft2: odd along the columns an rfft2
    holds both signs of (the first, and the last for an even width), (phase(k) - phase(-k)) / 2, which is 0
    on the self-conjugate bins (DC, Nyquist). Other columns are free."""
    out = phase.clone()
    for col in (0, width // 2) if width % 2 == 0 else (0,):
        column = phase[..., :, col]
        out[..., :, col] = (column - _mirror_rows(column)) / 2
    return out


@dataclass(frozen=True)
class Parameterization:
    """How images are written and fed to the model: `channels` × H × W pixels in [0, 1], `size` = (H, W) or
    an int for a square (`hw` is always the pair).

    fourier: True = `fourier_image` (with `decorrelate`d colours), False = `pixel_image` (plain ascent).
    amplitude: (channels, H, W//2+1) the dataset's mean amplitude spectrum at `size`: given, the images are
        `maco_image` (`fourier` and `decorrelate` then play no part). Left out of equality and hashing; a cache
        key must hash its bytes (asdict would hold the whole array).
    sd: spread of the random initial parameters (not MACO's, whose phases start uniformly random).
    gain: the Fourier spectrum's gain, pixels moved per unit of Adam's step (`FOURIER_GAIN`).
    mean, std: the model's input normalization, one value per channel; stored as tuples.
    """
    channels: int
    mean: Sequence[float]
    std: Sequence[float]
    size: int | tuple[int, int] = 128
    fourier: bool = True
    decorrelate: bool = True
    sd: float = 0.01
    gain: float = FOURIER_GAIN
    amplitude: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.size, int):
            object.__setattr__(self, "size", tuple(self.size))
        if self.channels < 1:
            raise SpecError("channels", f"must be at least 1; got {self.channels!r}.")
        if min(self.hw) < 8:
            raise SpecError("size", f"must be at least 8{'' if isinstance(self.size, int) else ' on each side'}; "
                                    f"got {self.size!r}.")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise SpecError("mean", f"mean and std need one value per input channel ({self.channels}); "
                                    f"got {len(self.mean)} and {len(self.std)}.")
        if any(s <= 0 for s in self.std):
            raise SpecError("std", f"std values must be positive; got {list(self.std)!r}.")
        if self.amplitude is not None:
            h, w = self.hw
            if np.shape(self.amplitude) != (self.channels, h, w // 2 + 1):
                raise SpecError("amplitude", f"must be the (channels, H, W//2+1) = ({self.channels}, {h}, "
                                             f"{w // 2 + 1}) rfft2 magnitude; got {np.shape(self.amplitude)}.")

    @property
    def hw(self) -> tuple[int, int]:
        return hw(self.size)

    def images(self, generators: Sequence[torch.Generator], device: str | torch.device = "cpu") -> ImageParam:
        """One image per generator, its initial values drawn from that generator only."""
        if self.amplitude is not None:
            return maco_image(generators, self.amplitude, self.size, device=device)
        if self.fourier:
            return fourier_image(generators, self.channels, self.size, sd=self.sd, decorrelate=self.decorrelate,
                                 gain=self.gain, device=device)
        return pixel_image(generators, self.channels, self.size, sd=self.sd, device=device)
