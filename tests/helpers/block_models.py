"""One small 1×28×28 CNN made of the blocks of modern architectures, each a spec layer whose circuit can be
written down by hand: an identity-skip residual block, a projection-skip block, a concatenation of two
branches and a conv reading it, a depthwise conv after a pointwise one, a grouped conv. BatchNorms carry
non-trivial running statistics (as a trained model's do), so folding them matters.
"""

from collections import OrderedDict

import torch
from torch import nn


class IdentityBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + x)"""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class ProjectionBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + down(x)), down = 1×1 conv (stride 2) → BN"""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.down(x))


class Concat(nn.Module):
    """cat([relu(bn(1×1 conv)), relu(bn(3×3 conv))]): 6 + 6 channels."""

    def __init__(self, cin: int):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(cin, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.res = IdentityBlock(8)
        self.proj = ProjectionBlock(8, 12)
        self.cat = Concat(12)
        self.mix = nn.Sequential(nn.Conv2d(12, 8, 3, padding=1), nn.ReLU())
        # pointwise → BN → ReLU6 → depthwise → BN, as in MobileNet's inverted residual (no skip here)
        self.dw = nn.Sequential(OrderedDict([
            ("pw", nn.Conv2d(8, 16, 1, bias=False)), ("pw_bn", nn.BatchNorm2d(16)), ("act", nn.ReLU6()),
            ("dw", nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)), ("dw_bn", nn.BatchNorm2d(16))]))
        self.grouped = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, groups=2), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.mix(self.cat(self.proj(self.res(self.stem(x)))))
        x = self.grouped(self.dw(x))
        return self.head(x.mean((2, 3)))


def blocks() -> Blocks:
    torch.manual_seed(0)
    model = Blocks()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()
