"""Datasets: ImageFolder, Fashion-MNIST/MNIST (IDX), CIFAR-10; deterministic subsets.

Every dataset yields uint8 images (C, H, W) at the model's input size and channel count,
so pages show exactly what the model saw; normalization happens on the device
(`LoadedModel.normalize`). `dataset_index` is an image's index in the full dataset in its
loader's order, before any `limit` subset. An ImageFolder image is named by its path relative to the
root (POSIX), in `Dataset.names` and in the error for an unreadable one, so a report names no path of the
machine that built it.
"""

import hashlib
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import DataError, SpecError
from .idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, find_idx_file, load_idx_split
from .labels import label_for, read_labels_file
from .models import as_hw
from .spec import DatasetSpec

Image.MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb guard: larger images are refused, not decoded
ImageFile.LOAD_TRUNCATED_IMAGES = False


def to_model_image(img: Image.Image, resize: int | tuple[int, int], crop: int | tuple[int, int],
                   channels: int, interpolation: str = "bilinear") -> np.ndarray:
    """Any PIL image → uint8 (channels, H, W), `crop` = (H, W) (an int: a square): mode converted, scaled
    (aspect kept, PIL's `interpolation` filter by name: the model's, e.g. timm's 'bicubic') to the smallest
    size that covers `resize` (H', W'), then centre-cropped.

    Covering (H', W') means the scale max(H'/h, W'/w), each side rounded: for a square `resize` that is
    torchvision's `Resize(resize)` of the shorter side (which truncates the longer side where this rounds),
    and an image of the model's own aspect ratio is used whole. The crop starts at floor((h - H) / 2),
    floor((w - W) / 2) (torchvision's `CenterCrop` rounds half to even: one pixel apart where a margin is
    odd). Both roundings are kept from the square-only version, so square models read the same pixels.
    """
    ch, cw = as_hw(crop)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # transparent pixels shown on white, as viewers do
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    size = cover_size(img.size, resize, crop)
    if size != (w, h):
        img = img.resize(size, Image.Resampling[interpolation.upper()])
    w, h = img.size
    left, top = (w - cw) // 2, (h - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None].copy() if channels == 1 else arr.transpose(2, 0, 1).copy()  # writable, for torch


def cover_size(wh: tuple[int, int], resize: int | tuple[int, int], crop: int | tuple[int, int]) -> tuple[int, int]:
    """PIL's (w, h) to which `to_model_image` scales an image of size `wh` = (w, h): see its docstring."""
    (w, h), (rh, rw), (ch, cw) = wh, as_hw(resize), as_hw(crop)
    scale = max(rh / h, rw / w)
    return max(cw, round(w * scale)), max(ch, round(h * scale))   # never short of the crop


@dataclass
class Dataset:
    """A whole dataset (`size` images), readable by dataset index."""
    format: str
    size: int
    classes: list[str]
    labels: np.ndarray       # (size,) int64
    fingerprint: str
    names: list[str]         # a short name per image ('cat/img0.png' relative to the root, or 'test[123]')
    _reader: object          # callable(index) -> uint8 (C, H, W), raises DataError
    class_ids: list[str] | None = None   # a stable id per class where one exists (ImageNet's WNIDs), see labels.py

    def image(self, index: int) -> np.ndarray:
        return self._reader(index)


class _ArrayReader:
    """Images held in memory as (N, H, W[, 3]) uint8 (IDX, CIFAR)."""

    def __init__(self, images: np.ndarray, resize: tuple[int, int], crop: tuple[int, int], channels: int,
                 interpolation: str):
        self.images, self.resize, self.crop, self.channels = images, resize, crop, channels
        self.interpolation = interpolation

    def __call__(self, index: int) -> np.ndarray:
        arr = self.images[index]
        native_gray = arr.ndim == 2
        if arr.shape[:2] == self.crop and self.resize == self.crop:
            if native_gray and self.channels == 1:
                return arr[None].copy()
            if not native_gray and self.channels == 3:
                return arr.transpose(2, 0, 1).copy()
        return to_model_image(Image.fromarray(arr), self.resize, self.crop, self.channels, self.interpolation)


class _FileReader:
    """Image files `root / name`. An unreadable one raises DataError naming it by `name` alone: the message can
    reach a report (skipped images, a failed analysis's note), which names no path of the building machine.

    A JPEG at least twice the size it is scaled to is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
    PIL's `draft`), never below that size, then resized as any image: a 4000×3000 photo read for 224 px takes
    ~7× less time. Its pixels differ from a full decode's by ~1 grey level on average (the DCT scaling averages
    like an area filter before the antialiased resize); deterministic, and in the dataset's fingerprint (VERSION).
    """
    VERSION = 2   # 2: JPEG draft decoding

    def __init__(self, root: Path, names: list[str], resize: tuple[int, int], crop: tuple[int, int], channels: int,
                 interpolation: str):
        self.root, self.names, self.resize, self.crop, self.channels = root, names, resize, crop, channels
        self.interpolation = interpolation

    def __call__(self, index: int) -> np.ndarray:
        name = self.names[index]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(self.root / name) as img:
                    img.draft(None, cover_size(img.size, self.resize, self.crop))   # JPEG only; a no-op else
                    img.load()
                    return to_model_image(img, self.resize, self.crop, self.channels, self.interpolation)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{name}: unreadable image ({exc.__class__.__name__}: {str(exc)[:80]})") from None


def _file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_dataset(spec: DatasetSpec, input_size: int | tuple[int, int], resize: int | tuple[int, int],
                 channels: int, interpolation: str = "bilinear") -> Dataset:
    """Open the spec's dataset, its images read at `input_size` (H, W; an int: a square) after scaling them to
    cover `resize` with PIL's `interpolation` filter (see `to_model_image`). Raises SpecError (bad root) or
    DataError (bad contents)."""
    root = spec.root
    input_size, resize = as_hw(input_size), as_hw(resize)
    if spec.format == "memory":
        return _memory_dataset(spec.data, _MemoryReader(spec.data, resize, input_size, channels, interpolation))
    if not root.is_dir():
        raise SpecError("dataset.root", f"no directory {str(root)!r}")
    if spec.format in ("fashion-mnist", "mnist"):
        try:
            find_idx_file(root, spec.split, "images")
        except DataError as exc:
            raise SpecError("dataset.root", str(exc).replace(f"{root}: ", f"{str(root)!r} has ")) from None
        images, labels = load_idx_split(root, spec.split)
        files = [find_idx_file(root, spec.split, k) for k in ("images", "labels")]
        classes = FASHION_MNIST_CLASSES if spec.format == "fashion-mnist" else MNIST_CLASSES
        reader = _ArrayReader(images, resize, input_size, channels, interpolation)
        names = [f"{spec.split}[{i}]" for i in range(len(labels))]
        digest = _file_digest(files)
    elif spec.format == "cifar10":
        images, labels, classes, digest = _load_cifar10(root, spec.split)
        reader = _ArrayReader(images, resize, input_size, channels, interpolation)
        names = [f"{spec.split}[{i}]" for i in range(len(labels))]
    else:
        if spec.labels_file is None:
            names, labels, classes = _scan_imagefolder(root)
        else:
            names, labels, classes = _scan_labelled(root, read_labels_file(spec.labels_file))
        reader = _FileReader(root, names, resize, input_size, channels, interpolation)
        h = hashlib.sha256(f"reader {_FileReader.VERSION};".encode())   # how images are decoded
        for name, label in zip(names, labels):   # the label too: a labels_file can change without the images
            h.update(f"{name}:{(root / name).stat().st_size}:{classes[label]};".encode())
        digest = h.hexdigest()
    if len(labels) == 0:
        raise DataError(f"{root}: the dataset is empty")
    fingerprint = hashlib.sha256(f"{spec.format}:{spec.split}:{len(labels)}:{digest}".encode()).hexdigest()
    return Dataset(spec.format, len(labels), list(classes), np.asarray(labels, np.int64), fingerprint, names, reader)


class _MemoryReader:
    """Items of an in-memory dataset (the Python API's `dataset.data`): item i is (image, label), the image a PIL
    image or a (C, H, W) / (H, W) tensor or array, float in [0, 1] (torchvision's ToTensor) or uint8."""

    def __init__(self, data, resize: tuple[int, int], crop: tuple[int, int], channels: int, interpolation: str):
        self.data, self.resize, self.crop, self.channels = data, resize, crop, channels
        self.interpolation = interpolation

    def __call__(self, index: int) -> np.ndarray:
        try:
            image = self.data[index][0]
        except Exception as exc:  # noqa: BLE001 - the user's __getitem__: any failure is this item's
            raise DataError(f"data[{index}]: reading the item failed ({exc.__class__.__name__}: {exc})") from None
        return to_model_image(_as_pil(image, index), self.resize, self.crop, self.channels, self.interpolation)


def _as_pil(image, index: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    arr = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise DataError(f"data[{index}]: an image of shape {tuple(arr.shape)} is not (C, H, W) with 1 or 3 channels")
    if arr.dtype != np.uint8:   # [0, 1] floats; ToTensor's x / 255 comes back exactly
        arr = np.clip(np.rint(arr.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0).copy())


FINGERPRINT_ITEMS = 32


def _memory_dataset(data, reader: _MemoryReader) -> Dataset:
    """An in-memory dataset has no file to hash: its fingerprint (the cache key) hashes its length, every label and
    the model-size pixels of FINGERPRINT_ITEMS evenly spaced items. Labels come from `data.targets` where it has
    them (torchvision's datasets), else from reading every item once."""
    n = len(data)
    if n == 0:
        raise DataError("dataset.data is empty")
    targets = getattr(data, "targets", None)
    try:
        raw = targets if targets is not None and len(targets) == n else [data[i][1] for i in range(n)]
        labels = np.asarray([int(t) for t in raw], np.int64)
    except (TypeError, ValueError, IndexError) as exc:
        raise DataError(f"dataset.data: an item's label is not an int ({exc}); items must be (image, label)") from None
    if labels.min() < 0:
        raise DataError(f"dataset.data: label {int(labels.min())} is negative; labels are the model's output indices")
    named = getattr(data, "classes", None)
    count = int(labels.max()) + 1
    classes = [str(c) for c in named] if isinstance(named, (list, tuple)) and len(named) >= count else \
        [f"class {i}" for i in range(count)]
    h = hashlib.sha256(f"memory:{n}:{len(classes)};".encode())
    h.update(labels.tobytes())
    for i in np.unique(np.linspace(0, n - 1, FINGERPRINT_ITEMS).round().astype(int)):
        h.update(reader(int(i)).tobytes())
    return Dataset("memory", n, classes, labels, h.hexdigest(), [f"data[{i}]" for i in range(n)], reader)


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles: allow only the numpy/builtin types they hold, never arbitrary code."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 batch ({exc})") from None


def _load_cifar10(root: Path, split: str):
    """CIFAR-10's python batches, read here (not by torchvision) to unpickle safely and accept any copy."""
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    files = [folder / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{folder}: no CIFAR-10 batch {missing[0]!r} (expected ROOT/cifar-10-batches-py/)")
    batches = [_unpickle(f) for f in files]
    data = np.concatenate([np.asarray(b[b"data"], np.uint8).reshape(-1, 3, 32, 32) for b in batches])
    labels = np.concatenate([np.asarray(b[b"labels"], np.int64) for b in batches])
    meta = folder / "batches.meta"
    classes = [c.decode() for c in _unpickle(meta)[b"label_names"]] if meta.is_file() else \
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return data.transpose(0, 2, 3, 1).copy(), labels, classes, _file_digest(files)


def _scan_imagefolder(root: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """ImageFolder's own scan: (image names relative to `root`, POSIX; labels; classes).

    A class is a sub-folder (sorted); an image is a file with one of torchvision's IMG_EXTENSIONS, in any case.
    Hidden files and folders (`.DS_Store`, `._img.jpg`, `.ipynb_checkpoints/`, `.git/`) are neither. Images
    that turn out unreadable are skipped later. A class folder without images stays a class (warned): leaving
    it out would shift the labels of the classes after it away from the model's outputs.
    """
    from torchvision.datasets.folder import make_dataset

    # not torchvision's find_classes: it counts hidden folders as classes
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folder (an ImageFolder root holds one sub-folder per class; "
                        "a flat folder of images needs dataset.labels_file)")
    samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)},
                           is_valid_file=lambda p: _is_image(root, p), allow_empty=True)
    if not samples:
        raise DataError(f"{root}: the dataset is empty (no file ending in {_endings()} in its class folders)")
    labels = np.array([c for _, c in samples], np.int64)
    empty = np.flatnonzero(np.bincount(labels, minlength=len(classes)) == 0)
    if len(empty):
        folders = ", ".join(f"{classes[i]!r} (label {i})" for i in empty)
        warnings.warn(f"dataset.root: no image in class folder{'s' if len(empty) > 1 else ''} {folders}; kept, so "
                      "that the other classes keep their labels", stacklevel=3)
    return [Path(p).relative_to(root).as_posix() for p, _ in samples], labels, classes


def _is_image(root: Path, path: str) -> bool:
    """An image file by torchvision's IMG_EXTENSIONS (any case), not hidden (`.DS_Store`, `._img.jpg`, `.git/`)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    hidden = any(part.startswith(".") for part in Path(path).relative_to(root).parts)
    return not hidden and has_file_allowed_extension(path, IMG_EXTENSIONS)


def _endings() -> str:
    from torchvision.datasets.folder import IMG_EXTENSIONS
    return ", ".join(IMG_EXTENSIONS[:-1]) + f" or {IMG_EXTENSIONS[-1]}"


def _scan_labelled(root: Path, table: dict[str, str]) -> tuple[list[str], np.ndarray, list[str]]:
    """Every image under `root` (sorted, any depth), labelled by `table` (see `labels.read_labels_file`):
    (names relative to `root`, POSIX; labels; classes = the labels' distinct keys, sorted)."""
    names = sorted(Path(d, f).relative_to(root).as_posix() for d, _, files in os.walk(root) for f in files
                   if _is_image(root, os.path.join(d, f)))
    if not names:
        raise DataError(f"{root}: the dataset is empty (no file ending in {_endings()})")
    keys = [label_for(table, n) for n in names]
    unlabelled = [n for n, k in zip(names, keys) if k is None]
    if unlabelled:
        raise SpecError("dataset.labels_file", f"has no label for {len(unlabelled)} of the {len(names)} images "
                                               f"in dataset.root, e.g. {unlabelled[0]!r}")
    classes = sorted(set(keys))
    index = {k: i for i, k in enumerate(classes)}
    return names, np.array([index[k] for k in keys], np.int64), classes


def subset_indices(size: int, limit: int | None, seed: int) -> np.ndarray:
    """The dataset indices a build uses: all, or a seeded random `limit` of them, sorted."""
    if limit is None or limit >= size:
        if limit is not None and limit > size:
            warnings.warn(f"dataset.limit {limit} is larger than the dataset ({size} images); using all of them",
                          stacklevel=2)
        return np.arange(size)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(size, size=limit, replace=False))


def sample_indices(indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` sample images (dataset indices) for predictions and maps: seeded, in a stable order."""
    rng = np.random.default_rng([seed, 1])
    return indices[np.sort(rng.permutation(len(indices))[:n])]


class TorchView(torch.utils.data.Dataset):
    """The dataset restricted to `indices`, for a DataLoader. Unreadable images come back as None."""

    def __init__(self, dataset: Dataset, indices: np.ndarray, raise_errors: bool):
        self.dataset, self.indices, self.raise_errors = dataset, indices, raise_errors

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = int(self.indices[i])
        try:
            return index, torch.from_numpy(self.dataset.image(index))
        except DataError as exc:
            if self.raise_errors:
                raise
            return index, str(exc)


def collate(batch):
    """Stack readable images; pass unreadable ones on as (index, message) to be counted."""
    good = [(i, t) for i, t in batch if isinstance(t, torch.Tensor)]
    bad = [(i, t) for i, t in batch if not isinstance(t, torch.Tensor)]
    idx = torch.tensor([i for i, _ in good], dtype=torch.long)
    imgs = torch.stack([t for _, t in good]) if good else torch.empty(0, dtype=torch.uint8)
    return idx, imgs, bad
