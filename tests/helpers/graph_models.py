"""Tiny models for the graph and circuits tests, each with a known wiring."""

import functools

import torch
import torchvision
import torch.nn as nn
import torch.nn.functional as F


class SmallCNN(nn.Sequential):
    """Fashion-MNIST-like (1, 28, 28) -> 10: two Conv-BN-ReLU-MaxPool blocks, then a Linear head.
    Layers: features.0 conv, .1 BN, .2 ReLU, .3 pool, .4 conv, .5 BN, .6 ReLU, .7 pool; classifier.1."""

    def __init__(self, pool: type[nn.Module] = nn.MaxPool2d, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), act(), pool(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), act(), pool(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


class OddNet(nn.Module):
    """Every awkward window: asymmetric zero padding, stride + dilation + large padding, a functional
    pool in ceil mode, 'same' padding with an even kernel, a channel concat, a grouped conv, a
    1x1 stride-3 conv (its windows leave gaps), a dilated conv, and a global gate broadcast back."""

    def __init__(self, pool: str = "avg"):
        super().__init__()
        self.pool = F.avg_pool2d if pool == "avg" else F.max_pool2d
        self.pad = nn.ZeroPad2d((1, 0, 2, 0))  # left 1, top 2
        self.a = nn.Conv2d(1, 4, 3, stride=2, padding=3, dilation=2)
        self.b = nn.Conv2d(4, 4, 4, padding="same")
        self.e = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c = nn.Conv2d(8, 8, 1, stride=3)
        self.d = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.gate = Gate(8)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        x = self.act(self.a(self.pad(x)))
        x = self.pool(x, 3, 2, 1, ceil_mode=True)
        x = torch.cat([x, self.act(self.b(x))], 1)
        x = self.act(self.d(self.c(self.act(self.e(x)))))
        return self.gate(x)


class Gate(nn.Module):
    """x * sigmoid(mean of x over the image): every output unit depends on every input unit."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(F.adaptive_avg_pool2d(x, 1)))


class ConcatNet(nn.Module):
    """`head`'s input is cat([left (2 ch), right (3 ch)]) through a ReLU; `tail`'s is a product."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.left = nn.Conv2d(4, 2, 1)
        self.right = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3))
        self.head = nn.Conv2d(5, 6, 3)
        self.tail = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        s = self.relu(self.stem(x))
        x = self.head(F.relu(torch.cat([self.left(s), self.right(s)], 1)))
        return self.tail(x * torch.sigmoid(x.mean((2, 3), keepdim=True)))


class DepthwiseNet(nn.Sequential):
    """Grouped and depthwise convs: 0 (3 -> 6, groups 3), 1 BN, 2 ReLU, 3 (6 -> 6, groups 6), 4 (6 -> 4)."""

    def __init__(self):
        super().__init__(
            nn.Conv2d(3, 6, 3, padding=1, groups=3), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6), nn.Conv2d(6, 4, 1),
        )


class Upsampler(nn.Sequential):
    """A conv after a bilinear upsampling (receptive fields read its interpolation weights)."""

    def __init__(self):
        super().__init__(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(2, 2, 3))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm2d non-trivial running stats and affine parameters (fresh ones are identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.randn(n, generator=generator))
                module.bias.data.copy_(torch.randn(n, generator=generator))
    return model.eval()


@functools.cache
def torchvision_model(name: str) -> nn.Module:
    """A randomly initialised torchvision model in eval mode, built once per session (VGG19's init
    alone takes seconds). Shared: never modify it; copy it first."""
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


class OptionABlock(nn.Module):
    """CIFAR ResNet basic block with the option-A shortcut of He et al. (2016): when the block halves the
    image, the identity is subsampled with a strided slice and zero-padded with channels (`F.pad` of the
    channel dim only), as in the popular CIFAR-10 ResNet-20 code; ReLUs are functional."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, act=F.relu):
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class CifarResNet(nn.Module):
    """ResNet-20 (3 stages of `blocks` option-A blocks, 16/32/64 channels) for (3, 32, 32) inputs.
    Layers: conv1, layer1..3 (and their blocks layerN.i), linear. `act`: the activation (functional)."""

    def __init__(self, blocks: int = 3, num_classes: int = 10, act=F.relu):
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes, layers = 16, []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            layers.append(nn.Sequential(*[OptionABlock(planes if i == 0 else width, width, stride if i == 0 else 1, act)
                                          for i in range(blocks)]))
            planes = width
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


class Transposer(nn.Module):
    """x + its transpose, then a conv: unit (y, x) reads around (y, x) and (x, y), so its box is not its
    row's span × its column's (a square input)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        x = self.a(x)
        return self.b(x + x.transpose(2, 3))


class CumsumNet(nn.Module):
    """A cumulative sum along x between two 3x3 convs: an op without known geometry. Unit (y, x) of `b`
    reads rows y - 2 .. y + 2 and columns 0 .. x + 2."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return self.b(torch.cumsum(self.a(x), dim=3))


class ChannelsLast(nn.Module):
    """ConvNeXt's pattern: a conv, then LayerNorm and Linear on (B, H, W, C) between permutes. Layer `norm`
    is channels-last: read as (C, H, W) its units (y, x) are (image x, channel)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm, self.fc = nn.LayerNorm(4), nn.Linear(4, 4)
        self.out = nn.Conv2d(4, 2, 3, stride=2)

    def forward(self, x):
        x = self.fc(self.norm(self.conv(x).permute(0, 2, 3, 1)))
        return self.out(x.permute(0, 3, 1, 2))


class ConvBnConv(nn.Sequential):
    """conv3x3 (3 -> 4) -> BN -> conv3x3 (4 -> 5), no activation: layers 0, 1, 2."""

    def __init__(self):
        super().__init__(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 3, padding=1))


class IdentityResidual(nn.Module):
    """y = bn(conv(x)) + x on 4 channels."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) + x


class ProjectionResidual(nn.Module):
    """y = bn2(conv2(x)) + bn_d(down(x)): a 3x3 branch and a 1x1 projection skip, 4 -> 6 channels."""

    def __init__(self):
        super().__init__()
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.down, self.bn_d = nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6)

    def forward(self, x):
        return self.bn2(self.conv2(x)) + self.bn_d(self.down(x))


class ConcatPointwise(nn.Module):
    """mix(cat(left(x), right(x))): left a 3x3 conv (4 -> 2), right a 3x3 conv + BN (4 -> 3), mix 1x1 (5 -> 6)."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(4, 2, 3, padding=1)
        self.right = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3))
        self.mix = nn.Conv2d(5, 6, 1)

    def forward(self, x):
        return self.mix(torch.cat([self.left(x), self.right(x)], 1))


class PointwiseDepthwise(nn.Sequential):
    """MobileNet's pattern: 0 pointwise 1x1 (4 -> 6), 1 BN, 2 `act` (Identity: none), 3 depthwise 3x3 (6 groups)."""

    def __init__(self, act: type[nn.Module] = nn.Identity):
        super().__init__(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), act(), nn.Conv2d(6, 6, 3, padding=1, groups=6))


class BnGroupedConv(nn.Sequential):
    """0 BN on the 4 input channels, 1 a 3x3 conv 4 -> 6 in 2 groups (filters 0-2 read channels 0-1)."""

    def __init__(self):
        super().__init__(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, padding=1, groups=2))
