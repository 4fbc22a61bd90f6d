"""Tiny models for the attribution tests, with answers that are easy to check or to compute otherwise."""

import torch
from torch import nn

from reportgen.demo.fashion_cnn import FashionCNN


def randomize_batchnorm(bn: nn.BatchNorm2d) -> None:
    """Statistics and affine parameters as after training, instead of the identity of a fresh layer."""
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)


def _settle(model: nn.Module, logit_scale: float) -> nn.Module:
    """Eval mode, BatchNorm statistics as after training, and a last layer scaled so that
    softmax probabilities (and their drops under occlusion) are far from uniform."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            randomize_batchnorm(m)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(logit_scale)
    return model.eval()


def tiny_cnn(seed: int = 0, channels: int = 3, inplace: bool = False, batchnorm: bool = True) -> nn.Module:
    """(B, channels, H, W) → 5 logits: Conv-BN-ReLU-MaxPool, Conv-BN-ReLU, global pool, Linear
    (without BN, each ReLU directly follows its conv, as in torchvision's VGG)."""
    torch.manual_seed(seed)

    def norm(c):
        return [nn.BatchNorm2d(c)] if batchnorm else []

    model = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), *norm(8), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), *norm(16), nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    return _settle(model, 20.0)


def demo_cnn(seed: int = 0) -> nn.Module:
    """The demo Fashion-MNIST CNN (in-place ReLUs), random weights drawn from `seed`."""
    torch.manual_seed(seed)
    return _settle(FashionCNN(), 20.0)


class Untraceable(nn.Module):
    """A CNN whose forward branches on data, so `torch.fx` cannot trace it."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.net = tiny_cnn(seed, channels=1)

    def forward(self, x):
        if x.sum() > 1e9:
            return -self.net(x)
        return self.net(x)


class Failing(nn.Module):
    """Runs a ReLU network, then raises when `fail` is set: for tests that hooks go even on errors."""

    def __init__(self):
        super().__init__()
        self.net = tiny_cnn(0, channels=1, inplace=True)
        self.fail = False

    def forward(self, x):
        out = self.net(x)
        if self.fail:
            raise RuntimeError("failing on purpose")
        return out


def hook_count(model: nn.Module) -> int:
    """Every forward/backward (pre-)hook registered on any module of `model`."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())
