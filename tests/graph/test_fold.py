"""reportgen.graph.fold: a conv and the eval-mode BatchNorm after it, folded, equal running both."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.errors import ModelError
from reportgen.graph import effective_weights


def randomized(bn: nn.BatchNorm2d, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 3 + 0.1)
        for param in (bn.weight, bn.bias):
            if param is not None:
                param.copy_(torch.randn(bn.num_features, generator=g))
    return bn.eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [dict(affine=True), dict(affine=False), dict(bias=False)],
                         ids=["affine", "plain", "scale-only"])
@pytest.mark.parametrize("groups, stride, padding, dilation", [(1, 1, 1, 1), (2, 2, 0, 2), (4, 1, "same", 1)])
def test_folded_conv_equals_conv_then_batchnorm(bias, affine, groups, stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, stride, padding, dilation, groups, bias=bias).double()
    bn = randomized(nn.BatchNorm2d(8, eps=1e-3, **affine).double(), seed=1)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    weight, b = effective_weights(conv, bn)
    with torch.no_grad():
        expected = bn(conv(x))
    folded = F.conv2d(x, weight, b, stride, padding, dilation, groups)
    torch.testing.assert_close(folded, expected, rtol=1e-10, atol=1e-10)
    assert not weight.requires_grad and not b.requires_grad


def test_without_batchnorm_the_conv_weights_are_copied():
    conv = nn.Conv2d(2, 3, 3, bias=False)
    weight, bias = effective_weights(conv, None)
    assert torch.equal(weight, conv.weight) and torch.equal(bias, torch.zeros(3))
    weight.add_(1)
    assert not torch.equal(weight, conv.weight)


def test_batchnorm_without_running_statistics_is_refused():
    bn = nn.BatchNorm2d(6, track_running_stats=False)
    with pytest.raises(ModelError, match=f"^{re.escape(repr(bn))} keeps no running statistics, so it cannot be "
                                         "folded into the conv before it$"):
        effective_weights(nn.Conv2d(2, 6, 1), bn)
