"""reportgen.hooks: the forward stops at the layer, returns what a plain forward computes there, and no hook
outlives its block, whether the forward succeeds, stops, or raises."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from reportgen.errors import ModelError
from reportgen.hooks import removing, run_until, stopping_at


class Counter(nn.Module):
    """Identity that counts its calls (put after the layer to prove the forward stopped before it)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


class Fails(nn.Module):
    def forward(self, x):
        raise RuntimeError("failing on purpose")


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([("conv", nn.Conv2d(2, 3, 3)), ("relu", nn.ReLU(inplace=True)),
                                      ("after", Counter()), ("flatten", nn.Flatten())]))


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_run_until_returns_the_layer_output_and_stops_there():
    model, x = net(), torch.randn(2, 2, 6, 6)
    expected = nn.functional.conv2d(x, model.conv.weight, model.conv.bias)     # before the in-place ReLU
    got = run_until(model, "conv", x)
    torch.testing.assert_close(got, expected)
    assert (got < 0).any()                            # the in-place ReLU after it never ran
    assert model.after.calls == 0 and hooks_left(model) == 0


def test_before_returns_the_input_the_layer_was_called_with():
    model, x = net(), torch.randn(2, 2, 6, 6)
    z = nn.functional.conv2d(x, model.conv.weight, model.conv.bias)
    got = run_until(model, "relu", x, before=True)
    torch.testing.assert_close(got, z)
    assert (got < 0).any() and model.after.calls == 0 and hooks_left(model) == 0


def test_gradients_flow_through_the_stopped_forward():
    model = net()
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    run_until(model, "conv", x).sum().backward()
    # d(sum of conv output)/dx: each input pixel gets the sum of the kernel taps that cover it
    expected = nn.functional.conv_transpose2d(torch.ones(1, 3, 4, 4), model.conv.weight)
    torch.testing.assert_close(x.grad, expected)


def test_stopping_at_serves_many_calls_with_one_hook_then_removes_it():
    model = net()
    with stopping_at(model, "conv") as run:
        assert hooks_left(model) == 1
        outs = [run(torch.full((1, 2, 6, 6), float(v))) for v in range(3)]
    assert hooks_left(model) == 0
    assert [o.shape for o in outs] == [(1, 3, 4, 4)] * 3 and not torch.equal(outs[0], outs[2])


def test_no_hook_remains_after_an_error_in_the_forward_or_the_block():
    model = nn.Sequential(OrderedDict([("fails", Fails()), ("conv", nn.Conv2d(2, 3, 3))]))
    with pytest.raises(RuntimeError, match="^failing on purpose$"):
        run_until(model, "conv", torch.randn(1, 2, 6, 6))
    assert hooks_left(model) == 0
    with pytest.raises(KeyError):
        with stopping_at(model, "conv"):
            raise KeyError("in the block")
    assert hooks_left(model) == 0
    handle = model.conv.register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError):
        with removing(handle):
            raise ValueError
    assert hooks_left(model) == 0


def test_errors_name_the_layer():
    model = nn.Sequential(OrderedDict([("conv", nn.Conv2d(2, 3, 3)), ("unused", nn.ReLU())]))
    model.forward = lambda x: model.conv(x)
    with pytest.raises(ModelError, match=r"^layer 'unused' is not used by the model's forward pass.$"):
        run_until(model, "unused", torch.randn(1, 2, 6, 6))
    with pytest.raises(ModelError, match=r"^no layer 'cnv' in the model; closest: conv \(run 'reportgen layers SPEC' "
                                         r"to list them\)$"):
        run_until(model, "cnv", torch.randn(1, 2, 6, 6))
    assert hooks_left(model) == 0


def test_a_layer_that_returns_no_tensor_is_refused():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    model = nn.Sequential(OrderedDict([("pair", Pair())]))
    with pytest.raises(ModelError, match=r"^layer 'pair' returns tuple, not a tensor; pick a layer whose output "
                                         r"is one tensor.$"):
        run_until(model, "pair", torch.randn(1, 2, 6, 6))
    assert hooks_left(model) == 0
