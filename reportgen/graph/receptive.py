"""The input-space receptive field of a layer's units, along the fx graph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp

from reportgen.errors import ModelError

from .ops import Window, cat_dim, node_op, node_windows, tensor_inputs
from .trace import describe, layer_node, trace

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
    windows = node_windows(gm, node)
    if windows is not None:
        return "window", windows
    op = node_op(gm, node)
    if op is not None and op.kind == "adaptive_pool":
        return "adaptive", None
    if op is not None and (op.elementwise or op.kind == "arithmetic" or (op.kind == "concat" and cat_dim(node) == 1)):
        return "pointwise", None
    raise ModelError(
        f"receptive field: cannot map {describe(gm, node)} back to its input; supported are "
        "convolutions, pooling, zero padding, adaptive pooling, elementwise ops, add/mul and channel concat")


def _back_taps(gm: fx.GraphModule, node: fx.Node, axis: int, reads: np.ndarray):
    """Which input positions along `axis` the output positions marked in `reads` (units, n_out) read.
    Sets, not spans: a dilated or strided window has holes that a later crop may fall in."""
    kind, windows = _geometry(gm, node)
    inputs = tensor_inputs(node)
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
    inputs = tensor_inputs(node)
    if kind == "pointwise":
        return [(arg, span * 0 if _shape(arg)[axis] < _shape(node)[axis] else span) for arg in inputs]
    if kind == "window":
        k, s, p, d = (getattr(windows[axis - 2], f) for f in ("kernel", "stride", "pad", "dilation"))
        return [(inputs[0], np.stack([span[:, 0] * s - p, span[:, 1] * s - p + (k - 1) * d], 1))]
    n_in, n_out = _shape(inputs[0])[axis], _shape(node)[axis]
    return [(inputs[0], np.stack([span[:, 0] * n_in // n_out, -(-(span[:, 1] + 1) * n_in // n_out) - 1], 1))]
