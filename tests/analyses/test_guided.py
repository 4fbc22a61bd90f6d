"""Guided backprop on activations that are not `nn.ReLU` modules: functional and in-place ReLUs, ReLU6,
SiLU, GELU, Hardswish, gates; the rule per activation, Captum on module twins, torchvision models,
and that nothing stays guided after an exception."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedBackprop, GuidedGradCam
from scipy.stats import spearmanr
from torch import nn
from torchvision.models.inception import BasicConv2d

from reportgen.analyses.attribution import (activation_census, guided_backprop, guided_backprop_unit,
                                            guided_grad_cam, guided_unsupported)
from reportgen.analyses.attribution.guided import guided_gradient
from reportgen.errors import ModelError
from tests.helpers.attribution_models import RELU_CALLS, SqueezeExcite, cifar_resnet, hook_count, tiny_cnn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")   # Captum's notes on requires_grad and hooks


def rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman ρ per map of two (B, H, W) arrays."""
    return np.array([spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)])


def no_mode_active() -> bool:
    return not torch._C._is_torch_function_mode_enabled() and not torch.overrides._get_current_function_mode_stack()


def batch(model: nn.Module, shape: tuple, seed: int = 1):
    torch.manual_seed(seed)
    x = torch.randn(*shape)
    with torch.no_grad():
        return x, model(x).argmax(1)


# ---------------------------------------------------------------- the rule, one activation at a time


# (kind, the call): each activation, also as a function and in place (the mode sees functions, not modules)
GUIDED_CASES = [("relu", F.relu), ("relu", torch.relu_), ("relu6", nn.ReLU6(inplace=True)), ("relu6", F.relu6),
                ("leaky_relu", nn.LeakyReLU(0.2)), ("leaky_relu", F.leaky_relu_), ("prelu", nn.PReLU(init=0.3)),
                ("elu", nn.ELU()), ("elu", F.elu_), ("selu", nn.SELU()), ("selu", torch.selu_), ("celu", nn.CELU(0.5)),
                ("silu", nn.SiLU(inplace=True)), ("gelu", nn.GELU()), ("gelu", nn.GELU(approximate="tanh")),
                ("mish", F.mish), ("hardswish", nn.Hardswish(inplace=True)), ("softplus", nn.Softplus())]
GRADIENT_CASES = [("sigmoid", nn.Sigmoid()), ("sigmoid", torch.sigmoid_), ("hardsigmoid", nn.Hardsigmoid()),
                  ("tanh", torch.tanh), ("hardtanh", nn.Hardtanh())]


class Apply(nn.Module):
    """f(x · 1): a model of one activation (`· 1` so that in-place ones do not write into a leaf)."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x * 1)


@pytest.mark.parametrize("kind, f", GUIDED_CASES + GRADIENT_CASES,
                         ids=[f"{k}-{n}" for n, (k, _) in enumerate(GUIDED_CASES + GRADIENT_CASES)])
def test_the_rule_per_activation(kind, f):
    """ReLU-like: ∂z = f′(z) · max(∂y, 0) · [z > 0]; gates: their ordinary gradient f′(z) · ∂y."""
    model = Apply(f)
    torch.manual_seed(0)
    z, w = torch.linspace(-7.9, 7.9, 80), torch.randn(80)          # both signs of input and of gradient
    grad = guided_gradient(model, z, lambda zz: (w * model(zz)).sum())
    leaf = z.clone().requires_grad_(True)
    (slope,) = torch.autograd.grad(model(leaf).sum(), leaf)          # f′(z), the plain way
    guided = (kind, f) in GUIDED_CASES
    torch.testing.assert_close(grad, slope * w.clamp(min=0) * (z > 0) if guided else slope * w, rtol=0, atol=1e-6)
    assert (grad >= 0).all() or not guided
    assert activation_census(model, z.view(1, 1, 8, 10)) == \
        {"guided": {kind: 1}, "gradient": {}} if guided else {"guided": {}, "gradient": {kind: 1}}


def test_relu6_is_hardtanh_0_6_and_any_other_hardtanh_a_gate():
    x = torch.randn(1, 1, 4, 4)
    model = nn.Sequential(nn.ReLU6(), nn.Hardtanh(0.0, 6.0), nn.Hardtanh(0.0, 1.0), nn.Hardtanh())
    assert activation_census(model, x) == {"guided": {"relu6": 2}, "gradient": {"hardtanh": 2}}


# ---------------------------------------------------------------- ReLUs however they are called


@pytest.fixture(scope="module")
def resnets():
    """The CIFAR ResNet with functional ReLUs, and its twin with nn.ReLU modules and the same weights."""
    functional, twin = cifar_resnet("functional"), cifar_resnet("module")
    twin.load_state_dict(functional.state_dict())
    x, target = batch(twin, (2, 3, 16, 16))
    return functional, twin, x, target


def test_functional_relus_equal_captum_on_the_module_twin(resnets):
    functional, twin, x, target = resnets
    ours = guided_backprop(functional, x, target)
    ref = GuidedBackprop(twin).attribute(x, target=target).abs().amax(1).numpy()
    assert np.abs(ref).max() > 0 and (rank_correlations(ours, ref) >= 0.99).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    ours = guided_grad_cam(functional, x, target, layer="layer2.conv2")
    ref = GuidedGradCam(twin, twin.layer2.conv2).attribute(x, target=target, interpolate_mode="bilinear")
    ref = ref.abs().amax(1).detach().numpy()
    assert np.abs(ref).max() > 0 and (rank_correlations(ours, ref) >= 0.99).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    assert activation_census(functional, x) == activation_census(twin, x) == {"guided": {"relu": 5}, "gradient": {}}


@pytest.mark.parametrize("relu", RELU_CALLS)
def test_every_way_of_calling_relu_gives_the_same_maps(relu, resnets):
    functional, twin, x, target = resnets
    model = cifar_resnet(relu)
    model.load_state_dict(twin.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)
    for method in (guided_backprop, guided_grad_cam, lambda m, xx, _t: guided_backprop_unit(m, xx, "layer2.conv2", 3)):
        ours, ref = method(model, x, target), method(twin, x, target)
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7 * np.abs(ref).max())
    assert activation_census(model, x) == {"guided": {"relu": 5}, "gradient": {}}
    assert activation_census(model, x, "layer1.conv2") == {"guided": {"relu": 2}, "gradient": {}}


def test_a_squeeze_excitation_gate_keeps_its_ordinary_gradient():
    functional, twin = SqueezeExcite(functional=True), SqueezeExcite(functional=False)
    twin.load_state_dict(functional.state_dict())
    x, target = batch(twin, (2, 3, 8, 8))
    ours = guided_backprop(functional, x, target)
    ref = GuidedBackprop(twin).attribute(x, target=target).abs().amax(1).numpy()   # Captum leaves nn.Sigmoid be
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    assert activation_census(functional, x) == {"guided": {"relu": 2}, "gradient": {"sigmoid": 1}}


# ---------------------------------------------------------------- models people bring


def _inception():
    return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)


# name → (model, input side, Grad-CAM layer with a spatial output, unit layer)
TORCHVISION = {
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None), 64, "features.14", "features.7"),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(weights=None), 64, "features.6",
                           "features.4"),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(weights=None), 64, "features.5", "features.3"),
    "convnext_tiny": (lambda: torchvision.models.convnext_tiny(weights=None), 64, "features.5", "features.3"),
    "inception_v3": (_inception, 75, "Mixed_5d", "Mixed_5b"),
}
# module classes → the activation kind their forward calls (inception's BasicConv2d calls F.relu)
KINDS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.GELU: "gelu", nn.Hardswish: "hardswish",
         BasicConv2d: "relu", nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid"}


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_run_and_report_what_was_guided(name):
    make, side, cam_layer, unit_layer = TORCHVISION[name]
    torch.manual_seed(0)
    model = make().eval()
    x, target = batch(model, (1, 3, side, side))
    maps = {"guided_backprop": guided_backprop(model, x, target),
            "guided_grad_cam": guided_grad_cam(model, x, target, layer=cam_layer),
            "unit": guided_backprop_unit(model, x, unit_layer, 0)}
    for method, m in maps.items():
        assert m.shape == (1, side, side) and np.isfinite(m).all() and m.max() > m.min(), method   # not constant
    expected = {"guided": {}, "gradient": {}}
    for module in model.modules():
        if type(module) in KINDS:
            rule = "gradient" if type(module) in (nn.Sigmoid, nn.Hardsigmoid) else "guided"
            expected[rule][KINDS[type(module)]] = expected[rule].get(KINDS[type(module)], 0) + 1
    census = activation_census(model, x)
    assert census == {rule: dict(sorted(c.items())) for rule, c in expected.items()}
    assert census["guided"]
    assert hook_count(model) == 0 and no_mode_active()


# ---------------------------------------------------------------- nothing stays guided


class FailsMidway(nn.Module):
    """conv, F.relu, then raises: an exception inside the guided forward, after an activation was guided."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        F.relu(self.conv(x))
        raise RuntimeError("failing on purpose")


@pytest.mark.parametrize("method", ["guided_backprop", "guided_grad_cam", "unit", "census"])
def test_nothing_stays_guided_after_an_exception_in_the_forward(method):
    model, x = FailsMidway(), torch.randn(2, 1, 6, 6)
    call = {"guided_backprop": lambda: guided_backprop(model, x, torch.tensor([0, 1])),
            "guided_grad_cam": lambda: guided_grad_cam(model, x, torch.tensor([0, 1]), layer="conv"),
            "unit": lambda: guided_backprop_unit(nn.Sequential(model), x, "0", 0),
            "census": lambda: activation_census(model, x)}[method]
    with pytest.raises(RuntimeError, match="^failing on purpose$"):
        call()
    assert no_mode_active() and hook_count(model) == 0
    z = torch.tensor([-1.0, 2.0], requires_grad=True)
    (grad,) = torch.autograd.grad((F.relu(z) * -3.0).sum() + z.sigmoid().sum() * 0, z)
    torch.testing.assert_close(grad, torch.tensor([0.0, -3.0]))    # a negative gradient passes again


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_is_refused_with_the_fix():
    scripted = torch.jit.script(tiny_cnn())
    why = ("the model is TorchScript, whose activations run outside Python where guided backprop cannot change "
           "their gradient; load the model from its Python code (model.factory) to get it")
    assert guided_unsupported(scripted) == why
    assert guided_unsupported(tiny_cnn()) is None
    with pytest.raises(ModelError) as err:
        guided_backprop(scripted, torch.randn(1, 3, 8, 8), torch.tensor([0]))
    assert str(err.value) == f"guided backpropagation cannot run: {why}"
    inner = nn.Sequential(torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())))
    assert guided_unsupported(inner).startswith("module '0' is TorchScript, ")
    assert no_mode_active()


# ---------------------------------------------------------------- the rule on the page


@pytest.mark.parametrize("census, says", [
    ({"guided": {"hardswish": 19, "relu": 14}, "gradient": {"hardsigmoid": 9}},
     "Activations guided in X: hardswish ×19, relu ×14. Each passes back only positive gradient, and only where its "
     "input was positive, times its own slope there: ∂in = f′(in) · max(∂out, 0) · [in &gt; 0], Springenberg's rule "
     "for ReLU (f′ = 1 where in &gt; 0) carried over to smooth and clipped ReLUs. Ordinary gradient through "
     "hardsigmoid ×9: gates (as in squeeze-excitation blocks) and squashing functions scale a signal rather than "
     "decide whether a feature is present."),
    ({"guided": {}, "gradient": {}}, "No activation to guide in X: this is the plain gradient."),
])
def test_the_page_states_the_rule_with_the_census(census, says, tmp_path):
    from reportgen.render.site import SiteWriter
    env = SiteWriter(tmp_path).env
    rule = env.get_template("analyses/guided_backprop.html").module.rule
    assert str(rule(census, "in X")) == says
