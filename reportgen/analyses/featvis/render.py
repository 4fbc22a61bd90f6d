"""The optimization loop: synthesize the images that maximize chosen units of a layer, many at once.

All images of a chunk form one batch: one forward (stopped at the target layer) and one backward per step,
whatever the number of filters. Each image has its own objective, its own random generator (for its
initial values and its warps, seeded from (seed, unit, variant)) and, with Adam, its own per-parameter
step sizes, so an image is the same whether it is rendered alone or with 63 others (up to float rounding).

Coarse to fine (`Optimizer.sizes`): the first steps optimize smaller renderings of the same parameters, so
the large shapes settle at a fraction of the cost (a step costs about its pixels; on CPU the convolutions
are nearly all of it) before the full size refines them.

Settling (`Optimizer.settle`): the last steps optimize the unwarped image, the view the page shows and the
final activation measures. The warped steps before them found a shape that survives small shifts, turns
and zooms; the settling steps align it with the pixel grid. On VGG19 (benchmarks/feature_vis.py) 128 steps
with the last 32 settling reach 1.03x (block2_conv2), 1.45x (block3_conv1) and 2.4x (block5_conv3) the
final activation of 256 warped steps, and look alike.

Precision (`Optimizer.autocast`): the steps may run the model's convolutions and matrix products in
bfloat16 (`torch.autocast`), about 2x faster where the hardware computes it natively, at the same
activation within 1.5% (VGG19, 128 px, 2 CPU cores with AVX-512 BF16). The final images are always
measured in float32.
"""

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.errors import ModelError, SpecError

from .hooks import frozen, truncated_model
from .objectives import Objective, Score, diversity_penalty
from .param import ImageParam, Parameterization
from .transforms import RandomAffine


@dataclass(frozen=True)
class Optimizer:
    """The loop: Adam with step size `lr` for `steps` steps, `batch_size` images at a time, seeded by `seed`.

    sizes: coarse to fine, the image's side as a fraction of its final size in successive stages of equal
        length; (0.5, 0.75, 1.0) spends a third of the steps at half size and a third at three quarters, for
        60% of the work of full-size steps (a step costs about its pixels). The last must be 1.
    settle: the share of the steps, the last ones, that optimize the unwarped image (no random warp).
    autocast: the dtype the steps compute the model in (`torch.autocast`), or None for float32.
    """
    steps: int = 128              # steps, lr and settle: `feature_vis`' defaults
    lr: float = 0.05
    seed: int = 0
    batch_size: int = 64
    sizes: tuple[float, ...] = (1.0,)
    settle: float = 0.25
    autocast: torch.dtype | None = None

    def __post_init__(self):
        for key, value, low in (("steps", self.steps, 1), ("batch_size", self.batch_size, 1),
                                ("seed", self.seed, 0)):
            if value < low:
                raise SpecError(key, f"must be at least {low}; got {value!r}.")
        if not 0 <= self.settle <= 1:
            raise SpecError("settle", f"must be a share of the steps, 0 to 1; got {self.settle!r}.")
        object.__setattr__(self, "sizes", tuple(float(f) for f in self.sizes))
        if not self.sizes or self.sizes[-1] != 1.0 or any(not 0 < f <= 1 for f in self.sizes) \
                or list(self.sizes) != sorted(self.sizes):
            raise SpecError("sizes", f"must grow to 1 (fractions of the final size); got {list(self.sizes)!r}.")

    def size_at(self, step: int, full: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the images optimized at `step` (0-based), for final images of size `full`."""
        f = self.sizes[min(step * len(self.sizes) // self.steps, len(self.sizes) - 1)]
        return tuple(max(8, round(side * f)) for side in full)

    def work(self, full: tuple[int, int]) -> float:
        """Cost of the loop in full-size image·steps (a step costs about its pixels)."""
        pixels = full[0] * full[1]
        return sum(math.prod(self.size_at(t, full)) for t in range(self.steps)) / pixels


@dataclass
class FeatureVisResult:
    """Synthesized images, N = len(units) × variants, the variants of a unit adjacent.

    images: (N, H, W, C) uint8 pixels, C the model's input channels, ready to display (not normalized).
    activation: (N,) the objective reached, measured on the final image without any warp.
    curve: (N, steps) the objective at each step, on the image the step optimized (warped but in the settling
        steps; at the step's size; in the steps' precision).
    units: (N,) the unit (channel or class) each image is for.
    transparency: (N, H, W) float32, MACO's transparency map: the absolute gradient of each step's loss (the
        objective, and the diversity term with variants) w.r.t. the image's pixels, summed over channels and
        steps; a coarse step's map is resampled to (H, W) and weighted by its share of the pixels. High where
        the pixels mattered to the objective, low where they could have been anything.
    clipped: (N,) the share of the final image's pixel values that its parameterization clipped to [0, 1]
        (MACO's, whose exact-spectrum image can leave it; 0 for the others).
    """
    images: np.ndarray
    activation: np.ndarray
    curve: np.ndarray
    units: np.ndarray
    transparency: np.ndarray
    clipped: np.ndarray


def image_seed(seed: int, unit: int, variant: int) -> int:
    """The seed of one image's generator: depends on (seed, unit, variant), never on the batch around it."""
    return int(np.random.SeedSequence([seed, unit, variant]).generate_state(1)[0])


def _check_units(acts: torch.Tensor, top_unit: int, layer: str | None) -> None:
    channels = acts.shape[1] if acts.dim() > 1 else 0
    if top_unit >= channels:
        raise ModelError(f"layer {layer or 'output'!r} has {channels} channels; unit {top_unit} is out of range.")


def ascent_values(score: Score, acts: torch.Tensor, units: torch.Tensor, pre_activation: bool,
                  redirect: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, ascended, layer_output): the objective (n,), what the gradient follows (n,), the layer's output.

    With `pre_activation` (the layer is a ReLU and `acts` its input z), values = score(relu(z)); an image whose
    ReLU is off wherever the objective looks has value 0 and no gradient, so it climbs score(z) instead until
    the unit turns on (Lucid's "redirected ReLU" idea, applied to the target layer only). Without `redirect`
    (an objective that matches targets: its value is never above 0) it always climbs score(relu(z)).
    """
    if not pre_activation:
        values = score(acts, units)
        return values, values, acts
    output = acts.clamp(min=0)
    values = score(output, units)
    if not redirect:
        return values, values, output
    return values, torch.where(values > 0, values, score(acts, units)), output


def synthesize(model: nn.Module, objective: Objective, param: Parameterization,
               transforms: RandomAffine | None = RandomAffine(), optimizer: Optimizer = Optimizer(), *,
               device: str = "cpu", progress: Callable[[int], None] | None = None) -> FeatureVisResult:
    """Gradient ascent on `objective` for each of its units, images batched `optimizer.batch_size` at a time.

    model: takes normalized (B, param.channels, H, W) float input, (H, W) = `param.hw`, already on `device`;
        it is put in eval mode with frozen weights for the call and restored after.
    param: how images are parameterized (pixels are synthesized in [0, 1], then normalized by its mean/std).
    transforms: the random warp applied at every step, or None for none. Fourier parameterization with the
        default warp is the regularized synthesis; `Parameterization(fourier=False)` with None the plain ascent.
    progress: called after every step with the number of images the step advanced (total N × steps).
    """
    score, variants, diversity = objective.score, objective.variants, objective.diversity
    per_image = [(u, v) for u in objective.units for v in range(variants)]
    # Whole groups of variants per chunk: the diversity term compares variants of a unit with each other.
    chunk_len = max(1, optimizer.batch_size // variants) * variants
    mean_t = torch.tensor(param.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(param.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    # A zero-image entry keeps the concatenations below valid when there are no units.
    done = [(np.zeros((0, *param.hw, param.channels), np.uint8), torch.zeros(0),
             torch.zeros(0, optimizer.steps), torch.zeros(0, *param.hw), torch.zeros(0))]
    with frozen(model), truncated_model(model, objective.layer) as truncated:
        for start in range(0, len(per_image), chunk_len):
            chunk = per_image[start:start + chunk_len]
            gens = [torch.Generator().manual_seed(image_seed(optimizer.seed, u, v)) for u, v in chunk]
            units_t = torch.tensor([u for u, _ in chunk], device=device)
            top_unit = max(u for u, _ in chunk)

            def forward(pixels: torch.Tensor, warped: bool) -> torch.Tensor:
                x = (pixels - mean_t) / std_t                                   # (n, C, H, W)
                if warped and transforms is not None:
                    x = transforms(x, gens)
                # oneDNN's convolutions run markedly faster on channels-last input on CPU.
                acts = truncated(x.contiguous(memory_format=torch.channels_last))
                if not objective.matches:     # a match objective's units index its targets, not channels
                    _check_units(acts, top_unit, objective.layer)
                return acts

            def ascend(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                values, ascended, output = ascent_values(score, acts, units_t, truncated.pre_activation,
                                                         redirect=not objective.matches)
                loss = -ascended.sum()                      # per-image terms: each image gets its own gradient
                if diversity:
                    # Weighted by the objective's own size, so one `diversity` suits layers of any scale.
                    loss = loss + diversity * (values.detach().abs() * diversity_penalty(output, variants)).sum()
                return values, loss

            on_step = (lambda n=len(chunk): progress(n)) if progress else None
            done.append(_optimize(param.images(gens, device), forward, ascend, optimizer, param.hw, on_step,
                                  torch.device(device).type))

    return FeatureVisResult(images=np.concatenate([d[0] for d in done]),
                            activation=torch.cat([d[1] for d in done]).numpy(),
                            curve=torch.cat([d[2] for d in done]).numpy(),
                            units=np.array([u for u, _ in per_image], dtype=np.int64),
                            transparency=torch.cat([d[3] for d in done]).numpy(),
                            clipped=torch.cat([d[4] for d in done]).numpy())


def initial_pixels(param: Parameterization, units: Sequence[int], seed: int, device: str = "cpu") -> torch.Tensor:
    """(N, C, H, W) in [0, 1]: the images `synthesize` starts from for `units` (first variants), before any step."""
    gens = [torch.Generator().manual_seed(image_seed(seed, u, 0)) for u in units]
    with torch.no_grad():
        return param.images(gens, device).image()


def _optimize(param: ImageParam, forward: Callable[[torch.Tensor, bool], torch.Tensor],
              ascend: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], optimizer: Optimizer,
              full: tuple[int, int], on_step: Callable[[], None] | None,
              device_type: str) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam on one chunk's images -> (images (n, H, W, C) uint8, final values (n,), curve (n, steps),
    transparency (n, H, W), clipped (n,)), as in `FeatureVisResult`."""
    adam = torch.optim.Adam(param.params, lr=optimizer.lr)
    curve = []
    transparency = 0.0
    warped_steps = optimizer.steps - round(optimizer.steps * optimizer.settle)
    for step in range(optimizer.steps):
        adam.zero_grad(set_to_none=True)
        size = optimizer.size_at(step, full)
        pixels = param.image(size)                                   # (n, C, h, w)
        pixels.retain_grad()
        with torch.autocast(device_type, dtype=optimizer.autocast, enabled=optimizer.autocast is not None):
            values, loss = ascend(forward(pixels, step < warped_steps))
        loss.backward()
        transparency = transparency + _full_size(pixels.grad.detach().float().abs().sum(1, keepdim=True), full)
        adam.step()
        param.project()
        curve.append(values.detach())
        if on_step is not None:
            on_step()
    with torch.no_grad():
        shown = torch.round(param.image() * 255) / 255          # exactly the returned uint8 image
        final, _ = ascend(forward(shown, False))                 # float32, whatever the steps computed in
        raw = param.unclipped() if param.unclipped is not None else shown
        clipped = ((raw < 0) | (raw > 1)).float().mean(dim=(1, 2, 3))
    return (_to_uint8(shown), final.float().cpu(), torch.stack(curve, dim=1).float().cpu(),
            transparency[:, 0].cpu(), clipped.cpu())


def _full_size(grad: torch.Tensor, full: tuple[int, int]) -> torch.Tensor:
    """(n, 1, h, w) per-pixel gradient of a coarse step -> (n, 1, H, W): resampled, and scaled by h w / (H W) so
    a region's total is the same at every size (a coarse pixel stands for several full ones)."""
    if tuple(grad.shape[-2:]) == tuple(full):
        return grad
    area = grad.shape[-2] * grad.shape[-1] / (full[0] * full[1])
    return F.interpolate(grad, size=full, mode="bilinear", align_corners=False) * area


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, C) uint8."""
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
