"""Each dataset format, on tiny files the tests write in the real formats; subsets are deterministic."""

import numpy as np
import pytest
from PIL import Image

from reportgen.data import load_dataset, sample_indices, subset_indices, to_model_image
from reportgen.errors import DataError, SpecError
from reportgen.spec import DatasetSpec
from tests.helpers.tiny import write_cifar10, write_imagefolder, write_mnist


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
