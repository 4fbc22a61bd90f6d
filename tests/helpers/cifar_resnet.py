"""A CIFAR-10 ResNet (He et al. 2015, §4.2) written the way the popular public CIFAR ResNet-20 repositories
write it: functional ReLU, a `LambdaLayer` for the parameter-free "option A" shortcut (stride-2 subsampling,
zero-padded channels), a head named `linear`. Its state_dict keys are theirs (`conv1.weight`,
`layer1.0.bn1.running_mean`, `linear.weight`), so checkpoints saved from it look like the ones users bring.
"""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class LambdaLayer(nn.Module):
    """Wraps a function as a module (no parameters, so nothing in the state_dict)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _pad_shortcut(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Option A: (B, C, H, W) → (B, C + 2·pad, H/2, W/2), the new channels zero."""
    return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            # a partial of a module-level function, not a lambda: the whole model must pickle (torch.save(model))
            self.shortcut = LambdaLayer(partial(_pad_shortcut, pad=planes // 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3×32×32 → num_classes; three stages of 16, 32, 64 channels."""

    def __init__(self, num_blocks: tuple[int, int, int], num_classes: int = 10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])            # (B, 64, 1, 1)
        return self.linear(out.flatten(1))


def resnet8(num_classes: int = 10) -> ResNet:
    """The smallest of the family (one block per stage): what most checkpoint tests save and load."""
    return ResNet((1, 1, 1), num_classes)


def resnet20() -> ResNet:
    return ResNet((3, 3, 3))
