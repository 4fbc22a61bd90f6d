"""Tiny models and datasets written by tests: real formats, small enough to compute answers directly."""

import gzip
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

FASHION_DIR = Path(__file__).resolve().parents[2] / "configs" / "data" / "fashion-mnist"


class TinyCNN(nn.Module):
    """1×28×28 → 10 classes; VGG-style flat `features` so Keras aliases apply."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("c1", nn.Conv2d(channels, 4, 3, padding=1)), ("r1", nn.ReLU()),
            ("c2", nn.Conv2d(4, 6, 3, padding=1)), ("r2", nn.ReLU()), ("p1", nn.MaxPool2d(2)),
            ("c3", nn.Conv2d(6, 8, 3, padding=1)), ("r3", nn.ReLU())]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write an IDX file (uint8 data) the way MNIST ships it."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path = Path(str(path) + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_mnist(root: Path, n: int = 40, split: str = "t10k", gz: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / f"{split}-images-idx3-ubyte", images, gz)
    write_idx(root / f"{split}-labels-idx1-ubyte", labels, gz)
    return images, labels


def write_cifar10(root: Path, n: int = 30, seed: int = 0):
    """CIFAR-10's python batches (test_batch + meta) with random images."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = [i % 10 for i in range(n)]
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batch = {b"data": images.transpose(0, 3, 1, 2).reshape(n, -1), b"labels": labels}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [s.encode() for s in names]}))
    return images, np.array(labels)


def write_imagefolder(root: Path, per_class: int = 4, classes=("cat", "dog"), size=(40, 30), seed: int = 0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"img{i}.png")
    return root


def write_folder_clutter(root: Path, class_folder: str = "cat") -> list[str]:
    """What systems, editors and people leave in an ImageFolder: none of it an image or a class.

    Files beside the images of `class_folder`, hidden folders at the root and inside the class folder (with
    real PNGs in them), macOS '._' twins of images. Returns the paths written, relative to `root`.
    """
    png = next((root / class_folder).glob("*.png")).read_bytes()
    files = {f"{class_folder}/notes.txt": b"labelled by hand\n", f"{class_folder}/.DS_Store": b"\0\0\0\1Bud1",
             f"{class_folder}/Thumbs.db": b"\xd0\xcf\x11\xe0", f"{class_folder}/desktop.ini": b"[.ShellClassInfo]\n",
             f"{class_folder}/README.md": b"# cats\n", f"{class_folder}/._img0.png": b"\0\5\26\7Mac OS X",
             f"{class_folder}/.ipynb_checkpoints/img0-checkpoint.png": png, ".ipynb_checkpoints/img0.png": png,
             ".git/HEAD": b"ref: refs/heads/main\n", "README.md": b"# my images\n", "labels.csv": b"img0.png,cat\n"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return sorted(files)


def write_corrupt_image(path: Path) -> Path:
    """A PNG cut short: the name of an image, bytes PIL cannot decode."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:100])
    return path
