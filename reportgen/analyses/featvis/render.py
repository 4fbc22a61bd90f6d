"""The optimization loop: synthesize the images that maximize chosen units of a layer, many at once.

All images of a chunk form one batch: one forward (stopped at the target layer) and one backward per step,
whatever the number of filters. Each image has its own objective, its own random generator (for its
initial values and its warps, seeded from (seed, unit, variant)) and, with Adam, its own per-parameter
step sizes, so an image is the same whether it is rendered alone or with 63 others (up to float rounding).
"""

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from reportgen.errors import ModelError, SpecError

from .hooks import frozen, truncated_model
from .objectives import OBJECTIVES, Objective, diversity_penalty
from .param import ImageParam, fourier_image, pixel_image
from .transforms import RandomAffine


@dataclass
class FeatureVisResult:
    """Synthesized images, N = len(units) × variants, the variants of a unit adjacent.

    images: (N, H, W, C) uint8 pixels, C the model's input channels, ready to display (not normalized).
    activation: (N,) the objective reached, measured on the final image without any warp.
    curve: (N, steps) the objective at each step, on the warped image the step optimized.
    units: (N,) the unit (channel or class) each image is for.
    """
    images: np.ndarray
    activation: np.ndarray
    curve: np.ndarray
    units: np.ndarray


def image_seed(seed: int, unit: int, variant: int) -> int:
    """The seed of one image's generator: depends on (seed, unit, variant), never on the batch around it."""
    return int(np.random.SeedSequence([seed, unit, variant]).generate_state(1)[0])


def _check_arguments(units: Sequence[int], in_channels: int, mean: Sequence[float], std: Sequence[float],
                     size: int, steps: int, seed: int, objective: str, variants: int, diversity: float,
                     batch_size: int) -> None:
    if objective not in OBJECTIVES:
        raise SpecError("objective", f"{objective!r} is not one of {', '.join(map(repr, OBJECTIVES))}.")
    if len(mean) != in_channels or len(std) != in_channels:
        raise SpecError("mean", f"mean and std need one value per input channel ({in_channels}); "
                                f"got {len(mean)} and {len(std)}.")
    if any(s <= 0 for s in std):
        raise SpecError("std", f"std values must be positive; got {list(std)!r}.")
    if any(int(u) < 0 for u in units):
        raise SpecError("units", f"units must be non-negative channel or class indices; got {list(units)!r}.")
    for key, value, low in (("in_channels", in_channels, 1), ("size", size, 8), ("steps", steps, 1),
                            ("variants", variants, 1), ("batch_size", batch_size, 1), ("seed", seed, 0)):
        if value < low:
            raise SpecError(key, f"must be at least {low}; got {value!r}.")
    if diversity and variants < 2:
        raise SpecError("diversity", "a diversity term needs at least 2 variants per unit.")


def _check_units(acts: torch.Tensor, top_unit: int, layer: str | None) -> None:
    channels = acts.shape[1] if acts.dim() > 1 else 0
    if top_unit >= channels:
        raise ModelError(f"layer {layer or 'output'!r} has {channels} channels; unit {top_unit} is out of range.")


def ascent_values(score: Objective, acts: torch.Tensor, units: torch.Tensor,
                  pre_activation: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, ascended, layer_output): the objective (n,), what the gradient follows (n,), the layer's output.

    With `pre_activation` (the layer is a ReLU and `acts` its input z), values = score(relu(z)); an image whose
    ReLU is off wherever the objective looks has value 0 and no gradient, so it climbs score(z) instead until
    the unit turns on (Lucid's "redirected ReLU" idea, applied to the target layer only).
    """
    if not pre_activation:
        values = score(acts, units)
        return values, values, acts
    output = acts.clamp(min=0)
    values = score(output, units)
    return values, torch.where(values > 0, values, score(acts, units)), output


def synthesize(model: nn.Module, layer: str | None, units: Sequence[int], *, in_channels: int,
               mean: Sequence[float], std: Sequence[float], size: int = 128, steps: int = 256,
               lr: float = 0.05, seed: int = 0, objective: str = "channel", regularize: bool = True,
               variants: int = 1, diversity: float = 0.0, transform: RandomAffine | None = None,
               batch_size: int = 64, device: str = "cpu",
               progress: Callable[[int], None] | None = None) -> FeatureVisResult:
    """Gradient ascent on `objective` of each unit of `layer`, images batched `batch_size` at a time.

    model: takes normalized (B, in_channels, size, size) float input, already on `device`; it is put in
        eval mode with frozen weights for the call and restored after.
    layer: module name from `model.named_modules()`; None is the model's output (for 'logit').
    units: channels (or classes) to visualize; objective: 'channel' (mean over positions), 'neuron'
        (centre position) or 'logit' (a class score, layer None).
    mean, std: the model's input normalization, per channel; pixels are synthesized in [0, 1].
    regularize: True = Fourier, decorrelated-colour, sigmoid parameterization with `transform` (default
        `RandomAffine()`) each step; False = plain ascent on raw pixels, no transforms.
    variants, diversity: images per unit, and how much of its objective an image gives up to look unlike
        the other variants of its unit (a weight relative to the objective's size; 0.1–0.5 works).
    progress: called after every step with the number of images the step advanced (total N × steps).
    """
    _check_arguments(units, in_channels, mean, std, size, steps, seed, objective, variants, diversity,
                     batch_size)
    score = OBJECTIVES[objective]
    warp = (transform or RandomAffine()) if regularize else None
    per_image = [(int(u), v) for u in units for v in range(variants)]
    # Whole groups of variants per chunk: the diversity term compares variants of a unit with each other.
    chunk_len = max(1, batch_size // variants) * variants
    make_param = fourier_image if regularize else pixel_image
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    # A zero-image entry keeps the concatenations below valid when `units` is empty.
    done = [(np.zeros((0, size, size, in_channels), np.uint8), torch.zeros(0), torch.zeros(0, steps))]
    with frozen(model), truncated_model(model, layer) as truncated:
        for start in range(0, len(per_image), chunk_len):
            chunk = per_image[start:start + chunk_len]
            gens = [torch.Generator().manual_seed(image_seed(seed, u, v)) for u, v in chunk]
            units_t = torch.tensor([u for u, _ in chunk], device=device)
            top_unit = max(u for u, _ in chunk)

            def forward(pixels: torch.Tensor, warped: bool) -> torch.Tensor:
                x = (pixels - mean_t) / std_t                                   # (n, C, H, W)
                if warped and warp is not None:
                    x = warp(x, gens)
                # oneDNN's convolutions run markedly faster on channels-last input on CPU.
                acts = truncated(x.contiguous(memory_format=torch.channels_last))
                _check_units(acts, top_unit, layer)
                return acts

            def ascend(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                values, ascended, output = ascent_values(score, acts, units_t, truncated.pre_activation)
                loss = -ascended.sum()                      # per-image terms: each image gets its own gradient
                if diversity:
                    # Weighted by the objective's own size, so one `diversity` suits layers of any scale.
                    loss = loss + diversity * (values.detach().abs() * diversity_penalty(output, variants)).sum()
                return values, loss

            param = make_param(gens, in_channels, size, device=device)
            on_step = (lambda n=len(chunk): progress(n)) if progress else None
            done.append(_optimize(param, forward, ascend, lr, steps, on_step))

    return FeatureVisResult(images=np.concatenate([d[0] for d in done]),
                            activation=torch.cat([d[1] for d in done]).numpy(),
                            curve=torch.cat([d[2] for d in done]).numpy(),
                            units=np.array([u for u, _ in per_image], dtype=np.int64))


def _optimize(param: ImageParam, forward: Callable[[torch.Tensor, bool], torch.Tensor],
              ascend: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], lr: float, steps: int,
              on_step: Callable[[], None] | None) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Adam on one chunk's images -> (images (n, H, W, C) uint8, final values (n,), curve (n, steps))."""
    optimizer = torch.optim.Adam(param.params, lr=lr)
    curve = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        values, loss = ascend(forward(param.image(), True))
        loss.backward()
        optimizer.step()
        param.project()
        curve.append(values.detach())
        if on_step is not None:
            on_step()
    with torch.no_grad():
        shown = torch.round(param.image() * 255) / 255          # exactly the returned uint8 image
        final, _ = ascend(forward(shown, False))
    return _to_uint8(shown), final.cpu(), torch.stack(curve, dim=1).cpu()


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, C) uint8."""
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
