"""Guided backpropagation (Springenberg et al. 2015) and guided Grad-CAM (Selvaraju et al. 2017).

The rule. Guided backprop is the input gradient in which every ReLU passes back only positive
gradients, and only where its input was positive: ∂in = max(∂out, 0) · [in > 0]. Other ReLU-like
activations f (ReLU6, LeakyReLU, PReLU, ELU, SELU, CELU, SiLU, GELU, Mish, Hardswish, Softplus) get
the same rule with their own slope:

    ∂in = f′(in) · max(∂out, 0) · [in > 0]

which is Springenberg's rule for f = ReLU; f′ > 0 wherever in > 0, so what an activation passes
back is never negative. Gates and squashing functions (sigmoid, hardsigmoid, tanh, hardtanh other
than ReLU6's (0, 6)), as in squeeze-excitation blocks, keep their ordinary gradient: they scale a
signal rather than decide whether a feature is present. Activations are guided wherever they are,
inside an SE block's bottleneck too, as Captum does for `nn.ReLU` modules. Anything else (pooling,
clamp, arithmetic) keeps its ordinary gradient.

The mechanism. While `guided_activations` is active, a `torch.overrides.TorchFunctionMode` sees every
torch call of the forward pass and replaces each activation call (`F.relu`, `torch.relu`,
`x.relu()`, `relu_`, `F.silu`, `F.gelu`, …; module activations too, since `nn.ReLU` calls `F.relu`
and `nn.ReLU6` calls `F.hardtanh(x, 0, 6)`) by `_Guided`, an autograd Function that computes the
activation itself and backpropagates by the rule. In-place calls stay in place (`mark_dirty`), so
code that keeps using the tensor it changed (`x.relu_()` as a statement) sees the same values.
Nothing is patched and no hook is registered: leaving the block (an exception too) pops the mode,
and the model is untouched. TorchScript runs its activations outside Python, where no mode sees
them: `guided_unsupported(model)` says so, and the guided functions refuse it.
"""

import inspect
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ...errors import ModelError
from ...graph.receptive import ReceptiveField
from ...hooks import run_until
from ._common import channel_max_abs, check_batch, check_input, class_scores, input_leaf
from .crops import unit_crop_size, unit_crops
from .gradcam import layer_cam, upsample

_T = torch.Tensor
# kind → the calls that compute it (a module activation calls one of them); in-place builtins last
GUIDED = {
    "relu": (F.relu, torch.relu, _T.relu, torch.relu_, _T.relu_),
    "relu6": (F.relu6,),                               # and F.hardtanh(x, 0, 6), which nn.ReLU6 calls
    "leaky_relu": (F.leaky_relu, F.leaky_relu_),
    "prelu": (torch.prelu,),
    "elu": (F.elu, F.elu_),
    "selu": (F.selu, torch.selu, torch.selu_),
    "celu": (F.celu, torch.celu, torch.celu_),
    "silu": (F.silu,),
    "gelu": (F.gelu,),
    "mish": (F.mish,),
    "hardswish": (F.hardswish,),
    "softplus": (F.softplus,),
}
GRADIENT = {
    "sigmoid": (torch.sigmoid, _T.sigmoid, torch.sigmoid_, _T.sigmoid_),
    "hardsigmoid": (F.hardsigmoid,),
    "tanh": (torch.tanh, _T.tanh, torch.tanh_, _T.tanh_),
    "hardtanh": (F.hardtanh,),
}
_KIND = {fn: kind for table in (GUIDED, GRADIENT) for kind, fns in table.items() for fn in fns}
# in-place builtins of GUIDED → their out-of-place twins (the Python functions take `inplace=` instead)
_OUT_OF_PLACE = {torch.relu_: torch.relu, _T.relu_: torch.relu, F.leaky_relu_: torch._C._nn.leaky_relu,
                 F.elu_: torch._C._nn.elu, torch.selu_: torch.selu, torch.celu_: torch.celu}
_SIGNATURE = {fn: inspect.signature(fn) for fn in _KIND if inspect.isfunction(fn)}

CROP_RTOL = 1e-3   # a unit's value on its crop vs the pass's: well above float32 reordering (~1e-6), below a global op
Census = dict[str, dict[str, int]]   # {"guided": {kind: calls}, "gradient": {kind: calls}}


class _Guided(torch.autograd.Function):
    """y = f(z) for an elementwise activation f; backward: f′(z) · max(∂y, 0) · [z > 0]."""

    @staticmethod
    def forward(ctx, z, f, inplace):
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            y = f(leaf)
            (slope,) = torch.autograd.grad(y, leaf, torch.ones_like(y))   # f′(z): f is elementwise
        ctx.save_for_backward(torch.where(z > 0, slope, 0))    # read before an in-place write changes z
        if inplace:
            ctx.mark_dirty(z)
            return z.copy_(y.detach())
        return y.detach()

    @staticmethod
    def backward(ctx, grad):
        (slope,) = ctx.saved_tensors
        return grad.clamp(min=0) * slope, None, None


def _activation(func, args: tuple, kwargs: dict) -> tuple[str, Callable, bool] | None:
    """(kind, f out of place as a function of the input alone, in place?) of an activation call, else None."""
    if func in _SIGNATURE:
        bound = _SIGNATURE[func].bind(*args, **kwargs)
        bound.apply_defaults()
        options = dict(list(bound.arguments.items())[1:])       # all but the input
        inplace = bool(options.pop("inplace", False))
        kind = _KIND[func]
        if func is F.hardtanh and (options["min_val"], options["max_val"]) == (0.0, 6.0):
            kind = "relu6"
        return kind, lambda t: func(t, **options), inplace
    twin = _OUT_OF_PLACE.get(func, func)
    return _KIND[func], lambda t: twin(t, *args[1:], **kwargs), func in _OUT_OF_PLACE


class _GuidedMode(TorchFunctionMode):
    """Replaces each GUIDED activation call by `_Guided` and counts the calls of both tables.

    Only calls that gradients flow through count: grad enabled and an input that requires grad.
    """

    def __init__(self):
        super().__init__()
        self.counts = {"guided": Counter(), "gradient": Counter()}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            known = func in _KIND
        except TypeError:         # an unhashable callable is no activation of ours
            known = False
        z = args[0] if args else None
        if not (known and isinstance(z, torch.Tensor) and z.is_floating_point() and z.requires_grad
                and torch.is_grad_enabled()):
            return func(*args, **kwargs)
        kind, f, inplace = _activation(func, args, kwargs)
        if kind not in GUIDED:
            self.counts["gradient"][kind] += 1
            return func(*args, **kwargs)
        self.counts["guided"][kind] += 1
        return _Guided.apply(z, f, inplace)

    def census(self) -> Census:
        return {rule: dict(sorted(c.items())) for rule, c in self.counts.items()}


def guided_unsupported(model: nn.Module) -> str | None:
    """None if guided backprop can change `model`'s activations, else why not (the reason shown in a report)."""
    scripted = next((name for name, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is None:
        return None
    where = f"module {scripted!r}" if scripted else "the model"
    return (f"{where} is TorchScript, whose activations run outside Python where guided backprop cannot change "
            "their gradient; load the model from its Python code (model.factory) to get it")


@contextmanager
def guided_activations(model: nn.Module) -> Iterator[_GuidedMode]:
    """Within the block, torch calls backpropagate by the guided rule; yields the mode, whose `census()`
    says which activations it changed. ModelError for a model it cannot change (TorchScript)."""
    why = guided_unsupported(model)
    if why:
        raise ModelError(f"guided backpropagation cannot run: {why}")
    with _GuidedMode() as mode:
        yield mode


def guided_gradient(model: nn.Module, x: torch.Tensor,
                    score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Guided-backprop gradient (B, C, H, W) of `score(x_leaf)` (a scalar built from `model`) w.r.t. x."""
    x = input_leaf(x)
    with torch.enable_grad():
        with guided_activations(model):
            value = score(x)
        (grad,) = torch.autograd.grad(value, x)     # the rule lives in the graph: the mode is not needed here
    return grad


def activation_census(model: nn.Module, x: torch.Tensor, layer: str | None = None) -> Census:
    """Which activation calls guided backprop changes in one forward of `model` on `x` (B, C, H, W),
    stopped at module `layer` if given: {"guided": {kind: calls}, "gradient": {kind: calls}}, kinds sorted."""
    check_input(x)
    with torch.enable_grad(), guided_activations(model) as mode:
        xx = input_leaf(x)
        run_until(model, layer, xx) if layer else model(xx)
    return mode.census()


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


def _filter_map(model: nn.Module, layer: str, channel: int, x: torch.Tensor) -> torch.Tensor:
    """Filter `channel`'s output at module path `layer` on x (the forward stops there): (B, h, w), or (B, 1, 1)
    for a (B, K) output."""
    act = run_until(model, layer, x)
    if act.dim() not in (2, 4):
        raise ModelError(f"layer {layer!r} must give a (B, C, H, W) or (B, C) output, not {tuple(act.shape)}")
    if not 0 <= channel < act.shape[1]:
        raise ModelError(f"filter {channel} is out of range: {layer!r} has {act.shape[1]} channels")
    return act[:, channel] if act.dim() == 4 else act[:, channel, None, None]


def guided_backprop_unit(model: nn.Module, x: torch.Tensor, layer: str, channel: int) -> np.ndarray:
    """Guided backprop of the strongest unit of filter `channel` at module path `layer`, per image.

    x: (B, C, H, W) normalized input. The unit is the argmax over positions of the layer's output
    (B, K, h, w) at `channel` (first position on ties); a (B, K) output has one unit per channel.
    Returns float32 (B, H, W), max |gradient| over colour channels. A filter that is zero
    everywhere behind a ReLU gives a zero map. The reference for `guided_backprop_unit_crops`.
    """
    check_input(x)

    def unit_score(xx: torch.Tensor) -> torch.Tensor:
        units = _filter_map(model, layer, channel, xx).flatten(1)         # (B, h·w)
        return units.gather(1, units.argmax(dim=1, keepdim=True)).sum()

    return channel_max_abs(guided_gradient(model, x, unit_score))


def _units_gradient(model: nn.Module, x: torch.Tensor, layer: str, channel: int,
                    units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Guided backprop of unit units[b] = (y, x) of filter `channel` at `layer` for each image of x (B, C, H, W):
    maps float32 (B, H, W) (max |gradient| over colour channels) and the units' values float32 (B,), NaN for a
    unit outside the layer's output (its map is zero)."""
    values = []

    def score(xx: torch.Tensor) -> torch.Tensor:
        fmap = _filter_map(model, layer, channel, xx)                     # (B, h, w)
        inside = torch.as_tensor(((units >= 0) & (units < fmap.shape[1:])).all(1), device=fmap.device)
        ys, xs = (torch.as_tensor(units[:, i], device=fmap.device) for i in (0, 1))
        v = fmap[torch.arange(len(fmap), device=fmap.device), ys.clamp(0, fmap.shape[1] - 1),
                 xs.clamp(0, fmap.shape[2] - 1)]                          # (B,)
        v = torch.where(inside, v, torch.nan)
        values.append(v.detach().float().cpu().numpy())
        return v[inside].sum()

    maps = channel_max_abs(guided_gradient(model, x, score))
    return maps, values[0]


def guided_backprop_unit_crops(model: nn.Module, x: torch.Tensor, layer: str, channel: int, units: np.ndarray,
                               values: np.ndarray, field: ReceptiveField | None) -> tuple[np.ndarray, np.ndarray]:
    """Guided backprop of one given unit of filter `channel` at `layer` per image, each computed on a crop of
    the image holding the unit's receptive field (crops.py says how and why it is exact), pasted into a zero
    map: `guided_backprop_unit`'s maps for the same units, at the cost of the crop. The gradient of a unit is
    zero outside its receptive field, so nothing is lost.

    x: (B, C, H, W) normalized input; units: (B, 2) int (y, x) in the layer's output, the dataset pass's
    strongest unit (`StreamingTopK.loc`, whose ties it resolved); values: (B,) those units' values in the pass
    (`StreamingTopK.scores`); field: the layer's receptive field for (H, W) inputs, or None.
    Verified: a crop whose forward gives another value for its unit (relative `CROP_RTOL` of the batch's
    largest |value|: a global op on the way, such as squeeze-excitation, attention or a global mean) is
    computed again on the whole image; so is every image when the layer has no crops (`crops.unit_crop_size`
    is None). Returns float32 maps (B, H, W), max |gradient| over colour channels, and cropped (B,) bool:
    which maps came from a crop.
    """
    check_input(x)
    units = np.asarray(units, np.int64).reshape(-1, 2)
    values = np.asarray(values, np.float32).reshape(-1)
    if not len(units) == len(values) == len(x):
        raise ValueError(f"units ({len(units)}, 2) and values ({len(values)},) need one row per image of x "
                         f"({len(x)})")
    if field is not None and tuple(field.input_size) != tuple(x.shape[-2:]):
        raise ValueError(f"the receptive field is for {tuple(field.input_size)} inputs, x is {tuple(x.shape[-2:])}")
    maps = np.zeros((len(x), *x.shape[-2:]), np.float32)
    cropped = np.zeros(len(x), bool)
    size = unit_crop_size(field)
    if size is not None:
        windows = unit_crops(field, units, size)                          # (B, 4): y0, x0, y1, x1
        stride = np.array([int(s) for s in field.stride])
        shapes = windows[:, 2:] - windows[:, :2]
        for shape in np.unique(shapes, axis=0):                          # same-size crops run as one batch
            group = np.flatnonzero((shapes == shape).all(1))
            crops = torch.stack([x[b, :, y0:y1, x0:x1]
                                 for b, (y0, x0, y1, x1) in zip(group, windows[group].tolist())])
            local = units[group] - windows[group, :2] // stride            # the unit in the crop's output
            part, got = _units_gradient(model, crops, layer, channel, local)
            same = np.isclose(got, values[group], rtol=CROP_RTOL, atol=CROP_RTOL * np.abs(values).max())
            for b, m, ok in zip(group, part, same):
                y0, x0, y1, x1 = windows[b].tolist()
                maps[b, y0:y1, x0:x1], cropped[b] = m, ok
    rest = np.flatnonzero(~cropped)
    if len(rest):
        maps[rest] = _units_gradient(model, x[torch.as_tensor(rest, device=x.device)], layer, channel,
                                     units[rest])[0]
    return maps, cropped
