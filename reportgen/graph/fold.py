"""BatchNorm folding: a conv followed by an eval-mode BatchNorm2d is one conv with other weights.

`find_conv` gives a layer's conv and the BatchNorm right after it; folding them gives the layer's
pre-activation as one conv, for circuits (weights as the layer uses them) and incremental occlusion
(one pass over a crop instead of two).
"""

import torch
from torch import nn

from reportgen.errors import ModelError


def effective_weights(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (Cout, Cin/groups, kh, kw), bias (Cout,)), detached, of `conv` then `bn` (with its running
    statistics, as in eval mode) as one conv: bn(conv(x)) == conv2d(x, weight, bias, conv's stride, ...).

    bn None: the conv's own weights (a zero bias when it has none), copied.
    """
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(weight[:, 0, 0, 0])
    if bn is None:
        return weight.clone(), bias.clone()
    if bn.running_var is None:
        raise ModelError(f"{bn} keeps no running statistics, so it cannot be folded into the conv before it")
    scale = bn.running_var.detach().add(bn.eps).rsqrt()                 # (Cout,)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(scale)
    return weight * scale[:, None, None, None], (bias - bn.running_mean.detach()) * scale + shift
