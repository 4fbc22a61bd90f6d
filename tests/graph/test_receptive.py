"""reportgen.graph.receptive: receptive fields.

Receptive fields are checked against autograd: the bounding box of the nonzero input gradient of a
unit. That box equals the arithmetic one when every path carries gradient (random weights, leaky
ReLUs, average pooling) and lies inside it with max pooling and ReLUs, which drop paths.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from reportgen.demo import fashion_cnn
from reportgen.errors import ModelError
from reportgen.graph import receptive_field, receptive_fields
from tests.helpers.graph_models import OddNet, SmallCNN, Upsampler, randomize_batchnorm, torchvision_model

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # OddNet's, on purpose


class _Reached(Exception):
    """Stops the forward pass once every layer of interest has been computed."""


def gradient_boxes(model, units_by_layer, x):
    """{layer: [(x0, y0, x1, y1)]}: the box of the nonzero input gradient of a random channel mix of
    each layer at each of its units ((0, 0, 0, 0) when empty). One forward pass serves all layers."""
    count = max(len(units) for units in units_by_layer.values())
    outputs, handles = {}, []

    def keep(layer):
        def hook(module, inputs, output):
            outputs[layer] = output
            if len(outputs) == len(units_by_layer):
                raise _Reached
        return hook

    for layer in units_by_layer:
        handles.append(model.get_submodule(layer).register_forward_hook(keep(layer)))
    xs = x.repeat(count, 1, 1, 1).requires_grad_()
    try:
        model(xs)
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    boxes = {}
    for layer, units in units_by_layer.items():
        out, index = outputs[layer], torch.arange(len(units))
        ys, xs_ = torch.tensor([u[0] for u in units]), torch.tensor([u[1] for u in units])
        picked = out[index, :, ys, xs_] if out.dim() == 4 else out[index]  # (units, C)
        mix = torch.randn(picked.shape[1], generator=torch.Generator().manual_seed(1))
        (grad,) = torch.autograd.grad((picked * mix).sum(), xs, retain_graph=True)
        boxes[layer] = [_support_box(g) for g in grad[: len(units)].abs().sum(1).numpy()]
    return boxes


def _support_box(grad):
    rows, cols = np.nonzero(grad.any(1))[0], np.nonzero(grad.any(0))[0]
    return (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) if len(rows) else (0, 0, 0, 0)


def units_of(shape, count=2, seed=0):
    """Corners, centre and `count` random units of an (H, W) output."""
    h, w = shape
    rng = np.random.default_rng(seed)
    random = [(int(rng.integers(h)), int(rng.integers(w))) for _ in range(count)]
    return [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2)] + random


def linearized(model):
    """Leaky ReLUs for ReLUs and average for max pooling: every path then carries gradient."""
    for name, module in list(model.named_modules()):
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if isinstance(module, nn.ReLU):
            setattr(parent, name.rpartition(".")[2], nn.LeakyReLU(0.1))
        if isinstance(module, nn.MaxPool2d):
            pool = nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode)
            setattr(parent, name.rpartition(".")[2], pool)
    return model.eval()


CASES = [  # model factory, input (C, H, W), layers
    (lambda: torchvision_model("vgg19"), (3, 48, 48), ["features.10", "features.20", "features.36"]),
    (lambda: torchvision_model("resnet18"), (3, 48, 48), ["layer1.0.conv2", "layer2.0", "layer3.1.bn1", "layer4"]),
    (lambda: torchvision_model("alexnet"), (3, 127, 127), ["features.0", "features.5", "features.12", "avgpool",
                                                           "classifier.1"]),
    (lambda: randomize_batchnorm(SmallCNN()), (1, 28, 28), ["features.2", "features.7", "classifier.1"]),
    (lambda: OddNet().eval(), (1, 29, 27), ["a", "b", "e", "c", "d", "gate"]),
    (lambda: randomize_batchnorm(fashion_cnn.build()), (1, 28, 28), ["features.conv2_relu", "features.pool1",
                                                                     "features.conv5", "avgpool"]),
    (lambda: Upsampler().eval(), (1, 15, 13), ["0", "1", "2"]),
]


@pytest.mark.parametrize("factory, size, layers", CASES,
                         ids=["vgg19", "resnet18", "alexnet", "small", "odd", "demo", "upsample"])
def test_receptive_field_is_the_gradient_support(factory, size, layers):
    torch.manual_seed(0)
    x = torch.randn(1, *size)
    original = factory()
    for model, exact in ((original, False), (linearized(copy.deepcopy(original)), True)):
        fields = receptive_fields(model, layers, size[1:])
        units = {layer: units_of(fields[layer].output_size) for layer in layers}
        for layer, grad_boxes in gradient_boxes(model, units, x).items():
            for unit, grad_box in zip(units[layer], grad_boxes):
                box = fields[layer].box(*unit)
                if exact:
                    assert box == grad_box, (layer, unit)
                elif grad_box != (0, 0, 0, 0):  # max pooling and ReLU drop paths: the gradient stays inside
                    assert box[0] <= grad_box[0] and box[1] <= grad_box[1], (layer, unit)
                    assert grad_box[2] <= box[2] and grad_box[3] <= box[3], (layer, unit)


def test_receptive_field_sizes_match_published_values():
    # Sizes worked out layer by layer (r += (k - 1) * jump), as in Araujo et al., Distill 2019.
    vgg16 = receptive_fields(torchvision_model("vgg16"), ["features.29", "features.30"], (224, 224))
    assert (vgg16["features.29"].size, vgg16["features.29"].stride) == ((196, 196), (16, 16))  # conv5_3
    assert (vgg16["features.30"].size, vgg16["features.30"].stride) == ((212, 212), (32, 32))  # pool5
    resnet = receptive_field(torchvision_model("resnet18"), "layer4", (224, 224))
    assert (resnet.size, resnet.stride, resnet.output_size) == ((435, 435), (32, 32), (7, 7))
    assert receptive_field(torchvision_model("alexnet"), "features.12", (224, 224)).size == (195, 195)


def test_receptive_field_of_a_unit_inside_the_image_is_unclipped():
    field = receptive_field(torchvision_model("vgg16"), "features.10", (224, 224))  # conv3_1: 24 px, jump 4
    assert field.box(30, 20) == (20 * 4 - 10, 30 * 4 - 10, 20 * 4 + 14, 30 * 4 + 14)
    assert field.box(0, 0) == (0, 0, 14, 14)


def test_receptive_field_errors():
    field = receptive_field(SmallCNN(), "features.3", (28, 28))
    with pytest.raises(IndexError, match=r"unit \(14, 0\) is outside 'features.3''s output of size \(14, 14\)"):
        field.box(14, 0)
    with pytest.raises(ModelError, match=r"layer 'features.9' is not a module called in the model's forward"):
        receptive_field(SmallCNN(), "features.9", (28, 28))
