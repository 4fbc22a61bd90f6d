"""The leading chain of spatially local layers of a model, which incremental occlusion recomputes on crops.

A layer is local when each output position depends on a fixed window of input positions (conv,
max/avg pooling) or on its own position only (eval-mode BatchNorm, activations, eval dropout).
The chain is found on a `torch.fx` trace: from the input, follow single-use nodes while they
are such layers; the rest of the trace becomes a module taking the chain's output. A model that
cannot be traced gets an empty chain (callers then run the whole model).
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...graph.fold import effective_weights
from ...graph.ops import module_op, node_op


@dataclass(frozen=True)
class Step:
    """One layer of the local chain. `local` layers have a window (kernel, stride, padding, dilation)
    per spatial dim; `crop_fn` computes the layer on an already padded crop, `full_fn` as the model does."""
    name: str
    full_fn: Callable[[torch.Tensor], torch.Tensor]
    crop_fn: Callable[[torch.Tensor], torch.Tensor]
    local: bool = False
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    pad_value: float = 0.0


@dataclass
class Prefix:
    """The local chain of a model and the module mapping its output to the model's output."""
    steps: list[Step]
    rest: Callable[[torch.Tensor], torch.Tensor]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def module_step(name: str, m: nn.Module) -> Step | None:
    """The Step computing `m` on crops, or None if `m` is not local/pointwise in eval mode (pointwise: the
    elementwise ops of `graph.ops`). Exact types only: a subclass may override `forward` with anything."""
    if type(m) is nn.Conv2d and m.padding_mode == "zeros" and m.padding != "same":
        pad = (0, 0) if m.padding == "valid" else _pair(m.padding)
        return Step(name, m, lambda t: F.conv2d(t, m.weight, m.bias, m.stride, 0, m.dilation, m.groups),
                    True, _pair(m.kernel_size), _pair(m.stride), pad, _pair(m.dilation))
    if type(m) is nn.MaxPool2d and not m.return_indices:
        k, d = _pair(m.kernel_size), _pair(m.dilation)
        # ceil_mode's partial last window is the -inf padding we add on the right
        return Step(name, m, lambda t: F.max_pool2d(t, k, _pair(m.stride), 0, d), True, k,
                    _pair(m.stride), _pair(m.padding), d, -math.inf)
    if type(m) is nn.AvgPool2d and not m.ceil_mode and (m.count_include_pad or _pair(m.padding) == (0, 0)):
        k = _pair(m.kernel_size)
        return Step(name, m, lambda t: F.avg_pool2d(t, k, _pair(m.stride), 0, divisor_override=m.divisor_override),
                    True, k, _pair(m.stride), _pair(m.padding))
    op = module_op(m, exact=True)
    if op is None or not op.elementwise:
        return None
    if op.kind in ("norm", "dropout") and m.training:    # training BN mixes the batch; dropout is random
        return None
    if op.kind == "norm" and m.running_mean is None:     # no running statistics: batch statistics, as in training
        return None
    return Step(name, m, m)


def _node_step(gm: fx.GraphModule, node: fx.Node, source: fx.Node) -> Step | None:
    if node.op == "call_module" and node.args == (source,) and not node.kwargs:
        return module_step(str(node.target), gm.get_submodule(str(node.target)))
    op = node_op(gm, node)
    if node.op == "call_function" and op is not None and op.kind == "activation" and node.args == (source,) \
            and set(node.kwargs) <= {"inplace"}:                 # F.relu(x): the function with its defaults
        return Step(node.target.__name__, node.target, node.target)
    return None


def local_prefix(model: nn.Module) -> Prefix:
    """Split `model` into its leading local chain and the rest; an empty chain if it cannot be analysed."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # any untraceable forward (data-dependent control flow, ...) is simply not analysed
        return Prefix([], model)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return Prefix([], model)
    node, chain, steps = inputs[0], [], []
    while len(node.users) == 1:
        step = _node_step(gm, next(iter(node.users)), node)
        if step is None:
            break
        node = next(iter(node.users))
        chain.append(node)
        steps.append(step)
    if not any(s.local for s in steps):
        return Prefix([], model)
    rest = fx.Graph()
    env = {node: rest.placeholder("prefix_output")}
    skip = set(chain) | set(inputs)
    for n in gm.graph.nodes:
        if n not in skip:
            env[n] = rest.node_copy(n, lambda a: env[a])
    return Prefix(steps, fx.GraphModule(gm, rest))


def fold_batchnorm(steps: list[Step]) -> list[Step]:
    """The same chain with each eval BatchNorm2d right after a Conv2d folded into the conv's crop
    computation (one pass over the crop instead of two; equal up to float rounding).
    `full_fn` of the merged step still runs both modules as the model does."""
    out: list[Step] = []
    for step in steps:
        conv, bn = (out[-1].full_fn if out else None), step.full_fn
        if not (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d):
            out.append(step)
            continue
        weight, bias = effective_weights(conv, bn)

        def crop_fn(t, conv=conv, weight=weight, bias=bias):
            return F.conv2d(t, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

        def full_fn(t, conv=conv, bn=bn):
            return bn(conv(t))

        out[-1] = dataclasses.replace(out[-1], name=f"{out[-1].name}+{step.name}", full_fn=full_fn, crop_fn=crop_fn)
    return out
