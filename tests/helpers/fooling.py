"""A CNN with a planted "fooling" path (in the spirit of Geirhos et al. 2023, "Don't trust your eyes"): unit 0
of `features.r2` is driven on photos by local brightness, and far more strongly by a fine checkerboard that no
Fashion-MNIST photo contains, through a hidden channel; unit 1 reads only channels that photos drive.

conv1 (1 → 4, 4×4): 0 local mean (brightness), 1 vertical edges, 2 horizontal edges, 3 hidden: a 2-px
checkerboard detector whose bias keeps it off on every photo (train and test). conv2 (4 → 2, 1×1): unit 0 =
brightness + 6 × hidden; unit 1 = brightness + edges. Then global average pooling and a Linear layer
(penultimate features: 2). Gradient ascent from noise never finds the hidden path (its ReLU is off, so no
gradient flows through it): the checkerboard is the picture a manipulated visualization would show.
"""

from collections import OrderedDict

import torch
from torch import nn

HIDDEN_BIAS = -29.0      # normalized input units: no Fashion-MNIST photo (train or test, at most 28.5) reaches it


def fooling_cnn() -> nn.Module:
    c1 = nn.Conv2d(1, 4, 4, padding=2)
    c2 = nn.Conv2d(4, 2, 1)
    with torch.no_grad():
        c1.weight.zero_()
        c1.bias.zero_()
        c1.weight[0, 0] = 1 / 16
        c1.weight[1, 0, :, :2], c1.weight[1, 0, :, 2:] = -0.25, 0.25
        c1.weight[2, 0, :2, :], c1.weight[2, 0, 2:, :] = -0.25, 0.25
        block = torch.tensor([[1.0, 1.0, -1.0, -1.0], [1.0, 1.0, -1.0, -1.0]])
        c1.weight[3, 0] = torch.cat([block, -block])            # 2-px checkerboard
        c1.bias[3] = HIDDEN_BIAS
        c2.weight.zero_()
        c2.bias.zero_()
        c2.weight[0, 0, 0, 0], c2.weight[0, 3, 0, 0] = 1.0, 6.0
        c2.weight[1, 0, 0, 0], c2.weight[1, 1, 0, 0], c2.weight[1, 2, 0, 0] = 1.0, 0.5, 0.5
    torch.manual_seed(0)
    head = nn.Linear(2, 10)
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(OrderedDict(c1=c1, r1=nn.ReLU(), c2=c2, r2=nn.ReLU())),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=head)).eval()
