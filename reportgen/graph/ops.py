"""What each op does to channels and positions: the tables of known modules, functions and methods.

Read by `trace` (is a layer a conv's output?), `sources` (where channels come from) and `receptive`
(which positions each unit reads).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.operator_schemas import normalize_function

# output[c, y, x] depends on input[c, y, x] alone (per-channel constants aside).
ELEMENTWISE_MODULES = (
    nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
)
ELEMENTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, torch.sigmoid, torch.tanh, F.softplus, F.dropout, F.dropout2d,
    F.batch_norm,
}
ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clone", "contiguous", "detach"}
ARITHMETIC = {operator.add, operator.iadd, operator.mul, operator.sub, operator.truediv,
               torch.add, torch.mul}
SUM = {operator.add, operator.iadd, torch.add}
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d}
_ADAPTIVE_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}


def is_elementwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for a one-tensor op that keeps channels and positions (activation, BN, dropout, x * 2)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), ELEMENTWISE_MODULES)
    if node.op == "call_method":
        return node.target in ELEMENTWISE_METHODS
    if node.op == "call_function":
        tensors = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
        return node.target in ELEMENTWISE_FUNCTIONS or (node.target in ARITHMETIC and len(tensors) == 1)
    return False


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


def node_windows(gm: fx.GraphModule, node: fx.Node) -> tuple[Window, Window] | None:
    """The (y, x) windows of a conv, pooling or zero-padding node; None for any other op."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            return conv_windows(m.kernel_size, m.stride, m.padding, m.dilation)
        if isinstance(m, nn.AvgPool2d):
            return conv_windows(m.kernel_size, m.stride or m.kernel_size, m.padding, 1)
        if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)):  # (left, right, top, bottom)
            return Window(1, 1, m.padding[2]), Window(1, 1, m.padding[0])
    if node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        kw = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True).kwargs
        return conv_windows(kw["kernel_size"], kw["stride"] or kw["kernel_size"], kw["padding"],
                            kw.get("dilation", 1))
    return None


def channel_window(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A window op that keeps channels apart (pooling, padding), unlike a conv."""
    conv = node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d)
    return not conv and node_windows(gm, node) is not None


def is_adaptive(gm: fx.GraphModule, node: fx.Node) -> bool:
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    return isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) or (
        node.op == "call_function" and node.target in _ADAPTIVE_FUNCTIONS)


def cat_dim(node: fx.Node) -> int:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return 1 if dim in (1, -3) else dim
