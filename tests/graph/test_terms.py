"""`decompose`: the terms of a unit on small graphs whose answer is written by hand (channel shuffles and splits,
a chain of linear residual blocks, a BatchNorm of a sum, a layer scale), and the sum of the measured terms
against the model's own output."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from reportgen.errors import ModelError
from reportgen.graph.terms import activation_of, capture, decompose, measure, shaped_trace
from reportgen.graph.trace import layer_node


def shuffle(x, groups: int):
    """torchvision's ShuffleNet channel shuffle, as written there."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class Shuffled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = shuffle(torch.cat([self.a(x), self.b(x)], 1), 2)     # 8 channels
        left, right = y.chunk(2, dim=1)
        return torch.relu(torch.cat([right, left], 1))


class LinearStream(nn.Module):
    """Three blocks adding a conv to a stream with no activation between (MobileNet's linear bottleneck)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.f1, self.f2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.f1(x)
        return x + self.f2(x)


class NormOfSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.scale = nn.Parameter(torch.tensor([0.5, -2.0, 3.0, 1e-3]).view(4, 1, 1))

    def forward(self, x):
        return self.scale * self.bn(self.a(x) + self.b(x)) + 1.5


def prepared(block: nn.Module) -> nn.Module:
    """`block` as layer "block" of a model, its BatchNorms with a trained model's kind of statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(block=block))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)
    return model.eval()


def recomputed_equals_the_model(model, layer: str, channels) -> None:
    gm = shaped_trace(model, (1, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    node = layer_node(gm, layer).name
    for ch in channels:
        d = decompose(model, layer, ch, gm)
        values = capture(gm, x, {t.node for t in d.terms} | {node})
        m = measure(d, values, node, [(0, 0), (3, 5)])
        assert abs(activation_of(gm, d, m.pre) - m.unit).max() < 1e-5


def test_a_channel_shuffle_and_split_lead_to_the_conv_that_made_the_channel():
    model = prepared(Shuffled())
    gm = shaped_trace(model, (1, 3, 8, 8))
    # by hand: the cat is a0..a3 b0..b3; the shuffle (2 groups) gives a0 b0 a1 b1 a2 b2 a3 b3; the output is its
    # second half (a2 b2 a3 b3) then its first (a0 b0 a1 b1)
    want = ["a2", "b2", "a3", "b3", "a0", "b0", "a1", "b1"]
    for ch, name in enumerate(want):
        (term,) = decompose(model, "block", ch, gm).terms
        assert (term.conv, term.channel) == ("block." + name[0], int(name[1])), ch
    recomputed_equals_the_model(model, "block", range(8))


def test_a_linear_residual_stream_lists_every_block():
    model = prepared(LinearStream())
    d = decompose(model, "block", 2, shaped_trace(model, (1, 3, 8, 8)))
    assert [(t.kind, t.conv or t.module, t.skip) for t in d.terms] == [("conv", "block.f1", False),
                                                                       ("conv", "block.f2", False),
                                                                       ("layer", None, True)]
    assert d.activation is None and d.label.endswith("+ skip from relu")
    recomputed_equals_the_model(model, "block", range(4))


def test_a_batchnorm_of_a_sum_and_a_layer_scale_scale_the_terms():
    model = prepared(NormOfSum())
    bn = model.block.bn
    for ch in range(4):
        d = decompose(model, "block", ch, shaped_trace(model, (1, 3, 8, 8)))
        a = float(bn.weight[ch] / torch.sqrt(bn.running_var[ch] + bn.eps))
        s = float(model.block.scale[ch, 0, 0])
        assert [t.conv for t in d.terms] == ["block.a", "block.b"]
        assert [t.scale for t in d.terms] == pytest.approx([s * a, s * a])
        assert d.bias == pytest.approx(s * (float(bn.bias[ch]) - float(bn.running_mean[ch]) * a) + 1.5)
    recomputed_equals_the_model(model, "block", range(4))


def test_a_unit_that_is_not_a_sum_has_no_terms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)).eval()
    with pytest.raises(ModelError, match=r"layer '1' is not the output of a conv, a sum or a concatenation: it "
                                         r"comes from MaxPool2d '1'"):
        decompose(model, "1", 0, shaped_trace(model, (1, 3, 8, 8)))
