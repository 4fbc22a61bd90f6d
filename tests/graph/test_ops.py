"""reportgen.graph.ops: every entry of the op table says what the op really does.

Each claim is checked on the op itself, through autograd: which input elements one output element
depends on (the support of its input gradient). Elementwise: only its own (c, y, x); keeps channels:
only its own channel; windows: the positions the window arithmetic names; moves: one input element at most;
channel mixes: only its own position.
"""

import functools
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.ops

from reportgen.graph.ops import FUNCTIONS, METHODS, MODULES, conv_windows, module_op

C, H, W = 3, 7, 6

# Modules whose constructors need arguments, built small; every other entry is built with none.
BUILD = {
    nn.Conv2d: lambda: nn.Conv2d(C, C, 3, padding=1),
    nn.MaxPool2d: lambda: nn.MaxPool2d(3, 2, 1),
    nn.AvgPool2d: lambda: nn.AvgPool2d(2, padding=1),
    nn.ZeroPad2d: lambda: nn.ZeroPad2d((1, 0, 2, 1)),
    nn.ConstantPad2d: lambda: nn.ConstantPad2d((0, 2, 1, 0), 0.5),
    nn.ReflectionPad2d: lambda: nn.ReflectionPad2d((1, 0, 2, 1)),
    nn.ReplicationPad2d: lambda: nn.ReplicationPad2d((0, 2, 1, 0)),
    nn.CircularPad2d: lambda: nn.CircularPad2d((1, 1, 0, 2)),
    nn.Upsample: lambda: nn.Upsample(scale_factor=1.5, mode="bilinear"),
    nn.Unflatten: lambda: nn.Unflatten(1, (C, 1)),
    nn.PixelShuffle: lambda: nn.PixelShuffle(1),
    nn.PixelUnshuffle: lambda: nn.PixelUnshuffle(1),
    nn.ChannelShuffle: lambda: nn.ChannelShuffle(C),
    nn.LocalResponseNorm: lambda: nn.LocalResponseNorm(2),
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
    F.conv2d: lambda x: F.conv2d(x, torch.rand(C, C, 3, 3, dtype=x.dtype), padding=1),
    F.pad: functools.partial(F.pad, pad=(1, 0, 2, 1), mode="reflect"),
    F.interpolate: functools.partial(F.interpolate, scale_factor=1.5, mode="bicubic"),
    torchvision.ops.stochastic_depth: functools.partial(torchvision.ops.stochastic_depth, p=0.5, mode="row",
                                                        training=False),
    F.local_response_norm: functools.partial(F.local_response_norm, size=2),
    F.channel_shuffle: functools.partial(F.channel_shuffle, groups=C),
}
MOVES = {  # a call of each data-movement entry: (B, C, H, W) -> anything
    operator.getitem: lambda x: x[:, 1:, ::2, 3],
    torch.flatten: functools.partial(torch.flatten, start_dim=1), torch.reshape: lambda x: torch.reshape(x, (C, -1)),
    torch.squeeze: torch.squeeze, torch.unsqueeze: functools.partial(torch.unsqueeze, dim=2),
    torch.permute: functools.partial(torch.permute, dims=(0, 2, 3, 1)),
    torch.transpose: functools.partial(torch.transpose, dim0=1, dim1=3),
    torch.movedim: functools.partial(torch.movedim, source=1, destination=3),
    torch.swapaxes: functools.partial(torch.swapaxes, axis0=2, axis1=3),
    torch.chunk: lambda x: torch.chunk(x, 2, 2)[1], torch.split: lambda x: torch.split(x, [2, 4], 3)[0],
    torch.tensor_split: lambda x: torch.tensor_split(x, 2, 1)[1], torch.unbind: lambda x: torch.unbind(x, 2)[4],
    torch.narrow: lambda x: torch.narrow(x, 2, 1, 3), torch.select: lambda x: torch.select(x, 3, 2),
    torch.flip: lambda x: torch.flip(x, (2, 3)), torch.roll: lambda x: torch.roll(x, 2, 3),
    torch.stack: lambda x: torch.stack([x, x.flip(2)], 1),
    F.pixel_shuffle: lambda x: F.pixel_shuffle(x.repeat(1, 4, 1, 1), 2),
    F.pixel_unshuffle: lambda x: F.pixel_unshuffle(x[..., :6, :], 2),
    "view": lambda x: x.view(1, C * H, W), "view_as": lambda x: x.view_as(torch.zeros(C, H * W)),
    "reshape": lambda x: x.reshape(C, -1), "reshape_as": lambda x: x.reshape_as(torch.zeros(H, W, C)),
    "flatten": lambda x: x.flatten(2), "unflatten": lambda x: x.unflatten(3, (2, 3)),
    "squeeze": lambda x: x.squeeze(0),
    "unsqueeze": lambda x: x.unsqueeze(-1), "permute": lambda x: x.permute(3, 1, 0, 2),
    "transpose": lambda x: x.transpose(2, 3), "movedim": lambda x: x.movedim(2, 0),
    "swapaxes": lambda x: x.swapaxes(1, 2), "chunk": lambda x: x.chunk(3, 1)[2], "split": lambda x: x.split(2, 2)[3],
    "tensor_split": lambda x: x.tensor_split(3, 3)[1],
    "unbind": lambda x: x.unbind(1)[0], "narrow": lambda x: x.narrow(3, 2, 2), "select": lambda x: x.select(2, 6),
    "flip": lambda x: x.flip(1), "roll": lambda x: x.roll((1, 2), (2, 3)),
    "expand": lambda x: x[:, :1].expand(2, C, H, W),
    "expand_as": lambda x: x[:, :, :1].expand_as(x), "repeat": lambda x: x.repeat(1, 2, 1, 3),
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


def claims(op) -> bool:
    """An entry whose kind `check` tests: the others are checked by kind below and in test_receptive."""
    return op.elementwise or op.keeps_channels or op.kind == "conv"


@pytest.mark.parametrize("cls", [cls for cls, op in MODULES.items() if claims(op)], ids=lambda cls: cls.__name__)
def test_module_entries(cls):
    op, module = MODULES[cls], module_fn(cls)
    check(op, module)
    if op.windows is not None:  # output (y, x) reads exactly the in-image positions of its windows
        wy, wx = op.windows(module)
        for (_, _, y, x), support in dependencies(module).items():
            rows = {y * wy.stride - wy.pad + t * wy.dilation for t in range(wy.kernel)}
            cols = {x * wx.stride - wx.pad + t * wx.dilation for t in range(wx.kernel)}
            assert {(i[2], i[3]) for i in support} <= {(r, c) for r in rows for c in cols}


@pytest.mark.parametrize("fn", [f for f, op in FUNCTIONS.items() if claims(op)], ids=lambda f: f.__name__)
def test_function_entries(fn):
    check(FUNCTIONS[fn], CALL.get(fn, fn))


@pytest.mark.parametrize("name", [name for name, op in METHODS.items() if claims(op)])
def test_method_entries(name):
    args = {"type_as": lambda x: (x,), "to": lambda x: (x.dtype,)}.get(name, lambda x: ())
    check(METHODS[name], lambda x: getattr(x.clone() if name.endswith("_") else x, name)(*args(x)))


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
    assert module_op(nn.Bilinear(2, 2, 2)) is None


MOVE_MODULES = {nn.Flatten: nn.Flatten(), nn.Unflatten: nn.Unflatten(2, (H, 1)), nn.PixelShuffle: nn.PixelShuffle(1),
                nn.PixelUnshuffle: nn.PixelUnshuffle(1)}


@pytest.mark.parametrize("entry", [f for f, op in [*FUNCTIONS.items(), *METHODS.items(), *MODULES.items()]
                                   if op.kind == "move"], ids=lambda f: getattr(f, "__name__", f))
def test_moves_copy_one_element(entry):
    fn = MOVE_MODULES.get(entry) or MOVES[entry]
    deps = dependencies(lambda x: fn(x).contiguous() * 1)
    assert all(len(support) <= 1 for support in deps.values())
    assert set().union(*deps.values())  # and copy something


@pytest.mark.parametrize("entry", [f for f, op in [*FUNCTIONS.items(), *MODULES.items()] if op.kind == "channel_mix"],
                         ids=lambda f: f.__name__)
def test_channel_mixes_keep_positions(entry):
    fn = (module_fn(entry) if isinstance(entry, type) else CALL[entry])
    deps = dependencies(fn)
    assert all(all(i[2:] == index[2:] for i in support) for index, support in deps.items())
