"""The input-space receptive field of a layer's units: analytic along the fx graph where every op's geometry
is known, else the exact support of the input gradient of a linearized copy of the model.

Analytic: each axis (y, x) is walked back from the layer to the input with the set of positions each unit
reads. A forward pass over the graph first finds, for every node, which tensor dim holds the image's y and x
(permutes and reshapes move them; reductions and `Linear` over them remove them) and, per input, a boolean
matrix (positions out, positions in) saying which input positions each output position reads: from the
window arithmetic of convs and pools, the widths and mode of paddings, adaptive bins, interpolation weights
(the op run on one-hot probes), and for pure data movement (slices, chunks, reshapes, concatenation) the op
run on a tensor holding each element's coordinate. Per axis is exact for the boxes: each op here has an
output position read a set of rows times a set of columns, so a unit's dependency set is a union of such
products (one per path and channel), whose bounding box is the hull of the rows times the hull of the columns.
Where a unit reads only some channels of a tensor whose channels see different parts of the image (a
channel slice after a concatenation), per axis would over-count: that, and any op without known geometry,
goes to the fallback (`gradient_fields`).
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp
from torch.overrides import TorchFunctionMode

from reportgen.errors import ModelError

from .ops import (ELEMENTWISE_KINDS, FUNCTIONS, METHODS, Op, Window, bind_arguments, call_arguments, module_op,
                  node_op, node_windows)
from .trace import describe, layer_node, trace


@dataclass(frozen=True, eq=False)  # eq would compare the arrays
class ReceptiveField:
    """The input pixels each unit of a layer depends on.

    `size` and `stride` are the unclipped extent (h, w) and the step between neighbouring units in input
    pixels (continued at the mean step through ops without affine arithmetic; for `method` "gradient", the
    largest clipped extent and input size / output size); `box(y, x)` is the exact bounding box of the input
    pixels that unit (y, x) of the layer's output depends on (all its channels), clipped to the image; the
    union over all paths of a multi-path graph. `method`: "analytic" (op arithmetic), "gradient" (support of
    the input gradient of a linearized copy; `note` says which op needed it) or "whole image" (a model
    torch.fx cannot trace: every unit is given the whole image).
    """

    layer: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    size: tuple[int, int]
    stride: tuple[int, int]
    rows: np.ndarray  # (H_out, 2) half-open [y0, y1) per output row (zeros where `unit_box` answers)
    cols: np.ndarray  # (W_out, 2) half-open [x0, x1) per output column
    method: str = "analytic"
    note: str = ""
    boxes: np.ndarray | None = None  # (H_out, W_out, 4) when a unit's box is not its row's × its column's
    unit_box: Callable[[int, int], tuple[int, int, int, int]] | None = None  # or computed when asked for

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), half-open, in input pixels, for the unit at output location (y, x);
        (0, 0, 0, 0) for a unit whose window lies wholly on padding."""
        if not (0 <= y < self.output_size[0] and 0 <= x < self.output_size[1]):
            raise IndexError(f"unit ({y}, {x}) is outside {self.layer!r}'s output of size {self.output_size}")
        if self.boxes is not None:
            return tuple(int(v) for v in self.boxes[y, x])
        if self.unit_box is not None:
            return self.unit_box(y, x)
        (y0, y1), (x0, x1) = self.rows[y], self.cols[x]
        return (int(x0), int(y0), int(x1), int(y1)) if y0 < y1 and x0 < x1 else (0, 0, 0, 0)


def whole_image(layer: str, input_size: tuple[int, int], output_size: tuple[int, int]) -> ReceptiveField:
    """Every unit sees the whole image: the answer for a model whose graph cannot be traced."""
    (h, w), (oh, ow) = input_size, output_size
    return ReceptiveField(layer, (h, w), (oh, ow), (h, w), (h, w), np.tile([0, h], (oh, 1)), np.tile([0, w], (ow, 1)),
                          method="whole image")


def receptive_field(model: nn.Module, layer: str, input_size: tuple[int, int],
                    in_channels: int | None = None) -> ReceptiveField:
    """Receptive field of `layer`'s units for inputs of `input_size` (H, W); see `receptive_fields`."""
    return receptive_fields(model, [layer], input_size, in_channels)[layer]


def receptive_fields(model: nn.Module, layers: list[str], input_size: tuple[int, int],
                     in_channels: int | None = None, method: str = "auto") -> dict[str, ReceptiveField]:
    """Receptive fields of several layers' units for inputs of `input_size` (H, W), by layer path.

    Analytic (see the module docstring) where every op between the layer and the input has known geometry;
    the others by `gradient_fields`, exact too, at the cost of forward and backward passes (`method`
    "gradient": every layer by it, to compare). Units of a layer without spatial layout (after flatten /
    Linear) see the whole image. Node sizes come from propagating a (1, C, H, W) input, C being
    `in_channels` or what the first conv called takes. Raises ModelError when the model cannot be traced,
    a layer is not in its forward or does not depend on the input, or the fallback fails.
    """
    gm = trace(model)
    targets = {layer: layer_node(gm, layer) for layer in layers}
    if in_channels is None:
        convs = (gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module")
        in_channels = next((m.in_channels for m in convs if isinstance(m, nn.Conv2d)), None)
        if in_channels is None:
            raise ModelError(f"{type(model).__name__} calls no Conv2d to tell the input's channel count")
    input_size = tuple(input_size)
    propagate_shapes(gm, model, (1, in_channels, *input_size))
    geometry = Geometry(gm)
    fields, unmapped = {}, {}
    for layer, node in targets.items():
        try:
            if method == "gradient":
                raise Unmapped("asked for")
            fields[layer] = _analytic_field(geometry, layer, node, input_size)
        except Unmapped as reason:
            unmapped[layer] = (node, str(reason))
    if unmapped:
        try:
            fields |= gradient_fields(gm, unmapped, input_size, in_channels)
        except Exception as error:  # the model's own ops failing on the linearized run
            raise ModelError(f"receptive fields of {', '.join(map(repr, unmapped))}: the input-gradient fallback "
                             f"failed ({type(error).__name__}: {error})") from error
    return {layer: fields[layer] for layer in layers}


class Unmapped(Exception):
    """An op on the way from a layer to the input whose geometry is not known: the fallback's turn."""


class _Recorder(ShapeProp):
    """ShapeProp that also keeps the values of non-tensor nodes (`x.size(3)`, `x.shape[-2:]`) in meta["value"]:
    arguments computed in the forward."""

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if not any(isinstance(v, torch.Tensor) for v in _flat(result)):
            n.meta["value"] = result
        return result


def _flat(value) -> list:
    return [w for v in value for w in _flat(v)] if isinstance(value, (tuple, list)) else [value]


def propagate_shapes(gm: fx.GraphModule, model: nn.Module, shape: tuple[int, ...]) -> None:
    """Store every node's output shape in its meta. Fake tensors give shapes without the arithmetic
    (8x faster on VGG at 224 px); a real zero image is the fallback for ops fake tensors lack."""
    param = next(model.parameters(), torch.zeros(()))
    x = torch.zeros(shape, dtype=param.dtype, device=param.device)
    try:
        _Recorder(gm, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(x)
    except Exception:  # any failure of the fake run: pay for the real one
        try:
            with torch.no_grad():
                _Recorder(gm).propagate(x)
        except Exception as error:
            raise ModelError(f"{type(gm).__name__} does not run on a {tuple(shape)} input "
                             f"({type(error).__name__}: {str(error).splitlines()[0]})") from error


def node_shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else ()


def _shapes(node: fx.Node) -> list[tuple[int, ...]] | None:
    """The shapes of a node returning a tuple of tensors (`chunk`), else None."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, (tuple, list)) and meta and all(hasattr(m, "shape") for m in meta):
        return [tuple(m.shape) for m in meta]
    return None


@dataclass
class _Map:
    """How one input's positions along an axis feed a node's: `matrix[i, j]`: output position i reads input
    position j (n = 1 along an axis a tensor does not have); `affine` (stride, lo, hi): output i reads
    [i * stride + lo, i * stride + hi] in an endless image, where that arithmetic is known; `channels`: which
    of the input's elements off the image axes are read at all (None: all)."""

    source: fx.Node
    matrix: np.ndarray
    affine: tuple[int, int, int] | None = None
    channels: np.ndarray | None = None


_TUPLE = "tuple"  # a node returning a tuple of tensors (chunk, split): its getitems are probed through it


class Geometry:
    """For every node computed from the model input: per axis (y, x) the dim that holds it (None: the tensor
    does not vary along it) and the `_Map`s from its inputs; or why its geometry is unknown.
    `uniform[node]`: every channel of it reads the same input positions (false after concatenation, until a
    conv or Linear mixes the channels again)."""

    def __init__(self, gm: fx.GraphModule):
        self.gm, self.axes, self.uniform = gm, {}, {}
        inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.input = inputs[0]
        for node in gm.graph.nodes:
            self.axes[node] = self._node(node)

    def _node(self, node: fx.Node):
        if node is self.input:
            self.uniform[node] = True
            return [(2, []), (3, [])] if len(node_shape(node)) == 4 else "the model input is not (B, C, H, W)"
        if node.op in ("placeholder", "get_attr", "output") or "value" in node.meta:
            return None  # does not depend on the input's values
        data = [arg for arg in node.all_input_nodes if self.axes.get(arg) is not None]
        if not data:
            return None
        broken = next((self.axes[arg] for arg in data if isinstance(self.axes[arg], str) and self.axes[arg] != _TUPLE),
                      None)
        if broken is not None:
            return broken
        if _shapes(node) is not None:  # a tuple: pure data movement is probed at its getitems
            op = node_op(self.gm, node)
            return _TUPLE if op is not None and op.kind == "move" else f"cannot map {describe(self.gm, node)} back"
        try:
            axes = [self._axis(node, axis) for axis in (0, 1)]
        except Unmapped as reason:
            return f"cannot map {describe(self.gm, node)} back to its input ({reason})"
        except Exception as error:  # arguments this code did not foresee: the fallback still answers exactly
            return f"cannot map {describe(self.gm, node)} back to its input ({type(error).__name__}: {error})"
        sources = {m.source for _, maps in axes for m in maps}
        op = node_op(self.gm, node)
        mixes = op.kind == "linear" or (op.kind == "conv" and _groups(self.gm, node) == 1)
        side_by_side = op.kind in ("concat", "move") and len(sources) > 1  # channels from different tensors
        self.uniform[node] = mixes or (not side_by_side and all(self.uniform[s] for s in sources))
        return axes

    def maps(self, node: fx.Node, axis: int) -> tuple[int | None, list[_Map]]:
        """(the dim holding `axis` in `node`'s output, the maps from its inputs); Unmapped if unknown."""
        entry = self.axes.get(node)
        if entry == _TUPLE:
            raise Unmapped(f"{describe(self.gm, node)} returns a tuple")
        if isinstance(entry, str):
            raise Unmapped(entry)
        if entry is None:
            raise Unmapped(f"{describe(self.gm, node)} does not depend on the model input")
        return entry[axis]

    def value(self, node: fx.Node):
        """A node's value as an argument: weights as they are, sizes as computed, tensors as meta tensors
        (their shape is what arguments read)."""
        if node.op == "get_attr":
            return _attr(self.gm, node.target)
        if "value" in node.meta:
            return node.meta["value"]
        shapes = _shapes(node)
        if shapes is not None:
            return tuple(torch.empty(s, device="meta") for s in shapes)
        return torch.empty(node_shape(node), device="meta")

    def _axis(self, node: fx.Node, axis: int) -> tuple[int | None, list[_Map]]:
        op = node_op(self.gm, node)
        if op is None:
            raise Unmapped("an op without known geometry")
        if op.kind == "concat":
            return self._concat(node, axis, call_arguments(op, node))
        if op.kind == "move":
            return self._probe(node, axis)
        if op.kind == "arithmetic":
            return self._broadcast(node, axis)
        first = node.args[0] if node.args else next(iter(node.kwargs.values()))
        if not isinstance(first, fx.Node) or self.axes.get(first) is None:
            raise Unmapped("its first argument is not computed from the input")
        if any(arg is not first and self.axes.get(arg) is not None for arg in node.all_input_nodes):
            raise Unmapped("its weights are computed from the input")  # a dynamic conv, attention
        dim, _ = self.maps(first, axis)
        n_in, ndim = (node_shape(first)[dim] if dim is not None else 1), len(node_shape(first))
        same = [_Map(first, np.eye(n_in, dtype=bool), (1, 0, 0))]
        everything = [_Map(first, np.ones((n_in, n_in), dtype=bool))]  # for ops that keep the axis' size
        if dim is None or op.elementwise or op.kind == "channel_mix":
            return dim, same
        kw = (self.gm.get_submodule(node.target) if node.op == "call_module"
              else call_arguments(op, node, self.value))
        if op.kind == "reduce":
            dims, keep = kw.get("dim"), kw.get("keepdim", False)
            dims = range(ndim) if dims is None or dims == () else [dims] if isinstance(dims, int) else dims
            dims = {d % ndim for d in dims}
            if dim in dims:
                return (dim if keep else None), [_Map(first, np.ones((1, n_in), dtype=bool))]
            return (dim if keep else dim - sum(d < dim for d in dims)), same
        n_out = node_shape(node)[dim]
        if op.pads is not None:
            return dim, [_pad_map(first, op.pads(kw), dim, ndim, n_in, n_out)]
        if op.kind in ("conv", "pool", "adaptive_pool", "resample"):
            if dim != ndim - 2 + axis:
                raise Unmapped(f"the image's {'yx'[axis]} axis is not its dim {ndim - 2 + axis}")
            if op.kind == "adaptive_pool":
                return dim, [_Map(first, _bins(n_out, n_in))]
            if op.kind == "resample":
                return dim, [_Map(first, _resample_matrix(kw, axis, n_in, n_out))]
            win = node_windows(self.gm, node, self.value)[axis]
            return dim, [_Map(first, _window_matrix(win, n_in, n_out),
                              (win.stride, -win.pad, -win.pad + (win.kernel - 1) * win.dilation))]
        if op.kind == "linear":
            return (None, [_Map(first, np.ones((1, n_in), dtype=bool))]) if dim == ndim - 1 else (dim, same)
        if op.kind == "layer_norm":
            shape = getattr(kw, "normalized_shape", None) if isinstance(kw, nn.Module) else kw["normalized_shape"]
            k = 1 if isinstance(shape, int) else len(shape)
            return dim, everything if dim >= ndim - k else same
        if op.kind == "spatial_norm":
            return dim, everything if dim >= 2 else same
        if op.kind == "softmax":
            along = kw.dim if isinstance(kw, nn.Module) else kw.get("dim")
            if along is None:
                raise Unmapped("softmax without dim")
            return dim, everything if along % ndim == dim else same
        raise Unmapped(f"no geometry for an op of kind {op.kind!r}")

    def _broadcast(self, node: fx.Node, axis: int) -> tuple[int | None, list[_Map]]:
        """Arithmetic: inputs broadcast against each other, dims aligned from the right."""
        out_shape = node_shape(node)
        data = [arg for arg in node.all_input_nodes if self.axes.get(arg) is not None]
        dims = {}
        for arg in data:
            dim, _ = self.maps(arg, axis)
            if dim is not None:
                dims[arg] = dim + len(out_shape) - len(node_shape(arg))
        if len(set(dims.values())) > 1:
            raise Unmapped(f"it adds the image's {'yx'[axis]} axis to another axis")
        out = next(iter(dims.values()), None)
        n_out = out_shape[out] if out is not None else 1
        maps = []
        for arg in data:
            n_in = node_shape(arg)[self.maps(arg, axis)[0]] if arg in dims else 1
            if n_in == n_out:
                maps.append(_Map(arg, np.eye(n_in, dtype=bool), (1, 0, 0)))
            else:  # broadcast: every output position reads its one position
                maps.append(_Map(arg, np.ones((n_out, 1), dtype=bool), (0, 0, 0)))
        return out, maps

    def _concat(self, node: fx.Node, axis: int, kw: dict) -> tuple[int | None, list[_Map]]:
        """Concatenation: inputs side by side along `dim`; along the image axis, each at its offset."""
        tensors, ndim = list(kw["tensors"]), len(node_shape(node))
        along = kw.get("dim", 0) % ndim
        if any(not isinstance(t, fx.Node) or self.axes.get(t) is None for t in tensors):
            return self._probe(node, axis)  # constants among the inputs
        dims = {self.maps(t, axis)[0] for t in tensors}
        if len(dims) > 1:
            return self._probe(node, axis)  # unlike layouts
        out = dims.pop()
        maps, offset = [], 0
        for t in tensors:
            n_in = node_shape(t)[out] if out is not None else 1
            if out == along:
                matrix = np.zeros((node_shape(node)[out], n_in), dtype=bool)
                matrix[offset + np.arange(n_in), np.arange(n_in)] = True
                maps.append(_Map(t, matrix, (1, -offset, -offset)))
            else:
                maps.append(_Map(t, np.eye(n_in, dtype=bool), (1, 0, 0)))
            offset += node_shape(t)[along]
        return out, maps

    def _probe(self, node: fx.Node, axis: int) -> tuple[int | None, list[_Map]]:
        """Pure data movement, run on tensors that hold each element's coordinate along `axis` (1-based; 0
        where a value does not come from the probed input): where the coordinates land says which output
        dim holds the axis and which input position each output position reads."""
        sources = self._sources(node)
        results = {}
        for source in sources:
            dim, _ = self.maps(source, axis)
            shape = node_shape(source)
            coords = torch.ones(shape, dtype=torch.float64)
            if dim is not None:
                coords = coords * torch.arange(1, shape[dim] + 1, dtype=torch.float64).view(
                    [-1 if d == dim else 1 for d in range(len(shape))])
            results[source] = self._run(node, {source: coords})
        dims = {_coordinate_dim(out) for source, out in results.items() if self.maps(source, axis)[0] is not None}
        dims.discard(None)
        if len(dims) > 1:
            raise Unmapped(f"it spreads the image's {'yx'[axis]} axis over several dims")
        out = dims.pop() if dims else None
        maps = []
        for source, result in results.items():
            n_in = node_shape(source)[self.maps(source, axis)[0]] if self.maps(source, axis)[0] is not None else 1
            if out is None:  # the coordinates that came through (one, unless it is an input without the axis)
                matrix = np.zeros((1, n_in), dtype=bool)
                matrix[0, result[result != 0].unique().long().numpy() - 1] = True
            else:  # one coordinate per index along `out` (checked by _coordinate_dim), 0 where none
                top = _top(result, out).flatten().long().numpy()
                matrix = np.zeros((len(top), n_in), dtype=bool)
                matrix[np.nonzero(top)[0], top[top > 0] - 1] = True
            maps.append(_Map(source, matrix, channels=self._channels_read(node, source)))
        return out, maps

    def _sources(self, node: fx.Node) -> list[fx.Node]:
        """The tensors computed from the input that `node` moves data from, looking through tuples."""
        found = []
        for arg in node.all_input_nodes:
            if self.axes.get(arg) == _TUPLE:
                found += [s for s in self._sources(arg) if s not in found]
            elif self.axes.get(arg) is not None and arg not in found:
                found.append(arg)
        return found

    def _run(self, node: fx.Node, given: dict[fx.Node, torch.Tensor]):
        """`node`'s op on `given` tensors in place of its inputs, zeros for its other inputs computed from
        the model input, the values of the rest."""
        def value(arg: fx.Node):
            if arg in given:
                return given[arg]
            if self.axes.get(arg) == _TUPLE:
                return self._run(arg, given)
            if self.axes.get(arg) is not None:
                return torch.zeros(node_shape(arg), dtype=torch.float64)
            if arg.op == "get_attr" or "value" in arg.meta:
                return self.value(arg)
            raise Unmapped(f"it reads {describe(self.gm, arg)}, a tensor known only when the model runs")
        args, kwargs = fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value)
        with torch.no_grad():
            if node.op == "call_module":
                return self.gm.get_submodule(node.target)(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            return node.target(*args, **kwargs)

    def _channels_read(self, node: fx.Node, source: fx.Node) -> np.ndarray | None:
        """Which of `source`'s elements off the image axes `node` reads (flattened), None when all are read
        or when its channels all read the same positions anyway."""
        if self.uniform.get(source, True):
            return None
        shape = node_shape(source)
        ids = torch.arange(1, int(np.prod(shape)) + 1, dtype=torch.float64).view(shape)
        out = self._run(node, {source: ids})
        read = torch.zeros(int(np.prod(shape)), dtype=torch.bool)
        read[out[out != 0].long() - 1] = True
        image_dims = [d for d in (self.maps(source, 0)[0], self.maps(source, 1)[0]) if d is not None]
        read = read.view(shape).movedim(image_dims, list(range(len(image_dims))))
        channels = read.reshape(int(np.prod([shape[d] for d in image_dims], dtype=int)), -1).any(0).numpy()
        return None if channels.all() else channels


def _coordinate_dim(out: torch.Tensor) -> int | None:
    """The one dim along which the probed coordinates vary, each index along it holding one coordinate;
    None when a single coordinate (or none) came through. Unmapped when the coordinates mix with other dims."""
    values = out[out != 0]
    if len(values) == 0 or bool((values == values[0]).all()):
        return None
    found = [d for d in range(out.dim()) if out.shape[d] > 1 and bool(((out == 0) | (out == _top(out, d))).all())]
    if len(found) != 1:
        raise Unmapped("it mixes the image's positions with another dim")
    return found[0]


def _top(out: torch.Tensor, dim: int) -> torch.Tensor:
    """The largest value at each index along `dim`, kept broadcastable."""
    others = [d for d in range(out.dim()) if d != dim]
    return out.amax(dim=others, keepdim=True) if others else out


def _attr(gm: fx.GraphModule, target: str):
    module, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(module) if module else gm, name)


def _groups(gm: fx.GraphModule, node: fx.Node) -> int:
    if node.op == "call_module":
        return gm.get_submodule(node.target).groups
    groups = node.kwargs.get("groups", node.args[6] if len(node.args) > 6 else 1)
    return groups if isinstance(groups, int) else 0


def _window_matrix(win: Window, n_in: int, n_out: int) -> np.ndarray:
    """Output i reads input i * stride - pad + t * dilation, t < kernel (those inside the input)."""
    matrix = np.zeros((n_out, n_in), dtype=bool)
    for t in range(win.kernel):
        at = np.arange(n_out) * win.stride - win.pad + t * win.dilation
        inside = (at >= 0) & (at < n_in)
        matrix[np.nonzero(inside)[0], at[inside]] = True
    return matrix


def _bins(n_out: int, n_in: int) -> np.ndarray:
    """Adaptive pooling: bin i covers [floor(i n_in / n_out), ceil((i + 1) n_in / n_out))."""
    matrix = np.zeros((n_out, n_in), dtype=bool)
    for i in range(n_out):
        matrix[i, i * n_in // n_out: -(-(i + 1) * n_in // n_out)] = True
    return matrix


def _pad_map(first: fx.Node, pads: tuple[tuple[int, ...], str], dim: int, ndim: int, n_in: int,
             n_out: int) -> _Map:
    """Padding of `dim` by `pads` (F.pad widths, last dim first; negative widths crop) in mode `mode`."""
    widths, mode = pads
    j = 2 * (ndim - 1 - dim)
    before = widths[j] if j < len(widths) else 0
    at = np.arange(n_out) - before  # where each output position falls in the input
    if mode == "reflect":
        at = np.abs(at)
        at = np.where(at >= n_in, 2 * (n_in - 1) - at, at)
    elif mode == "replicate":
        at = np.clip(at, 0, n_in - 1)
    elif mode == "circular":
        at = at % n_in
    matrix = np.zeros((n_out, n_in), dtype=bool)
    inside = (at >= 0) & (at < n_in)
    matrix[np.nonzero(inside)[0], at[inside]] = True
    return _Map(first, matrix, (1, -before, -before) if mode == "constant" else None)


def _resample_matrix(kw, axis: int, n_in: int, n_out: int) -> np.ndarray:
    """Which input positions each output position of an interpolation reads: the op itself run along one
    axis on one-hot probes (nonzero weights; the other axis of size 1), so every mode is its own arithmetic."""
    if isinstance(kw, nn.Module):  # nn.Upsample and its subclasses call F.interpolate with these
        kw = {name: getattr(kw, name) for name in ("size", "scale_factor", "mode", "align_corners",
                                                   "recompute_scale_factor")}
    size, scale = kw.get("size"), kw.get("scale_factor")
    pick = lambda v: v[axis] if isinstance(v, (tuple, list)) else v  # noqa: E731
    shape = (n_in, n_in, 1) if axis == 0 else (n_in, 1, n_in)
    probe = torch.eye(n_in, dtype=torch.float64).view(1, *shape)
    both = lambda v, one: (v, one) if axis == 0 else (one, v)  # noqa: E731
    out = F.interpolate(probe, size=both(pick(size), 1) if size is not None else None,
                        scale_factor=both(float(pick(scale)), 1.0) if scale is not None else None,
                        mode=kw.get("mode", "nearest"), align_corners=kw.get("align_corners"),
                        recompute_scale_factor=kw.get("recompute_scale_factor"), antialias=kw.get("antialias", False))
    out = out[0, :, :, 0] if axis == 0 else out[0, :, 0, :]  # (n_in, n_out)
    if out.shape[1] != n_out:
        raise Unmapped(f"interpolating {n_in} positions gave {out.shape[1]}, not {n_out}")
    return (out != 0).T.numpy()


def _analytic_field(geometry: Geometry, layer: str, target: fx.Node, input_size) -> ReceptiveField:
    """The field of `target`'s units (y, x) = its output's dims 2 and 3, all of dim 1 ("channels") summed.
    An image axis in dim 1 (a channels-last layer, read as (C, H, W) = (H, W, C)) is read whole; one in
    dim 3 (or y in dim 3, x in dim 2) makes the boxes per unit."""
    shape = node_shape(target)
    if len(shape) != 4:  # no spatial layout left: every unit sees the whole image
        whole = tuple(np.array([[0, n]]) for n in input_size)
        return ReceptiveField(layer, input_size, (1, 1), input_size, input_size, *whole)
    spans, free, index = [], [], []
    for axis in (0, 1):
        dim, _ = geometry.maps(target, axis)
        if dim == 0:
            raise Unmapped(f"the image's {'yx'[axis]} axis is in its batch dim")
        n = shape[dim] if dim is not None else 1
        units = np.eye(n, dtype=bool) if dim in (2, 3) else np.ones((1, n), dtype=bool)  # else: summed
        reads = _walk(geometry, target, axis, units, _read_back,
                      np.logical_or)  # (units, input size): which input rows (columns) each unit reads
        first, last = reads.argmax(1), reads.shape[1] - 1 - reads[:, ::-1].argmax(1)
        spans.append(np.where(reads.any(1)[:, None], np.stack([first, last + 1], 1), 0))  # [0, 0) if none
        index.append(dim - 2 if dim in (2, 3) else None)
        if dim in (2, 3):
            ends = _walk(geometry, target, axis, np.array([[0, 0], [1, 1]]), _extent_back,
                         lambda u, v: np.stack([np.minimum(u[:, 0], v[:, 0]), np.maximum(u[:, 1], v[:, 1])], 1))
            free.append((int(ends[0, 1] - ends[0, 0] + 1), int(ends[1, 0] - ends[0, 0])))  # units 0, 1 unclipped
        else:
            free.append((int(spans[-1][0, 1] - spans[-1][0, 0]), 0))
    size, stride, out = (free[0][0], free[1][0]), (free[0][1], free[1][1]), (shape[2], shape[3])
    if index[0] != 1 and index[1] != 0:  # rows index y, columns x (or either is read whole)
        rows, cols = (np.repeat(s, o, 0) if i is None else s for s, i, o in zip(spans, index, out))
        return ReceptiveField(layer, input_size, out, size, stride, rows, cols)
    boxes = np.zeros((*out, 4), int)
    for i, j in np.ndindex(*out):
        (y0, y1), (x0, x1) = (spans[k][0 if index[k] is None else (i, j)[index[k]]] for k in (0, 1))
        boxes[i, j] = (x0, y0, x1, y1) if y0 < y1 and x0 < x1 else 0
    return ReceptiveField(layer, input_size, out, size, stride, *_hulls(boxes), boxes=boxes)


def _hulls(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's [y0, y1) and each column's [x0, x1): the hull of its units' boxes (H', W', 4)."""
    return (np.stack([boxes[:, :, 1].min(1), boxes[:, :, 3].max(1)], 1),
            np.stack([boxes[:, :, 0].min(0), boxes[:, :, 2].max(0)], 1))


def _walk(geometry: Geometry, target: fx.Node, axis: int, start, back, merge):
    """Carry a value from `target` back to the model input along `axis`: `back(map, value)` gives the
    value for the map's source (None: nothing), and a node reached from several consumers gets the `merge`
    of their values. Returns the value the input gets. Raises Unmapped at a node of unknown geometry, or
    where a unit reads only some channels of a tensor whose channels read different positions."""
    need, channels = {target: start}, {}
    for node in list(geometry.gm.graph.nodes)[::-1]:  # topological order reversed: all consumers come first
        if node not in need:
            continue
        if node is geometry.input:
            return need[node]
        read = channels.pop(node, None)
        if read is not None and not read.all():
            raise Unmapped(f"units read only some channels of {describe(geometry.gm, node)}, whose channels "
                            "read different parts of the image")
        value = need.pop(node)
        for m in geometry.maps(node, axis)[1]:
            v = back(m, value)
            if v is None:
                continue
            need[m.source] = merge(need[m.source], v) if m.source in need else v
            if not geometry.uniform.get(m.source, True):
                full = np.ones(1, dtype=bool)
                seen = channels.get(m.source, np.zeros(1, dtype=bool))
                channels[m.source] = (seen | m.channels) if m.channels is not None else full
    raise ModelError(f"{describe(geometry.gm, target)} does not depend on the model input")


def _read_back(m: _Map, reads: np.ndarray) -> np.ndarray:
    """Input positions read by units reading output positions `reads` (units, n_out)."""
    return (reads.astype(np.float32) @ m.matrix.astype(np.float32)) > 0


def _extent_back(m: _Map, span: np.ndarray) -> np.ndarray | None:
    """Inclusive input spans (units, 2) read by output spans `span`, without clipping to the image (what a
    unit would see in an endless image): the map's arithmetic where known, else its matrix, continued
    beyond its ends at the mean step."""
    if m.affine is not None:
        s, lo, hi = m.affine
        return np.stack([span[:, 0] * s + lo, span[:, 1] * s + hi], 1)
    n_out, n_in = m.matrix.shape
    hit = m.matrix.any(1)
    if not hit.any():
        return None
    rows = np.nonzero(hit)[0]
    firsts, lasts = m.matrix[rows].argmax(1), n_in - 1 - m.matrix[rows, ::-1].argmax(1)
    step = n_in / n_out if n_out > 1 else 0

    def at(i, ends, rounding):
        k = np.clip(np.searchsorted(rows, i), 0, len(rows) - 1)
        return ends[k] + rounding((i - rows[k]) * step).astype(int)

    return np.stack([at(span[:, 0], firsts, np.floor), at(span[:, 1], lasts, np.ceil)], 1)


# --- the fallback: the support of the input gradient of a linearized copy ---------------------------------

def gradient_fields(gm: fx.GraphModule, layers: dict[str, tuple[fx.Node, str]], input_size: tuple[int, int],
                    in_channels: int, budget: int = 2 ** 30, eager: int = 1024, longest: int = 256
                    ) -> dict[str, ReceptiveField]:
    """Receptive fields of `layers` {path: (its node in `gm`, why the analytic walk could not map it)}: the
    support of the gradient of each unit (the sum of its channels) with respect to the input, run on
    `_Linearized(gm)`, which makes that support the unit's dependency set (see there). `gm` carries shapes.

    Cost: a unit's box is its row's y-span × its column's x-span whenever the dependency is separable,
    which every op with per-axis geometry keeps (in a layer laid out otherwise, channels-last say, each span
    may follow the other index); so the units (i, i) along the diagonal give every row's and column's spans
    (max(H', W') units) and eight more units (corners, centre, random) check which of these layouts
    reproduces their boxes; where none does, or a diagonal unit reads nothing, every unit is computed: now
    when the layer has at most `eager` units, else each unit when its box is first asked for (then kept), as
    for a layer whose longer side exceeds `longest` (no image's layout: tokens by channels, say).
    Units are batched: one forward and one backward per layer for as many as fit in `budget` bytes. The run
    is in float32 (ten times as fast as float64 on a CPU), where values can only grow past float32's range,
    not shrink out of it (see `_Linearized`); a layer whose run overflows is run again in float64, then
    (products of activations, as in attention, square their magnitudes) in float64 with every node's output
    divided by its largest value, a positive constant to autograd, which leaves the gradient's support as it is.
    """
    requests, plans, fields = {}, {}, {}
    for layer, (node, why) in layers.items():
        shape = node_shape(node)
        if len(shape) != 4:  # no spatial layout: every unit sees the whole image, as in the analytic case
            whole = tuple(np.array([[0, n]]) for n in input_size)
            fields[layer] = ReceptiveField(layer, input_size, (1, 1), input_size, input_size, *whole)
            continue
        h, w = shape[2:]
        rng = np.random.default_rng(0)
        diag = [(min(i, h - 1), min(i, w - 1)) for i in range(max(h, w) if max(h, w) <= longest else 0)]
        checks = [(0, w - 1), (h - 1, 0), (h // 2, w // 2)] + [(int(rng.integers(h)), int(rng.integers(w)))
                                                               for _ in range(5)]
        requests[node], plans[layer] = diag + checks, (node, why, diag, checks)
    image = (in_channels, *input_size)
    found = _unit_boxes(gm, requests, image, budget)
    explained = {node: _explain(found[node], diag, checks, *node_shape(node)[2:]) if diag else None
                 for node, _, diag, checks in plans.values()}
    every = {node: list(np.ndindex(*node_shape(node)[2:])) for node, boxes in explained.items()
             if boxes is None and np.prod(node_shape(node)[2:]) <= eager}
    if every:  # each unit on its own
        explained |= {node: boxes.reshape(*node_shape(node)[2:], 4)
                      for node, boxes in _unit_boxes(gm, every, image, budget).items()}
    for layer, (node, why, diag, checks) in plans.items():
        (h, w), boxes = node_shape(node)[2:], explained[node]
        stride = tuple(max(1, round(n / m)) for n, m in zip(input_size, (h, w)))  # clipped spans do not show it
        if boxes is None:  # too many units to do now: each when asked for, then kept
            ask = functools.partial(_one_unit_box, gm, node, image, budget)
            seen = {unit: tuple(int(v) for v in box) for unit, box in zip(diag + checks, found[node])}
            size = tuple(int(max(box[2 + axis] - box[axis] for box in seen.values())) for axis in (1, 0))
            fields[layer] = ReceptiveField(layer, input_size, (h, w), size, stride, np.zeros((h, 2), int),
                                           np.zeros((w, 2), int), method="gradient", note=why,
                                           unit_box=_Kept(ask, seen))
            continue
        rows, cols = _hulls(boxes)
        product = np.stack(np.broadcast_arrays(cols[None, :, 0], rows[:, None, 0], cols[None, :, 1],
                                               rows[:, None, 1]), -1)  # rows x columns
        size = (int((rows[:, 1] - rows[:, 0]).max()), int((cols[:, 1] - cols[:, 0]).max()))
        fields[layer] = ReceptiveField(layer, input_size, (h, w), size, stride, rows, cols, method="gradient",
                                       note=why, boxes=None if np.array_equal(product, boxes) else boxes)
    return fields


def _one_unit_box(gm: fx.GraphModule, node: fx.Node, image: tuple[int, int, int], budget: int, y: int,
                  x: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in _unit_boxes(gm, {node: [(y, x)]}, image, budget)[node][0])


class _Kept:
    """A unit's box computed when first asked for, then kept: (y, x) -> box."""

    def __init__(self, compute, known: dict):
        self.compute, self.known = compute, dict(known)

    def __call__(self, y: int, x: int) -> tuple[int, int, int, int]:
        if (y, x) not in self.known:
            self.known[y, x] = self.compute(y, x)
        return self.known[y, x]


def _explain(found: np.ndarray, diag: list[tuple[int, int]], checks: list[tuple[int, int]], h: int, w: int
             ) -> np.ndarray | None:
    """Every unit's box (h, w, 4) from the boxes `found` of the diagonal units then the check units, where
    each image axis' span follows the unit's row index or its column index and the checks agree; else None."""
    diagonal, checked = found[:len(diag)], found[len(diag):]
    if not all(x1 > x0 and y1 > y0 for x0, y0, x1, y1 in diagonal):
        return None
    spans = {}  # (image axis, unit index it follows) -> (n, 2) spans, None if the diagonal contradicts it
    for axis, ends in ((0, [1, 3]), (1, [0, 2])):
        for by, n in ((0, h), (1, w)):
            span = np.full((n, 2), -1)
            for unit, box in zip(diag, diagonal):
                if span[unit[by], 0] >= 0 and tuple(span[unit[by]]) != tuple(box[ends]):
                    span = None
                    break
                span[unit[by]] = box[ends]
            spans[axis, by] = span
    index = np.indices((h, w))  # (2, h, w): row, column of every unit
    for by_y, by_x in ((0, 1), (1, 0), (0, 0), (1, 1)):
        ys, xs = spans[0, by_y], spans[1, by_x]
        if ys is None or xs is None:
            continue
        y, x = ys[index[by_y]], xs[index[by_x]]  # (h, w, 2)
        boxes = np.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)
        if all(tuple(boxes[unit]) == tuple(box) for unit, box in zip(checks, checked)):
            return boxes
    return None


def _unit_boxes(gm: fx.GraphModule, requests: dict[fx.Node, list[tuple[int, int]]], image: tuple[int, int, int],
                budget: int) -> dict[fx.Node, np.ndarray]:
    """{node: (units, 4) boxes (x0, y0, x1, y1), half-open} of the input-gradient support of each requested
    unit (y, x) of each node (all channels summed), in float32, and in float64 where float32 overflowed."""
    boxes, overflowed = _unit_boxes_in(_Linearized(gm, torch.float32), requests, image, budget)
    for runner in (_Linearized(gm, torch.float64), _Linearized(gm, torch.float64, rescale=True)):
        if overflowed:
            again, overflowed = _unit_boxes_in(runner, {n: requests[n] for n in overflowed}, image, budget)
            boxes |= again
    if overflowed:
        raise ModelError(f"the linearized copy of the model overflows float64 at {describe(gm, overflowed[0])}")
    return boxes


def _unit_boxes_in(runner: _Linearized, requests: dict[fx.Node, list[tuple[int, int]]], image: tuple[int, int, int],
                   budget: int) -> tuple[dict[fx.Node, np.ndarray], list[fx.Node]]:
    """The boxes of `_unit_boxes` in the runner's dtype, and the nodes whose gradient did not stay finite.
    Sample i of a batch serves unit i of every node."""
    count = max(len(units) for units in requests.values())
    nodes = list(runner.module.graph.nodes)
    upto = nodes[:max(nodes.index(n) for n in requests) + 1]
    per_sample = 3 * runner.dtype.itemsize * sum(int(np.prod(node_shape(n))) for n in upto)  # values, saved, grads
    chunk = int(max(1, min(count, budget // max(per_sample, 1))))
    out, overflowed = {node: np.zeros((len(units), 4), int) for node, units in requests.items()}, []
    generator = torch.Generator().manual_seed(0)
    for start in range(0, count, chunk):
        wanted = {node: units[start:start + chunk] for node, units in requests.items()
                  if start < len(units) and node not in overflowed}
        if not wanted:
            continue
        x = 0.5 + torch.rand((min(chunk, count - start), *image), generator=generator, dtype=runner.dtype)
        x = x.to(runner.device).requires_grad_()
        outputs = runner.run_to(x, set(wanted))
        for node, units in wanted.items():
            ys, xs = (torch.tensor(v, device=runner.device) for v in zip(*units))
            picked = outputs[node][torch.arange(len(units), device=runner.device), :, ys, xs]  # (units, C)
            if not picked.requires_grad:  # does not depend on the input
                continue
            (grad,) = torch.autograd.grad(picked.sum(), x, retain_graph=True)
            if not (torch.isfinite(picked).all() and torch.isfinite(grad).all()):
                overflowed.append(node)
                continue
            support = (grad[:len(units)] != 0).any(1).cpu().numpy()  # (units, H, W)
            out[node][start:start + len(units)] = [_support_box(s) for s in support]
    return out, overflowed


def _support_box(support: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(support.any(1))[0], np.nonzero(support.any(0))[0]
    return (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) if len(rows) else (0, 0, 0, 0)


class _Reached(Exception):
    """Stops the forward pass once every node asked for has been computed."""


class _Linearized(fx.Interpreter):
    """Runs the traced model with each op replaced by one with the same dependency pattern whose partial
    derivatives are all positive, on positive inputs drawn from [0.5, 1.5), in `dtype`.

    Why the gradient's support is then exactly the set of input pixels a unit depends on: by the chain rule
    the gradient is a sum over paths of products of local derivatives; when every local derivative along
    every dependency is positive, no product is zero and no sum cancels, so a pixel has a nonzero gradient
    iff a path of dependencies joins it to the unit. The replacements (the op table says which op is which):
    - activations, BatchNorm, dropout, identities, negation -> the identity (same dependency, derivative 1);
    - convolutions and Linear -> the same geometry with random weights in [0.5, 1.5) / input channels per
      group (dense, as the analytic path assumes): summed over channels, each spatial tap weighs about 1, so
      values and gradients only grow along a path (by about k*k per conv) except through averaging, which
      loses at most its window's size: a run can overflow, which shows as inf (and is run again in float64),
      but a gradient does not underflow to a silent zero;
    - max pooling (which passes gradient to one pixel of its window) -> sum pooling over the same windows,
      adaptive max -> adaptive average;
    - LayerNorm, GroupNorm, InstanceNorm, softmax, LRN -> x + mean(x over the dims they normalize), amax/amin
      -> mean: every element they read, derivative positive;
    - subtraction -> addition, division by a tensor -> multiplication, scalars -> their absolute values;
      products of positive values have positive partial derivatives;
    - weights read in the forward (`get_attr`) and the parameters and buffers of modules outside the table
      -> random positive values where they are nonzero (a mask's zeros are kept).
    Average pooling, padding, interpolation, concatenation and data movement are linear with nonnegative
    coefficients already and run as they are. An op outside the table (an fx-wrapped function such as
    torchvision's windowed attention, a module without an entry) runs on these positive values with the same
    replacements for the torch functions it calls (`_Replacing`); the rest of what it does is exact when its
    derivatives are nonnegative (matmul, exp, data movement); an op that routes gradient by value (sorting,
    `max` along a dim) or samples data-dependent positions (grid_sample) would give a subset of its
    dependencies.
    """

    def __init__(self, gm: fx.GraphModule, dtype: torch.dtype = torch.float32, rescale: bool = False):
        super().__init__(gm)
        self.dtype, self.rescale = dtype, rescale
        param = next(gm.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.generator = torch.Generator().manual_seed(0)
        self.stand_ins: dict[object, torch.Tensor] = {}
        self.node: fx.Node | None = None
        self.calls = 0  # Linears and convs replaced so far in the node running

    def run_to(self, x: torch.Tensor, targets: set[fx.Node]) -> dict[fx.Node, torch.Tensor]:
        """The outputs of `targets` for input `x`, stopping the forward once they are computed."""
        self.found, self.targets = {}, targets
        dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)  # tensors the forward makes (torch.zeros) match the input
        try:
            self.run(x)
        except _Reached:
            pass
        finally:
            torch.set_default_dtype(dtype)
        return self.found

    def run_node(self, n: fx.Node):
        self.node, self.calls = n, 0
        result = super().run_node(n)
        if self.rescale and isinstance(result, torch.Tensor) and result.is_floating_point() and result.numel():
            result = result / result.detach().amax().clamp(min=1)  # a positive constant: the support stays
        if n in self.targets:
            self.found[n] = result
            if len(self.found) == len(self.targets):
                raise _Reached
        return result

    def _positive(self, key, t):
        """Random positive values where `t` is nonzero (floating tensors; others as they are), kept per key."""
        if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            return t
        if key not in self.stand_ins:
            r = 0.5 + torch.rand(t.shape, generator=self.generator, dtype=self.dtype).to(t.device)
            self.stand_ins[key] = torch.where(t != 0, r, torch.zeros((), dtype=self.dtype, device=t.device))
        return self.stand_ins[key]

    def _dense(self, shape) -> torch.Tensor:
        """Random weights in [0.5, 1.5) / shape[1] of `shape` (out, in per group, ...), one draw per node and
        call (an op outside the table may call several Linears)."""
        self.calls += 1
        key = (self.node.name, self.calls)
        if key not in self.stand_ins:
            w = 0.5 + torch.rand(tuple(shape), generator=self.generator, dtype=self.dtype)
            self.stand_ins[key] = (w / shape[1]).to(self.device)
        return self.stand_ins[key]

    def get_attr(self, target, args, kwargs):
        return self._positive(target, super().get_attr(target, args, kwargs))

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        op = module_op(module)
        kind, x = (op.kind if op else None), (args[0] if args else None)
        if kind in ELEMENTWISE_KINDS:
            return x
        if kind == "conv":
            return module._conv_forward(x, self._dense(module.weight.shape), None)
        if kind == "linear":
            return F.linear(x, self._dense(module.weight.shape))
        if isinstance(module, nn.MaxPool2d):
            return _sum_pool(x, op.windows(module), module(x.to("meta")).shape[-2:])
        if isinstance(module, nn.AdaptiveMaxPool2d):
            return F.adaptive_avg_pool2d(x, module.output_size)
        if kind == "layer_norm":
            return _plus_mean(x, range(-len(module.normalized_shape), 0))
        if kind == "spatial_norm":
            return _plus_group_mean(x, getattr(module, "num_groups", x.shape[1]))
        if kind == "softmax":
            return _plus_mean(x, [module.dim])
        if kind == "channel_mix" and not isinstance(module, nn.ChannelShuffle):
            return _plus_mean(x, [1])
        if op is not None:  # padding, average and adaptive average pooling, interpolation, moves
            return module(*args, **kwargs)
        state = {name: self._positive((target, name), t)
                 for name, t in [*module.named_parameters(), *module.named_buffers()]}
        with _Replacing(self):
            return torch.func.functional_call(module, state, args, kwargs)

    def call_function(self, target, args, kwargs):
        try:
            op = FUNCTIONS.get(target)
        except TypeError:  # an unhashable callable is not in the table
            op = None
        surrogate = self._surrogate(op, target, args, kwargs)
        if surrogate is not _KEEP:
            return surrogate
        with _Replacing(self) if op is None else contextlib.nullcontext():
            return target(*args, **kwargs)

    def call_method(self, target, args, kwargs):
        op = METHODS.get(target)
        surrogate = self._surrogate(op, target, args, kwargs)
        if surrogate is not _KEEP:
            return surrogate
        with _Replacing(self) if op is None else contextlib.nullcontext():
            return getattr(args[0], target)(*args[1:], **kwargs)

    def _surrogate(self, op, target, args, kwargs):
        """The replacement of a function or method call, or _KEEP to run it as it is."""
        kind = op.kind if op else None
        kw = bind_arguments(op, args, kwargs) if op else {}
        name = target if isinstance(target, str) else getattr(target, "__name__", "")
        if kind in ELEMENTWISE_KINDS:  # (a copy keeps its layout: a `.view()` may follow `.contiguous()`)
            return args[0].contiguous() if name in ("contiguous", "clone") else args[0]
        if kind == "arithmetic":
            return _positive_arithmetic(name, args, kwargs)
        if kind == "conv":
            return F.conv2d(kw["input"], self._dense(kw["weight"].shape), None, kw.get("stride", 1),
                            kw.get("padding", 0), kw.get("dilation", 1), kw.get("groups", 1))
        if kind == "linear":
            return F.linear(kw["input"], self._dense(kw["weight"].shape))
        if target is F.max_pool2d:
            size = F.max_pool2d(kw["input"].to("meta"), *args[1:], **kwargs).shape[-2:]
            return _sum_pool(kw["input"], op.windows(kw), size)
        if target is F.adaptive_max_pool2d:
            return F.adaptive_avg_pool2d(args[0], args[1] if len(args) > 1 else kwargs["output_size"])
        if kind == "layer_norm":
            shape = kw["normalized_shape"]
            return _plus_mean(kw["input"], range(-(1 if isinstance(shape, int) else len(shape)), 0))
        if kind == "spatial_norm":
            groups = args[1] if target is F.group_norm and len(args) > 1 else kwargs.get("num_groups")
            return _plus_group_mean(args[0], groups or args[0].shape[1])
        if kind == "softmax":
            return _plus_mean(kw["input"], [kw["dim"]])
        if kind == "reduce" and name in ("amax", "amin"):
            dims = kw.get("dim", ())
            return kw["input"].mean(dim=dims if dims != () else None, keepdim=kw.get("keepdim", False))
        if target is F.local_response_norm:
            return _plus_mean(args[0], [1])
        return _KEEP


_KEEP = object()


def _positive_arithmetic(name: str, args, kwargs):
    """add, sub (and their in-place and reflected forms) -> a + |alpha| b; mul -> a b; div -> a b (by a
    tensor) or a / |b|; neg -> a; scalars made positive: every partial derivative is positive on positive
    values. In-place forms stay in place: the forward may read `a` again."""
    inplace, name = name.endswith("_") and not name.startswith("__"), name.strip("_")
    if name.startswith("i") and name[1:] in ("add", "sub", "mul", "truediv"):  # iadd, __iadd__: x += y
        inplace, name = True, name[1:]
    pos = lambda v: abs(v) if isinstance(v, (int, float)) else v  # noqa: E731
    a, b = pos(args[0]), pos(args[1] if len(args) > 1 else kwargs.get("other"))
    if name in ("neg", "negative") or b is None:
        return a
    if name in ("add", "radd", "sub", "rsub"):
        alpha = abs(kwargs.get("alpha", 1))
        return a.add_(b, alpha=alpha) if inplace else a + alpha * b
    if name in ("truediv", "rtruediv", "div") and not isinstance(b, torch.Tensor):
        b = 1 / b if b else 1
    return a.mul_(b) if inplace else a * b


_DUNDERS = {f"__{prefix}{name}__" for name in ("add", "sub", "mul", "truediv") for prefix in ("", "r", "i")} | {
    "__neg__"}


def _table_entry(func) -> Op | None:
    """The op table's entry of a function a `TorchFunctionMode` sees (a torch function or Tensor method)."""
    try:
        op = FUNCTIONS.get(func)
    except TypeError:  # an unhashable callable is not in the table
        op = None
    name = getattr(func, "__name__", "")
    return op or (FUNCTIONS[operator.add] if name in _DUNDERS else METHODS.get(name))


class _Replacing(TorchFunctionMode):
    """While an op outside the table runs (an fx-wrapped function such as torchvision's windowed attention,
    a module without an entry), the linearized copy's replacements for the torch functions it calls: its
    softmax, LayerNorm, Linear and subtractions too."""

    def __init__(self, runner: _Linearized):
        super().__init__()
        self.runner = runner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = _table_entry(func)
        surrogate = self.runner._surrogate(op, func, args, kwargs) if op is not None else _KEEP
        return func(*args, **kwargs) if surrogate is _KEEP else surrogate


def _plus_mean(x: torch.Tensor, dims) -> torch.Tensor:
    return x + x.mean(dim=tuple(dims), keepdim=True)


def _plus_group_mean(x: torch.Tensor, groups: int) -> torch.Tensor:
    g = x.reshape(x.shape[0], groups, -1)
    return (g + g.mean(-1, keepdim=True)).reshape(x.shape)


def _sum_pool(x: torch.Tensor, windows: tuple[Window, Window], out_size) -> torch.Tensor:
    """Sums over exactly the windows of a pooling to `out_size` (ceil mode's last partial window included)."""
    after = [(o - 1) * w.stride + (w.kernel - 1) * w.dilation + 1 - (n + w.pad)  # to the last window's end
             for o, n, w in zip(out_size, x.shape[-2:], windows)]
    x = F.pad(x, (windows[1].pad, after[1], windows[0].pad, after[0]))
    ones = torch.ones(x.shape[1], 1, windows[0].kernel, windows[1].kernel, dtype=x.dtype, device=x.device)
    return F.conv2d(x, ones, None, (windows[0].stride, windows[1].stride), 0,
                    (windows[0].dilation, windows[1].dilation), x.shape[1])
