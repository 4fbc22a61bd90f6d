"""ImageNet synset folders and label files map to the model's output indices (labels.py, imagenet.py).

The model is torchvision's ResNet-18 with its real weights enum (`IMAGENET1K_V1`: meta, categories, transforms)
and a stand-in state_dict where the weights API caches the file. Expected indices are ImageNet facts written out
here (tench 0, axolotl 29, tabby 281; the issue's axolotl was labelled 1) and checked against torchvision's
categories, an independent source from timm's synset list that reportgen maps with.
"""

import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision
from PIL import Image
from timm.data import ImageNetInfo

from reportgen import imagenet
from reportgen.pipeline import build
from reportgen.cli import main
from reportgen.data import load_dataset
from reportgen.errors import SpecError
from reportgen.labels import match_labels
from reportgen.models import load_model, weights_cache_path
from reportgen.spec import DatasetSpec, ModelSpec, load_spec

WEIGHTS = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
CATEGORIES = WEIGHTS.meta["categories"]
# WNID → (ImageNet-1k index, torchvision's name): written out, not computed by the code under test
KNOWN = {"n01440764": (0, "tench"), "n01632777": (29, "axolotl"), "n02123045": (281, "tabby")}
AXOLOTL = "n01632777"


def test_known_facts_agree_with_both_libraries():
    for wnid, (index, name) in KNOWN.items():
        assert CATEGORIES[index] == name
        assert imagenet.wnids()[index] == wnid and imagenet.wnid_index(wnid) == index
    assert list(imagenet.names()) == CATEGORIES and len(imagenet.wnids()) == 1000


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """TORCH_HOME with a stand-in ResNet-18 state_dict that predicts axolotl (29) for every image."""
    home = tmp_path_factory.mktemp("torch")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        path = weights_cache_path(WEIGHTS)
        path.parent.mkdir(parents=True)
        torch.manual_seed(0)
        net = torchvision.models.resnet18()
        with torch.no_grad():
            net.fc.bias[29] = 1e4
        torch.save(net.state_dict(), path)
        yield home


@pytest.fixture(scope="module")
def resnet(torch_home):
    return load_model(ModelSpec(torchvision="resnet18", weights="IMAGENET1K_V1"), Path("."))


def write_jpegs(folder: Path, names: list[str], seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / name, "JPEG")


def synset_folder(root: Path, wnids, per_class: int = 2) -> Path:
    for w in wnids:
        write_jpegs(root / w, [f"{w}_{i}.JPEG" for i in range(per_class)])
    return root


def matched(model, root: Path, **spec):
    spec = DatasetSpec(format="imagefolder", root=root, **spec)
    d = load_dataset(spec, 32, 32, 3)
    match_labels(d, model, spec, named=False)
    return d


def labels_by_folder(d) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for name, label in zip(d.names, d.labels.tolist()):
        out.setdefault(name.split("/")[0], set()).add(label)
    return out


def test_the_model_knows_its_imagenet_synsets(resnet):
    assert resnet.classes == CATEGORIES
    assert [resnet.class_ids[i] for i, _ in KNOWN.values()] == list(KNOWN)


def test_synset_folders_are_labelled_with_imagenet_indices(resnet, tmp_path):
    d = matched(resnet, synset_folder(tmp_path / "ds", ["n02123045", AXOLOTL, "n01440764"]))
    assert labels_by_folder(d) == {w: {i} for w, (i, _) in KNOWN.items()}
    assert d.classes == CATEGORIES and d.class_ids[29] == AXOLOTL
    assert [d.classes[l] for l in d.labels] == ["tench", "tench", "axolotl", "axolotl", "tabby", "tabby"]


def test_a_subset_folder_keeps_the_imagenet_index(resnet, tmp_path):
    d = matched(resnet, synset_folder(tmp_path / "ds", [AXOLOTL]))
    assert d.labels.tolist() == [29, 29] and d.classes[29] == "axolotl"


def test_imagenet_mini_train_and_val_layouts(resnet, tmp_path):
    mini = tmp_path / "imagenet-mini"
    synset_folder(mini / "train", [AXOLOTL, "n01440764"], per_class=3)
    synset_folder(mini / "val", [AXOLOTL], per_class=1)
    assert labels_by_folder(matched(resnet, mini / "train")) == {AXOLOTL: {29}, "n01440764": {0}}
    assert matched(resnet, mini / "val").labels.tolist() == [29]
    with pytest.raises(SpecError) as info:
        matched(resnet, mini)   # the root above the splits: two "classes", train and val
    assert info.value.key == "dataset.labels"
    assert info.value.message == (
        f"class folders 'train', 'val' match none of the model's 1000 classes ('tench', 'goldfish', 'great white "
        f"shark', …); {str(mini)!r} holds splits: point dataset.root at one of them, e.g. {str(mini / 'val')!r}")


VAL = [f"ILSVRC2012_val_{n:08d}.JPEG" for n in (1, 2, 3)]
VAL_TRUTH = [AXOLOTL, "n01440764", "n02123045"]   # the WNIDs of images 1, 2, 3


def test_flat_val_with_kaggle_csv(resnet, tmp_path):
    write_jpegs(tmp_path / "val", VAL)
    csv = tmp_path / "LOC_val_solution.csv"
    rows = [f"{Path(f).stem},{w} 10 20 30 40 {w} 1 2 3 4" for f, w in zip(VAL, VAL_TRUTH)]
    csv.write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")
    d = matched(resnet, tmp_path / "val", labels_file=csv)
    assert d.names == VAL and d.labels.tolist() == [29, 0, 281]


def write_devkit(root: Path, truth_ids: list[int]) -> Path:
    """A devkit whose ILSVRC2012_IDs are not in sorted-WNID order (as the real one's are not), with one inner
    synset (num_children > 0) like meta.mat's 860 non-leaf entries."""
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
             ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    entries = [(1, "n02123045", "tabby, tabby cat", "a cat", 0), (2, AXOLOTL, "axolotl", "a salamander", 0),
               (3, "n01440764", "tench, Tinca tinca", "a fish", 0), (1001, "n00001740", "entity", "all", 3)]
    synsets = np.array([(i, w, words, gloss, kids, np.zeros(0), 0, 1300) for i, w, words, gloss, kids in entries],
                       dtype=dtype)
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in truth_ids))
    return root / "ILSVRC2012_devkit_t12"


def test_flat_val_with_the_devkit(resnet, tmp_path):
    write_jpegs(tmp_path / "val", VAL)
    devkit = write_devkit(tmp_path, [2, 3, 1])   # axolotl, tench, tabby by the devkit's own IDs
    d = matched(resnet, tmp_path / "val", labels_file=devkit)
    assert d.labels.tolist() == [29, 0, 281]


def test_flat_folder_with_a_plain_csv_of_wnids_or_indices(resnet, tmp_path):
    write_jpegs(tmp_path / "val", VAL)
    wnids = tmp_path / "wnids.csv"
    wnids.write_text("file,label\n" + "".join(f"{f},{w}\n" for f, w in zip(VAL, VAL_TRUTH)))
    assert matched(resnet, tmp_path / "val", labels_file=wnids).labels.tolist() == [29, 0, 281]
    indices = tmp_path / "indices.csv"
    indices.write_text("".join(f"{Path(f).stem},{i}\n" for f, i in zip(VAL, [7, 29, 999])))
    assert matched(resnet, tmp_path / "val", labels_file=indices).labels.tolist() == [7, 29, 999]


def test_an_image_without_a_label_is_named(resnet, tmp_path):
    write_jpegs(tmp_path / "val", VAL)
    csv = tmp_path / "l.csv"
    csv.write_text(f"{VAL[0]},{AXOLOTL}\n")
    with pytest.raises(SpecError) as info:
        matched(resnet, tmp_path / "val", labels_file=csv)
    assert (info.value.key, info.value.message) == (
        "dataset.labels_file", f"has no label for 2 of the 3 images in dataset.root, e.g. {VAL[1]!r}")


def test_a_foreign_folder_is_refused_and_labels_folder_trusts_it(resnet, tmp_path):
    root = synset_folder(tmp_path / "ds", ["cat", "dog"])
    with pytest.raises(SpecError) as info:
        matched(resnet, root)
    assert info.value.key == "dataset.labels"
    assert info.value.message == (
        "class folders 'cat', 'dog' match none of the model's 1000 classes ('tench', 'goldfish', 'great white "
        "shark', …); set dataset.labels: folder to trust folder order (folder i = output i), or name the outputs "
        "with model.classes")
    d = matched(resnet, root, labels="folder")
    assert d.labels.tolist() == [0, 0, 1, 1] and d.classes == ["cat", "dog"]


def test_synsets_outside_imagenet_1k_are_named(resnet, tmp_path):
    with pytest.raises(SpecError) as info:
        matched(resnet, synset_folder(tmp_path / "ds", [AXOLOTL, "n00001740"]))
    assert info.value.message.startswith(
        "class folders 'n00001740' are synset IDs the model's 1000 ImageNet classes do not include; ")


def test_folders_named_like_the_model_classes_map_by_name(resnet, tmp_path):
    d = matched(resnet, synset_folder(tmp_path / "ds", ["tabby", "axolotl"]))
    assert labels_by_folder(d) == {"axolotl": {29}, "tabby": {281}}


def test_an_unnamed_1000_way_head_over_synset_folders_is_imagenet(torch_home, tmp_path):
    """The lab's case: a checkpoint's VGG19 has no class names; its synset folders say what the outputs are."""
    model = load_model(ModelSpec(torchvision="resnet18"), Path("."))
    assert model.classes[:2] == ["class 0", "class 1"] and model.class_ids is None
    d = matched(model, synset_folder(tmp_path / "ds", [AXOLOTL]))
    assert d.labels.tolist() == [29, 29] and model.classes == CATEGORIES and model.class_ids[29] == AXOLOTL


def test_an_unnamed_small_head_keeps_folder_order_with_lemma_names(tmp_path):
    model = types.SimpleNamespace(classes=["class 0", "class 1"], class_ids=None)
    d = matched(model, synset_folder(tmp_path / "ds", ["n02123045", AXOLOTL]))
    assert d.labels.tolist() == [0, 0, 1, 1]
    assert d.classes == model.classes == ["axolotl", "tabby"] and d.class_ids == [AXOLOTL, "n02123045"]


def test_timm_data_read_directly_is_what_imagenet_info_reads(monkeypatch):
    info = ImageNetInfo("imagenet-1k")
    assert list(imagenet.wnids()) == info.label_names()
    assert {w: imagenet._lemmas()[w] for w in info.label_names()} == info.label_descriptions(as_dict=True)
    assert imagenet.lemma(AXOLOTL) == "axolotl" and imagenet.lemma("n99999999") == "n99999999"
    # where timm keeps its data elsewhere, timm's own reader gives the same
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else find_spec(name, *a))
    assert imagenet._timm_data(imagenet._SYNSETS).split() == info.label_names()
    fallback = dict(line.split("\t") for line in imagenet._timm_data(imagenet._LEMMAS).splitlines())
    assert fallback == info.label_descriptions(as_dict=True)


def test_imagenet_class_ids_recognizes_each_library_spelling():
    info = ImageNetInfo("imagenet-1k")
    for spelling in (CATEGORIES, imagenet.wnids(), info.label_descriptions()):
        assert imagenet.imagenet_class_ids(list(spelling), 1000)[29] == AXOLOTL
    assert imagenet.imagenet_class_ids(CATEGORIES, 10) is None
    assert imagenet.imagenet_class_ids([f"class {i}" for i in range(1000)], 1000) is None
    assert imagenet.is_wnid(AXOLOTL) and not imagenet.is_wnid("n0163277") and not imagenet.is_wnid("axolotl")


SPEC = """
model: {{torchvision: resnet18, weights: IMAGENET1K_V1}}
dataset: {{format: imagefolder, root: {root}, samples: 8}}
layers: [{{name: layer4.1.conv2, filters: [0], embedding: none}}]
feature_vis: {{enabled: false}}
circuit: {{enabled: false}}
attribution: {{enabled: {attribution}, images: 1, methods: [saliency], sanity_check: false}}
"""


def test_a_build_reports_imagenet_classes(torch_home, tmp_path):
    """Every image is predicted axolotl (the stand-in's bias): before the mapping, the axolotl folder was label 1
    and accuracy 0; now the axolotls are right, 2 of 6."""
    synset_folder(tmp_path / "ds", list(KNOWN))
    (tmp_path / "spec.yaml").write_text(SPEC.format(root=tmp_path / "ds", attribution="true"))
    site = build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda *_: None)
    report = json.loads((site / "report.json").read_text())
    samples = report["samples"]
    assert len(samples) == 6
    for s in samples:
        index, name = KNOWN[s["name"].split("/")[0]]
        assert (s["label"], s["class"], s["pred"], s["pred_class"]) == (index, name, 29, "axolotl")
    assert report["dataset"]["classes"] == CATEGORIES and report["dataset"]["class_ids"][29] == AXOLOTL
    assert report["model"]["class_ids"] == report["dataset"]["class_ids"]
    acc = report["accuracy"]
    top1 = acc["top1"] if isinstance(acc, dict) else acc   # a number, or the accuracy analysis' part
    assert top1 == pytest.approx(np.mean([s["label"] == s["pred"] for s in samples])) == pytest.approx(1 / 3)
    top_classes = report["layers"][0]["filters"][0]["top_classes"]
    assert sorted(c["label"] for c in top_classes) == [0, 29, 281]   # only the classes with images
    # the pages name the classes and show the synset ID as a tooltip
    axolotl = f'<span title="{AXOLOTL}">axolotl</span>'
    assert f"true: <strong>{axolotl}</strong>" in (site / "index.html").read_text()
    assert f'<th scope="row">{axolotl}</th>' in (site / report["layers"][0]["filters"][0]["page"]).read_text()
    page = next(p["page"] for p in report["pages"] if p["page"].startswith("attribution"))
    assert f'predicted axolotl <span class="muted">{AXOLOTL}</span>' in (site / page).read_text()   # beside it


def test_the_cli_refuses_a_foreign_folder_with_exit_2(torch_home, tmp_path, capsys):
    synset_folder(tmp_path / "ds", ["cat", "dog"])
    (tmp_path / "spec.yaml").write_text(SPEC.format(root=tmp_path / "ds", attribution="false"))
    assert main(["build", str(tmp_path / "spec.yaml"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: dataset.labels: class folders 'cat', 'dog' match none of the model's 1000 classes")


@pytest.mark.parametrize("dataset, message", [
    ("{format: mnist, root: ., labels_file: l.csv}", "'labels_file' is for imagefolder datasets; mnist has its own labels"),
    ("{format: imagefolder, root: ., labels_file: l.csv, labels: folder}",
     "'labels: folder' trusts class folders' order, but 'labels_file' gives the labels; remove one of them"),
    ("{format: imagefolder, root: ., labels: wnid}", "Input should be 'auto' or 'folder'"),
])
def test_label_keys_are_checked_with_the_spec(tmp_path, dataset, message):
    (tmp_path / "spec.yaml").write_text(f"model: {{torchvision: resnet18}}\ndataset: {dataset}\nlayers: [{{name: conv1}}]\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "spec.yaml")
    assert (info.value.key, info.value.message) == ("dataset.labels" if "wnid" in dataset else "dataset", message)


def test_a_labels_file_path_is_relative_to_the_spec(tmp_path):
    (tmp_path / "spec.yaml").write_text("model: {torchvision: resnet18}\n"
                                        "dataset: {format: imagefolder, root: val, labels_file: meta/l.csv}\n"
                                        "layers: [{name: conv1}]\n")
    assert load_spec(tmp_path / "spec.yaml").dataset.labels_file == tmp_path / "meta" / "l.csv"


def test_an_output_holding_the_labels_file_is_refused(tmp_path):
    from reportgen.render.site import SITE_MARKER

    (tmp_path / "old-site").mkdir()
    (tmp_path / "old-site" / SITE_MARKER).write_text("")
    (tmp_path / "old-site" / "l.csv").write_text(f"a.JPEG,{AXOLOTL}\n")   # replacing the site would delete it
    (tmp_path / "spec.yaml").write_text("output: old-site\nmodel: {torchvision: resnet18}\n"
                                        "dataset: {format: imagefolder, root: val, labels_file: old-site/l.csv}\n"
                                        "layers: [{name: conv1}]\n")
    with pytest.raises(SpecError) as info:
        build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda *_: None)
    assert info.value.key == "output" and "l.csv" in info.value.message


def test_only_the_unmatched_folders_are_listed(resnet, tmp_path):
    with pytest.raises(SpecError) as info:
        matched(resnet, synset_folder(tmp_path / "ds", ["axolotl", "Tabby", "tench", "zebra crossing"]))
    assert info.value.message.startswith("class folders 'Tabby', 'zebra crossing' match none of the model's 1000 "
                                         "classes")
