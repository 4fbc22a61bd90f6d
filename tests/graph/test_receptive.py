"""reportgen.graph.receptive: receptive fields.

Receptive fields are checked against autograd: the bounding box of the nonzero input gradient of a
unit. That box equals the arithmetic one when every path carries gradient (random weights, leaky
ReLUs, average pooling; or no ReLUs and positive weights) and lies inside it with max pooling and ReLUs,
which drop paths. The fallback (`method="gradient"`) is checked against the analytic fields, against
autograd on models the tests linearize themselves, and against boxes worked out by hand.
"""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from reportgen.demo import fashion_cnn
from reportgen.errors import ModelError
from reportgen.evidence import receptive_fields as evidence_receptive_fields
from reportgen.graph import ReceptiveField, receptive, receptive_field, receptive_fields
from tests.helpers.graph_models import (Branchy, ChannelsLast, CifarResNet, CumsumNet, OddNet, SmallCNN, Transposer,
                                        Upsampler, randomize_batchnorm, torchvision_model)

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # OddNet's, on purpose


class _Reached(Exception):
    """Stops the forward pass once every layer of interest has been computed."""


def gradient_boxes(model, units_by_layer, x, mix=True):
    """{layer: [(x0, y0, x1, y1)]}: the box of the nonzero input gradient of a random channel mix (the
    channels' sum unless `mix`) of each layer at each of its units ((0, 0, 0, 0) when empty). One forward
    pass serves all layers."""
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
        weights = torch.randn(picked.shape[1], generator=torch.Generator().manual_seed(1)) if mix else 1
        (grad,) = torch.autograd.grad((picked * weights).sum(), xs, retain_graph=True)
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


def every_unit(shape):
    return [(y, x) for y in range(shape[0]) for x in range(shape[1])]


def positive_linear(model):
    """Random positive conv weights and BatchNorm scales, eval mode: with no ReLUs every path carries a
    positive gradient, so the gradient's support is the whole dependency set (the test's own brute force)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return model.eval()


CIFAR_BLOCKS = [f"layer{i}.{j}" for i in (1, 2, 3) for j in (0, 1, 2)] + ["layer1", "layer2", "layer3"]


def test_option_a_resnet_blocks_are_the_gradient_support():
    # The popular CIFAR-10 ResNet-20: the option-A shortcut x[:, :, ::2, ::2] zero-padded with channels by F.pad.
    fields = receptive_fields(CifarResNet().eval(), CIFAR_BLOCKS, (16, 16))
    assert {f.method for f in fields.values()} == {"analytic"}
    linear = positive_linear(CifarResNet(act=lambda x: x))  # the same wiring, ReLUs removed
    units = {layer: every_unit(fields[layer].output_size) for layer in CIFAR_BLOCKS}
    x = torch.rand(1, 3, 16, 16) + 0.5
    for layer, boxes in gradient_boxes(linear, units, x, mix=False).items():
        assert [fields[layer].box(*unit) for unit in units[layer]] == boxes, layer
    assert fields["layer3"].output_size == (4, 4) and fields["layer2.0"].box(0, 0) == (0, 0, 11, 11)


def test_receptive_fields_use_the_input_size_as_height_and_width():
    field = receptive_field(CifarResNet().eval(), "layer2", (24, 16))  # the model's head needs H >= W
    assert (field.input_size, field.output_size, field.size, field.stride) == ((24, 16), (12, 8), (37, 37), (2, 2))
    # unit i reads [2i - 18, 2i + 18] along each axis, clipped to the 24 x 16 image
    assert field.box(11, 0) == (0, 2 * 11 - 18, 16, 24) and field.box(0, 7) == (0, 0, 16, 19)
    assert field.box(2, 0) == (0, 0, 16, 2 * 2 + 19)


FALLBACK_CASES = [  # model factory, input (C, H, W), layers: analytic and gradient fields must agree
    (lambda: torchvision_model("vgg16"), (3, 32, 32), ["features.2", "features.9", "features.23", "features.30"]),
    (lambda: torchvision_model("resnet18"), (3, 40, 40), ["maxpool", "layer1.1", "layer2.0.bn1", "layer3", "layer4"]),
    (lambda: CifarResNet().eval(), (3, 24, 16), ["layer1.0", "layer2", "layer3.1"]),
    (lambda: OddNet(pool="max").eval(), (1, 29, 27), ["a", "b", "e", "c", "d", "gate"]),
    (lambda: Upsampler().eval(), (1, 15, 13), ["1", "2"]),
    (lambda: ChannelsLast().eval(), (1, 7, 6), ["conv", "norm", "fc", "out"]),
    (lambda: torchvision_model("shufflenet_v2_x0_5"), (3, 40, 40), ["stage2.0", "stage2", "stage3.0.branch1"]),
    (lambda: torchvision_model("efficientnet_b0"), (3, 32, 32), ["features.2", "features.3.1"]),
    (lambda: torchvision_model("convnext_tiny"), (3, 32, 32), ["features.1.0", "features.1.1.block.5", "features.2"]),
    # 48 3x3 convs: the fallback's float32 run overflows (about 9 ** 48) and is done again in float64
    (lambda: nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(48)]).eval(), (1, 40, 40), ["10", "47"]),
]


@pytest.mark.parametrize("factory, size, layers", FALLBACK_CASES,
                         ids=["vgg16", "resnet18", "cifar", "odd", "upsample", "channels_last", "shufflenet",
                              "efficientnet", "convnext", "deep"])
def test_analytic_fields_equal_the_gradient_fallback(factory, size, layers):
    model = factory()
    analytic = receptive_fields(model, layers, size[1:])
    fallback = receptive_fields(model, layers, size[1:], method="gradient")
    for layer in layers:
        assert (analytic[layer].method, fallback[layer].method) == ("analytic", "gradient")
        units = every_unit(analytic[layer].output_size)
        assert [fallback[layer].box(*u) for u in units] == [analytic[layer].box(*u) for u in units], layer


def test_fallback_for_an_op_without_geometry_matches_the_hand_computation():
    field = receptive_field(CumsumNet(), "b", (11, 9))
    assert field.method == "gradient" and "cumsum" in field.note
    assert field.boxes is None  # separable: rows and columns
    for y, x in every_unit((11, 9)):
        assert field.box(y, x) == (0, max(0, y - 2), min(9, x + 3), min(11, y + 3))


def test_fallback_computes_every_unit_when_boxes_are_not_separable():
    model = Transposer().eval()
    field = receptive_field(model, "b", (9, 9))
    assert field.method == "gradient" and field.boxes is not None
    units = every_unit((9, 9))
    (boxes,) = gradient_boxes(positive_linear(copy.deepcopy(model)), {"b": units}, torch.rand(1, 1, 9, 9) + 0.5,
                              mix=False).values()
    assert [field.box(*u) for u in units] == boxes
    assert field.box(1, 7) == (0, 0, 9, 9) and field.box(4, 4) == (2, 2, 7, 7)


def test_fallback_computes_units_of_large_layers_when_asked(monkeypatch):
    eager = receptive.gradient_fields(*_traced(Transposer().eval(), "b", (9, 9)), (9, 9), 1)["b"]
    monkeypatch.setattr(receptive, "_one_unit_box", counting := Counting(receptive._one_unit_box))
    lazy = receptive.gradient_fields(*_traced(Transposer().eval(), "b", (9, 9)), (9, 9), 1, eager=80)["b"]
    assert lazy.boxes is None and lazy.unit_box is not None and eager.boxes is not None
    known = set(lazy.unit_box.known)  # the diagonal's and the checks' units
    assert {(i, i) for i in range(9)} <= known and len(known) < 9 + 9
    assert [lazy.box(*u) for u in every_unit((9, 9))] == [eager.box(*u) for u in every_unit((9, 9))]
    assert [lazy.box(*u) for u in every_unit((9, 9))] == [eager.box(*u) for u in every_unit((9, 9))]
    assert counting.calls == 81 - len(known)  # each once


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def _traced(model, layer, size):
    gm = receptive.trace(model)
    receptive.propagate_shapes(gm, model, (1, 1, *size))
    return gm, {layer: (receptive.layer_node(gm, layer), "asked for")}


ZOO = [  # torchvision model, keyword arguments, input size, inner layers, how their fields come
    ("resnet18", {}, 64, ["layer2.0"], "analytic"),
    ("resnet50", {}, 64, ["layer3.1"], "analytic"),
    ("densenet121", {}, 64, ["features.denseblock2"], "analytic"),
    ("mobilenet_v2", {}, 64, ["features.4"], "analytic"),
    ("mobilenet_v3_small", {}, 64, ["features.3"], "analytic"),
    ("efficientnet_b0", {}, 64, ["features.3"], "analytic"),   # stochastic depth, squeeze-excitation
    ("googlenet", {"aux_logits": False, "init_weights": False}, 64, ["inception3b"], "analytic"),
    ("inception_v3", {"aux_logits": False, "init_weights": False}, 80, ["Mixed_5b"], "analytic"),
    ("shufflenet_v2_x0_5", {}, 64, ["stage2", "stage2.1.branch2"], "analytic gradient"),  # chunk of a shuffle
    ("squeezenet1_0", {}, 64, ["features.4"], "analytic"),
    ("regnet_x_400mf", {}, 64, ["trunk_output.block2"], "analytic"),
    ("convnext_tiny", {}, 64, ["features.1.0", "features.1.0.block.3"], "analytic analytic"),  # channels-last LN
    ("mnasnet0_5", {}, 64, ["layers.9"], "analytic"),
    ("swin_t", {}, 64, ["features.1.0"], "gradient"),  # windowed attention: an fx-wrapped function
]


@pytest.mark.parametrize("name, kwargs, size, layers, methods", ZOO, ids=[case[0] for case in ZOO])
def test_torchvision_models_get_a_field_for_every_layer(name, kwargs, size, layers, methods):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    fields = receptive_fields(model, layers, (size, size))
    assert [fields[layer].method for layer in layers] == methods.split()
    units = {layer: units_of(fields[layer].output_size) for layer in layers}
    for layer, grad_boxes in gradient_boxes(model, units, torch.randn(1, 3, size, size)).items():
        for unit, grad_box in zip(units[layer], grad_boxes):
            box = fields[layer].box(*unit)
            assert grad_box != (0, 0, 0, 0) and box[:2] <= grad_box[:2] and grad_box[2:] <= box[2:], (layer, unit)


def layer_info(path, shape):
    return SimpleNamespace(path=path, name=path, output_shape=shape)


def test_evidence_gives_every_spatial_layer_a_field_before_the_pass():
    logs = []
    ctx = SimpleNamespace(model=SimpleNamespace(module=CifarResNet().eval(), input_size=32, channels=3),
                          layers=[layer_info("layer2", (32, 16, 16)), layer_info("layer3", (64, 8, 8)),
                                  layer_info("linear", (10,))], log=logs.append)
    fields = evidence_receptive_fields(ctx)
    assert sorted(fields) == ["layer2", "layer3"] and logs == []
    assert all(isinstance(f, ReceptiveField) and f.method == "analytic" for f in fields.values())
    assert fields["layer2"].box(0, 0) == (0, 0, 19, 19) and fields["layer3"].box(7, 0) == (0, 0, 32, 32)

    ctx.model = SimpleNamespace(module=CumsumNet(), input_size=(11, 9), channels=1)  # (H, W)
    ctx.layers = [layer_info("b", (2, 11, 9))]
    assert evidence_receptive_fields(ctx)["b"].box(5, 2) == (0, 3, 5, 8)
    assert logs == ["receptive fields of b from the input gradient of a linearized copy (exact): cannot map cumsum "
                    "back to its input (an op without known geometry)"]

    logs.clear()
    ctx.model = SimpleNamespace(module=Branchy(), input_size=16, channels=1)
    ctx.layers = [layer_info("conv", (1, 14, 14))]
    field = evidence_receptive_fields(ctx)["conv"]
    assert (field.method, field.box(3, 4), field.output_size) == ("whole image", (0, 0, 16, 16), (14, 14))
    assert logs[0].startswith("warning: receptive field of conv: cannot trace Branchy with torch.fx (TraceError: ")
    assert logs[0].endswith("; its patches are the whole image")
