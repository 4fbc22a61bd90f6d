"""The demo model: a small VGG-style CNN for Fashion-MNIST (1×28×28 → 10 classes).

Four Conv-BN-ReLU layers in two blocks, so circuits have real input channels to trace
(block2_conv1 reads block1_pool, which is block1_conv2's channels). Its weights ship in
`fashion_cnn.pt` (trained by `python -m reportgen.demo.train`).
"""

from collections import OrderedDict

from torch import nn

from ..idx import FASHION_MNIST_CLASSES as CLASSES  # the model's outputs, in label order

__all__ = ["CLASSES", "FashionCNN", "build"]


def _conv_bn_relu(name: str, c_in: int, c_out: int) -> list[tuple[str, nn.Module]]:
    return [(f"{name}", nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)),
            (f"{name}_bn", nn.BatchNorm2d(c_out)),
            (f"{name}_relu", nn.ReLU(inplace=True))]


class FashionCNN(nn.Module):
    """Input (B, 1, 28, 28) normalized with mean 0.2860, std 0.3530; output (B, 10) logits."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            _conv_bn_relu("conv1", 1, 32) + _conv_bn_relu("conv2", 32, 32)
            + [("pool1", nn.MaxPool2d(2))]                                  # 14×14
            + _conv_bn_relu("conv3", 32, 64) + _conv_bn_relu("conv4", 64, 64)
            + [("pool2", nn.MaxPool2d(2))]                                  # 7×7
            + _conv_bn_relu("conv5", 64, 128)
        ))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()),
            ("dropout", nn.Dropout(0.2)),
            ("fc", nn.Linear(128, num_classes)),
        ]))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


def build() -> FashionCNN:
    """Factory named by the demo spec (`factory: reportgen.demo.fashion_cnn:build`)."""
    return FashionCNN()
