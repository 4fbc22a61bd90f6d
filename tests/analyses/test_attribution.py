"""Attribution maps against the field's references (Captum, pytorch-grad-cam) and brute force.

Occlusion must equal Captum's `Occlusion` (and plain forwards of occluded images) up to float
rounding; gradient maps must correlate with Captum's at Pearson ≥ 0.99 per map (they agree to
rounding). vgg19 comparisons are marked slow.
"""

import functools
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam, Occlusion, Saliency
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from reportgen.analyses.attribution import (grad_cam, guided_backprop, guided_backprop_unit, guided_grad_cam,
                                            occlusion, randomized_copy, randomized_similarity, saliency)
from reportgen.analyses.attribution import occluded
from reportgen.analyses.attribution.incremental import local_prefix
from reportgen.analyses.attribution.occluded import OccludedForward
from reportgen.analyses.attribution.occlusion import default_stride, default_window, window_positions
from reportgen.errors import ModelError, SpecError
from reportgen.graph.ops import MODULES
from tests.helpers.attribution_models import (Failing, Untraceable, demo_cnn, hook_count, randomize_batchnorm,
                                              tiny_cnn)

# Captum warns that it sets requires_grad and hooks ReLUs; both are expected here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-map Pearson correlation of (B, H, W) arrays."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])


def case(model: nn.Module, shape: tuple, seed: int = 1):
    torch.manual_seed(seed)
    x = torch.randn(*shape)
    with torch.no_grad():
        return model, x, model(x).argmax(1)


@pytest.fixture(scope="module")
def demo():
    return case(demo_cnn(), (2, 1, 28, 28))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        model.fc.weight.mul_(50)        # probabilities far from uniform over the 1000 classes
    return case(model, (2, 3, 64, 64))


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return case(torchvision.models.vgg19(weights=None).eval(), (2, 3, 32, 32))


def captum_occlusion(model, x, target, window, stride, baseline):
    base = torch.as_tensor(baseline, dtype=x.dtype).reshape(1, -1, 1, 1).expand(1, *x.shape[1:])
    return Occlusion(lambda t: model(t).softmax(1)).attribute(
        x, target=target, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
        baselines=base, perturbations_per_eval=16)[:, 0].numpy()


# ---------------------------------------------------------------- occlusion


@pytest.mark.parametrize("name, window, stride, baseline", [
    ("tiny", 4, 2, 0.0),
    ("tiny", 5, 3, [0.5, -1.0, 2.0]),     # last windows clipped at the border, one value per channel
    ("tiny", 16, 1, -0.5),                 # one window: the whole image
    ("tall", 5, 2, 0.0),                   # a non-square input (20×14): square windows along both axes
    ("demo", 6, 4, 0.0),
    ("resnet", 12, 8, 0.0),
])
def test_occlusion_matches_captum(name, window, stride, baseline, demo, resnet):
    model, x, target = {"tiny": case(tiny_cnn(), (2, 3, 16, 16)), "tall": case(tiny_cnn(), (2, 3, 20, 14)),
                        "demo": demo, "resnet": case(resnet[0], (1, 3, 32, 32))}[name]
    ours = occlusion(model, x, target, window=window, stride=stride, baseline=baseline)
    ref = captum_occlusion(model, x, target, window, stride, baseline)
    assert ours.dtype == np.float32 and ours.shape == (x.shape[0], *x.shape[-2:])
    assert np.abs(ref).max() > 1e-3                      # the test can see a wrong map
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_occlusion_default_window_is_a_sixth_and_stride_half(demo):
    model, x, target = demo[0], demo[1][:1], demo[2][:1]
    np.testing.assert_allclose(occlusion(model, x, target), captum_occlusion(model, x, target, 4, 2, 0.0),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size, window, stride", [(1, 1, 1), (2, 2, 1), (11, 2, 1), (12, 2, 1), (28, 4, 2),
                                                   (64, 10, 5), (224, 37, 18)])
def test_default_window_and_stride(size, window, stride):
    assert (default_window(size), default_stride(default_window(size))) == (window, stride)


def test_occlusion_without_a_window_uses_the_defaults_on_the_smaller_side():
    model, x, target = case(Untraceable(), (1, 1, 11, 14))       # 11 // 6 = 1, so the 2-px floor applies
    np.testing.assert_allclose(occlusion(model, x, target), captum_occlusion(model, x, target, 2, 1, 0.0),
                               rtol=1e-4, atol=1e-6)


def test_occlusion_falls_back_to_plain_forwards_for_untraceable_models():
    model, x, target = case(Untraceable(), (2, 1, 12, 12))
    assert local_prefix(model).steps == []
    np.testing.assert_allclose(occlusion(model, x, target, window=3, stride=2),
                               captum_occlusion(model, x, target, 3, 2, 0.0), rtol=1e-4, atol=1e-6)


def test_local_chain_of_known_models(demo, resnet):
    assert local_prefix(demo[0]).names == [f"features.{n}" for n, _ in demo[0].features.named_children()]
    assert local_prefix(resnet[0]).names == ["conv1", "bn1", "relu", "maxpool"]   # then a residual fork


def test_incremental_path_is_taken_and_exact(demo):
    model, x, target = demo
    rows, cols = window_positions(28, 5, 2), window_positions(28, 5, 3)
    forward = OccludedForward(model, x, rows, cols, (5, 5), torch.zeros(1))
    cropped = [s.local.name for s in forward.stages if s.local is not None]
    assert cropped[:2] == ["features.conv1+features.conv1_bn", "features.conv2+features.conv2_bn"]
    probs = forward.target_probabilities(target, batch_size=100)
    # brute force: every occluded image through the model
    images = x[:, None, None].repeat(1, len(rows[0]), len(cols[0]), 1, 1, 1)       # (B, I, J, C, H, W)
    for i, (r0, r1) in enumerate(zip(*rows)):
        for j, (c0, c1) in enumerate(zip(*cols)):
            images[:, i, j, :, r0:r1, c0:c1] = 0.0
    with torch.no_grad():
        ref = model(images.flatten(0, 2)).softmax(1).view(2, len(rows[0]), len(cols[0]), -1)
    ref = ref[torch.arange(2), :, :, target]
    torch.testing.assert_close(probs, ref, rtol=1e-4, atol=1e-6)


# every activation of the op table: each must be recomputed exactly on crops
ACTIVATIONS = [cls for cls, op in MODULES.items() if op.kind in ("activation", "identity", "dropout")]


@st.composite
def local_models(draw):
    """A random stack of conv/pool/BN/ReLU layers (any kernel, stride, padding, dilation, ceil
    mode), a linear head, an input size and an occlusion window."""
    h, w, c = draw(st.integers(5, 13)), draw(st.integers(5, 13)), draw(st.integers(1, 3))
    layers, shape = [], (c, h, w)
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "max", "avg", "bn", "relu", "act"]))
        k, s, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
        p = draw(st.integers(0, k // 2))
        layer = {"conv": lambda: nn.Conv2d(shape[0], draw(st.integers(1, 4)), k, s, p, d),
                 "max": lambda: nn.MaxPool2d(max(k, 2), s, min(p, max(k, 2) // 2), d, ceil_mode=draw(st.booleans())),
                 "avg": lambda: nn.AvgPool2d(max(k, 2), s, min(p, max(k, 2) // 2),
                                             count_include_pad=draw(st.booleans())),
                 "bn": lambda: nn.BatchNorm2d(shape[0]),
                 "relu": lambda: nn.ReLU(inplace=draw(st.booleans())),
                 "act": lambda: draw(st.sampled_from(ACTIVATIONS))()}[kind]()
        try:
            out = layer.eval()(torch.zeros(1, *shape)).shape[1:]
        except RuntimeError:       # output would be empty
            continue
        if min(out[1:]) >= 1:
            layers.append(layer)
            shape = out
    torch.manual_seed(draw(st.integers(0, 2**16)))
    head = nn.Linear(shape[0] * shape[1] * shape[2], 4)
    model = nn.Sequential(*layers, nn.Flatten(), head)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            randomize_batchnorm(m)
    with torch.no_grad():
        head.weight.mul_(10)
    window = draw(st.integers(1, min(h, w)))
    return model.eval(), (c, h, w), window, draw(st.integers(1, window))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(local_models(), st.integers(1, 50))
def test_occlusion_equals_brute_force_on_random_local_stacks(spec, batch_size):
    model, shape, window, stride = spec
    torch.manual_seed(0)
    x = torch.randn(2, *shape)
    target = torch.tensor([0, 3])
    # the chain: the layers up to the head or to an average pool that pads without counting the
    # padding (its divisor varies at the border), if any of them has a window to crop
    chain = []
    for n, m in enumerate(model[:-2]):
        if isinstance(m, nn.AvgPool2d) and m.padding and not m.count_include_pad:
            break
        chain.append(m)
    windowed = any(isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) for m in chain)
    assert local_prefix(model).names == ([str(n) for n in range(len(chain))] if windowed else [])
    # crop every layer, however much of it a window reaches, so that all the box arithmetic is exercised
    with mock.patch.object(occluded, "MAX_BOX_FRACTION", 2.0):
        ours = occlusion(model, x, target, window=window, stride=stride, baseline=0.25, batch_size=batch_size)
    # independent: windows every `stride`, and one more (clipped by slicing) if pixels are left over
    starts = [list(range(0, n - window + 1, stride)) for n in shape[1:]]
    for dim_starts, n in zip(starts, shape[1:]):
        if dim_starts[-1] + window < n:
            dim_starts.append(dim_starts[-1] + stride)
    windows = [(r, c) for r in starts[0] for c in starts[1]]
    images = x[:, None].repeat(1, len(windows), 1, 1, 1)                             # (2, windows, C, H, W)
    for n, (r, c) in enumerate(windows):
        images[:, n, :, r:r + window, c:c + window] = 0.25
    with torch.no_grad():
        clean = model(x).softmax(1)[torch.arange(2), target]
        probs = model(images.flatten(0, 1)).softmax(1).view(2, len(windows), -1)
        drops = clean[:, None] - probs[torch.arange(2), :, target]                    # (2, windows)
    expected, count = np.zeros((2, *shape[1:])), np.zeros(shape[1:])
    for n, (r, c) in enumerate(windows):
        expected[:, r:r + window, c:c + window] += drops[:, n].numpy()[:, None, None]
        count[r:r + window, c:c + window] += 1
    np.testing.assert_allclose(ours, expected / count, rtol=1e-4, atol=1e-6)


def test_occlusion_does_not_depend_on_batch_size(demo):
    model, x, target = demo
    a = occlusion(model, x, target, window=7, stride=3, batch_size=11)
    b = occlusion(model, x, target, window=7, stride=3, batch_size=1000)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_occlusion_errors(demo):
    model, x, target = demo
    with pytest.raises(SpecError, match=r"^attribution.window: window 29 is larger than the input \(28×28\)$"):
        occlusion(model, x, target, window=29)
    with pytest.raises(SpecError) as err:
        occlusion(model, x, target, window=4, stride=5)
    assert (err.value.key, err.value.message) == (
        "attribution.stride", "stride 5 is larger than the window 4: some pixels would never be occluded")
    with pytest.raises(ValueError, match=r"^baseline must be one value or 1 \(one per channel\), got 3$"):
        occlusion(model, x, target, baseline=[0.0, 0.1, 0.2])
    with pytest.raises(ModelError, match=r"^target class 10 is out of range: the model has 10 outputs$"):
        occlusion(model, x, torch.tensor([0, 10]))


# ---------------------------------------------------------------- gradients


def captum_maps(model, x, target, layer):
    """Reference maps (B, H, W) from Captum, reduced over channels like reportgen."""
    module = dict(model.named_modules())[layer]
    cam = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
    return {
        "saliency": Saliency(model).attribute(x, target=target).abs().amax(1),
        "guided_backprop": GuidedBackprop(model).attribute(x, target=target).abs().amax(1),
        "grad_cam": LayerAttribution.interpolate(cam, x.shape[-2:], "bilinear")[:, 0],
        "guided_grad_cam": GuidedGradCam(model, module).attribute(
            x, target=target, interpolate_mode="bilinear").abs().amax(1),
    }


OURS = {"saliency": saliency, "guided_backprop": guided_backprop, "grad_cam": grad_cam,
        "guided_grad_cam": guided_grad_cam}


def check_against_captum(model, x, target, layer):
    refs = captum_maps(model, x, target, layer)
    for name, fn in OURS.items():
        ours, ref = fn(model, x, target), refs[name].detach().numpy()
        assert ours.dtype == np.float32 and ours.shape == ref.shape == (x.shape[0], *x.shape[-2:]), name
        assert (pearson(ours, ref) >= 0.99).all(), name
        # raw values, not only their pattern
        np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max(), err_msg=name)


@pytest.mark.parametrize("name", ["demo", "resnet"])
def test_gradient_maps_match_captum(name, demo, resnet):
    model, x, target = {"demo": demo, "resnet": resnet}[name]
    check_against_captum(model, x, target, {"demo": "features.conv5", "resnet": "layer4.1.conv2"}[name])


@pytest.mark.slow
def test_vgg19_with_inplace_relus_matches_references(vgg):
    model, x, target = vgg
    before = model(x)
    check_against_captum(model, x, target, "features.34")
    np.testing.assert_allclose(occlusion(model, x[:1], target[:1], window=16, stride=8),
                               captum_occlusion(model, x[:1], target[:1], 16, 8, 0.0), rtol=1e-4, atol=1e-6)
    with GradCAM(model, [model.features[35]]) as cam:   # after the ReLU: nothing overwrites it in place
        ref = cam(x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    assert (pearson(grad_cam(model, x, target, layer="features.35"), ref) >= 0.99).all()
    assert hook_count(model) == 0 and torch.equal(model(x), before)


def test_grad_cam_matches_pytorch_grad_cam(resnet):
    model, x, target = resnet
    with GradCAM(model, [model.layer4[-1]]) as cam:
        ref = cam(x, targets=[ClassifierOutputTarget(int(t)) for t in target])   # min-max scaled
    assert (pearson(grad_cam(model, x, target, layer="layer4"), ref) >= 0.99).all()


def test_grad_cam_reads_a_conv_output_before_an_inplace_relu_overwrites_it():
    inplace, x, target = case(tiny_cnn(channels=1, inplace=True, batchnorm=False), (2, 1, 12, 12))
    plain = tiny_cnn(channels=1, inplace=False, batchnorm=False)
    ours = grad_cam(inplace, x, target, layer="3")
    np.testing.assert_allclose(ours, grad_cam(plain, x, target, layer="3"), rtol=1e-5, atol=1e-7)
    with GradCAM(plain, [plain[3]]) as cam:
        ref = cam(x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    assert (pearson(ours, ref) >= 0.99).all()


def test_grad_cam_default_layer_is_the_last_conv(demo):
    model, x, target = demo
    np.testing.assert_array_equal(grad_cam(model, x, target), grad_cam(model, x, target, layer="features.conv5"))


class UnitOutput(nn.Module):
    """The activation (B, K·h·w) of one layer of `model`, before any in-place successor changes it."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.model, self.layer = model, dict(model.named_modules())[layer]

    def forward(self, x):
        seen = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
        try:
            self.model(x)
        finally:
            handle.remove()
        self.shape = seen[0].shape
        return seen[0].flatten(1)


@pytest.mark.parametrize("name, layer, channel", [("demo", "features.conv3", 5), ("demo", "features.conv2_relu", 1),
                                                  ("resnet", "layer2.0.conv1", 7)])
def test_guided_backprop_unit_matches_captum(name, layer, channel, demo, resnet):
    model, x, _ = {"demo": demo, "resnet": resnet}[name]
    wrapper = UnitOutput(model, layer)
    with torch.no_grad():
        units = wrapper(x)                                     # (B, K·h·w)
    spatial = wrapper.shape[2] * wrapper.shape[3]
    first = channel * spatial
    strongest = first + units[:, first:first + spatial].argmax(1)
    ref = GuidedBackprop(wrapper).attribute(x, target=strongest.tolist()).abs().amax(1).numpy()
    ours = guided_backprop_unit(model, x, layer, channel)
    assert ours.shape == (2, *x.shape[-2:]) and np.abs(ref).max() > 0
    assert (pearson(ours, ref) >= 0.99).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


# ---------------------------------------------------------------- hooks and errors


METHODS = {
    "occlusion": functools.partial(occlusion, window=4, stride=4),
    "saliency": saliency, "grad_cam": grad_cam, "guided_backprop": guided_backprop,
    "guided_grad_cam": guided_grad_cam,
    "guided_backprop_unit": lambda m, x, t: guided_backprop_unit(m, x, "net.4", 2),
}


@pytest.mark.parametrize("method", METHODS)
def test_model_is_unchanged_and_no_hook_remains_even_when_the_model_raises(method):
    model, x, target = case(Failing(), (2, 1, 12, 12))
    before, hooks = model(x).detach(), hook_count(model)
    METHODS[method](model, x, target)
    assert hook_count(model) == hooks == 0
    assert torch.equal(model(x), before)
    assert all(p.grad is None for p in model.parameters())
    model.fail = True
    if method != "guided_backprop_unit":    # it stops the forward at its layer, before the failure
        with pytest.raises(RuntimeError, match="failing on purpose"):
            METHODS[method](model, x, target)
    assert hook_count(model) == 0 and not torch._C._is_torch_function_mode_enabled()   # guided: no mode left
    model.fail = False
    assert torch.equal(model(x), before)


def test_unit_method_removes_hooks_when_its_layer_is_not_reached():
    model, x, _ = case(Failing(), (2, 1, 12, 12))
    with pytest.raises(ModelError, match=r"^filter 99 is out of range: 'net.4' has 16 channels$"):
        guided_backprop_unit(model, x, "net.4", 99)
    assert hook_count(model) == 0


def test_layer_errors_name_the_fix(demo):
    model, x, target = demo
    with pytest.raises(ModelError, match=r"^no layer 'features.conv9' in the model; closest: features.conv5, "):
        grad_cam(model, x, target, layer="features.conv9")
    with pytest.raises(ModelError, match=r"^Grad-CAM needs a layer with a \(B, C, H, W\) output; "
                                         r"'classifier.fc' gives \(2, 10\)$"):
        grad_cam(model, x, target, layer="classifier.fc")
    assert hook_count(model) == 0


# ---------------------------------------------------------------- sanity check


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps with no ties: Pearson of their ranks."""
    ra, rb = np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_randomized_copy_is_seeded_and_leaves_the_model_and_global_rng_alone():
    model = tiny_cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    a, b, c = randomized_copy(model, 1), randomized_copy(model, 1), randomized_copy(model, 2)
    assert torch.equal(torch.rand(3), expected_next)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    assert not torch.equal(a[0].weight, model[0].weight)


def signed_gradient(model, x, target):
    """∂ logit[target] / ∂ x summed over channels: a signed map, to see that absolute values are ranked."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[torch.arange(len(x)), target].sum(), x)
    return grad.sum(1).numpy()


def test_randomized_similarity_is_spearman_of_absolute_maps(demo):
    model, x, target = demo
    sim = randomized_similarity(signed_gradient, model, x, target, seed=3)
    trained, randomized = signed_gradient(model, x, target), signed_gradient(randomized_copy(model, 3), x, target)
    expected = [spearman(np.abs(a), np.abs(b)) for a, b in zip(trained, randomized)]
    np.testing.assert_allclose(sim, expected, atol=1e-6)
    assert sim.shape == (2,) and (sim < 0.9).all()      # the gradient depends on the weights


def test_a_map_that_ignores_the_weights_passes_as_identical(demo):
    model, x, target = demo
    edges = lambda _m, xx, _t: np.abs(np.diff(xx.numpy()[:, 0], axis=-1, append=0))   # noqa: E731
    np.testing.assert_allclose(randomized_similarity(edges, model, x, target), [1.0, 1.0])
    constant = lambda _m, xx, _t: np.zeros((len(xx), 4, 4), np.float32)                # noqa: E731
    assert np.isnan(randomized_similarity(constant, model, x, target)).all()
