"""reportgen.analyses.kernels, checked against torch's own conv/BN and plain loops over the weights."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reportgen.analyses.kernels import (
    KINDS, capture_inputs, channel_contributions, first_layer_filters, kernel_tiles,
    kind_totals, rank_agreement, rank_input_channels, spearman,
)
from reportgen.demo import fashion_cnn
from reportgen.errors import ModelError
from reportgen.graph import effective_weights, find_conv
from tests.helpers.graph_models import DepthwiseNet, OddNet, randomize_batchnorm, torchvision_model

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # OddNet's, on purpose


def demo():
    torch.manual_seed(0)
    return randomize_batchnorm(fashion_cnn.build())


def expected_ranking(weight, filter, first_channel=0, top_n=10, eps=1e-5):
    """The lab's table, one kernel at a time: (channel, l2, sum, n_pos, n_neg, kind by count, kind by sum)."""
    rows = []
    for j, kernel in enumerate(weight[filter].double()):
        l2, total = kernel.pow(2).sum().sqrt().item(), kernel.sum().item()
        if l2 < eps:
            continue
        n_pos, n_neg = int((kernel > 0).sum()), int((kernel < 0).sum())
        by_count = "excitatory" if n_pos > n_neg else "inhibitory" if n_neg > n_pos else "balanced"
        by_sum = "balanced" if abs(total) < eps else "excitatory" if total > 0 else "inhibitory"
        rows.append((first_channel + j, l2, total, n_pos, n_neg, by_count, by_sum))
    return sorted(rows, key=lambda row: -row[1])[:top_n]


def table(stats):
    return [(s.channel, s.l2, s.sum, s.n_pos, s.n_neg, s.kind_count, s.kind_sum) for s in stats]


def assert_same_table(actual, expected):
    """Rows equal: channel, counts and kinds exactly, L2 and sum to float tolerance."""
    assert [row[:1] + row[3:] for row in actual] == [row[:1] + row[3:] for row in expected]
    assert np.allclose([row[1:3] for row in actual], [row[1:3] for row in expected], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("model, layer, filter", [
    (demo, "features.conv3_relu", 7),
    (lambda: torchvision_model("vgg19"), "features.11", 31),  # the lab's block3_conv1, filter 31
])
def test_ranking_and_kinds_match_the_weights(model, layer, filter):
    _, conv, bn = find_conv(model(), layer)
    weight, _ = effective_weights(conv, bn)
    weight[filter, 3] = 0.0  # near-zero kernels are left out, as the lab did
    weight[filter, 5] = 1e-7
    stats = rank_input_channels(weight, filter)
    assert [s.rank for s in stats] == list(range(1, 11))
    assert_same_table(table(stats), expected_ranking(weight, filter))
    assert np.allclose([s.kernel for s in stats], weight[filter, [s.channel for s in stats]].numpy())
    everything = rank_input_channels(weight, filter, top_n=None)
    assert len(everything) == weight.shape[1] - 2 and {3, 5}.isdisjoint(s.channel for s in everything)


def test_kinds_by_count_and_by_sum_by_hand():
    weight = torch.tensor([[
        [0.1] * 5 + [-0.3] * 4,  # 5 positive beat 4 negative, but the sum -0.7 is negative
        [-0.01] * 9,  # inhibitory by both rules
        [1.0] * 4 + [-1.0] * 4 + [0.0],  # balanced by both rules
    ]]).reshape(1, 3, 3, 3)
    stats = rank_input_channels(weight, 0)
    assert [(s.channel, s.kind_count, s.kind_sum) for s in stats] == [
        (2, "balanced", "balanced"), (0, "excitatory", "inhibitory"), (1, "inhibitory", "inhibitory")]
    assert (stats[0].n_pos, stats[0].n_neg, stats[1].sum) == (4, 4, pytest.approx(-0.7))
    assert kind_totals(stats) == {"count": {"excitatory": 1, "inhibitory": 1, "balanced": 1},
                                  "sum": {"excitatory": 0, "inhibitory": 2, "balanced": 1}}
    assert set(KINDS) == {"excitatory", "inhibitory", "balanced"}


def _layer_output(model, layer, x):
    """The output of `layer` on x, copied before any in-place op after it (VGG's ReLUs) changes it."""
    outputs = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return outputs[0]


CONTRIBUTION_CASES = [  # model, layer recorded (pre-activation), its conv, input size
    (demo, "features.conv3_bn", (1, 28, 28)),
    (lambda: torchvision_model("vgg19"), "features.10", (3, 48, 48)),
    (lambda: randomize_batchnorm(copy.deepcopy(torchvision_model("resnet18"))), "layer2.0.bn1", (3, 40, 40)),
    (lambda: OddNet().eval(), "a", (1, 29, 27)),  # stride 2, padding 3, dilation 2
    (lambda: OddNet().eval(), "b", (1, 29, 27)),  # 'same' padding with an even kernel
    (lambda: randomize_batchnorm(DepthwiseNet()), "1", (3, 20, 20)),  # grouped, 2 filters per group
    (lambda: randomize_batchnorm(DepthwiseNet()), "3", (3, 20, 20)),  # depthwise, stride 2
]


@pytest.mark.parametrize("model, layer, size", CONTRIBUTION_CASES,
                         ids=["demo", "vgg19", "resnet18-stride2", "odd-a", "odd-b", "grouped", "depthwise"])
def test_contributions_sum_to_the_preactivation_at_the_argmax(model, layer, size):
    model = model()
    torch.manual_seed(1)
    x = torch.randn(5, *size)
    conv_path, conv, bn = find_conv(model, layer)
    weight, bias = effective_weights(conv, bn)
    inputs = capture_inputs(model, conv_path, x)
    out = _layer_output(model, layer, x)  # (B, Cout, H, W)
    for filter in (0, weight.shape[0] - 1):
        flat = out[:, filter].flatten(1).argmax(1)
        locations = torch.stack([flat // out.shape[3], flat % out.shape[3]], 1)
        locations[0] = torch.tensor([0, 0])  # a corner too, where the window reads padding
        contributions = channel_contributions(weight, inputs, filter, locations, conv.stride, conv.padding,
                                              conv.dilation, conv.groups)
        assert contributions.shape == (5, weight.shape[1])
        actual = out[torch.arange(5), filter, locations[:, 0], locations[:, 1]].double()
        assert torch.allclose(contributions.sum(1) + bias[filter].double(), actual, rtol=1e-4, atol=1e-4)
        # each channel alone: the conv of an input holding only that channel
        first = filter // (weight.shape[0] // conv.groups) * weight.shape[1]
        for j in (0, weight.shape[1] - 1):
            alone = torch.zeros_like(inputs)
            alone[:, first + j] = inputs[:, first + j]
            single = F.conv2d(alone, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
            expected = single[torch.arange(5), filter, locations[:, 0], locations[:, 1]].double()
            assert torch.allclose(contributions[:, j], expected, rtol=1e-4, atol=1e-5)


def test_grouped_ranking_equals_the_dense_equivalent():
    conv = DepthwiseNet()[0]  # 3 -> 6 channels in 3 groups
    weight = conv.weight.detach()
    dense = torch.zeros(6, 3, 3, 3)
    for f in range(6):
        dense[f, f // 2] = weight[f, 0]
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(F.conv2d(x, dense, padding=1), F.conv2d(x, weight, padding=1, groups=3), atol=1e-6)
    for f in range(6):
        grouped = rank_input_channels(weight, f, groups=3, top_n=None)
        assert_same_table(table(grouped), table(rank_input_channels(dense, f, top_n=None)))
        assert [s.channel for s in grouped] == [f // 2]


def test_locations_outside_the_output_are_refused():
    weight, inputs = torch.randn(2, 3, 3, 3), torch.randn(1, 3, 10, 10)
    with pytest.raises(IndexError, match=r"^locations \[\[5, 0\]\] fall outside the conv output of size 5$"):
        channel_contributions(weight, inputs, 0, torch.tensor([[5, 0]]), stride=2, padding=1)


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.unused = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.conv(x)


def test_capture_inputs_stops_early_and_leaves_no_hook():
    vgg = torchvision_model("vgg19")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(capture_inputs(vgg, "features.10", x), vgg.features[:10](x))
    with pytest.raises(RuntimeError):  # a forward that fails before the conv
        capture_inputs(vgg, "features.10", torch.randn(2, 5, 32, 32))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in vgg.modules())
    model = WithUnused()
    with pytest.raises(ModelError, match=r"^layer 'unused' is not used by the model's forward pass\.$"):
        capture_inputs(model, "unused", torch.randn(1, 1, 5, 5))
    with pytest.raises(ModelError, match=r"^no layer 'nothing' in the model \(run 'reportgen layers SPEC' to list them\)$"):
        capture_inputs(model, "nothing", torch.randn(1, 1, 5, 5))
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_first_layer_filters_are_scaled_per_filter():
    weight = torchvision_model("vgg19").features[0].weight.detach().clone()  # (64, 3, 3, 3)
    weight[5] = 0.25  # a constant filter
    images = first_layer_filters(weight)
    assert images.shape == (64, 3, 3, 3)
    for f in (0, 17, 63):
        w = weight[f].permute(1, 2, 0).double().numpy()  # (kh, kw, C)
        assert images[f] == pytest.approx((w - w.min()) / (w.max() - w.min()))
        assert (images[f].min(), images[f].max()) == (0.0, 1.0)
    assert np.all(images[5] == 0.5)
    assert first_layer_filters(fashion_cnn.build().features.conv1.weight).shape == (32, 3, 3, 1)


def test_kernel_tiles_sorted_by_l2_on_one_scale():
    weight = torch.randn(4, 6, 3, 3)
    weight[2, 4] = 0.0
    channels, tiles = kernel_tiles(weight, 2)
    l2 = [weight[2, j].norm().item() for j in range(6)]
    assert channels.tolist() == sorted(range(6), key=lambda j: -l2[j])
    top = weight[2].abs().max().item()
    assert tiles == pytest.approx(0.5 + weight[2, channels].numpy() / (2 * top))
    assert tiles.min() >= 0 and tiles.max() <= 1 and np.all(tiles[-1] == 0.5)
    assert {tiles.min(), tiles.max()} & {0.0, 1.0}  # the largest |weight| reaches an end
    channels, _ = kernel_tiles(torch.randn(6, 2, 3, 3), 5, groups=3)  # filter 5 reads channels 4, 5
    assert sorted(channels.tolist()) == [4, 5]


def test_spearman_against_the_closed_form():
    rng = np.random.default_rng(0)
    for n in (2, 5, 40):
        a, b = rng.permutation(n), rng.permutation(n)
        closed = 1 - 6 * ((a - b) ** 2).sum() / (n * (n * n - 1))  # no ties
        assert spearman(a * 3.5, np.exp(b)) == pytest.approx(closed)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3])) and np.isnan(spearman([1], [2]))


def test_contribution_ranks_and_agreement():
    torch.manual_seed(0)
    weight = torch.randn(3, 8, 3, 3)
    weight[1, 6] = 0.0
    l2 = weight[1].flatten(1).norm(dim=1)
    signs = torch.tensor([1.0, -1, 1, -1, 1, -1, 1, -1])
    assert rank_agreement(weight, 1, 1, l2 * signs) == pytest.approx(1.0)  # by magnitude
    inverse = torch.where(l2 > 0, 1 / l2, torch.tensor(100.0))  # the zero kernel's value must not count
    assert rank_agreement(weight, 1, 1, inverse) == pytest.approx(-1.0)
    contributions = torch.randn(8)
    stats = rank_input_channels(weight, 1, top_n=None, contributions=contributions)
    by_magnitude = sorted(range(8), key=lambda j: -abs(contributions[j].item()))
    for s in stats:
        assert s.contribution == pytest.approx(contributions[s.channel].item())
        assert s.contribution_rank == by_magnitude.index(s.channel) + 1
    record = stats[0].as_record()
    assert set(record) == {"rank", "channel", "l2", "sum", "n_pos", "n_neg", "kind_count", "kind_sum",
                           "contribution", "contribution_rank"}
    assert record["channel"] == stats[0].channel and rank_input_channels(weight, 1)[0].contribution is None
