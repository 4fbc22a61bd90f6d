"""The model as a graph: which node a layer is, what each op does to channels and positions, where a
conv's input channels come from, and the input-space receptive field of a layer's units.

Hooks see tensors but not wiring, so the wiring comes from `torch.fx` symbolic tracing, which keeps
module paths (`features.10`, `layer1.0.conv1`) on its nodes. A layer path names the output of that
module's last call in `forward` (what a forward hook sees last), e.g. `layer1.0` is the block's output.

Public surface: `trace`, `find_conv`, `trace_source` + `Source`, `receptive_field(s)` + `ReceptiveField`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.operator_schemas import normalize_function
from torch.fx.passes.shape_prop import ShapeProp
from torch._subclasses.fake_tensor import FakeTensorMode

from reportgen.errors import ModelError

__all__ = ["ReceptiveField", "Source", "find_conv", "receptive_field", "receptive_fields", "trace", "trace_source"]

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
_ARITHMETIC = {operator.add, operator.iadd, operator.mul, operator.sub, operator.truediv,
               torch.add, torch.mul}
_SUM = {operator.add, operator.iadd, torch.add}
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d}
_ADAPTIVE_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_NOT_TRACEABLE = "cannot trace {model} with torch.fx ({error}); the graph-based sections need a traceable model"


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolic trace of `model` (a GraphModule is returned as is). Raises ModelError naming the model."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # fx raises anything from TraceError to TypeError on control flow
        raise ModelError(_NOT_TRACEABLE.format(model=type(model).__name__,
                                               error=f"{type(error).__name__}: {error}")) from error


def module_outputs(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """Module path -> the node its last call returns (leaf modules and containers such as `layer1.0`)."""
    outputs: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        for path, *_ in (node.meta.get("nn_module_stack") or {}).values():
            outputs[path] = node
        if node.op == "call_module":
            outputs[node.target] = node
    return outputs


def layer_node(gm: fx.GraphModule, layer: str) -> fx.Node:
    """The node whose output is `layer`; ModelError listing some layers when there is none."""
    outputs = module_outputs(gm)
    if layer not in outputs:
        some = ", ".join(repr(name) for name in list(outputs)[:8])
        raise ModelError(f"layer {layer!r} is not a module called in the model's forward; layers are {some}, …")
    return outputs[layer]


def describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """A node as a reader knows it: `MaxPool2d 'features.4'`, `add`, `.mean()`, `the model input`."""
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__} {node.target!r}"
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "placeholder":
        return "the model input"
    return getattr(node.target, "__name__", str(node.target))


def is_elementwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for a one-tensor op that keeps channels and positions (activation, BN, dropout, x * 2)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), ELEMENTWISE_MODULES)
    if node.op == "call_method":
        return node.target in ELEMENTWISE_METHODS
    if node.op == "call_function":
        tensors = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
        return node.target in ELEMENTWISE_FUNCTIONS or (node.target in _ARITHMETIC and len(tensors) == 1)
    return False


def find_conv(model: nn.Module, layer: str) -> tuple[str, nn.Conv2d, nn.BatchNorm2d | None]:
    """The Conv2d whose output `layer` is, possibly through elementwise ops (BN, ReLU, dropout).

    Returns (conv path, conv, bn): `bn` is the BatchNorm2d applied right after the conv when `layer`
    is at or after it (so folding it gives the layer's pre-activation), else None.
    Raises ModelError when `layer` is not a conv followed only by elementwise ops.
    """
    gm = trace(model)
    node, chain = layer_node(gm, layer), []
    while not (node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d)):
        if not is_elementwise(gm, node):
            raise ModelError(f"layer {layer!r} is not the output of a Conv2d: it comes from {describe(gm, node)}")
        chain.append(node)
        node = node.all_input_nodes[0]
    bn = None
    for after in reversed(chain):  # from the conv forward, past identities, to a BN if it is next
        module = gm.get_submodule(after.target) if after.op == "call_module" else None
        if isinstance(module, nn.BatchNorm2d):
            bn = module
        if not isinstance(module, (nn.Identity, nn.Dropout, nn.Dropout2d)):
            break
    return node.target, gm.get_submodule(node.target), bn


@dataclass(frozen=True)
class Source:
    """What feeds a conv's input channel c (`channel_sources` flattens it to (source, channel) pairs).

    kind: "layer"  channel c of module `producer` (of type `producer_type`, e.g. Conv2d);
          "input"  channel c of the model input (an image channel);
          "sum"    the sum of channel c of every branch in `branches` (a residual add);
          "concat" channels of `branches` one after another, branch i from channel `offsets[i]`;
          "other"  made by an op that does not keep channels apart (`producer_type` names it).
    path: module paths whose outputs carry these same channels, nearest the conv first (pooling,
          ReLU, BN, blocks) and ending with `producer`: link to the first one that is in the report.
    """

    kind: str
    producer: str | None = None
    producer_type: str = ""
    path: tuple[str, ...] = ()
    branches: tuple[Source, ...] = ()
    offsets: tuple[int, ...] = ()

    def channel_sources(self, channel: int) -> list[tuple[Source, int]]:
        """The "layer"/"input"/"other" sources (with their channel) that input channel `channel` comes from."""
        if self.kind == "sum":
            return [pair for branch in self.branches for pair in branch.channel_sources(channel)]
        if self.kind == "concat":
            i = int(np.searchsorted(self.offsets, channel, side="right")) - 1
            return self.branches[i].channel_sources(channel - self.offsets[i])
        return [(self, channel)]


def trace_source(model: nn.Module, conv_path: str) -> Source:
    """Where the input channels of the conv at `conv_path` come from, through channel-keeping ops
    (activations, BN, dropout, pooling, padding), residual sums and channel concatenation."""
    gm = trace(model)
    node = layer_node(gm, conv_path)
    if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.Conv2d):
        raise ModelError(f"{conv_path!r} is not a Conv2d but {describe(gm, node)}")
    names: dict[fx.Node, list[str]] = {}
    for path, out in module_outputs(gm).items():  # deepest module first: `layer1.0.relu`, `layer1.0`
        names.setdefault(out, []).insert(0, path)
    return _source(gm, node.all_input_nodes[0], names)


def _source(gm: fx.GraphModule, node: fx.Node, names: dict[fx.Node, list[str]]) -> Source:
    path: list[str] = []
    while is_elementwise(gm, node) or _channel_window(gm, node) or _is_adaptive(gm, node):
        path += names.get(node, [])
        node = node.all_input_nodes[0]
    tensors = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
    if node.op == "placeholder":
        return Source("input", path=tuple(path))
    if node.op == "call_function" and node.target in _SUM and len(tensors) > 1:
        return Source("sum", path=tuple(path + names.get(node, [])),
                      branches=tuple(_source(gm, arg, names) for arg in tensors))
    counts = [_channels(gm, arg) for arg in tensors] if node.target is torch.cat else [None]
    if node.target is torch.cat and _cat_dim(node) == 1 and None not in counts:
        return Source("concat", path=tuple(path + names.get(node, [])),
                      branches=tuple(_source(gm, arg, names) for arg in tensors),
                      offsets=tuple(int(o) for o in np.cumsum([0] + counts[:-1])))
    if node.op == "call_module":
        path += names.get(node, [])
        return Source("layer", node.target, type(gm.get_submodule(node.target)).__name__, tuple(path))
    return Source("other", producer_type=describe(gm, node), path=tuple(path))


def _channels(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """Channel count of a node's output, known from the module that makes it (None when unknown)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        for attribute in ("out_channels", "num_features"):
            if hasattr(module, attribute):
                return getattr(module, attribute)
    if is_elementwise(gm, node) or _channel_window(gm, node) or _is_adaptive(gm, node):
        return _channels(gm, node.all_input_nodes[0])
    return None


def _cat_dim(node: fx.Node) -> int:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return 1 if dim in (1, -3) else dim


# --- receptive fields --------------------------------------------------------------------------


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


def _window(gm: fx.GraphModule, node: fx.Node) -> tuple[Window, Window] | None:
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


def _channel_window(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A window op that keeps channels apart (pooling, padding), unlike a conv."""
    conv = node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d)
    return not conv and _window(gm, node) is not None


def _is_adaptive(gm: fx.GraphModule, node: fx.Node) -> bool:
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    return isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) or (
        node.op == "call_function" and node.target in _ADAPTIVE_FUNCTIONS)


@dataclass(frozen=True, eq=False)  # eq would compare the arrays
class ReceptiveField:
    """The input pixels each unit of a layer depends on.

    `size` and `stride` are the unclipped extent (h, w) and the step between neighbouring units in
    input pixels; `box(y, x)` is the exact bounding box of the input pixels that unit (y, x) of the
    layer's output depends on, clipped to the image; the union over all paths of a multi-path graph.
    """

    layer: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    size: tuple[int, int]
    stride: tuple[int, int]
    rows: np.ndarray  # (H_out, 2) half-open [y0, y1) per output row
    cols: np.ndarray  # (W_out, 2) half-open [x0, x1) per output column

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), half-open, in input pixels, for the unit at output location (y, x);
        (0, 0, 0, 0) for a unit whose window lies wholly on padding."""
        if not (0 <= y < self.output_size[0] and 0 <= x < self.output_size[1]):
            raise IndexError(f"unit ({y}, {x}) is outside {self.layer!r}'s output of size {self.output_size}")
        (y0, y1), (x0, x1) = self.rows[y], self.cols[x]
        return (int(x0), int(y0), int(x1), int(y1)) if y0 < y1 and x0 < x1 else (0, 0, 0, 0)


def receptive_field(model: nn.Module, layer: str, input_size: tuple[int, int],
                    in_channels: int | None = None) -> ReceptiveField:
    """Receptive field of `layer`'s units for inputs of `input_size` (H, W); see `receptive_fields`."""
    return receptive_fields(model, [layer], input_size, in_channels)[layer]


def receptive_fields(model: nn.Module, layers: list[str], input_size: tuple[int, int],
                     in_channels: int | None = None) -> dict[str, ReceptiveField]:
    """Receptive fields of several layers' units for inputs of `input_size` (H, W), by layer path.

    Composed from the conv/pool arithmetic (kernel, stride, padding, dilation) along the fx graph,
    walked back from the layer to the input per axis with the set of positions each unit reads:
    elementwise ops and channel concatenation keep positions, sums and products join their
    branches' sets (ResNet: the union over paths), adaptive pooling maps each bin to its input
    span; units of a layer without spatial layout (after flatten / Linear) see the whole image.
    Node sizes come from propagating a (1, C, H, W) input, C being `in_channels` or what the first
    conv called takes. Raises ModelError on any other op (upsampling, reshapes, attention).
    Per axis: a branch whose windows read only padding along one axis still counts along the other.
    """
    gm = trace(model)
    targets = {layer: layer_node(gm, layer) for layer in layers}
    if in_channels is None:
        convs = (gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module")
        in_channels = next((m.in_channels for m in convs if isinstance(m, nn.Conv2d)), None)
        if in_channels is None:
            raise ModelError(f"{type(model).__name__} calls no Conv2d to tell the input's channel count")
    _propagate_shapes(gm, model, (1, in_channels, *input_size))
    return {layer: _receptive_field(gm, layer, node, tuple(input_size)) for layer, node in targets.items()}


def _propagate_shapes(gm: fx.GraphModule, model: nn.Module, shape: tuple[int, ...]) -> None:
    """Store every node's output shape in its meta. Fake tensors give shapes without the arithmetic
    (8x faster on VGG at 224 px); a real zero image is the fallback for ops fake tensors lack."""
    param = next(model.parameters(), torch.zeros(()))
    x = torch.zeros(shape, dtype=param.dtype, device=param.device)
    try:
        ShapeProp(gm, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(x)
    except Exception:  # any failure of the fake run: pay for the real one
        with torch.no_grad():
            ShapeProp(gm).propagate(x)


def _receptive_field(gm: fx.GraphModule, layer: str, target: fx.Node, input_size) -> ReceptiveField:
    shape = _shape(target)
    if len(shape) != 4:  # no spatial layout left: every unit sees the whole image
        whole = tuple(np.array([[0, n]]) for n in input_size)
        return ReceptiveField(layer, input_size, (1, 1), input_size, input_size, *whole)
    spans, free = [], []
    for axis in (2, 3):
        reads = _walk(gm, target, np.eye(shape[axis], dtype=bool), lambda n, v, a=axis: _back_taps(gm, n, a, v),
                      np.logical_or)  # (units, input size): which input rows (columns) each unit reads
        first, last = reads.argmax(1), reads.shape[1] - 1 - reads[:, ::-1].argmax(1)
        spans.append(np.where(reads.any(1)[:, None], np.stack([first, last + 1], 1), 0))  # [0, 0) if none
        ends = _walk(gm, target, np.array([[0, 0], [1, 1]]), lambda n, v, a=axis: _back_extent(gm, n, a, v),
                     lambda u, v: np.stack([np.minimum(u[:, 0], v[:, 0]), np.maximum(u[:, 1], v[:, 1])], 1))
        free.append((int(ends[0, 1] - ends[0, 0] + 1), int(ends[1, 0] - ends[0, 0])))  # units 0, 1 unclipped
    return ReceptiveField(layer, input_size, (shape[2], shape[3]), size=(free[0][0], free[1][0]),
                          stride=(free[0][1], free[1][1]), rows=spans[0], cols=spans[1])


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else ()


def _walk(gm: fx.GraphModule, target: fx.Node, start, back, merge):
    """Carry a value from `target` back to the model input: `back(node, value)` gives [(input node,
    value)], and a node reached from several consumers gets the `merge` of their values. Returns
    the value the input gets."""
    need = {target: start}
    for node in list(gm.graph.nodes)[::-1]:  # topological order reversed: all consumers come first
        if node in need:
            if node.op == "placeholder":
                return need[node]
            for arg, value in back(node, need.pop(node)):
                need[arg] = merge(need[arg], value) if arg in need else value
    raise ModelError(f"{describe(gm, target)} does not depend on the model input")


def _geometry(gm: fx.GraphModule, node: fx.Node) -> tuple[str, tuple[Window, Window] | None]:
    """How a node moves positions: ("window", (y, x) windows), ("adaptive", None) or ("pointwise", None)."""
    windows = _window(gm, node)
    if windows is not None:
        return "window", windows
    if _is_adaptive(gm, node):
        return "adaptive", None
    if is_elementwise(gm, node) or node.target in _ARITHMETIC or (node.target is torch.cat and _cat_dim(node) == 1):
        return "pointwise", None
    raise ModelError(
        f"receptive field: cannot map {describe(gm, node)} back to its input; supported are "
        "convolutions, pooling, zero padding, adaptive pooling, elementwise ops, add/mul and channel concat")


def _back_taps(gm: fx.GraphModule, node: fx.Node, axis: int, reads: np.ndarray):
    """Which input positions along `axis` the output positions marked in `reads` (units, n_out) read.
    Sets, not spans: a dilated or strided window has holes that a later crop may fall in."""
    kind, windows = _geometry(gm, node)
    inputs = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
    n_out = _shape(node)[axis]
    if kind == "pointwise":
        for arg in inputs:
            if len(_shape(arg)) != 4:
                raise ModelError(f"receptive field: {describe(gm, node)} mixes in a tensor of shape {_shape(arg)}")
        # an input of size 1 along the axis is broadcast: every output position reads its position 0
        return [(arg, reads.any(1, keepdims=True) if _shape(arg)[axis] < n_out else reads) for arg in inputs]
    n_in = _shape(inputs[0])[axis]
    read = np.zeros((len(reads), n_in), dtype=bool)  # (units, n_in)
    if kind == "window":  # tap t of output i reads input i * stride - pad + t * dilation
        win = windows[axis - 2]
        for t in range(win.kernel):
            at = np.arange(n_out) * win.stride - win.pad + t * win.dilation  # increasing: no index twice
            inside = (at >= 0) & (at < n_in)
            read[:, at[inside]] |= reads[:, inside]
    else:  # adaptive bin i covers [floor(i n_in / n_out), ceil((i + 1) n_in / n_out))
        for i in range(n_out):
            read[:, i * n_in // n_out: -(-(i + 1) * n_in // n_out)] |= reads[:, i:i + 1]
    return [(inputs[0], read)]


def _back_extent(gm: fx.GraphModule, node: fx.Node, axis: int, span: np.ndarray):
    """Inclusive input spans (units, 2) along `axis` that output spans `span` read, without clipping
    to the image (what a unit would see in an endless image), for `ReceptiveField.size`/`stride`."""
    kind, windows = _geometry(gm, node)
    inputs = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
    if kind == "pointwise":
        return [(arg, span * 0 if _shape(arg)[axis] < _shape(node)[axis] else span) for arg in inputs]
    if kind == "window":
        k, s, p, d = (getattr(windows[axis - 2], f) for f in ("kernel", "stride", "pad", "dilation"))
        return [(inputs[0], np.stack([span[:, 0] * s - p, span[:, 1] * s - p + (k - 1) * d], 1))]
    n_in, n_out = _shape(inputs[0])[axis], _shape(node)[axis]
    return [(inputs[0], np.stack([span[:, 0] * n_in // n_out, -(-(span[:, 1] + 1) * n_in // n_out) - 1], 1))]
