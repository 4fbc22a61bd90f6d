"""reportgen.graph.ops: every entry of the op table says what the op really does.

Each claim is checked on the op itself, through autograd: which input elements one output element
depends on (the support of its input gradient). Elementwise: only its own (c, y, x); keeps channels:
only its own channel; windows: the positions the window arithmetic names.
"""

import functools
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reportgen.graph.ops import FUNCTIONS, METHODS, MODULES, conv_windows, module_op

C, H, W = 3, 7, 6

# Modules whose constructors need arguments, built small; every other entry is built with none.
BUILD = {
    nn.Conv2d: lambda: nn.Conv2d(C, C, 3, padding=1),
    nn.MaxPool2d: lambda: nn.MaxPool2d(3, 2, 1),
    nn.AvgPool2d: lambda: nn.AvgPool2d(2, padding=1),
    nn.ZeroPad2d: lambda: nn.ZeroPad2d((1, 0, 2, 1)),
    nn.ConstantPad2d: lambda: nn.ConstantPad2d((0, 2, 1, 0), 0.5),
    nn.AdaptiveAvgPool2d: lambda: nn.AdaptiveAvgPool2d(2),
    nn.AdaptiveMaxPool2d: lambda: nn.AdaptiveMaxPool2d(2),
    nn.BatchNorm2d: lambda: nn.BatchNorm2d(C),
    nn.PReLU: lambda: nn.PReLU(C),
}
CALL = {  # functions whose calls need arguments besides the tensor
    F.max_pool2d: functools.partial(F.max_pool2d, kernel_size=3, stride=2, padding=1),
    F.avg_pool2d: functools.partial(F.avg_pool2d, kernel_size=2),
    F.adaptive_avg_pool2d: functools.partial(F.adaptive_avg_pool2d, output_size=2),
    F.adaptive_max_pool2d: functools.partial(F.adaptive_max_pool2d, output_size=2),
    F.batch_norm: lambda x: F.batch_norm(x, *torch.rand(4, C, dtype=torch.float64) + 0.5),
    F.dropout: functools.partial(F.dropout, training=False),
    F.dropout2d: functools.partial(F.dropout2d, training=False),
}


def dependencies(fn, shape=(1, C, H, W)):
    """{output index: set of input indices it depends on}, from the input gradient of each output element."""
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = fn(x)
    if not out.requires_grad:      # `.detach()`: the values themselves, depending on nothing autograd sees
        assert torch.equal(out, x)
        return {tuple(i): set() for i in torch.cartesian_prod(*[torch.arange(n) for n in out.shape]).tolist()}
    deps = {}
    for index in torch.cartesian_prod(*[torch.arange(n) for n in out.shape]).tolist():
        (grad,) = torch.autograd.grad(out[tuple(index)], x, retain_graph=True, allow_unused=True)
        support = set() if grad is None else {tuple(i) for i in grad.nonzero().tolist()}
        deps[tuple(index)] = support
    return deps


def module_fn(cls):
    module = (BUILD.get(cls) or cls)().double().eval()
    if isinstance(module, nn.BatchNorm2d):
        with torch.no_grad():
            module.running_var.uniform_(0.5, 2)
            module.running_mean.normal_()
    return module


def check(op, fn):
    deps = dependencies(fn)
    if op.elementwise:
        assert all(support <= {index} for index, support in deps.items())
    if op.keeps_channels:
        assert all(all(i[1] == index[1] for i in support) for index, support in deps.items())
    else:  # a conv mixes channels; others (sums, concatenation) are checked on their own
        assert op.kind != "conv" or any(len({i[1] for i in support}) > 1 for support in deps.values())


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda cls: cls.__name__)
def test_module_entries(cls):
    op, module = MODULES[cls], module_fn(cls)
    check(op, module)
    if op.windows is not None:  # output (y, x) reads exactly the in-image positions of its windows
        wy, wx = op.windows(module)
        for (_, _, y, x), support in dependencies(module).items():
            rows = {y * wy.stride - wy.pad + t * wy.dilation for t in range(wy.kernel)}
            cols = {x * wx.stride - wx.pad + t * wx.dilation for t in range(wx.kernel)}
            assert {(i[2], i[3]) for i in support} <= {(r, c) for r in rows for c in cols}


@pytest.mark.parametrize("fn", [f for f, op in FUNCTIONS.items() if op.kind not in ("arithmetic", "concat")],
                         ids=lambda f: f.__name__)
def test_function_entries(fn):
    check(FUNCTIONS[fn], CALL.get(fn, fn))


@pytest.mark.parametrize("name", list(METHODS))
def test_method_entries(name):
    check(METHODS[name], lambda x: getattr(x.clone() if name.endswith("_") else x, name)())


def test_sums_are_the_additions():
    assert {f for f, op in FUNCTIONS.items() if op.sums} == {operator.add, operator.iadd, torch.add}
    assert FUNCTIONS[operator.mul].kind == "arithmetic" and not FUNCTIONS[operator.mul].sums


def test_pool_function_windows_are_the_module_ones():
    kw = {"kernel_size": 3, "stride": None, "padding": 1, "dilation": 2}
    assert FUNCTIONS[F.max_pool2d].windows(kw) == conv_windows(3, 3, 1, 2)


def test_subclasses_count_unless_exact():
    class MyReLU(nn.ReLU):
        pass

    assert module_op(MyReLU()).kind == "activation"
    assert module_op(MyReLU(), exact=True) is None
    assert module_op(nn.Linear(2, 2)) is None
