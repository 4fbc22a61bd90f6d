"""Occlusion runs the model's rest with BatchNorm folded into the convs and channels-last weights: a copy,
equal to the model up to float rounding; where it cannot fold, the rest as it is."""

import torch
import torchvision
from torch import nn

from reportgen.analyses.attribution.incremental import local_prefix
from reportgen.analyses.attribution.occluded import _fused_channels_last


def bn_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    for m in model.modules():   # statistics as after training, so that folding changes the weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def test_fused_rest_is_a_folded_channels_last_copy_equal_to_the_model():
    model = bn_resnet()
    rest = local_prefix(model).rest
    fused = _fused_channels_last(rest)
    assert fused is not rest
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20      # the model keeps its own
    conv = next(m for m in fused.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    z = torch.randn(2, 64, 16, 16)                                                  # the chain's output
    with torch.inference_mode():
        torch.testing.assert_close(fused(z.contiguous(memory_format=torch.channels_last)), rest(z),
                                   rtol=1e-4, atol=1e-5)


def test_rest_in_training_mode_is_not_folded():
    model = bn_resnet().train()
    rest = local_prefix(model).rest
    assert _fused_channels_last(rest) is rest
