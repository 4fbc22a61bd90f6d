"""A unit written as the sum of what feeds it: the terms of its pre-activation.

A block's output unit (`layer2`, `features.denseblock2`, `inception4c`) is not one conv's output: a residual
block adds its branch to a skip, a concatenation passes one branch's channel on. `decompose` follows the
graph back from a unit through the ops that keep it a plain sum, and writes it down:

    unit = activation( Σ_t scale_t · value_t + bias )

value_t is channel `channel_t` of one node's output at the unit's own position: a conv's output (with the
BatchNorm right after it folded in: "conv" terms, whose input channels make the classic circuit) or any other
layer's output taken as it is ("layer" terms: an identity skip, a branch that ends in a non-linearity; "input"
for the image). The walk, from the unit back:
- first, the unit's own channel is followed through concatenations (to the branch and channel that made it),
  identities, dropout, and at most one elementwise activation (the unit's non-linearity);
- then, linearly: a sum adds its inputs' terms; a conv (BN folded) is a term; a BatchNorm not after a conv
  scales its input's terms (its shift joins the bias); a product with a constant (ConvNeXt's layer scale,
  a number) scales them; identities and dropout (eval) pass through; a concatenation selects a branch;
- anything else ends the walk there: that node's output is a "layer" term. Every op between the unit and a
  term keeps positions, so each term is read at the unit's position (which `measure` does).

`measure` runs the model once on images and gives every term's value at each image's position, so the
decomposition can be checked against the model (the sum, through the activation, is the unit's value) and
each term's share of the pre-activation reported.
"""

from __future__ import annotations

import copy
import operator
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import TensorMetadata

from reportgen.errors import ModelError

from .ops import cat_dim, node_op, tensor_inputs
from .receptive import propagate_shapes
from .trace import describe, layer_node, module_paths, trace


@dataclass(frozen=True)
class Term:
    """scale × channel `channel` of node `node`'s output, read at the unit's position.

    kind: "conv" (a Conv2d's output; `bn` the BatchNorm after it, folded in and part of the value),
          "layer" (another layer's output as it is), "input" (the model input).
    module: the module path whose output the value is (the outermost one: `layer1` rather than `layer1.1.relu`),
        None for a function's output; `route`: the ops between the term and the unit, as a reader says them.
    """

    kind: str
    node: str
    channel: int
    scale: float = 1.0
    module: str | None = None
    conv: str | None = None
    bn: str | None = None
    route: tuple[str, ...] = ()
    skip: bool = False       # in a sum, the term that reads what the other terms are computed from

    @property
    def label(self) -> str:
        """"layer2.0.conv2 → bn2 (folded)", "skip from layer1", "skip through layer2.0.downsample.0 → …"."""
        if self.kind == "conv":
            head = self.conv + (f" → {_short(self.bn, self.conv)} (folded)" if self.bn else "")
            if self.skip and self.module and not (self.module + ".").startswith(self.conv.rsplit(".", 1)[0] + "."):
                head = f"skip from {self.module} (= {head})"    # a block's output that is one conv: name the block
            elif self.skip:
                head = f"skip through {head}"                   # a projection shortcut
        elif self.kind == "input":
            head = "the image"
        else:
            head = ("skip from " if self.skip else "") + (self.module or self.node)
        return head + "".join(f" → {r}" for r in self.route)


@dataclass(frozen=True)
class Decomposition:
    """unit (layer `layer`, channel `channel`) = activation(Σ terms + bias), read at the unit's position.

    pre_node: the node whose output (at `pre_channel`) is Σ terms + bias; activation: the non-linearity
    between it and the unit (described, e.g. "ReLU 'layer2.0.relu'"), None when the unit is the sum itself;
    selected: how the unit's channel was followed to `pre_node` (e.g. "branch 2 of 4 (inception3b.branch2),
    channel 5"); stops: why the walk ended where it did, for each "layer" term.
    """

    layer: str
    channel: int
    pre_node: str
    pre_channel: int
    activation: str | None
    activation_node: str | None
    terms: tuple[Term, ...]
    bias: float
    selected: tuple[str, ...] = ()
    stops: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """"conv" (one conv term), "sum" (several terms: a residual), or "layer" (one term taken as it is)."""
        if len(self.terms) > 1:
            return "sum"
        return self.terms[0].kind if self.terms else "layer"

    @property
    def label(self) -> str:
        """The whole route as a reader says it: "layer2.0.conv2 → bn2 (folded) + skip from layer1 → relu"."""
        text = " + ".join(t.label for t in self.terms) or "a constant"
        if self.activation:
            text += f" → {self.activation}"
        return text


def decompose(model: nn.Module, layer: str, channel: int, gm: fx.GraphModule | None = None) -> Decomposition:
    """The terms of channel `channel` of `layer`'s output (see the module docstring). `gm`: the traced model,
    when the caller traced it already."""
    gm = gm or trace(model)
    names = {node: paths[0] for node, paths in module_paths(gm).items()}   # the outermost
    node, ch = layer_node(gm, layer), channel
    selected: list[str] = []
    activation = activation_node = None
    while True:                                # the unit's own channel, to the node holding its sum
        op = node_op(gm, node)
        inputs = tensor_inputs(node)
        if op is not None and op.kind in ("identity", "dropout") and len(inputs) == 1:
            node = inputs[0]
        elif op is not None and op.kind == "activation" and len(inputs) == 1 and activation is None:
            activation, activation_node = _activation_name(gm, node), node.name
            node = inputs[0]
        elif _is_channel_cat(gm, node):
            i, offset, counts = _cat_branch(gm, node, ch)
            selected.append(f"branch {i + 1} of {len(counts)} ({_name(names, inputs[i])}), channel {ch - offset}")
            node, ch = inputs[i], ch - offset
        elif (moved := _moved_channel(gm, node, ch)) is not None:
            start, source_ch, ops = moved
            selected.append(f"channel {source_ch} of {_name(names, start)}, moved by {ops}")
            node, ch = start, source_ch
        else:
            break
    start = node
    walk = _Walk(gm, names)
    walk.visit(node, ch, 1.0, ())
    leaf_itself = [(t.kind, t.node) for t in walk.terms] in ([("layer", start.name)], [("input", start.name)])
    if leaf_itself and start is layer_node(gm, layer):       # nothing to decompose: the unit is its own term
        raise ModelError(f"layer {layer!r} is not the output of a conv, a sum or a concatenation: it comes from "
                         f"{describe(gm, start)}")
    return Decomposition(layer, channel, node.name, ch, activation, activation_node, _mark_skips(gm, walk.terms),
                         walk.bias, tuple(selected), tuple(walk.stops))


def _mark_skips(gm: fx.GraphModule, terms: list[Term]) -> tuple[Term, ...]:
    """In a sum, a term is a skip when what it reads (a layer term's value, a conv term's input) is what every
    other term is computed from: the identity or projection shortcut of a residual block."""
    if len(terms) < 2:
        return tuple(terms)
    nodes = {n.name: n for n in gm.graph.nodes}
    ancestors = {t.node: _ancestors(nodes[t.node]) for t in terms}

    def reads(t: Term) -> fx.Node:
        if t.kind == "conv":
            conv = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == t.conv)
            return _through_identities(gm, tensor_inputs(conv)[0])
        node = nodes[t.node]         # a shortcut that only moves values (an option-A slice and pad) reads its input
        while (op := node_op(gm, node)) is not None and op.kind in _REARRANGING and len(tensor_inputs(node)) >= 1:
            node = tensor_inputs(node)[0]
        return node

    marked = [Term(**{**t.__dict__, "skip": all(reads(t) in ancestors[o.node] for o in terms if o is not t)})
              for t in terms]
    return tuple(sorted(marked, key=lambda t: t.skip))      # the residual branch first, as one reads a block


_REARRANGING = ("move", "pad", "pad_nd", "identity", "dropout")


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, todo = set(), list(node.all_input_nodes)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


@dataclass
class _Walk:
    gm: fx.GraphModule
    names: dict[fx.Node, str]
    terms: list[Term] = field(default_factory=list)
    bias: float = 0.0
    stops: list[str] = field(default_factory=list)

    def visit(self, node: fx.Node, ch: int, scale: float, route: tuple[str, ...]) -> None:
        gm, op = self.gm, node_op(self.gm, node)
        inputs = tensor_inputs(node)
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.Conv2d):
            self._check_channel(module.out_channels, ch, node)
            self.terms.append(Term("conv", node.name, ch, scale, self.names.get(node), node.target, None, route))
        elif isinstance(module, nn.BatchNorm2d) and module.running_var is not None and not module.training:
            conv = _through_identities(gm, inputs[0])
            if conv.op == "call_module" and isinstance(gm.get_submodule(conv.target), nn.Conv2d):
                self._check_channel(module.num_features, ch, node)
                self.terms.append(Term("conv", node.name, ch, scale, self.names.get(node), conv.target, node.target,
                                       route))
            else:                                    # BN of a sum or a concat: a per-channel affine map
                a, b = _bn_affine(module, ch)
                self.bias += scale * b
                self.visit(inputs[0], ch, scale * a, (f"{node.target} (×{a:.3g})",) + route)
        elif op is not None and op.kind in ("identity", "dropout") and len(inputs) == 1:
            self.visit(inputs[0], ch, scale, route)
        elif op is not None and op.sums:
            constants = [a for a in node.args if isinstance(a, (int, float))]
            if "alpha" in node.kwargs or len(inputs) + len(constants) != len(node.args):
                return self._leaf(node, ch, scale, route, f"{describe(gm, node)} is not a plain sum")
            self.bias += scale * float(sum(constants))
            for arg in inputs:
                self.visit(arg, ch, scale, route)
        elif op is not None and op.kind == "arithmetic" and node.target in _MULTIPLY and len(inputs) == 1:
            factor = _constant_factor(gm, node, inputs[0], ch)
            if factor is None:
                return self._leaf(node, ch, scale, route, f"{describe(gm, node)} multiplies by a computed value")
            label = _factor_label(node, inputs[0])
            self.visit(inputs[0], ch, scale * factor, (f"× {label}",) + route)
        elif _is_channel_cat(gm, node):
            i, offset, counts = _cat_branch(gm, node, ch)
            self.visit(inputs[i], ch - offset, scale, route)
        elif (moved := _moved_channel(gm, node, ch)) is not None:
            start, source_ch, ops = moved
            self.visit(start, source_ch, scale, (f"channel {source_ch} moved to {ch} by {ops}",) + route)
        else:
            self._leaf(node, ch, scale, route, None)

    def _leaf(self, node, ch, scale, route, why: str | None) -> None:
        kind = "input" if node.op == "placeholder" else "layer"
        self.terms.append(Term(kind, node.name, ch, scale, self.names.get(node), route=route))
        if why:
            self.stops.append(why)

    @staticmethod
    def _check_channel(channels: int, ch: int, node: fx.Node) -> None:
        if not 0 <= ch < channels:
            raise ModelError(f"channel {ch} is out of range: {node.target!r} has {channels} channels")


_MULTIPLY = {"mul", "mul_", operator.mul, torch.mul}


def _constant_factor(gm: fx.GraphModule, node: fx.Node, tensor: fx.Node, ch: int) -> float | None:
    """The constant a `mul` node multiplies channel `ch` of `tensor` by (a number, or a parameter or buffer
    with one value per channel or one in all), None when the other factor is computed in the forward."""
    others = [a for a in node.args if a is not tensor]
    if len(others) != 1:
        return None
    other = others[0]
    if isinstance(other, (int, float)):
        return float(other)
    if isinstance(other, fx.Node) and other.op == "get_attr":
        value = _attr(gm, other.target).detach().float()
        if value.numel() == 1:
            return float(value)
        flat = value.reshape(-1)
        if value.dim() >= 3 and value.shape[-1] == value.shape[-2] == 1 and len(flat) > ch:   # (C, 1, 1)
            return float(flat[ch])
    return None


def _factor_label(node: fx.Node, tensor: fx.Node) -> str:
    other = next(a for a in node.args if a is not tensor)
    return other.target if isinstance(other, fx.Node) else f"{other:g}"


def _attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _bn_affine(bn: nn.BatchNorm2d, ch: int) -> tuple[float, float]:
    """(a, b) with bn(x)[ch] = a · x[ch] + b, eval mode."""
    a = float(torch.rsqrt(bn.running_var[ch] + bn.eps) * (bn.weight[ch] if bn.weight is not None else 1.0))
    b = float((bn.bias[ch] if bn.bias is not None else 0.0) - bn.running_mean[ch] * a)
    return a, b


def _through_identities(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    while True:
        op = node_op(gm, node)
        inputs = tensor_inputs(node)
        if op is None or op.kind not in ("identity", "dropout") or len(inputs) != 1:
            return node
        node = inputs[0]


def shaped_trace(model: nn.Module, input_shape: Sequence[int]) -> fx.GraphModule:
    """The traced model with every node's output shape (`node.meta["tensor_meta"]`, from one forward of zeros of
    `input_shape`), which `decompose` needs to follow channels through reshapes (a channel shuffle); cached."""
    key = tuple(input_shape)
    cached = _SHAPED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    gm = trace(model)
    if gm is model:                       # a GraphModule given: annotate a copy, not the caller's graph
        gm = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    else:
        gm = fx.GraphModule(gm, gm.graph)
    training = model.training
    model.eval()
    try:
        propagate_shapes(gm, model, key)
    except ModelError:                    # a model that only runs on real data: no shapes, no reshapes followed
        gm = trace(model)
    finally:
        model.train(training)
    _SHAPED[model] = (key, gm)
    return gm


_SHAPED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _is_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, TensorMetadata) or (isinstance(meta, (tuple, list)) and bool(meta)
                                                 and all(isinstance(m, TensorMetadata) for m in meta))


def _moved_channel(gm: fx.GraphModule, node: fx.Node, ch: int) -> tuple[fx.Node, int, str] | None:
    """(start, channel, ops) when `node` is made from `start` by pure data moves (views, transposes, chunks,
    getitem, contiguous) that keep each position and move channel `channel` of `start` to `ch` (a channel
    shuffle, a channel split); None otherwise or without shapes (`shaped_trace`). Found by running the moves
    on a tensor that numbers its elements."""
    chain, start = [], node
    while True:
        op = node_op(gm, start)
        if op is None or op.kind not in ("move", "identity"):
            break
        tensors = [a for a in start.all_input_nodes if _is_tensor(a)]
        if len(tensors) != 1:
            return None
        chain.append(start)
        start = tensors[0]
    meta = start.meta.get("tensor_meta")
    out_meta = node.meta.get("tensor_meta")
    if not chain or not isinstance(meta, TensorMetadata) or not isinstance(out_meta, TensorMetadata) \
            or len(meta.shape) != 4 or len(out_meta.shape) != 4 or tuple(meta.shape[2:]) != tuple(out_meta.shape[2:]):
        return None
    _, c, h, w = meta.shape
    numbered = torch.arange(c * h * w, dtype=torch.float64).reshape(1, c, h, w).expand(meta.shape[0], c, h, w)
    interpreter = fx.Interpreter(gm)
    interpreter.env[start] = numbered
    needed = _ancestors(node) | {node}
    try:
        for n in gm.graph.nodes:          # graph order: every input of a node is computed before it
            if n in needed and n is not start and start in _ancestors(n):
                if any(a not in interpreter.env for a in n.all_input_nodes):
                    return None           # it reads a tensor other than `start`
                interpreter.env[n] = interpreter.run_node(n)
    except Exception:
        return None
    out = interpreter.env[node]
    if not isinstance(out, torch.Tensor) or out.shape[1] <= ch:
        return None
    ids = out[0, ch].long()
    positions = torch.arange(h * w).reshape(h, w)
    source = ids // (h * w)
    if not bool(((ids % (h * w)) == positions).all()) or not bool((source == source[0, 0]).all()):
        return None                       # positions moved or channels mixed: not one channel's copy
    ops = ", ".join(dict.fromkeys(describe(gm, n).lstrip(".").rstrip("()") for n in reversed(chain)))
    return start, int(source[0, 0]), ops


def _is_channel_cat(gm: fx.GraphModule, node: fx.Node) -> bool:
    op = node_op(gm, node)
    return op is not None and op.kind == "concat" and cat_dim(node) == 1


def _cat_branch(gm: fx.GraphModule, node: fx.Node, ch: int) -> tuple[int, int, list[int]]:
    """(branch index, its first channel, every branch's channel count) of channel `ch` of a concatenation."""
    counts = [_out_channels(gm, arg) for arg in tensor_inputs(node)]
    if None in counts:
        raise ModelError(f"cannot tell which branch of {describe(gm, node)} channel {ch} comes from: "
                         "a branch's channel count is unknown before running the model")
    offsets = np.cumsum([0] + counts)
    if not 0 <= ch < offsets[-1]:
        raise ModelError(f"channel {ch} is out of range: {describe(gm, node)} has {offsets[-1]} channels")
    i = int(np.searchsorted(offsets, ch, side="right")) - 1
    return i, int(offsets[i]), counts


def _out_channels(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """Channels of a node's output, known from the modules that make it (None when unknown)."""
    val = node.meta.get("tensor_meta")
    if val is not None:
        return int(val.shape[1])
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        for attribute in ("out_channels", "num_features"):
            if hasattr(module, attribute):
                return int(getattr(module, attribute))
    op = node_op(gm, node)
    inputs = tensor_inputs(node)
    if op is not None and (op.keeps_channels or (op.kind == "arithmetic" and op.sums)) and inputs:
        return _out_channels(gm, inputs[0])
    if _is_channel_cat(gm, node):
        counts = [_out_channels(gm, a) for a in inputs]
        return None if None in counts else sum(counts)
    return None


def conv_input_node(gm: fx.GraphModule, conv_path: str) -> str:
    """The name of the node a conv module's (first) call reads."""
    node = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == conv_path), None)
    if node is None:
        raise ModelError(f"{conv_path!r} is not called in the model's forward")
    return tensor_inputs(node)[0].name


def activation_of(gm: fx.GraphModule, d: Decomposition, pre: np.ndarray) -> np.ndarray:
    """The unit's values from its pre-activation values: `d`'s activation applied (the op itself, as the
    model calls it), or `pre` unchanged when there is none."""
    if d.activation_node is None:
        return pre
    node = next(n for n in gm.graph.nodes if n.name == d.activation_node)
    x = torch.as_tensor(pre, dtype=torch.float64).clone()
    with torch.no_grad():
        if node.op == "call_module":
            return gm.get_submodule(node.target)(x).numpy()
        fn = getattr(torch.Tensor, node.target) if node.op == "call_method" else node.target
        return fn(x, *node.args[1:], **node.kwargs).numpy()


def _name(names: dict[fx.Node, str], node: fx.Node) -> str:
    """A node as a reader finds it: its module's path, or the op and the module it is called in ("cat in stage2.3")."""
    if node in names:
        return names[node]
    op = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.name)
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    return f"{op} in {stack[-1][0]}" if stack else op


def _activation_name(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__.lower()} ({node.target})"
    return getattr(node.target, "__name__", str(node.target)).rstrip("_")


def _short(path: str, sibling: str) -> str:
    """`bn2` for `layer2.0.bn2` beside `layer2.0.conv2`: the part after their common prefix (the whole path
    when that part is a bare index, as in `downsample.1`)."""
    a, b = path.split("."), sibling.split(".")
    i = 0
    while i < min(len(a), len(b)) - 1 and a[i] == b[i]:
        i += 1
    short = ".".join(a[i:])
    return path if short.isdigit() else short


class _Capture(fx.Interpreter):
    """Runs the traced model, keeping a copy of the wanted nodes' outputs; stops once it has them all."""

    def __init__(self, gm: fx.GraphModule, wanted: set[str]):
        super().__init__(gm)
        self.wanted, self.values = set(wanted), {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.wanted:
            self.values[n.name] = out.detach().clone()   # clone: a later in-place op (`out += x`, ReLU) changes it
            if len(self.values) == len(self.wanted):
                raise _Done
        return out


class _Done(Exception):
    pass


def capture(gm: fx.GraphModule, x: torch.Tensor, nodes: set[str]) -> dict[str, torch.Tensor]:
    """The outputs of the nodes named `nodes` for the batch `x` (the forward stops after the last of them)."""
    interpreter = _Capture(gm, nodes)
    try:
        with torch.no_grad():
            interpreter.run(x)
    except _Done:
        pass
    missing = set(nodes) - set(interpreter.values)
    if missing:
        raise ModelError(f"the model's forward never computed {sorted(missing)}")
    return interpreter.values


@dataclass(frozen=True)
class Measured:
    """A decomposition read at images: values (n_terms, n) of each term, pre (n,) = Σ values + bias,
    unit (n,) the model's own value of the unit, all at each image's position."""
    values: np.ndarray
    pre: np.ndarray
    unit: np.ndarray

    def shares(self, bias: float) -> tuple[list[float | None], float | None]:
        """Each term's share of the pre-activation summed over the images, and the bias's: they add up to 1.
        None where the pre-activation sums to (nearly) 0."""
        total = float(self.pre.sum())
        if abs(total) < 1e-8 * max(1.0, float(np.abs(self.values).sum())):
            return [None] * len(self.values), None
        return [float(v.sum()) / total for v in self.values], bias * len(self.pre) / total


def measure(d: Decomposition, values: dict[str, torch.Tensor], unit_node: str,
            positions: Sequence[tuple[int, int]]) -> Measured:
    """`d`'s terms at image i's position (y, x) from captured node outputs (`capture` of every term's node
    and of `unit_node`, the layer's own node)."""
    idx = torch.arange(len(positions))
    ys = torch.tensor([p[0] for p in positions])
    xs = torch.tensor([p[1] for p in positions])
    rows = [t.scale * values[t.node][idx, t.channel, ys, xs].double() for t in d.terms]
    terms = torch.stack(rows) if rows else torch.zeros(0, len(positions), dtype=torch.float64)
    pre = terms.sum(0) + d.bias
    unit = values[unit_node][idx, d.channel, ys, xs].double()
    return Measured(terms.numpy(), pre.numpy(), unit.numpy())
