"""Tracing the model with `torch.fx` and finding which node a layer is, and the conv a layer comes from.

Hooks see tensors but not wiring, so the wiring comes from `torch.fx` symbolic tracing, which keeps
module paths (`features.10`, `layer1.0.conv1`) on its nodes. A layer path names the output of that
module's last call in `forward` (what a forward hook sees last), e.g. `layer1.0` is the block's output.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from reportgen.errors import ModelError

from .ops import is_elementwise, module_op

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


def module_paths(gm: fx.GraphModule) -> dict[fx.Node, list[str]]:
    """Node -> every module path whose output it is, outermost first (`layer1`, `layer1.1`, `layer1.1.relu`)."""
    paths: dict[fx.Node, list[str]] = {}
    for path, node in module_outputs(gm).items():
        paths.setdefault(node, []).append(path)
    return {node: sorted(p, key=lambda path: path.count(".")) for node, p in paths.items()}


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
        if module is None or module_op(module).kind not in ("identity", "dropout"):
            break
    return node.target, gm.get_submodule(node.target), bn
