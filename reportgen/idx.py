"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or raw).

Written here rather than through torchvision's MNIST classes because those insist on
their own folder layout (`ROOT/FashionMNIST/raw/`), while users' copies (Debian's
`dataset-fashion-mnist` in /usr/share/datasets/fashion-mnist/, the demo's shipped test
split) are plain folders of the four files.
"""

import gzip
from pathlib import Path

import numpy as np

from .errors import DataError

# The class names of the two datasets stored in this format, by label
MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# IDX type codes → numpy dtypes (big-endian as stored)
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (`.gz` or raw) into an array of its stored shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: truncated IDX file ({len(data) - header} bytes of data, "
                        f"header says {expected})")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_file(root: Path, split: str, kind: str) -> Path:
    """The images/labels file of a split in `root`, gzipped or raw (`t10k-images-idx3-ubyte[.gz]`)."""
    stem = f"{_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no {stem}[.gz] for split {split!r}")


def load_idx_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of a split."""
    images = read_idx(find_idx_file(root, split, "images"))
    labels = read_idx(find_idx_file(root, split, "labels")).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: images {images.shape} and labels {labels.shape} of split "
                        f"{split!r} do not match")
    return images.astype(np.uint8), labels
