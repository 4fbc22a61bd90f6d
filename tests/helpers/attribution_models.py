"""Tiny models for the attribution tests, with answers that are easy to check or to compute otherwise."""

import torch
import torch.nn.functional as F
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


# the ways a network can call its ReLU: modules (as Captum needs them), functions, methods, in place or not
RELU_CALLS = ("module", "module_inplace", "functional", "functional_inplace", "torch", "torch_", "method", "method_")


class ReluCall(nn.Module):
    """One ReLU site, called as `how` (one of RELU_CALLS); the in-place ways are used as statements, so the
    network goes on with the tensor they changed. Holds an `nn.ReLU` only for the module ways."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        if how.startswith("module"):
            self.relu = nn.ReLU(inplace=how == "module_inplace")

    def forward(self, x):
        if self.how.startswith("module"):
            return self.relu(x)
        if self.how == "functional_inplace":
            F.relu(x, inplace=True)
        elif self.how == "torch_":
            torch.relu_(x)
        elif self.how == "method_":
            x.relu_()
        else:
            return {"functional": F.relu, "torch": torch.relu, "method": torch.Tensor.relu}[self.how](x)
        return x


class CifarBlock(nn.Module):
    """The basic block of the CIFAR ResNets (He et al. 2016, §4.2): conv-BN-ReLU-conv-BN, plus the
    shortcut, then ReLU. Option A shortcut: where the block halves the size and widens, the input is
    subsampled by 2 and zero-padded with the new channels (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int, relu: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu1, self.relu2 = ReluCall(relu), ReluCall(relu)
        self.pad = cout - cin

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad or self.conv1.stride != (1, 1):
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return self.relu2(out + shortcut)


class CifarResNet(nn.Module):
    """A two-stage CIFAR ResNet: conv-BN-ReLU, a block at 8 channels, a block down to 16, global pool, 10 logits."""

    def __init__(self, relu: str = "functional"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = ReluCall(relu)
        self.layer1 = CifarBlock(8, 8, 1, relu)
        self.layer2 = CifarBlock(8, 16, 2, relu)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        out = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(out.mean(dim=(2, 3)))


def cifar_resnet(relu: str = "functional", seed: int = 0) -> nn.Module:
    """CifarResNet with its ReLUs called as `relu` (RELU_CALLS); the same weights for every `relu` at one seed."""
    torch.manual_seed(seed)
    return _settle(CifarResNet(relu), 20.0)


class SqueezeExcite(nn.Module):
    """conv-ReLU, then a squeeze-excitation gate (Hu et al.): x · sigmoid(fc2(ReLU(fc1(mean over space of x)))),
    then a linear head. `functional`: F.relu and torch.sigmoid; otherwise nn.ReLU and nn.Sigmoid modules."""

    def __init__(self, functional: bool, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.head = nn.Linear(8, 5)
        self.functional = functional
        if not functional:
            self.relu1, self.relu2, self.gate = nn.ReLU(), nn.ReLU(), nn.Sigmoid()

    def forward(self, x):
        relu = F.relu if self.functional else None
        x = relu(self.conv(x)) if relu else self.relu1(self.conv(x))
        s = self.fc1(x.mean(dim=(2, 3), keepdim=True))
        s = self.fc2(relu(s) if relu else self.relu2(s))
        x = x * (torch.sigmoid(s) if relu else self.gate(s))
        return self.head(x.mean(dim=(2, 3)))
