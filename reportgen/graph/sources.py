"""Where a conv's input channels come from: producers, residual sums, concatenations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.fx as fx
import torch.nn as nn

from reportgen.errors import ModelError

from .ops import cat_dim, keeps_channels, node_op, tensor_inputs
from .trace import describe, layer_node, module_outputs, trace

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
    while keeps_channels(gm, node):
        path += names.get(node, [])
        node = node.all_input_nodes[0]
    tensors, op = tensor_inputs(node), node_op(gm, node)
    if node.op == "placeholder":
        return Source("input", path=tuple(path))
    if node.op == "call_function" and op is not None and op.sums and len(tensors) > 1:
        return Source("sum", path=tuple(path + names.get(node, [])),
                      branches=tuple(_source(gm, arg, names) for arg in tensors))
    concat = op is not None and op.kind == "concat" and cat_dim(node) == 1
    counts = [_channels(gm, arg) for arg in tensors] if concat else [None]
    if concat and None not in counts:
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
    if keeps_channels(gm, node):
        return _channels(gm, node.all_input_nodes[0])
    return None
