"""The Python API (`reportgen.build`, `Report`): the CLI's site from the same spec, a build from an in-memory model
and dataset (checked against the model run here), its cache, and errors carrying the spec's dotted key."""

import copy
import gzip
import re
from importlib import resources

import numpy as np
import pytest
import torch
import yaml
from torchvision.transforms.functional import to_tensor
from PIL import Image

import reportgen
from reportgen.cli import main
from reportgen.demo import fashion_cnn
from tests.helpers.tiny import FASHION_DIR

TIMINGS = re.compile(rb'<section id="timings">.*?</section>', re.S)
SMALL = {   # a few filters, small feature vis, the expensive analyses off: seconds per build
    "layers": [{"name": "block1_conv2", "filters": [0, 3], "embedding": "pca"}],
    "feature_vis": {"steps": 4, "classes": [0]},
    "attribution": {"images": 1, "trust": False},
    "concepts": {"enabled": False}, "unit_labels": {"enabled": False}, "trust": {"enabled": False},
}
TINY_MODEL = {"factory": "tests.helpers.tiny:tiny_cnn", "mean": [0.5], "std": [0.25], "input_size": 28}
quiet = {"progress": False, "log": lambda *_: None}


def _files(root):
    return {p.relative_to(root).as_posix(): TIMINGS.sub(b"", p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "timings.json"}


def test_api_and_cli_build_identical_sites(tmp_path):
    spec = {"title": "api = cli", "model": TINY_MODEL, "output": "site",
            "dataset": {"format": "fashion-mnist", "root": str(FASHION_DIR), "limit": 150, "samples": 2}} | copy.deepcopy(SMALL)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["build", str(path), "--out", str(tmp_path / "cli" / "site"), "-q"]) == 0
    report = reportgen.build(path, out=tmp_path / "api" / "site", **quiet)
    assert report.site == tmp_path / "api" / "site"
    cli, api = _files(tmp_path / "cli" / "site"), _files(report.site)
    assert sorted(cli) == sorted(api) and len(cli) > 20
    assert [rel for rel in cli if cli[rel] != api[rel]] == []
    assert report.data.layers[0].name == report.layers[0].name == "block1_conv2"   # typed, attributes delegated


class IdxFashion(torch.utils.data.Dataset):
    """The first `n` Fashion-MNIST test images as ToTensor floats, read here from the IDX files (not by reportgen)."""

    def __init__(self, n: int):
        with gzip.open(FASHION_DIR / "t10k-images-idx3-ubyte.gz") as f:
            self.images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
        with gzip.open(FASHION_DIR / "t10k-labels-idx1-ubyte.gz") as f:
            self.labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n].astype(int)
        self.classes = list(fashion_cnn.CLASSES)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return to_tensor(Image.fromarray(self.images[i])), int(self.labels[i])


def _demo_model():
    net = fashion_cnn.build()
    weights = resources.files("reportgen.demo") / "fashion_cnn.pt"
    with resources.as_file(weights) as p:
        net.load_state_dict(torch.load(p, weights_only=True))
    return net


def _memory_spec(net, data, out) -> dict:
    return {"title": "in memory", "output": str(out), "dataset": {"data": data, "samples": 2},
            "model": {"module": net, "mean": [0.2860], "std": [0.3530], "input_size": 28}} | copy.deepcopy(SMALL)


def test_in_memory_model_and_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # a dict spec's cache and relative paths: the current directory
    net, data = _demo_model().train(), IdxFashion(120)
    logs = []
    report = reportgen.build(_memory_spec(net, data, "site"), progress=False, log=logs.append)
    assert report.site == tmp_path / "site" and (tmp_path / ".reportgen-cache").is_dir()
    assert net.training and all(p.requires_grad for p in net.parameters())   # the caller's model is untouched
    assert report.dataset.format == "memory" and report.dataset.size == 120
    assert report.model.source == "in-memory FashionCNN"
    assert report.dataset.classes == list(fashion_cnn.CLASSES)
    # the model run here: accuracy and each shown filter's top image
    model = _demo_model().eval()
    x = torch.stack([data[i][0] for i in range(len(data))])
    x = (x - 0.2860) / 0.3530
    layer = report.layers[0]
    acts = {}
    hook = dict(model.named_modules())[layer.path].register_forward_hook(lambda m, i, o: acts.update(a=o))
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    hook.remove()
    assert report.data.accuracy.top1 == pytest.approx((pred == data.labels).mean(), abs=1e-4)
    peaks = acts["a"].amax(dim=(2, 3))   # (N, C)
    for f in layer.filters:
        assert f.top_images[0].dataset_index == int(peaks[:, f.index].argmax())
    # the same objects again: all cached; other weights: a new model identity, recomputed
    logs.clear()
    again = reportgen.build(_memory_spec(net, data, "site"), progress=False, log=logs.append)
    assert any("computed: nothing (all cached)" in m for m in logs)
    assert again.model.sha256 == report.model.sha256
    with torch.no_grad():
        net.features.conv1.weight.mul_(-1)
    logs.clear()
    other = reportgen.build(_memory_spec(net, data, "site2"), progress=False, log=logs.append)
    assert other.model.sha256 != report.model.sha256
    assert not any("all cached" in m for m in logs)


def test_memory_dataset_fingerprint_sees_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = IdxFashion(40)
    first = reportgen.build(_memory_spec(_demo_model(), data, "a"), **quiet)
    data.labels = data.labels.copy()
    data.labels[5] = (data.labels[5] + 1) % 10
    second = reportgen.build(_memory_spec(_demo_model(), data, "b"), **quiet)
    assert first.dataset.fingerprint != second.dataset.fingerprint


@pytest.mark.parametrize("change, key, message", [
    (lambda s: s["layers"][0].update(name="block9_conv9"), "layers[0].name", "no layer 'block9_conv9'"),
    (lambda s: s["model"].update(module="a model"), "model.module", "a str is not a torch nn.Module"),
    (lambda s: s["model"].update(factory="tests.helpers.tiny:tiny_cnn"), "model",
     "give either 'module' or 'torchvision'/'timm'/'factory', not both"),
    (lambda s: s["dataset"].update(root="data"), "dataset.root", "is for datasets read from files"),
    (lambda s: s["dataset"].update(data=3), "dataset.data", "a int is not a dataset"),
    (lambda s: s["dataset"].update(limit=0), "dataset.limit", "greater than or equal to 1"),
])
def test_api_errors_carry_the_key(tmp_path, monkeypatch, change, key, message):
    monkeypatch.chdir(tmp_path)
    spec = _memory_spec(_demo_model(), IdxFashion(20), "site")
    change(spec)
    with pytest.raises(reportgen.SpecError) as info:
        reportgen.build(spec, **quiet)
    assert info.value.key == key
    assert message in info.value.message


def test_file_spec_errors_are_the_clis(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_MODEL, "layers": [{"name": "nope"}],
                                    "dataset": {"format": "fashion-mnist", "root": str(FASHION_DIR)}}))
    with pytest.raises(reportgen.SpecError) as info:
        reportgen.build(path, **quiet)
    assert main(["build", str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {info.value.key}: {info.value.message}"
    assert info.value.key == "layers[0].name"


def test_report_lookups_name_the_choices(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = reportgen.build(_memory_spec(_demo_model(), IdxFashion(30), "site"), **quiet)
    with pytest.raises(LookupError, match=r"no layer 'conv9' in this report; layers: block1_conv2"):
        report.layer("conv9")
    with pytest.raises(LookupError, match=r"layer 'block1_conv2' has no filter 7 in this report; its filters: 0, 3"):
        report.filter("block1_conv2", 7)
    page = report.filter("features.conv2_relu", 3)   # by module path too
    doc = page.document()
    assert "src=\"data:image/png;base64," in doc and 'src="../' not in doc   # every image inlined
    overview = report._repr_html_()
    assert "block1_conv2" in overview and "in-memory FashionCNN" in overview and str(report.site) in overview
