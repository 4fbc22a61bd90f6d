"""Checkpoints load as people save them (reportgen.models): every wrapper dict × every wrapper prefix, the legacy
format, safetensors, TorchScript, whole pickled modules (only when trusted), and one-line errors that say how a
checkpoint does not fit. Every file is written by torch.save (or safetensors/TorchScript) from a real CIFAR
ResNet, and every load is checked against that model's own state_dict, tensor by tensor."""

import argparse
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from reportgen.errors import SpecError
from reportgen.models import load_model
from reportgen.spec import ModelSpec
from tests.helpers.cifar_resnet import resnet8, resnet20

FACTORY = "tests.helpers.cifar_resnet:resnet8"
KEY = "model.checkpoint"


def trained(make=resnet8, seed: int = 1) -> nn.Module:
    """A model none of whose weights or BatchNorm statistics a fresh factory build shares."""
    torch.manual_seed(seed)
    net = make()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(391)
    return net


def training_extras(net: nn.Module) -> dict:
    """What training scripts save beside the weights: epoch, optimizer state (one real SGD step with momentum,
    which changes `net`), best accuracy and the arguments as a plain dict."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    net(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))).logsumexp(1).mean().backward()
    opt.step()
    return {"epoch": 182, "optimizer": opt.state_dict(), "best_prec1": 91.78, "args": {"arch": "resnet8", "lr": 0.1}}


def assert_same_weights(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    assert list(loaded) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def load(path: Path, factory: str | None = FACTORY, trust: bool = False):
    return load_model(ModelSpec(factory=factory, checkpoint=path, trust_checkpoint=trust, input_size=32), path.parent)


def error_of(path: Path, factory: str | None = FACTORY, trust: bool = False) -> str:
    with pytest.raises(SpecError) as info:
        load(path, factory, trust)
    assert info.value.key == KEY
    return info.value.message


# --- every wrapper dict × every wrapper prefix --------------------------------------------------------------
# each wrapper is the real one: DataParallel (DDP adds the same 'module.') and torch.compile, nested both ways
WRAPPED_BY = {
    "": lambda m: m,
    "module.": nn.DataParallel,
    "_orig_mod.": torch.compile,
    "module._orig_mod.": lambda m: nn.DataParallel(torch.compile(m)),
    "_orig_mod.module.": lambda m: torch.compile(nn.DataParallel(m)),
}
SAVED_AS = {
    "bare": lambda state, extras: state,
    "state_dict": lambda state, extras: {"state_dict": state, **extras},
    "model": lambda state, extras: {"model": state, **extras},
    "model_state_dict": lambda state, extras: {"epoch": 3, "model_state_dict": state, **extras},
    "net": lambda state, extras: {"net": state, **extras},
}


@pytest.mark.parametrize("prefix", list(WRAPPED_BY))
@pytest.mark.parametrize("saved_as", list(SAVED_AS))
def test_wrapper_and_prefix_load_exactly(tmp_path, saved_as, prefix):
    net = trained()
    extras = training_extras(net)
    wrapped = WRAPPED_BY[prefix](net)
    assert all(k.startswith(prefix) for k in wrapped.state_dict())      # the wrapper really adds it
    torch.save(SAVED_AS[saved_as](wrapped.state_dict(), extras), tmp_path / "ckpt.pth.tar")
    assert_same_weights(load(tmp_path / "ckpt.pth.tar").module, net.state_dict())


def test_distributed_data_parallel_checkpoint(tmp_path):
    """DistributedDataParallel itself (one CPU process, gloo), saved the way DDP training scripts save it."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        net = trained()
        ddp = nn.parallel.DistributedDataParallel(net)
        assert next(iter(ddp.state_dict())) == "module.conv1.weight"
        torch.save({"epoch": 90, "model_state_dict": ddp.state_dict(), "best_acc1": torch.tensor(71.2)},
                   tmp_path / "checkpoint.pth")
    finally:
        dist.destroy_process_group()
    assert_same_weights(load(tmp_path / "checkpoint.pth").module, net.state_dict())


def test_released_resnet20_checkpoint(tmp_path):
    """As the popular CIFAR ResNet-20 release ships it: legacy (pre-1.6) format, {'state_dict', 'best_prec1'},
    keys saved from DataParallel, BatchNorm without num_batches_tracked (saved before PyTorch 0.4.1)."""
    net = trained(resnet20)
    state = {k: v for k, v in nn.DataParallel(net).state_dict().items() if not k.endswith("num_batches_tracked")}
    assert list(state)[0] == "module.conv1.weight"
    torch.save({"best_prec1": 91.78, "state_dict": state}, tmp_path / "resnet20.th",
               _use_new_zipfile_serialization=False)
    m = load(tmp_path / "resnet20.th", "tests.helpers.cifar_resnet:resnet20")
    expected = {k: (torch.tensor(0) if k.endswith("num_batches_tracked") else v)   # the fresh model's counter
                for k, v in net.state_dict().items()}
    assert_same_weights(m.module, expected)
    assert (m.channels, m.input_size, len(m.classes)) == (3, (32, 32), 10)


# --- safetensors and TorchScript ----------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "module."])
def test_safetensors(tmp_path, prefix):
    net = trained()
    save_file(WRAPPED_BY[prefix](net).state_dict(), tmp_path / "model.safetensors")
    assert_same_weights(load(tmp_path / "model.safetensors").module, net.state_dict())
    shutil.copy(tmp_path / "model.safetensors", tmp_path / "model.bin")    # recognized by content too
    assert_same_weights(load(tmp_path / "model.bin").module, net.state_dict())


def test_safetensors_without_factory_or_unreadable(tmp_path):
    save_file(trained().state_dict(), tmp_path / "model.safetensors")
    assert error_of(tmp_path / "model.safetensors", factory=None) == (
        "model.safetensors holds a safetensors state_dict, not a model; add 'factory: module:callable' that "
        "builds the architecture")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:300])
    message = error_of(tmp_path / "cut.safetensors")      # the detail is the safetensors version's own words
    assert message.startswith("cut.safetensors is not a readable safetensors file (SafetensorError: ")
    assert message.endswith(")") and "\n" not in message


def test_torchscript_with_and_without_factory(tmp_path):
    net = trained().eval()
    # the option-A shortcut calls a Python function, so the model is traced, as such models are exported
    torch.jit.trace(net, torch.randn(1, 3, 32, 32)).save(str(tmp_path / "traced.pt"))
    assert_same_weights(load(tmp_path / "traced.pt").module, net.state_dict())
    alone = load(tmp_path / "traced.pt", factory=None).module
    assert_same_weights(alone, net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(alone(x), net(x), atol=1e-5)


# --- whole pickled modules: only when trusted ---------------------------------------------------------------
def test_pickled_module_refused_without_trust(tmp_path):
    torch.save(trained(), tmp_path / "whole.pt")
    assert error_of(tmp_path / "whole.pt", factory=None) == (
        "whole.pt holds pickled Python objects besides tensors (functools.partial, "
        "tests.helpers.cifar_resnet.BasicBlock, tests.helpers.cifar_resnet.LambdaLayer, …) and was refused "
        "(weights_only=True); if you trust this file set model.trust_checkpoint: true, or re-save only its state_dict")


@pytest.mark.parametrize("saved", ["module", "DataParallel", "under 'model'"])
@pytest.mark.parametrize("factory", [None, FACTORY])
def test_pickled_module_loads_when_trusted(tmp_path, saved, factory):
    net = trained()
    obj = {"module": net, "DataParallel": nn.DataParallel(net), "under 'model'": {"model": net, "epoch": 3}}[saved]
    torch.save(obj, tmp_path / "whole.pt")
    with pytest.warns(UserWarning, match=r"loading whole.pt with weights_only=False \(model.trust_checkpoint\)"):
        m = load(tmp_path / "whole.pt", factory, trust=True)
    assert type(m.module).__name__ == "ResNet"                          # DataParallel unwrapped
    assert_same_weights(m.module, net.state_dict())


# --- extras that weights_only loading refuses ---------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
def test_argparse_namespace_beside_the_weights(tmp_path, legacy):
    net = trained()
    torch.save({"state_dict": net.state_dict(), "args": argparse.Namespace(arch="resnet8", lr=0.1)},
               tmp_path / "ckpt.pt", _use_new_zipfile_serialization=not legacy)
    assert error_of(tmp_path / "ckpt.pt") == (
        "ckpt.pt holds pickled Python objects besides tensors (argparse.Namespace) and was refused "
        "(weights_only=True); if you trust this file set model.trust_checkpoint: true, or re-save only its state_dict")
    with pytest.warns(UserWarning, match="weights_only=False"):
        assert_same_weights(load(tmp_path / "ckpt.pt", trust=True).module, net.state_dict())


def test_dict_without_weights(tmp_path):
    net = trained()
    extras = training_extras(net)
    torch.save({"ema": net.state_dict(), **extras}, tmp_path / "ckpt.pt")
    assert error_of(tmp_path / "ckpt.pt") == (
        "ckpt.pt holds a dict without weights (keys: 'ema', 'epoch', 'optimizer', 'best_prec1', 'args'); expected "
        "a state_dict, or one under 'state_dict', 'model_state_dict', 'model' or 'net'")
    torch.save([net.state_dict()], tmp_path / "list.pt")
    assert error_of(tmp_path / "list.pt") == "list.pt holds a list, not a state_dict or a model"


# --- checkpoints that do not fit the factory's model ----------------------------------------------------------
STEM5NET = '''from torch import nn
from tests.helpers.cifar_resnet import resnet8


def build():
    """resnet8 with a 5×5 stem and a head named like torchvision's."""
    net = resnet8()
    net.conv1 = nn.Conv2d(3, 16, kernel_size=5, padding=2, bias=False)
    net.fc = net.linear
    del net.linear
    return net
'''


def test_mismatch_names_keys_shapes_wrapper_and_prefix(tmp_path):
    (tmp_path / "stem5net.py").write_text(STEM5NET)
    torch.save({"state_dict": nn.DataParallel(trained()).state_dict(), "best_prec1": 91.78}, tmp_path / "resnet8.th")
    assert error_of(tmp_path / "resnet8.th", "stem5net:build") == (
        "checkpoint 'resnet8.th' (a {'state_dict': …} dict, 'module.' prefix removed) does not fit stem5net:build: "
        "2 missing keys (fc.weight, fc.bias), 2 unexpected (linear.weight, linear.bias), "
        "1 shape mismatch (conv1.weight: checkpoint (16, 3, 3, 3), model (16, 3, 5, 5))")


def test_mismatch_other_class_count(tmp_path):
    torch.save(torch.compile(trained()).state_dict(), tmp_path / "w.pt")
    (tmp_path / "hundrednet.py").write_text("from tests.helpers.cifar_resnet import resnet8\n"
                                         "def build():\n    return resnet8(num_classes=100)\n")
    assert error_of(tmp_path / "w.pt", "hundrednet:build") == (
        "checkpoint 'w.pt' (a state_dict, '_orig_mod.' prefix removed) does not fit hundrednet:build: "
        "2 shape mismatches (linear.weight: checkpoint (10, 64), model (100, 64); "
        "linear.bias: checkpoint (10,), model (100,))")


def test_mismatch_other_depth(tmp_path):
    """Lists are cut at three names, BatchNorm counters last (a safetensors file stores keys by dtype, then name);
    missing counters are not errors (checkpoints before PyTorch 0.4.1 have none)."""
    save_file(trained(resnet20).state_dict(), tmp_path / "resnet20.safetensors")
    assert error_of(tmp_path / "resnet20.safetensors") == (
        f"checkpoint 'resnet20.safetensors' (a safetensors state_dict) does not fit {FACTORY}: "
        "72 unexpected (layer1.1.bn1.bias, layer1.1.bn1.running_mean, layer1.1.bn1.running_var, …)")
    state = {k: v for k, v in trained().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"net": state}, tmp_path / "resnet8.pt")
    assert error_of(tmp_path / "resnet8.pt", "tests.helpers.cifar_resnet:resnet20") == (
        "checkpoint 'resnet8.pt' (a {'net': …} dict) does not fit tests.helpers.cifar_resnet:resnet20: "
        "60 missing keys (layer1.1.conv1.weight, layer1.1.bn1.weight, layer1.1.bn1.bias, …)")
