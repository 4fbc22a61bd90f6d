"""What each op does to channels and positions: the one table of the modules, functions and methods
reportgen knows, one entry per op.

An `Op` answers what every consumer asks:
- `elementwise`: output[c, y, x] depends on input[c, y, x] alone (per-channel constants aside): `find_conv`
  walks back past these to a conv, `receptive` maps positions through them unchanged.
- `keeps_channels`: channel c comes out of channel c (elementwise ops, pooling, padding): `sources` follows
  a conv's input channels back through these.
- `windows`: the (y, x) sliding windows of a conv, pool or padding (`Window`), for receptive fields.
- `kind`: "conv", "norm", "activation", "dropout", "identity", "pool", "pad", "adaptive_pool",
  "arithmetic" (`sums` when it adds its inputs, as a residual does) or "concat". Keras-style layer aliases
  count a conv's "norm"/"activation" followers as part of it; incremental occlusion recomputes "norm",
  "activation", "dropout" and "identity" modules on crops as they are (in eval mode).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.operator_schemas import normalize_function

ELEMENTWISE_KINDS = ("norm", "activation", "dropout", "identity")


@dataclass(frozen=True)
class Window:
    """A sliding window along one axis: output i reads input i * stride - pad + t * dilation, t < kernel."""

    kernel: int
    stride: int
    pad: int
    dilation: int = 1


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def conv_windows(kernel, stride, padding, dilation) -> tuple[Window, Window]:
    """(y, x) windows of a conv or pool given as nn.Conv2d stores them (padding may be 'same'/'valid')."""
    kernel, stride, dilation = _pair(kernel), _pair(stride), _pair(dilation)
    if padding == "valid":
        padding = 0
    if padding == "same":  # PyTorch puts the odd pixel of 'same' padding at the end
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    padding = _pair(padding)
    return tuple(Window(kernel[i], stride[i], padding[i], dilation[i]) for i in range(2))


@dataclass(frozen=True)
class Op:
    """One known op. `windows(m)` takes the module (module entries) or the call's keyword arguments,
    normalized (function entries), and gives its (y, x) windows; None for ops without a window."""

    kind: str
    sums: bool = False
    windows: Callable[[Any], tuple[Window, Window]] | None = None

    @property
    def elementwise(self) -> bool:
        return self.kind in ELEMENTWISE_KINDS

    @property
    def keeps_channels(self) -> bool:
        return self.elementwise or self.kind in ("pool", "pad", "adaptive_pool")


def _conv_like(m) -> tuple[Window, Window]:
    return conv_windows(m.kernel_size, m.stride, m.padding, m.dilation)


def _pad(m) -> tuple[Window, Window]:  # m.padding is (left, right, top, bottom)
    return Window(1, 1, m.padding[2]), Window(1, 1, m.padding[0])


def _pool_call(kw: dict) -> tuple[Window, Window]:
    return conv_windows(kw["kernel_size"], kw["stride"] or kw["kernel_size"], kw["padding"], kw.get("dilation", 1))


_ACTIVATION, _NORM, _DROPOUT, _IDENTITY = Op("activation"), Op("norm"), Op("dropout"), Op("identity")
_ADAPTIVE, _ARITHMETIC, _SUM = Op("adaptive_pool"), Op("arithmetic"), Op("arithmetic", sums=True)

MODULES: dict[type[nn.Module], Op] = {
    nn.Conv2d: Op("conv", windows=_conv_like),
    nn.MaxPool2d: Op("pool", windows=_conv_like),
    nn.AvgPool2d: Op("pool", windows=lambda m: conv_windows(m.kernel_size, m.stride or m.kernel_size, m.padding, 1)),
    nn.ZeroPad2d: Op("pad", windows=_pad),
    nn.ConstantPad2d: Op("pad", windows=_pad),
    nn.AdaptiveAvgPool2d: _ADAPTIVE, nn.AdaptiveMaxPool2d: _ADAPTIVE,
    nn.BatchNorm2d: _NORM,
    nn.Identity: _IDENTITY,
    nn.Dropout: _DROPOUT, nn.Dropout2d: _DROPOUT, nn.AlphaDropout: _DROPOUT,
    **{activation: _ACTIVATION for activation in (
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
        nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus)},
}
FUNCTIONS: dict[Callable, Op] = {
    F.max_pool2d: Op("pool", windows=_pool_call), F.avg_pool2d: Op("pool", windows=_pool_call),
    F.adaptive_avg_pool2d: _ADAPTIVE, F.adaptive_max_pool2d: _ADAPTIVE,
    F.batch_norm: _NORM,
    F.dropout: _DROPOUT, F.dropout2d: _DROPOUT,
    operator.add: _SUM, operator.iadd: _SUM, torch.add: _SUM,
    operator.mul: _ARITHMETIC, operator.sub: _ARITHMETIC, operator.truediv: _ARITHMETIC, torch.mul: _ARITHMETIC,
    torch.cat: Op("concat"),
    **{activation: _ACTIVATION for activation in (
        F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
        F.hardsigmoid, F.hardtanh, torch.sigmoid, torch.tanh, F.softplus)},
}
METHODS: dict[str, Op] = {"relu": _ACTIVATION, "relu_": _ACTIVATION, "sigmoid": _ACTIVATION, "tanh": _ACTIVATION,
                          "clone": _IDENTITY, "contiguous": _IDENTITY, "detach": _IDENTITY}


def module_op(module: nn.Module, exact: bool = False) -> Op | None:
    """The entry of `module`'s type, or of its nearest listed base class unless `exact` (a subclass may
    override `forward` with anything, which computations that re-run the op cannot accept)."""
    if exact:
        return MODULES.get(type(module))
    return next((MODULES[cls] for cls in type(module).__mro__ if cls in MODULES), None)


def node_op(gm: fx.GraphModule, node: fx.Node) -> Op | None:
    """The entry of the op an fx node calls; None for unknown ops, inputs, outputs and attributes."""
    if node.op == "call_module":
        return module_op(gm.get_submodule(node.target))
    if node.op == "call_function":
        try:
            return FUNCTIONS.get(node.target)
        except TypeError:  # an unhashable callable is not in the table
            return None
    if node.op == "call_method":
        return METHODS.get(node.target)
    return None


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The node's inputs that are tensors computed in the forward (not weights read with get_attr)."""
    return [arg for arg in node.all_input_nodes if arg.op != "get_attr"]


def is_elementwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for a one-tensor op that keeps channels and positions (activation, BN, dropout, x * 2)."""
    op = node_op(gm, node)
    if op is None:
        return False
    return op.elementwise or (op.kind == "arithmetic" and len(tensor_inputs(node)) == 1)


def keeps_channels(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for a one-tensor op whose output channel c comes from input channel c alone."""
    op = node_op(gm, node)
    return is_elementwise(gm, node) or (op is not None and op.keeps_channels)


def node_windows(gm: fx.GraphModule, node: fx.Node) -> tuple[Window, Window] | None:
    """The (y, x) windows of a conv, pooling or zero-padding node; None for any other op."""
    op = node_op(gm, node)
    if op is None or op.windows is None:
        return None
    if node.op == "call_module":
        return op.windows(gm.get_submodule(node.target))
    return op.windows(normalize_function(node.target, node.args, node.kwargs,
                                         normalize_to_only_use_kwargs=True).kwargs)


def cat_dim(node: fx.Node) -> int:
    """The dim a `torch.cat` node joins along, 1 for the channel dim of (B, C, H, W) given as -3."""
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return 1 if dim in (1, -3) else dim
