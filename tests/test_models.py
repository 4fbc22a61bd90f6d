"""Each model source loads through the real code path: torchvision API, TorchScript, factory, state_dict."""

import pytest
import torch
import torchvision

from reportgen.errors import ModelError, SpecError
from reportgen.models import load_model, weights_cache_path
from reportgen.layers import resolve_layers
from reportgen.spec import LayerSpec, ModelSpec
from tests.helpers.tiny import TinyCNN, tiny_cnn


def outputs_equal(a, b, channels=1, size=28):
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def test_torchvision_without_weights(tmp_path):
    m = load_model(ModelSpec(torchvision="resnet18", weights=None), tmp_path)
    assert isinstance(m.module, torchvision.models.ResNet)
    assert (m.input_size, m.channels, len(m.classes)) == ((224, 224), 3, 1000)
    assert not m.module.training


def test_torchvision_weights_from_torch_home(tmp_path, monkeypatch):
    """A state_dict where the weights API caches it is loaded offline, with the weights' meta."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    path = weights_cache_path(weights)
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.manual_seed(3)
    stand_in = torchvision.models.resnet18()
    torch.save(stand_in.state_dict(), path)
    m = load_model(ModelSpec(torchvision="resnet18", weights="IMAGENET1K_V1"), tmp_path)
    assert outputs_equal(m.module, stand_in.eval(), channels=3, size=64)
    assert m.classes[:2] == ["tench", "goldfish"] and len(m.classes) == 1000
    assert m.mean == [0.485, 0.456, 0.406] and (m.input_size, m.resize_size) == ((224, 224), (256, 256))


def test_unknown_weights_lists_the_choices(tmp_path):
    with pytest.raises(SpecError) as info:
        load_model(ModelSpec(torchvision="resnet18", weights="IMAGENET9K"), tmp_path)
    assert info.value.key == "model.weights"
    assert "choose one of: IMAGENET1K_V1, or null" in info.value.message


def test_unknown_torchvision_model_suggests(tmp_path):
    with pytest.raises(SpecError, match="no torchvision model 'vgg91'; closest: vgg19"):
        load_model(ModelSpec(torchvision="vgg91"), tmp_path)


def test_torchscript_checkpoint(tmp_path):
    torch.manual_seed(7)
    net = TinyCNN().eval()
    torch.jit.script(net).save(str(tmp_path / "net.pt"))
    m = load_model(ModelSpec(checkpoint=tmp_path / "net.pt"), tmp_path)
    assert outputs_equal(m.module, net)
    assert (m.channels, m.input_size) == (1, (224, 224))  # channels read off the first 4-D weight; size: default
    # its layers cannot be hooked: the error says how to get them (factory + the same file)
    with pytest.raises(ModelError, match="give the architecture as 'factory:' and keep the TorchScript file"):
        resolve_layers(m.module, [LayerSpec(name="features.c1")], 28, 1)
    both = load_model(ModelSpec(factory="tests.helpers.tiny:tiny_cnn", checkpoint=tmp_path / "net.pt"), tmp_path)
    assert outputs_equal(both.module, net)
    assert resolve_layers(both.module, [LayerSpec(name="features.c1")], 28, 1)[0].channels == 4


def test_torchscript_checkpoint_names_its_outputs(tmp_path):
    """A TorchScript head of 10 outputs gets 10 class names, as the same model from a factory does
    (its submodules are RecursiveScriptModules, not nn.Linear: the last 2-D weight gives the count)."""
    torch.jit.script(TinyCNN(3).eval()).save(str(tmp_path / "net.pt"))
    m = load_model(ModelSpec(checkpoint=tmp_path / "net.pt"), tmp_path)
    assert m.channels == 3
    assert m.classes == [f"class {i}" for i in range(10)]


def test_factory_from_spec_directory(tmp_path):
    (tmp_path / "mynet.py").write_text("from tests.helpers.tiny import tiny_cnn\ndef make():\n    return tiny_cnn()\n")
    m = load_model(ModelSpec(factory="mynet:make"), tmp_path)
    assert outputs_equal(m.module, tiny_cnn().eval())


def test_factory_with_state_dict(tmp_path):
    torch.manual_seed(5)
    trained = TinyCNN().eval()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    m = load_model(ModelSpec(factory="tests.helpers.tiny:tiny_cnn", checkpoint=tmp_path / "w.pt"), tmp_path)
    assert outputs_equal(m.module, trained)


def test_state_dict_without_factory_is_explained(tmp_path):
    torch.save(tiny_cnn().state_dict(), tmp_path / "w.pt")
    with pytest.raises(SpecError, match="holds a state_dict, not a model; add 'factory"):
        load_model(ModelSpec(checkpoint=tmp_path / "w.pt"), tmp_path)


def test_mismatched_state_dict_lists_keys(tmp_path):
    state = tiny_cnn().state_dict()
    state["extra.weight"] = state.pop("fc.weight")
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(SpecError) as info:
        load_model(ModelSpec(factory="tests.helpers.tiny:tiny_cnn", checkpoint=tmp_path / "w.pt"), tmp_path)
    assert info.value.key == "model.checkpoint"
    assert info.value.message == ("checkpoint 'w.pt' (a state_dict) does not fit tests.helpers.tiny:tiny_cnn: "
                                  "1 missing key (fc.weight), 1 unexpected (extra.weight)")


def test_missing_weights_offline_names_file_and_directory(tmp_path, monkeypatch):
    """No cached file and no network: the error says which file goes where (no traceback, no download)."""
    import urllib.error
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(torchvision="resnet18", weights="IMAGENET1K_V1"), tmp_path)
    assert str(info.value) == (f"weights resnet18-f37072fd.pth are not cached and cannot be downloaded (URLError); "
                               f"put the file in {tmp_path / 'th' / 'hub' / 'checkpoints'} (TORCH_HOME/hub/checkpoints)"
                               " or set TORCH_HOME")


def test_trust_checkpoint_loads_pickles_with_a_warning(tmp_path):
    net = tiny_cnn().eval()
    torch.save(net, tmp_path / "whole.pt")                      # a pickled module, refused by default
    with pytest.raises(SpecError, match="set model.trust_checkpoint: true"):
        load_model(ModelSpec(checkpoint=tmp_path / "whole.pt"), tmp_path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        m = load_model(ModelSpec(checkpoint=tmp_path / "whole.pt", trust_checkpoint=True), tmp_path)
    assert outputs_equal(m.module, net)


def test_factory_beside_the_spec_leaves_sys_path_as_it_was(tmp_path):
    import sys

    (tmp_path / "besidenet.py").write_text(
        "import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 2, 3)\n        self.fc = torch.nn.Linear(2, 3)\n"
        "    def forward(self, x):\n        return self.fc(self.conv(x).mean((2, 3)))\n"
        "def make():\n    return Net()\n")
    (tmp_path / "besidepkg").mkdir()
    (tmp_path / "besidepkg" / "__init__.py").write_text("")
    (tmp_path / "besidepkg" / "nets.py").write_text("from besidenet import Net\ndef make():\n    return Net()\n")
    (tmp_path / "besidebroken.py").write_text("raise RuntimeError('broken on purpose')\n")
    before = list(sys.path)
    m = load_model(ModelSpec(factory="besidenet:make", input_size=8), tmp_path)
    assert sys.path == before
    assert type(load_model(ModelSpec(factory="besidepkg.nets:make", input_size=8), tmp_path).module).__name__ == "Net"
    assert sys.path == before
    with pytest.raises(SpecError, match="importing 'besidebroken' failed: RuntimeError: broken on purpose"):
        load_model(ModelSpec(factory="besidebroken:make"), tmp_path)
    assert sys.path == before
    # the module stays registered under its name, so a whole pickled model of its class loads again
    torch.save(m.module, tmp_path / "whole.pt")
    with pytest.warns(UserWarning, match="weights_only=False"):
        again = load_model(ModelSpec(checkpoint=tmp_path / "whole.pt", trust_checkpoint=True, input_size=8), tmp_path)
    assert outputs_equal(again.module, m.module)

