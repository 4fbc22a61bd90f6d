"""Each dataset format, on tiny files the tests write in the real formats; subsets are deterministic."""

import json

import numpy as np
import pytest
from PIL import Image

from reportgen.data import TorchView, load_dataset, sample_indices, subset_indices, to_model_image
from reportgen.errors import DataError, SpecError
from reportgen.spec import DatasetSpec
from tests.helpers.tiny import (write_cifar10, write_corrupt_image, write_folder_clutter, write_imagefolder,
                                write_mnist)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_gzipped_and_raw(tmp_path, gz):
    images, labels = write_mnist(tmp_path, n=12, gz=gz)
    ds = load_dataset(DatasetSpec(format="mnist", root=tmp_path), 28, 28, 1)
    assert ds.size == 12 and ds.classes[:3] == ["0", "1", "2"]
    assert np.array_equal(ds.labels, labels)
    assert np.array_equal(ds.image(5), images[5][None])


def test_fashion_mnist_train_split_and_rgb_model(tmp_path):
    images, _ = write_mnist(tmp_path, n=6, split="train")
    ds = load_dataset(DatasetSpec(format="fashion-mnist", root=tmp_path, split="train"), 28, 28, 3)
    assert ds.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                          "Bag", "Ankle boot"]
    img = ds.image(2)
    assert img.shape == (3, 28, 28) and all(np.array_equal(img[c], images[2]) for c in range(3))


def test_idx_truncated_file_is_a_data_error(tmp_path):
    write_mnist(tmp_path, n=4, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated IDX file"):
        load_dataset(DatasetSpec(format="mnist", root=tmp_path), 28, 28, 1)


def test_cifar10(tmp_path):
    images, labels = write_cifar10(tmp_path, n=20)
    ds = load_dataset(DatasetSpec(format="cifar10", root=tmp_path), 32, 32, 3)
    assert ds.size == 20 and ds.classes[1] == "automobile"
    assert np.array_equal(ds.image(7), images[7].transpose(2, 0, 1))
    assert np.array_equal(ds.labels, labels)


def test_cifar10_refuses_pickled_code(tmp_path):
    import os
    import pickle
    write_cifar10(tmp_path, n=4)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="forbidden object"):
        load_dataset(DatasetSpec(format="cifar10", root=tmp_path), 32, 32, 3)


def test_imagefolder_resize_crop_and_classes(tmp_path):
    write_imagefolder(tmp_path, per_class=3, classes=("cat", "dog"), size=(40, 30))
    ds = load_dataset(DatasetSpec(format="imagefolder", root=tmp_path), 24, 28, 3)
    assert ds.classes == ["cat", "dog"] and list(ds.labels) == [0, 0, 0, 1, 1, 1]
    assert ds.names[3] == "dog/img0.png"
    # independent computation: shorter side 30 → 28 (width 40 → 37), centre crop 24
    src = Image.open(tmp_path / "dog" / "img0.png").convert("RGB").resize((37, 28), Image.BILINEAR)
    expected = np.asarray(src)[2:26, 6:30].transpose(2, 0, 1)
    assert np.array_equal(ds.image(3), expected)


@pytest.mark.parametrize("width, height, resized, left", [
    # portrait 30×50 (width × height): covering 40×32 (H × W) scales the width 30 → 32, height 50 → 53;
    # exactly torchvision's Resize(32) (shorter side) + CenterCrop((40, 32)), whose top offset round(6.5) = 6
    (30, 50, 32, None),
    # landscape 50×30: the height 30 → 40, width 50 → 66.7, rounded to 67 (torchvision's Resize(40) truncates
    # to 66), then the crop starts at floor(35 / 2) = 17 (CenterCrop would round half to even: 18); reportgen
    # keeps its rounding so that square models read the same pixels as before
    (50, 30, [40, 67], 17),
])
def test_imagefolder_non_square_input_covers_then_centre_crops(tmp_path, width, height, resized, left):
    import torchvision.transforms.functional as TF

    write_imagefolder(tmp_path, per_class=1, classes=("cat",), size=(width, height))
    ds = load_dataset(DatasetSpec(format="imagefolder", root=tmp_path), (40, 32), (40, 32), 3)
    src = TF.resize(Image.open(tmp_path / "cat" / "img0.png").convert("RGB"), resized,
                    interpolation=TF.InterpolationMode.BILINEAR)
    crop = TF.center_crop(src, [40, 32]) if left is None else TF.crop(src, 0, left, 40, 32)
    expected = np.asarray(crop).transpose(2, 0, 1)                       # (C, H, W)
    assert ds.image(0).shape == (3, 40, 32)
    assert np.array_equal(ds.image(0), expected)


@pytest.mark.parametrize("fmt", ["mnist", "cifar10"])
def test_array_datasets_at_a_non_square_input(tmp_path, fmt):
    """IDX and CIFAR arrays take the same path: 28×28 (32×32) covering 40×32 → 40×40, centre-cropped."""
    if fmt == "mnist":
        images, _ = write_mnist(tmp_path, n=3)
        channels, src = 1, Image.fromarray(images[1])
    else:
        images, _ = write_cifar10(tmp_path, n=3)
        channels, src = 3, Image.fromarray(images[1])
    ds = load_dataset(DatasetSpec(format=fmt, root=tmp_path), (40, 32), (40, 32), channels)
    expected = np.asarray(src.resize((40, 40), Image.BILINEAR))[:, 4:36]
    expected = expected[None] if channels == 1 else expected.transpose(2, 0, 1)
    assert np.array_equal(ds.image(1), expected)


def test_imagefolder_leaves_out_files_that_are_not_images(tmp_path):
    write_imagefolder(tmp_path, per_class=2, classes=("cat", "dog"))
    write_folder_clutter(tmp_path, "cat")
    Image.new("RGB", (30, 30)).save(tmp_path / "dog" / "SHOUT.JPG")        # extensions in any case are images
    Image.new("RGB", (30, 30)).save(tmp_path / "dog" / "scan.TIFF")
    ds = load_dataset(DatasetSpec(format="imagefolder", root=tmp_path), 28, 28, 3)
    assert ds.size == 6
    assert ds.names == ["cat/img0.png", "cat/img1.png", "dog/SHOUT.JPG", "dog/img0.png", "dog/img1.png",
                        "dog/scan.TIFF"]


def test_imagefolder_hidden_folders_are_not_classes(tmp_path):
    write_imagefolder(tmp_path, per_class=2, classes=("cat", "dog"))
    write_folder_clutter(tmp_path, "dog")          # .git/, .ipynb_checkpoints/ (with a PNG) at the root and in dog/
    ds = load_dataset(DatasetSpec(format="imagefolder", root=tmp_path), 28, 28, 3)
    assert ds.classes == ["cat", "dog"] and list(ds.labels) == [0, 0, 1, 1]
    assert ds.names == ["cat/img0.png", "cat/img1.png", "dog/img0.png", "dog/img1.png"]


def test_imagefolder_empty_class_folder_keeps_its_label_and_is_named(tmp_path):
    # A test split may lack a class the model was trained on; leaving the folder out would shift every later
    # label by one, so it stays a class (as in training) and a warning names it.
    write_imagefolder(tmp_path, per_class=2, classes=("ant", "bee", "cow", "dog"))
    for c in ("bee", "cow"):
        for p in (tmp_path / c).iterdir():
            p.unlink()
    (tmp_path / "cow" / "notes.txt").write_text("no cows this time")
    with pytest.warns(UserWarning) as caught:
        ds = load_dataset(DatasetSpec(format="imagefolder", root=tmp_path), 28, 28, 3)
    assert [str(w.message) for w in caught] == [
        "dataset.root: no image in class folders 'bee' (label 1), 'cow' (label 2); kept, so that the other classes "
        "keep their labels"]
    assert ds.classes == ["ant", "bee", "cow", "dog"] and list(ds.labels) == [0, 0, 3, 3]


def test_imagefolder_without_images_is_a_data_error(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("the photos are on my phone")
    with pytest.raises(DataError) as info:
        load_dataset(DatasetSpec(format="imagefolder", root=tmp_path), 28, 28, 3)
    assert str(info.value) == (f"{tmp_path}: the dataset is empty (no file ending in .jpg, .jpeg, .png, .ppm, "
                               ".bmp, .pgm, .tif, .tiff or .webp in its class folders)")


def test_imagefolder_names_and_skip_messages_are_relative_to_the_root(tmp_path):
    write_imagefolder(tmp_path, per_class=1, classes=("cat", "dog"))
    (tmp_path / "dog" / "2024").mkdir()
    write_corrupt_image(tmp_path / "dog" / "2024" / "corrupt.png")
    ds = load_dataset(DatasetSpec(format="imagefolder", root=tmp_path), 28, 28, 3)
    assert ds.names == ["cat/img0.png", "dog/img0.png", "dog/2024/corrupt.png"]      # POSIX, relative
    message = "dog/2024/corrupt.png: unreadable image (OSError: image file is truncated)"
    assert TorchView(ds, np.arange(3), raise_errors=False)[2] == (2, message)        # skipped, as report.json lists it
    with pytest.raises(DataError) as info:
        TorchView(ds, np.arange(3), raise_errors=True)[2]
    assert str(info.value) == message


def test_a_built_site_names_no_absolute_path(tmp_path):
    from reportgen.pipeline import build
    from reportgen.spec import load_spec

    data = tmp_path / "data"
    write_imagefolder(data, per_class=6, classes=("horizontal", "vertical"), size=(28, 28))
    write_corrupt_image(data / "horizontal" / "corrupt.png")
    write_folder_clutter(data, "vertical")
    (tmp_path / "spec.yaml").write_text(
        "model: {factory: tests.helpers.tiny:tiny_cnn, mean: [0.5], std: [0.25], input_size: 28}\n"
        "dataset: {format: imagefolder, root: data, samples: 3}\n"
        "layers: [{name: block1_conv1, filters: [0, 1], embedding: pca}]\n"
        "feature_vis: {steps: 2, classes: [0]}\nattribution: {images: 1, methods: [saliency]}\n")
    site = build(load_spec(tmp_path / "spec.yaml"), use_cache=False, progress=False, log=lambda *_: None)
    dataset = json.loads((site / "report.json").read_text())["dataset"]
    assert dataset["size"] == 13 and dataset["skipped"] == [
        {"dataset_index": 0, "error": "horizontal/corrupt.png: unreadable image (OSError: image file is truncated)"}]
    files = [p for p in site.rglob("*") if p.is_file()]
    assert len(files) > 20
    for absolute in {str(tmp_path), str(tmp_path.resolve())}:
        assert [p.relative_to(site) for p in files if absolute.encode() in p.read_bytes()] == []


def test_image_modes_are_converted():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))            # fully transparent → white
    assert to_model_image(rgba, 8, 8, 3)[:, 0, 0].tolist() == [255, 255, 255]
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))          # red in CMYK
    assert to_model_image(cmyk, 8, 8, 3)[:, 0, 0].tolist() == [255, 0, 0]
    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))   # 16-bit white
    assert to_model_image(deep, 8, 8, 1)[0, 0, 0] == 255


def test_missing_root_names_the_key(tmp_path):
    with pytest.raises(SpecError) as info:
        load_dataset(DatasetSpec(format="mnist", root=tmp_path / "nope"), 28, 28, 1)
    assert info.value.key == "dataset.root"


def test_subsets_are_deterministic_and_sorted():
    a, b = subset_indices(1000, 50, seed=3), subset_indices(1000, 50, seed=3)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and len(a) == 50
    assert not np.array_equal(a, subset_indices(1000, 50, seed=4))
    assert np.array_equal(subset_indices(10, None, 0), np.arange(10))
    with pytest.warns(UserWarning, match="larger than the dataset"):
        assert len(subset_indices(10, 20, 0)) == 10
    s = sample_indices(a, 8, seed=3)
    assert set(s) <= set(a) and len(s) == 8


def test_loading_fashion_mnist_does_not_import_the_demo(tmp_path):
    # The class names belong to the dataset format (idx.py), not to the demo model that happens to use them.
    import subprocess
    import sys

    write_mnist(tmp_path, n=2)
    code = ("import sys; from reportgen.data import load_dataset; from reportgen.spec import DatasetSpec; "
            f"ds = load_dataset(DatasetSpec(format='fashion-mnist', root={str(tmp_path)!r}), 28, 28, 1); "
            "print(ds.classes[9], 'reportgen.demo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "Ankle boot False"
