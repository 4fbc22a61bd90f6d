"""Expanded weights (Olah et al., Distill "Visualizing Weights"): the kernel a unit applies to an earlier
layer's output once every linear op between them is multiplied out.

A unit (layer L, channel c) reads an earlier layer E through convs, BatchNorms (eval), residual sums,
concatenations, average pooling, padding, data moves (permutes, reshapes: ConvNeXt's channels-last Linear is
a 1x1 conv) and products with constants (layer scale). When all of these are linear, L's pre-activation at
its centre position is Σ K · E_output + (terms not depending on E); K, the expanded weights, is the gradient
of that unit with respect to E's output, which autograd gives exactly on the traced graph: E's node is given
a zero tensor that requires grad, the nodes that do not depend on E are computed as usual (a zero image) and
are constants for the gradient. Composing kernels by hand would need a rule for every op; autograd has them.

The op table (`ops.node_op`) says which nodes are linear. `through="activations"` also crosses elementwise
activations as the identity and max pooling as average pooling (Olah's approximation, listed in `crossed`);
norms over statistics of their input (LayerNorm, GroupNorm), softmax, products of two computed tensors and
unknown ops end the expansion under either setting (`ExpansionStop` says where and why).

ModelError
 └── ExpansionStop    a node between the unit and its source is not linear
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from reportgen.errors import ModelError

from .ops import bind_arguments, node_op, tensor_inputs
from .receptive import Geometry, propagate_shapes, node_shape, Unmapped
from .trace import describe, layer_node, module_paths, trace

THROUGH = ("linear", "activations")


@dataclass(frozen=True, eq=False)  # eq would compare the arrays
class Expansion:
    """The expanded weights of one unit on one source.

    source: the module path whose output the kernel reads (the outermost when several record that value),
        "input" for the model input, or the fx node's name when no module records that value (the first call
        of a ReLU module called twice, as torchvision's BasicBlock does); `layers`: every module path that
        records it, outermost first (empty for none and for the input).
    kernel: (C_source, kh, kw) float32, cropped to the bounding box of its nonzero entries, read with the
        source's channels first wherever its graph keeps them (a channels-last (1, H, W, C) output is
        permuted); (C_source, 0, 0) when the unit does not depend on it numerically.
    offset: (y, x) of the crop's top-left in the source's output.
    crossed: the non-linear ops crossed as the identity / average pooling (`through="activations"`),
        described: the kernel is then an approximation. Empty: exact.
    activation: the layer's own activation (e.g. "ReLU 'layer1.0.relu'") when the layer is one; the kernel
        is then that of its input, the pre-activation. None: the layer's output itself.
    """

    source: str
    layers: tuple[str, ...]
    kernel: np.ndarray
    offset: tuple[int, int]
    crossed: tuple[str, ...] = ()
    activation: str | None = None


class ExpansionStop(ModelError):
    """A node between the unit and its source is not linear. `where` describes it, `reason` says why;
    `crossable`: `through="activations"` would cross it."""

    def __init__(self, where: str, reason: str, crossable: bool):
        self.where, self.reason, self.crossable = where, reason, crossable
        hint = " (expanding through activations crosses it as the identity)" if crossable else ""
        super().__init__(f"the expansion stops at {where}: {reason}{hint}")


def expanded_weights(model: nn.Module, layer: str, channel: int, input_size: tuple[int, int],
                     from_layer: str | None = None, through: str = "linear") -> list[Expansion]:
    """Expanded weights of unit (`layer`, `channel`) at its centre position (H // 2, W // 2 of the layer's
    output read as (C, H, W)) for a model taking (1, C, *input_size) images, C being what its first Conv2d
    reads. When `layer` is an activation's output, its input (the pre-activation) is expanded instead.

    from_layer: a module path, or "input"; one Expansion on it. ExpansionStop when a node on a path from it to
        the unit is not linear (`through`), naming the first such node from the source's side.
    from_layer None: expand over the unit's linear region: walk back from the pre-activation through every node
        the expansion can pass; the sources are the values those nodes read that it cannot pass (a ReLU's
        output, a LayerNorm's) and the model input, one Expansion each, in graph order (a residual block's
        unit: its branch's first conv input and its skip). A source no module records, reached from a recorded
        layer over pure data moves alone (ConvNeXt's LayerNorm2d: layer_norm, then permute), is taken at that
        layer instead. ExpansionStop when the pre-activation itself is not linear.
    through: "linear" (exact) or "activations" (see the module docstring).

    The model runs in eval mode for the call (BatchNorm with running statistics), its modes restored after.
    Raises ModelError for an unknown layer, a channel out of range, a layer that does not depend on `from_layer`
    or a source without (C, H, W) output.
    """
    if through not in THROUGH:
        raise ValueError(f"through must be one of {THROUGH}, not {through!r}")
    with _eval_mode(model):
        gm = trace(model)
        image = _zero_image(gm, model, input_size)
        propagate_shapes(gm, model, tuple(image.shape))
        computed = _computed(gm)
        target, activation = _pre_activation(gm, layer_node(gm, layer))
        names = module_paths(gm)
        index = _unit_index(target, layer, channel)
        if from_layer is None:
            region = _linear_region(gm, target, computed, through)
            sources = _sources(gm, region, computed, names)
        else:
            source = next(n for n in gm.graph.nodes if n.op == "placeholder") if from_layer == "input" \
                else layer_node(gm, from_layer)
            between = _between(source, target, computed)
            if not between and source is not target:
                raise ModelError(f"layer {layer!r} does not depend on {from_layer!r}")
            for node in between:
                _check_passable(gm, node, computed, through)
            region, sources = set(between), [source]
        crossed = {node for node in region if through == "activations" and _crossable(gm, node)}
        gradients = _gradients(gm, image, target, index, sources, crossed)
        geometry = Geometry(gm)
        expansions = []
        for source, gradient in zip(sources, gradients):
            kernel, offset = _crop(_channels_first(gm, geometry, source, gradient))
            on_path = [n for n in _between(source, target, computed) if n in crossed]
            layers = tuple(names.get(source, ()))
            label = from_layer or ("input" if source.op == "placeholder" else (layers or (source.name,))[0])
            expansions.append(Expansion(label, layers, kernel, offset, tuple(_where(gm, n) for n in on_path),
                                        activation))
        return expansions


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def _zero_image(gm: fx.GraphModule, model: nn.Module, input_size: tuple[int, int]) -> torch.Tensor:
    convs = (gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module")
    in_channels = next((m.in_channels for m in convs if isinstance(m, nn.Conv2d)), None)
    if in_channels is None:
        raise ModelError(f"{type(model).__name__} calls no Conv2d to tell the input's channel count")
    param = next(model.parameters(), torch.zeros(()))
    return torch.zeros((1, in_channels, *input_size), dtype=param.dtype, device=param.device)


def _computed(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value is a tensor computed from the model input (not weights, not sizes: `x.size(3)`)."""
    computed: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or (node.op not in ("get_attr", "output") and "value" not in node.meta
                                        and any(arg in computed for arg in node.all_input_nodes)):
            computed.add(node)
    return computed


def _pre_activation(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, str | None]:
    op = node_op(gm, node)
    if op is not None and op.kind == "activation":
        return tensor_inputs(node)[0], _where(gm, node)
    return node, None


def _unit_index(target: fx.Node, layer: str, channel: int) -> tuple[int, ...]:
    shape = node_shape(target)
    if len(shape) not in (2, 4):
        raise ModelError(f"layer {layer!r} has output of shape {shape}, not (1, C, H, W) or (1, C)")
    if not 0 <= channel < shape[1]:
        raise ModelError(f"channel {channel} is out of range: layer {layer!r} has {shape[1]} channels")
    return (0, channel) if len(shape) == 2 else (0, channel, shape[2] // 2, shape[3] // 2)


def _between(source: fx.Node, target: fx.Node, computed: set[fx.Node]) -> list[fx.Node]:
    """The computed nodes on a path from `source` (excluded) to `target` (included), in graph order."""
    nodes = list(source.graph.nodes)
    after: set[fx.Node] = {source}
    for node in nodes:
        if node in computed and any(arg in after for arg in node.all_input_nodes):
            after.add(node)
    before: set[fx.Node] = set()
    for node in reversed(nodes):
        if node is target or (node in computed and any(user in before for user in node.users)):
            before.add(node)
    return [node for node in nodes if node in after and node in before and node is not source]


def _linear_region(gm: fx.GraphModule, target: fx.Node, computed: set[fx.Node], through: str) -> set[fx.Node]:
    """The nodes reached back from `target` through nodes the expansion can pass (`target` included)."""
    _check_passable(gm, target, computed, through)
    region, stack = {target}, [target]
    while stack:
        for arg in stack.pop().all_input_nodes:
            if arg in computed and arg not in region and arg.op != "placeholder" \
                    and _passable(gm, arg, computed, through):
                region.add(arg)
                stack.append(arg)
    return region


def _sources(gm: fx.GraphModule, region: set[fx.Node], computed: set[fx.Node],
             recorded: dict[fx.Node, list[str]]) -> list[fx.Node]:
    """The computed values the region reads from outside it, each moved forward over pure data moves to a
    recorded layer's output when that is where they lead (see `expanded_weights`)."""
    frontier = {arg for node in region for arg in node.all_input_nodes if arg in computed and arg not in region}
    sources = set()
    for node in frontier:
        moved = node
        while moved not in recorded and moved.op != "placeholder":
            users = [user for user in moved.users if user in region]
            op = node_op(gm, users[0]) if len(users) == 1 else None
            if op is None or op.kind not in ("move", "identity", "dropout") or len(tensor_inputs(users[0])) != 1:
                break
            moved = users[0]
        sources.add(moved if moved in recorded else node)
    return [node for node in gm.graph.nodes if node in sources]


def _passable(gm: fx.GraphModule, node: fx.Node, computed: set[fx.Node], through: str) -> bool:
    return _nonlinearity(gm, node, computed) is None or (through == "activations" and _crossable(gm, node))


def _check_passable(gm: fx.GraphModule, node: fx.Node, computed: set[fx.Node], through: str) -> None:
    if not _passable(gm, node, computed, through):
        raise ExpansionStop(_where(gm, node), _nonlinearity(gm, node, computed), _crossable(gm, node))


_PRODUCTS = (operator.mul, operator.imul, torch.mul, "mul", "mul_")
_QUOTIENTS = (operator.truediv, operator.itruediv, torch.div, "div", "div_")
_MAX_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, F.max_pool2d, F.adaptive_max_pool2d)
_LINEAR_KINDS = ("identity", "dropout", "move", "concat", "pad", "pad_nd", "resample")


def _nonlinearity(gm: fx.GraphModule, node: fx.Node, computed: set[fx.Node]) -> str | None:
    """Why `node` is not linear in its computed inputs (constants: weights, numbers), None when it is."""
    op = node_op(gm, node)
    if op is None:
        return "an op reportgen does not know"
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    computed_args = [arg for arg in tensor_inputs(node) if arg in computed]
    if op.kind in _LINEAR_KINDS or (op.kind == "arithmetic" and node.target not in _PRODUCTS + _QUOTIENTS):
        return None
    if op.kind == "norm":
        batch_stats = module.running_var is None if module is not None else \
            bind_arguments(op, node.args, node.kwargs).get("training", len(node.args) > 5 and node.args[5])
        return "a BatchNorm that normalizes by the batch (no running statistics): not linear" if batch_stats else None
    if op.kind in ("conv", "linear"):
        weights_computed = module is None and computed_args[1:]
        return "its weights are computed from the image: not linear" if weights_computed else None
    if node.target in _PRODUCTS:
        return "a product of two computed tensors: not linear" if len(computed_args) > 1 else None
    if node.target in _QUOTIENTS:
        return "a division by a computed tensor: not linear" if node.args[1] in computed else None
    if op.kind in ("pool", "adaptive_pool", "reduce", "channel_mix"):
        linear = not _is_max_pool(gm, node) and node.target not in (torch.amax, torch.amin, "amax", "amin") \
            and (op.kind != "channel_mix" or isinstance(module, nn.ChannelShuffle) or node.target is F.channel_shuffle)
        return None if linear else "not linear"
    return "not linear"  # activations, LayerNorm, GroupNorm, softmax


def _is_max_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _MAX_POOLS[:2])
    return node.op == "call_function" and node.target in _MAX_POOLS[2:]


def _crossable(gm: fx.GraphModule, node: fx.Node) -> bool:
    """An elementwise activation (crossed as the identity) or a max pooling that average pooling over the same
    windows can stand for (no dilation, no indices)."""
    op = node_op(gm, node)
    if op is None or not (op.kind == "activation" or _is_max_pool(gm, node)):
        return False
    if op.kind != "pool":
        return True
    kw = vars(gm.get_submodule(node.target)) if node.op == "call_module" else bind_arguments(op, node.args, node.kwargs)
    return kw.get("dilation", 1) in (1, (1, 1)) and not kw.get("return_indices", False)


class _Expanding(fx.Interpreter):
    """Runs the graph up to `target` with `crossed` nodes replaced by their linear stand-ins."""

    def __init__(self, gm: fx.GraphModule, target: fx.Node, crossed: set[fx.Node]):
        super().__init__(gm)
        self.target, self.crossed, self.value = target, crossed, None

    def run_node(self, n: fx.Node):
        if n in self.crossed:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            result = _stand_in(self.module, n, args, kwargs)
        else:
            result = super().run_node(n)
        if n is self.target:
            self.value = result
            raise _Reached
        return result


class _Reached(Exception):
    """Stops the forward once the unit's layer is computed."""


def _stand_in(gm: fx.GraphModule, node: fx.Node, args: tuple, kwargs: dict) -> torch.Tensor:
    """An activation's input as it is; a max pooling's average over the same windows."""
    x = args[0]
    if node_op(gm, node).kind == "activation":
        return x
    if node.op == "call_module":
        pool = gm.get_submodule(node.target)
        if isinstance(pool, nn.AdaptiveMaxPool2d):
            return F.adaptive_avg_pool2d(x, pool.output_size)
        return F.avg_pool2d(x, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, count_include_pad=False)
    if node.target is F.adaptive_max_pool2d:
        return F.adaptive_avg_pool2d(x, args[1] if len(args) > 1 else kwargs["output_size"])
    kw = bind_arguments(node_op(gm, node), args, kwargs)
    return F.avg_pool2d(x, kw["kernel_size"], kw.get("stride"), kw.get("padding", 0), kw.get("ceil_mode", False),
                        count_include_pad=False)


def _gradients(gm: fx.GraphModule, image: torch.Tensor, target: fx.Node, index: tuple[int, ...],
               sources: list[fx.Node], crossed: set[fx.Node]) -> list[torch.Tensor]:
    """d target[index] / d source for each source, the sources' values given as zeros (exact for linear paths)."""
    leaves = [torch.zeros(node_shape(source), dtype=image.dtype, device=image.device, requires_grad=True)
              for source in sources]
    # a clone, so that an in-place op of the model (ReLU(inplace=True)) does not write into the leaf
    env = {source: leaf.clone() for source, leaf in zip(sources, leaves)}
    if target in env:
        value = env[target]
    else:
        runner = _Expanding(gm, target, crossed)
        try:
            runner.run(image, initial_env=env)
        except _Reached:
            pass
        value = runner.value
    return list(torch.autograd.grad(value[index], leaves, allow_unused=True, materialize_grads=True))


def _channels_first(gm: fx.GraphModule, geometry: Geometry, node: fx.Node, gradient: torch.Tensor) -> np.ndarray:
    """(C, H, W) of a (1, ...) gradient, its image axes found where the graph keeps them (permutes move them)."""
    if gradient.dim() != 4:
        raise ModelError(f"{_where(gm, node)} has output of shape {tuple(gradient.shape)}, not (1, C, H, W): "
                         "its expanded weights have no kernel layout")
    try:
        dims = tuple(geometry.maps(node, axis)[0] for axis in (0, 1))
    except Unmapped:  # geometry unknown: read it as laid out, as the report does
        dims = (2, 3)
    if not (set(dims) <= {1, 2, 3} and dims[0] != dims[1]):
        dims = (2, 3)
    channel_dim = ({1, 2, 3} - set(dims)).pop()
    return gradient[0].permute(channel_dim - 1, dims[0] - 1, dims[1] - 1).detach().float().cpu().numpy()


def _crop(kernel: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The kernel's bounding box of nonzero entries over all channels, and its (y, x) top-left."""
    rows, cols = np.nonzero(np.abs(kernel).sum(0))
    if len(rows) == 0:
        return kernel[:, :0, :0], (kernel.shape[1] // 2, kernel.shape[2] // 2)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return np.ascontiguousarray(kernel[:, y0:y1, x0:x1]), (int(y0), int(x0))


def _where(gm: fx.GraphModule, node: fx.Node) -> str:
    """A node as a reader finds it: `ReLU6 'features.2.conv.0.2'`, `mul in 'features.1.0'`."""
    where = describe(gm, node)
    if node.op != "call_module":
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            where += f" in {list(stack.values())[-1][0]!r}"
    return where
