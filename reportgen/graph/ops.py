"""What each op does to channels and positions: the one table of the modules, functions and methods
reportgen knows, one entry per op.

An `Op` answers what every consumer asks:
- `elementwise`: output[c, y, x] depends on input[c, y, x] alone (per-channel constants aside): `find_conv`
  walks back past these to a conv, `receptive` maps positions through them unchanged.
- `keeps_channels`: channel c comes out of channel c (elementwise ops, pooling, padding, resampling): `sources`
  follows a conv's input channels back through these.
- `windows`: the (y, x) sliding windows of a conv, pool or padding (`Window`), for receptive fields;
  `pads`: the widths (as `F.pad` takes them) and mode of a padding op.
- `params`: the names of a call's positional parameters, for `call_arguments` (builtins have no signature).
- `kind`: "conv", "norm", "activation", "dropout", "identity", "pool", "pad" (spatial padding), "pad_nd" (`F.pad`:
  any dims, channels too), "adaptive_pool", "resample" (interpolation), "arithmetic" (`sums` when it adds its
  inputs, as a residual does), "concat", "move" (pure data movement: every output element is a copy of one input
  element: slicing, reshapes, permutes, chunks, flips), "channel_mix" (positions kept, channels mixed),
  "linear" (mixes the last dim), "layer_norm" (normalizes the trailing `normalized_shape` dims), "spatial_norm"
  (group/instance norm: every position of the image), "softmax" (along `dim`) or "reduce" (mean/sum/amax over
  `dim`). Keras-style layer aliases count a conv's "norm"/"activation" followers as part of it; incremental
  occlusion recomputes "norm", "activation", "dropout" and "identity" modules on crops as they are (in eval mode).
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
import torchvision.ops

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
    """One known op. `windows(m)` and `pads(m)` take the module (module entries) or the call's arguments by
    name (`call_arguments`: function and method entries) and give its (y, x) windows, or its `F.pad` widths
    (last dim first) and mode; None for ops without them. `params` names a call's positional parameters."""

    kind: str
    sums: bool = False
    windows: Callable[[Any], tuple[Window, Window]] | None = None
    params: tuple[str, ...] = ("input",)
    pads: Callable[[Any], tuple[tuple[int, ...], str]] | None = None

    @property
    def elementwise(self) -> bool:
        return self.kind in ELEMENTWISE_KINDS

    @property
    def keeps_channels(self) -> bool:
        return self.elementwise or self.kind in ("pool", "pad", "adaptive_pool", "resample")


def _conv_like(m) -> tuple[Window, Window]:
    return conv_windows(m.kernel_size, m.stride, m.padding, m.dilation)


def _pad(m) -> tuple[Window, Window]:  # m.padding is (left, right, top, bottom)
    return Window(1, 1, m.padding[2]), Window(1, 1, m.padding[0])


def _pad_module(mode: str) -> Op:
    return Op("pad", windows=_pad if mode == "constant" else None, pads=lambda m: (tuple(m.padding), mode))


def _pool_call(kw: dict) -> tuple[Window, Window]:
    return conv_windows(kw["kernel_size"], kw.get("stride") or kw["kernel_size"], kw.get("padding", 0),
                        kw.get("dilation", 1))


_ACTIVATION, _NORM, _DROPOUT, _IDENTITY = Op("activation"), Op("norm"), Op("dropout"), Op("identity")
_ADAPTIVE, _ARITHMETIC, _SUM = Op("adaptive_pool"), Op("arithmetic"), Op("arithmetic", sums=True)
_MOVE, _CHANNEL_MIX, _LINEAR = Op("move"), Op("channel_mix"), Op("linear", params=("input", "weight", "bias"))
_REDUCE, _SOFTMAX = Op("reduce", params=("input", "dim", "keepdim")), Op("softmax", params=("input", "dim"))
_RESAMPLE = Op("resample", params=("input", "size", "scale_factor", "mode", "align_corners",
                                   "recompute_scale_factor", "antialias"))
_CONCAT = Op("concat", params=("tensors", "dim"))

MODULES: dict[type[nn.Module], Op] = {
    nn.Conv2d: Op("conv", windows=_conv_like),
    nn.MaxPool2d: Op("pool", windows=_conv_like),
    nn.AvgPool2d: Op("pool", windows=lambda m: conv_windows(m.kernel_size, m.stride or m.kernel_size, m.padding, 1)),
    nn.ZeroPad2d: _pad_module("constant"), nn.ConstantPad2d: _pad_module("constant"),
    nn.ReflectionPad2d: _pad_module("reflect"), nn.ReplicationPad2d: _pad_module("replicate"),
    nn.CircularPad2d: _pad_module("circular"),
    nn.AdaptiveAvgPool2d: _ADAPTIVE, nn.AdaptiveMaxPool2d: _ADAPTIVE,
    nn.Upsample: _RESAMPLE,  # UpsamplingNearest2d and UpsamplingBilinear2d are subclasses
    nn.BatchNorm2d: _NORM,
    nn.Identity: _IDENTITY,
    nn.Dropout: _DROPOUT, nn.Dropout2d: _DROPOUT, nn.AlphaDropout: _DROPOUT,
    nn.Flatten: _MOVE, nn.Unflatten: _MOVE, nn.PixelShuffle: _MOVE, nn.PixelUnshuffle: _MOVE,
    nn.ChannelShuffle: _CHANNEL_MIX, nn.LocalResponseNorm: _CHANNEL_MIX, nn.Softmax2d: _CHANNEL_MIX,
    nn.Linear: _LINEAR, nn.LayerNorm: Op("layer_norm"),
    nn.GroupNorm: Op("spatial_norm"), nn.InstanceNorm2d: Op("spatial_norm"),
    nn.Softmax: _SOFTMAX, nn.LogSoftmax: _SOFTMAX,
    **{activation: _ACTIVATION for activation in (
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
        nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus)},
}
FUNCTIONS: dict[Callable, Op] = {
    F.conv2d: Op("conv", windows=lambda kw: conv_windows(kw["weight"].shape[2:], kw.get("stride", 1),
                                                         kw.get("padding", 0), kw.get("dilation", 1)),
                 params=("input", "weight", "bias", "stride", "padding", "dilation", "groups")),
    F.max_pool2d: Op("pool", windows=_pool_call, params=("input", "kernel_size", "stride", "padding", "dilation",
                                                         "ceil_mode", "return_indices")),
    F.avg_pool2d: Op("pool", windows=_pool_call, params=("input", "kernel_size", "stride", "padding", "ceil_mode",
                                                         "count_include_pad", "divisor_override")),
    F.pad: Op("pad_nd", params=("input", "pad", "mode", "value"),
              pads=lambda kw: (tuple(kw["pad"]), kw.get("mode", "constant"))),
    F.interpolate: _RESAMPLE,
    F.adaptive_avg_pool2d: _ADAPTIVE, F.adaptive_max_pool2d: _ADAPTIVE,
    F.batch_norm: _NORM,
    F.layer_norm: Op("layer_norm", params=("input", "normalized_shape")),
    F.group_norm: Op("spatial_norm"), F.instance_norm: Op("spatial_norm"),
    F.local_response_norm: _CHANNEL_MIX, F.channel_shuffle: _CHANNEL_MIX,
    F.linear: _LINEAR,
    F.softmax: _SOFTMAX, F.log_softmax: _SOFTMAX, torch.softmax: _SOFTMAX, torch.log_softmax: _SOFTMAX,
    torch.mean: _REDUCE, torch.sum: _REDUCE, torch.amax: _REDUCE, torch.amin: _REDUCE,
    F.dropout: _DROPOUT, F.dropout2d: _DROPOUT, torchvision.ops.stochastic_depth: _DROPOUT,
    operator.add: _SUM, operator.iadd: _SUM, torch.add: _SUM,
    operator.mul: _ARITHMETIC, operator.sub: _ARITHMETIC, operator.truediv: _ARITHMETIC, torch.mul: _ARITHMETIC,
    operator.neg: _ARITHMETIC,
    torch.cat: _CONCAT, torch.concat: _CONCAT,
    **{move: _MOVE for move in (
        operator.getitem, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
        torch.transpose, torch.movedim, torch.swapaxes, torch.chunk, torch.split, torch.tensor_split, torch.unbind,
        torch.narrow, torch.select, torch.flip, torch.roll, torch.stack, F.pixel_shuffle, F.pixel_unshuffle)},
    **{activation: _ACTIVATION for activation in (
        F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
        F.hardsigmoid, F.hardtanh, torch.sigmoid, torch.tanh, F.softplus)},
}
METHODS: dict[str, Op] = {
    "relu": _ACTIVATION, "relu_": _ACTIVATION, "sigmoid": _ACTIVATION, "tanh": _ACTIVATION,
    "clone": _IDENTITY, "contiguous": _IDENTITY, "detach": _IDENTITY, "float": _IDENTITY, "to": _IDENTITY,
    "type_as": _IDENTITY,
    "add": _SUM, "add_": _SUM, "mul": _ARITHMETIC, "mul_": _ARITHMETIC, "sub": _ARITHMETIC, "div": _ARITHMETIC,
    "neg": _ARITHMETIC,
    "mean": _REDUCE, "sum": _REDUCE, "amax": _REDUCE, "amin": _REDUCE,
    "softmax": _SOFTMAX, "log_softmax": _SOFTMAX,
    **{move: _MOVE for move in (
        "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze", "permute",
        "transpose", "movedim", "swapaxes", "chunk", "split", "tensor_split", "unbind", "narrow", "select", "flip",
        "roll", "expand", "expand_as", "repeat")},
}


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


def call_arguments(op: Op, node: fx.Node, value: Callable[[fx.Node], Any] = lambda n: n) -> dict[str, Any]:
    """A function or method call's arguments by parameter name (`op.params`, then its keywords), the nodes
    among them replaced by `value(node)`; parameters left to their defaults are absent."""
    return bind_arguments(op, fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value))


def bind_arguments(op: Op, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A call's positional and keyword arguments by parameter name (`op.params`)."""
    return dict(zip(op.params, args)) | dict(kwargs)


def node_windows(gm: fx.GraphModule, node: fx.Node, value: Callable[[fx.Node], Any] = lambda n: n
                 ) -> tuple[Window, Window] | None:
    """The (y, x) windows of a conv, pooling or zero-padding node; None for any other op. `value` gives
    the arguments computed in the forward (a kernel size read from `x.size()`)."""
    op = node_op(gm, node)
    if op is None or op.windows is None:
        return None
    if node.op == "call_module":
        return op.windows(gm.get_submodule(node.target))
    return op.windows(call_arguments(op, node, value))


def cat_dim(node: fx.Node) -> int:
    """The dim a `torch.cat` node joins along, 1 for the channel dim of (B, C, H, W) given as -3."""
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return 1 if dim in (1, -3) else dim
