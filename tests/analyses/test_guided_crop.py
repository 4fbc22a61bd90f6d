"""Guided backprop of a filter's strongest unit computed on a crop of its receptive field
(`guided_backprop_unit_crops`): the whole image's maps (`guided_backprop_unit`) on torchvision VGG11 with random
weights, corner units included, zero outside the crop; the fallback to the whole image where a global op makes the
crop's unit differ; and the filter-page analysis, which takes its units from the dataset pass."""

from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import vgg

from reportgen.analyses.attribution import guided_backprop_unit, guided_backprop_unit_crops, unit_crop_size
from reportgen.analyses.attribution.crops import unit_crops
from reportgen.analyses.attribution_maps import GuidedBackprop
from reportgen.graph.receptive import receptive_field, receptive_fields
from reportgen.hooks import run_until
from reportgen.timing import Work
from reportgen.topk import StreamingTopK

SIZE = 112                  # VGG11's input here: 7 × its last stride, so that its deepest layers' crops fit too
# relu after conv2 (receptive field 8, stride 2), after conv4 (26, 4), after conv6 (62, 8)
VGG_LAYERS = ["features.4", "features.9", "features.14"]


def vgg11_features() -> nn.Module:
    """torchvision's VGG11 up to its classifier (its 100M-weight classifier takes seconds to initialize), with
    VGG's own initialization of the convs."""
    torch.manual_seed(0)
    features = vgg.make_layers(vgg.cfgs["A"])
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return nn.Sequential(OrderedDict(features=features)).eval()


@pytest.fixture(scope="module")
def vgg11():
    model = vgg11_features()
    torch.manual_seed(1)
    x = torch.randn(4, 3, SIZE, SIZE)
    return model, x, receptive_fields(model, VGG_LAYERS, (SIZE, SIZE))


def strongest(model: nn.Module, x: torch.Tensor, layer: str, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """(units (B, 2) y, x, values (B,)) of the filter's strongest unit per image, as the dataset pass finds them."""
    with torch.no_grad():
        fmap = run_until(model, layer, x)[:, channel]             # (B, h, w)
    values, loc = fmap.flatten(1).max(1)
    return np.stack(np.divmod(loc.numpy(), fmap.shape[2]), 1), values.numpy()


def assert_zero_outside(maps: np.ndarray, windows: np.ndarray) -> None:
    for m, (y0, x0, y1, x1) in zip(maps, windows.tolist()):
        inside = np.zeros(m.shape, bool)
        inside[y0:y1, x0:x1] = True
        assert (m[~inside] == 0).all() and m[inside].max() > 0


@pytest.mark.parametrize("layer", VGG_LAYERS)
def test_crops_give_the_whole_image_maps_of_the_strongest_units(vgg11, layer):
    model, x, fields = vgg11
    field = fields[layer]
    size = unit_crop_size(field)
    assert size is not None and size[0] * size[1] <= SIZE * SIZE / 2
    with torch.no_grad():
        alive = (run_until(model, layer, x).amax((2, 3)) > 0).all(0).nonzero()[:, 0]
    for channel in alive[[0, -1]].tolist():                       # filters with a positive unit in every image
        units, values = strongest(model, x, layer, channel)
        maps, cropped = guided_backprop_unit_crops(model, x, layer, channel, units, values, field)
        ref = guided_backprop_unit(model, x, layer, channel)
        assert cropped.all()
        np.testing.assert_allclose(maps, ref, rtol=1e-5, atol=1e-6 * ref.max())
        windows = unit_crops(field, units, size)
        assert (windows[:, 2:] - windows[:, :2] == size).all()     # one batch
        assert_zero_outside(maps, windows)


@pytest.mark.parametrize("layer", VGG_LAYERS)
def test_units_at_the_corners_and_borders(vgg11, layer):
    """Units whose receptive field is clipped by the image, against the same units on the whole image."""
    model, x, fields = vgg11
    field = fields[layer]
    h, w = field.output_size
    units = np.array([[0, 0], [h - 1, w - 1], [0, w - 1], [h // 2, w - 1]])
    with torch.no_grad():
        values = run_until(model, layer, x)[np.arange(4), :, units[:, 0], units[:, 1]]       # (4, C)
    channel = int((values > 0).all(0).nonzero()[0])                 # a filter these units are alive in
    values = values[:, channel].numpy()
    maps, cropped = guided_backprop_unit_crops(model, x, layer, channel, units, values, field)
    ref, whole = guided_backprop_unit_crops(model, x, layer, channel, units, values, None)
    assert cropped.all() and not whole.any()
    np.testing.assert_allclose(maps, ref, rtol=1e-5, atol=1e-6 * ref.max())
    assert_zero_outside(maps, unit_crops(field, units, unit_crop_size(field)))


def test_crop_origins_are_multiples_of_the_stride_and_hold_the_box(vgg11):
    field = vgg11[2]["features.14"]
    size = unit_crop_size(field)
    assert size == (72, 72)                                         # 62 + 8 - 1 rounded up to 8
    units = np.array([[y, x] for y in range(14) for x in (0, 5, 13)])
    windows = unit_crops(field, units, size)
    assert (windows[:, :2] % 8 == 0).all() and (windows[:, 2:] <= SIZE).all()
    for (y, x), (y0, x0, y1, x1) in zip(units.tolist(), windows.tolist()):
        bx0, by0, bx1, by1 = field.box(y, x)
        assert y0 <= by0 and by1 <= y1 and x0 <= bx0 and bx1 <= x1


class GlobalGate(nn.Module):
    """x · sigmoid(mean over space of x): each unit after it depends on the whole image."""

    def forward(self, x):
        return x * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True))


def gated(gate: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), gate,
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()


def test_a_global_op_the_field_does_not_show_falls_back_to_the_whole_image():
    """The field of the gate-less twin says the crop suffices; the gate makes the crop's unit differ, so each
    map is computed again on the whole image."""
    model = gated(GlobalGate())
    field = receptive_field(gated(nn.Identity()), "5", (48, 48))
    assert unit_crop_size(field) == (10, 10)                       # 8 + 2 - 1 rounded up to 2
    torch.manual_seed(2)
    x = torch.randn(3, 3, 48, 48)
    units, values = strongest(model, x, "5", 2)
    maps, cropped = guided_backprop_unit_crops(model, x, "5", 2, units, values, field)
    assert not cropped.any()
    ref = guided_backprop_unit(model, x, "5", 2)
    np.testing.assert_allclose(maps, ref, rtol=1e-5, atol=1e-6 * ref.max())
    assert (ref != 0).mean() > 0.9                                  # the gate's gradient reaches every pixel


def test_squeeze_excitation_in_the_path_computes_on_the_whole_image():
    """MobileNetV3's first block has squeeze-excitation: its field is the whole image, so no crop is tried."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small().eval()
    field = receptive_field(model, "features.1", (64, 64))
    assert unit_crop_size(field) is None
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    units, values = strongest(model, x, "features.1", 4)
    maps, cropped = guided_backprop_unit_crops(model, x, "features.1", 4, units, values, field)
    assert not cropped.any()
    np.testing.assert_allclose(maps, guided_backprop_unit(model, x, "features.1", 4), rtol=1e-6, atol=0)


def test_a_wrong_value_is_not_cropped(vgg11):
    """The check has teeth: the pass's value off by 1 % sends the image to the whole image."""
    model, x, fields = vgg11
    units, values = strongest(model, x, "features.4", 3)
    values[1] *= 1.01
    _, cropped = guided_backprop_unit_crops(model, x, "features.4", 3, units, values, fields["features.4"])
    assert cropped.tolist() == [True, False, True, True]


# ---------------------------------------------------------------- the analysis, on a fake build context


def context(model: nn.Module, layer: str, filters: list[int], fields: dict, images: torch.Tensor):
    """What GuidedBackprop reads: the pass's top-k (recorded here from one forward), the fields, the images."""
    with torch.no_grad():
        fmap = run_until(model, layer, images)                       # (N, C, h, w)
    top = StreamingTopK(4, fmap.shape[1])
    scores, loc = fmap.flatten(2).max(2)
    top.update(scores.numpy(), np.arange(len(images)), loc.numpy())
    spec_layer = SimpleNamespace(path=layer, name=layer, filters=filters, output_shape=tuple(fmap.shape[1:]))
    logs = []
    ctx = SimpleNamespace(model=SimpleNamespace(module=model), receptive_fields=fields, log=logs.append,
                          evidence=SimpleNamespace(layers={layer: SimpleNamespace(top=top)}),
                          batch=lambda idx: images[list(idx)], indices=np.arange(len(images)))
    return ctx, spec_layer, logs


def test_the_analysis_maps_are_the_whole_image_maps_and_it_prices_the_crop():
    model = vgg11_features().features[:10]
    torch.manual_seed(3)
    images = torch.randn(6, 3, 72, 56)                               # not square: rows and columns apart
    fields = {"9": receptive_field(model, "9", (72, 56))}
    with torch.no_grad():
        alive = (run_until(model, "9", images).amax((2, 3)) > 0).sum(0) >= 4    # 4 top images with a positive unit
    ctx, layer, logs = context(model, "9", alive.nonzero()[[0, -1], 0].tolist(), fields, images)
    out = GuidedBackprop().compute(ctx, layer)
    for f in layer.filters:
        idx = out[f"index_{f}"]
        ref = guided_backprop_unit(model, images[idx], "9", f)
        assert (ref.max((1, 2)) > 0).all()
        np.testing.assert_allclose(out[f"maps_{f}"], ref, rtol=1e-5, atol=1e-6 * ref.max())
    assert logs == []
    assert GuidedBackprop().cost(ctx, layer) == Work(backward=8, batch=4, loads=8, layer="9", size=(32, 32))


def test_the_analysis_stops_cropping_a_layer_after_a_mismatch(monkeypatch):
    model = gated(GlobalGate())
    torch.manual_seed(2)
    images = torch.randn(5, 3, 48, 48)
    fields = {"5": receptive_field(gated(nn.Identity()), "5", (48, 48))}
    ctx, layer, logs = context(model, "5", [1, 4, 6], fields, images)
    from reportgen.analyses import attribution as at
    calls = []
    crops = at.guided_backprop_unit_crops
    monkeypatch.setattr(at, "guided_backprop_unit_crops", lambda *a: calls.append(a[-1]) or crops(*a))
    out = GuidedBackprop().compute(ctx, layer)
    assert [c is not None for c in calls] == [True, False, False]
    assert logs == ["guided backprop of 5: a crop of filter 1's receptive field changed its unit's value (a global "
                    "op on the way?); the whole image for the rest of the layer"]
    for f in layer.filters:
        ref = guided_backprop_unit(model, images[out[f"index_{f}"]], "5", f)
        np.testing.assert_allclose(out[f"maps_{f}"], ref, rtol=1e-5, atol=1e-6 * ref.max())
