"""reportgen.graph.expand: expanded weights against hand compositions of the kernels and against finite
differences on the real model (forward hooks that replace the source layer's output)."""

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.errors import ModelError
from reportgen.graph import ExpansionStop, expanded_weights
from tests.helpers.graph_models import (BnGroupedConv, ChannelsLast, ConcatNet, ConcatPointwise, ConvBnConv,
                                        IdentityResidual, PointwiseDepthwise, ProjectionResidual, SmallCNN,
                                        randomize_batchnorm, torchvision_model)


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for module in model.modules():
        for param in module.parameters(recurse=False):
            nn.init.normal_(param)  # fresh biases and BN affines are zeros and ones: too easy to pass by luck
    return randomize_batchnorm(model, seed)


def folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> np.ndarray:
    """The conv's weights with the eval-mode BN after it folded in, by the textbook formula."""
    weight = conv.weight.detach().double()
    if bn is not None:
        weight = weight * (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().double()[:, None, None, None]
    return weight.numpy()


def bn_scale(bn: nn.BatchNorm2d) -> np.ndarray:
    return (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().double().numpy()


def only(expansions):
    assert len(expansions) == 1
    return expansions[0]


def test_conv_bn_conv_is_the_full_convolution_of_the_kernels():
    model = seeded(ConvBnConv())
    inner, outer = folded(model[0], model[1]), model[2].weight.detach().double().numpy()  # (4, 3, 3, 3), (5, 4, 3, 3)
    c = 3
    expected = np.zeros((3, 5, 5))
    for p in range(3):
        for q in range(3):  # outer tap (p, q) reads the inner conv's output shifted by (p, q)
            expected[:, p:p + 3, q:q + 3] += np.einsum("m,mcrs->crs", outer[c, :, p, q], inner)
    e = only(expanded_weights(model, "2", c, (8, 8), from_layer="input"))
    assert (e.source, e.layers, e.offset, e.crossed, e.activation) == ("input", (), (2, 2), (), None)
    np.testing.assert_allclose(e.kernel, expected, atol=1e-5)
    assert e.kernel.dtype == np.float32


def test_identity_skip_adds_a_delta_at_the_centre_of_its_channel():
    model = seeded(nn.Sequential(IdentityResidual()))
    c = 2
    expected = folded(model[0].conv, model[0].bn)[c].copy()
    expected[c, 1, 1] += 1
    e = only(expanded_weights(model, "0", c, (8, 8)))  # default: the input feeds both paths, one source
    assert (e.source, e.offset) == ("input", (3, 3))
    np.testing.assert_allclose(e.kernel, expected, atol=1e-5)


def test_projection_skip_adds_its_folded_1x1_at_the_centre():
    model = seeded(nn.Sequential(ProjectionResidual()))
    block, c = model[0], 5
    expected = folded(block.conv2, block.bn2)[c].copy()
    expected[:, 1, 1] += folded(block.down, block.bn_d)[c, :, 0, 0]
    e = only(expanded_weights(model, "0", c, (9, 9), from_layer="input"))
    assert e.offset == (3, 3)
    np.testing.assert_allclose(e.kernel, expected, atol=1e-5)


def test_concatenated_branches_mixed_by_a_1x1_conv():
    model = seeded(ConcatPointwise())
    mix, c = model.mix.weight.detach().double().numpy()[:, :, 0, 0], 4
    expected = (np.einsum("m,mcrs->crs", mix[c, :2], folded(model.left))
                + np.einsum("m,mcrs->crs", mix[c, 2:], folded(model.right[0], model.right[1])))
    e = only(expanded_weights(model, "mix", c, (8, 8)))
    assert (e.source, e.offset) == ("input", (3, 3))
    np.testing.assert_allclose(e.kernel, expected, atol=1e-5)


def depthwise_after_pointwise(model: PointwiseDepthwise, c: int) -> np.ndarray:
    """Depthwise filter c reads channel c of the pointwise conv alone: their outer product."""
    return folded(model[0], model[1])[c, :, 0, 0][:, None, None] * model[3].weight.detach().double().numpy()[c, 0]


def test_depthwise_after_pointwise_is_their_product():
    model = seeded(PointwiseDepthwise())
    e = only(expanded_weights(model, "3", 1, (7, 7)))
    assert (e.source, e.offset, e.kernel.shape) == ("input", (2, 2), (4, 3, 3))
    np.testing.assert_allclose(e.kernel, depthwise_after_pointwise(model, 1), atol=1e-5)


def test_relu6_stops_a_linear_expansion_and_is_crossed_through_activations():
    model = seeded(PointwiseDepthwise(nn.ReLU6))
    with pytest.raises(ExpansionStop) as stop:
        expanded_weights(model, "3", 1, (7, 7), from_layer="input")
    assert str(stop.value) == ("the expansion stops at ReLU6 '2': not linear (expanding through activations "
                               "crosses it as the identity)")
    assert (stop.value.where, stop.value.crossable) == ("ReLU6 '2'", True)
    e = only(expanded_weights(model, "3", 1, (7, 7), from_layer="input", through="activations"))
    assert e.crossed == ("ReLU6 '2'",)
    np.testing.assert_allclose(e.kernel, depthwise_after_pointwise(model, 1), atol=1e-5)
    default = only(expanded_weights(model, "3", 1, (7, 7)))  # the linear region ends at the ReLU6
    assert (default.source, default.layers, default.crossed) == ("2", ("2",), ())
    np.testing.assert_allclose(default.kernel, model[3].weight.detach().numpy()[1, :, :, :] *
                               np.eye(6)[:, 1, None, None], atol=1e-6)


def test_grouped_conv_reads_only_its_group():
    model = seeded(BnGroupedConv())
    c = 4  # group 1: input channels 2, 3
    e = only(expanded_weights(model, "1", c, (6, 6), from_layer="input"))
    expected = np.zeros((4, 3, 3))
    expected[2:] = model[1].weight.detach().double().numpy()[c] * bn_scale(model[0])[2:, None, None]
    assert e.offset == (2, 2)
    np.testing.assert_allclose(e.kernel, expected, atol=1e-5)
    assert not e.kernel[:2].any()


def test_max_pooling_is_crossed_as_average_pooling():
    model = seeded(SmallCNN())
    with pytest.raises(ExpansionStop, match=re.escape("the expansion stops at MaxPool2d 'features.3': not linear")):
        expanded_weights(model, "features.4", 0, (28, 28), from_layer="features.2")
    e = only(expanded_weights(model, "features.4", 6, (28, 28), from_layer="features.2", through="activations"))
    weight = model.features[4].weight.detach().numpy()[6]  # (8, 3, 3) on the pooled map
    assert (e.crossed, e.offset) == (("MaxPool2d 'features.3'",), (12, 12))
    np.testing.assert_allclose(e.kernel, np.kron(weight, np.ones((1, 2, 2))) / 4, atol=1e-6)


def test_default_source_through_activations_reaches_the_input():
    e = only(expanded_weights(seeded(SmallCNN()), "features.6", 0, (28, 28), through="activations"))
    assert (e.source, e.activation) == ("input", "ReLU 'features.6'")
    assert e.crossed == ("ReLU 'features.2'", "MaxPool2d 'features.3'")
    assert (e.kernel.shape, e.offset) == ((1, 8, 8), (11, 11))  # pooled rows 6-8, pre-pool 12-17, input 11-18


def test_layer_norm_stops_under_either_setting_and_a_channels_last_source_is_read_channels_first():
    model = seeded(ChannelsLast())
    for through in ("linear", "activations"):
        with pytest.raises(ExpansionStop) as stop:
            expanded_weights(model, "out", 0, (9, 9), from_layer="conv", through=through)
        assert str(stop.value) == "the expansion stops at LayerNorm 'norm': not linear"
    e = only(expanded_weights(model, "out", 1, (9, 9)))  # out conv over fc over the (1, H, W, 4) norm output
    expected = np.einsum("irs,ij->jrs", model.out.weight.detach().numpy()[1], model.fc.weight.detach().numpy())
    assert (e.source, e.offset) == ("norm", (4, 4))  # unit (2, 2) of a 3x3 stride-2 conv
    np.testing.assert_allclose(e.kernel, expected, atol=1e-5)


def test_a_product_of_two_computed_tensors_stops_even_through_activations():
    with pytest.raises(ExpansionStop, match=re.escape("the expansion stops at mul: a product of two computed "
                                                      "tensors: not linear")):
        expanded_weights(seeded(ConcatNet()), "tail", 0, (8, 8), from_layer="head", through="activations")


def test_residual_block_default_sources_are_the_skip_and_the_branch_input():
    model = torchvision_model("resnet18")
    skip, branch = expanded_weights(model, "layer1.1", 7, (32, 32))
    assert (skip.source, skip.layers, skip.offset) == ("layer1.0", ("layer1.0", "layer1.0.relu"), (4, 4))
    np.testing.assert_array_equal(skip.kernel, np.eye(64, dtype=np.float32)[:, 7, None, None])
    block = model.layer1[1]
    assert (branch.source, branch.layers, branch.offset) == ("layer1_1_relu", (), (3, 3))  # the ReLU's 1st call
    np.testing.assert_allclose(branch.kernel, folded(block.conv2, block.bn2)[7], atol=1e-5)
    assert skip.activation == branch.activation == "ReLU 'layer1.1.relu'"


class ReplaceAndRead:
    """Forward hooks on the real model: `source`'s output replaced by a given tensor, `unit`'s output read;
    the forward stops there. Removed on exit."""

    class Done(Exception):
        pass

    def __init__(self, model, source: nn.Module, unit: nn.Module):
        self.model, self.source, self.unit, self.value = model, source, unit, None

    def __enter__(self):
        self.handles = [self.source.register_forward_hook(lambda m, i, o: self.replacement),
                        self.unit.register_forward_hook(self._read)]
        return self

    def _read(self, module, inputs, output):
        self.output = output
        raise self.Done

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def __call__(self, replacement: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        self.replacement = replacement
        try:
            with torch.no_grad():
                self.model(image.expand(len(replacement), -1, -1, -1))
        except self.Done:
            return self.output
        raise AssertionError("the unit's layer was not reached")


def check_by_finite_differences(model, source, unit, expansion, channel, unit_yx, source_shape, channels_last=False):
    """The source-to-unit map is affine: f(e + δ) - f(e) is the kernel's response to δ. Probes: one-hot δ at
    sampled (channel, y, x) inside and around the crop, and dense random δ over the whole map (which a kernel
    wrong anywhere, or nonzero outside its crop, fails)."""
    g = torch.Generator().manual_seed(0)
    c_src, h, w = source_shape
    full = np.zeros(source_shape)
    (y0, x0), (_, kh, kw) = expansion.offset, expansion.kernel.shape
    full[:, y0:y0 + kh, x0:x0 + kw] = expansion.kernel
    probes = torch.zeros(40, c_src, h, w)
    for k in range(32):
        ch = int(torch.randint(c_src, (1,), generator=g))
        y = y0 - 1 + int(torch.randint(kh + 2, (1,), generator=g))
        x = x0 - 1 + int(torch.randint(kw + 2, (1,), generator=g))
        probes[k, ch, min(max(y, 0), h - 1), min(max(x, 0), w - 1)] = 1
    probes[32:] = torch.randn(8, c_src, h, w, generator=g)
    base = torch.zeros(1, c_src, h, w)
    batch = torch.cat([base, probes])
    if channels_last:
        batch = batch.permute(0, 2, 3, 1)
    with ReplaceAndRead(model, source, unit) as run:
        out = run(batch, torch.zeros(1, 3, 32, 32))[:, channel, unit_yx[0], unit_yx[1]].double()
    expected = (probes.double() * torch.from_numpy(full)).sum((1, 2, 3))
    torch.testing.assert_close(out[1:] - out[0], expected, rtol=1e-4, atol=1e-4)
    assert not any(m._forward_hooks for m in model.modules())


def test_resnet18_block_from_its_input_through_activations_matches_finite_differences():
    model = copy.deepcopy(torchvision_model("resnet18"))
    e = only(expanded_weights(model, "layer1.0", 9, (32, 32), from_layer="maxpool", through="activations"))
    assert (e.crossed, e.activation, e.offset, e.kernel.shape) == \
        (("ReLU 'layer1.0.relu'",), "ReLU 'layer1.0.relu'", (2, 2), (64, 5, 5))
    model.layer1[0].relu = nn.Identity()  # the crossed ReLU as the identity, and the unit's own: its pre-activation
    check_by_finite_differences(model, model.maxpool, model.layer1[0], e, 9, (4, 4), (64, 8, 8))


def test_convnext_block_through_layer_scale_and_channels_last_linear_matches_finite_differences():
    model = torchvision_model("convnext_tiny")
    block, c = model.features[1][0], 11
    skip, branch = expanded_weights(model, "features.1.0", c, (32, 32))
    assert (skip.source, branch.source, branch.offset, branch.kernel.shape) == \
        ("features.0", "features.1.0.block.4", (4, 4), (384, 1, 1))
    np.testing.assert_array_equal(skip.kernel, np.eye(96, dtype=np.float32)[:, c, None, None])
    fc2 = block.block[5].weight.detach().numpy()  # (96, 384): layer_scale * fc2 row c, by hand
    np.testing.assert_allclose(branch.kernel[:, 0, 0], block.layer_scale.detach().numpy()[c, 0, 0] * fc2[c],
                               rtol=1e-5, atol=1e-7)
    check_by_finite_differences(model, block.block[4], block, branch, c, (4, 4), (384, 8, 8), channels_last=True)


def test_errors_name_the_layer_and_the_channel():
    model = seeded(ConvBnConv())
    with pytest.raises(ModelError, match=re.escape("layer 'nope' is not a module called in the model's forward")):
        expanded_weights(model, "nope", 0, (8, 8))
    with pytest.raises(ModelError, match=re.escape("layer 'nada' is not a module called")):
        expanded_weights(model, "2", 0, (8, 8), from_layer="nada")
    with pytest.raises(ModelError) as error:
        expanded_weights(model, "2", 5, (8, 8))
    assert str(error.value) == "channel 5 is out of range: layer '2' has 5 channels"
    with pytest.raises(ModelError) as error:
        expanded_weights(model, "0", 0, (8, 8), from_layer="2")
    assert str(error.value) == "layer '0' does not depend on '2'"
    with pytest.raises(ValueError, match="through must be one of"):
        expanded_weights(model, "2", 0, (8, 8), through="everything")


def test_runs_in_eval_mode_and_restores_the_modes():
    model = seeded(ConvBnConv())
    expected = only(expanded_weights(model, "2", 1, (8, 8))).kernel
    model.train()
    model[2].eval()
    stats = model[1].running_mean.clone()
    np.testing.assert_array_equal(only(expanded_weights(model, "2", 1, (8, 8))).kernel, expected)
    assert [m.training for m in model.modules()] == [True, True, True, False]
    torch.testing.assert_close(model[1].running_mean, stats)
