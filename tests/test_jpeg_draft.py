"""Large JPEGs are decoded at a reduced DCT scale (PIL's draft): close to a full decode, never below the size
the image is scaled to; smaller images read exactly as before."""

from pathlib import Path

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image

from reportgen.data import load_dataset
from reportgen.spec import DatasetSpec


def photo(size: tuple[int, int]) -> Image.Image:
    """A smooth, photo-like RGB image (w, h): gradients and a few discs, no noise."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    arr = np.stack([128 + 100 * np.sin(6 * x + 2 * y), 128 + 90 * np.cos(5 * y - 3 * x), 255 * x * y], -1)
    for cx, cy, r, v in ((0.3, 0.3, 0.1, 30), (0.7, 0.5, 0.15, 230), (0.5, 0.6, 0.05, 90)):
        arr[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = v
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def full_decode_reference(path: Path) -> np.ndarray:
    """torchvision's Resize(256) + CenterCrop(224) of the fully decoded file, (C, H, W)."""
    img = Image.open(path).convert("RGB")
    return np.asarray(TF.center_crop(TF.resize(img, 256, TF.InterpolationMode.BILINEAR), 224)).transpose(2, 0, 1)


def read(root: Path) -> np.ndarray:
    return load_dataset(DatasetSpec(format="imagefolder", root=root), 224, 256, 3).image(0)


def test_large_jpeg_is_drafted_close_to_a_full_decode(tmp_path):
    path = tmp_path / "a" / "big.jpg"
    path.parent.mkdir()
    photo((2048, 1536)).save(path, quality=95)      # 1536 / 256 = 6: decoded at 1/4 scale (512×384)
    with Image.open(path) as img:
        img.draft(None, (341, 256))
        assert img.size == (512, 384)                # what the reader's draft asks for: ≥ the covering size
    ours, full = read(tmp_path).astype(int), full_decode_reference(path).astype(int)
    assert ours.shape == full.shape == (3, 224, 224)
    assert not np.array_equal(ours, full)            # drafted, not fully decoded
    assert np.abs(ours - full).mean() < 1.0 and np.percentile(np.abs(ours - full), 99) <= 6


def test_jpeg_under_twice_the_size_reads_as_a_full_decode(tmp_path):
    path = tmp_path / "a" / "photo.jpg"
    path.parent.mkdir()
    photo((500, 375)).save(path, quality=90)         # 375 / 256 < 2: no draft
    assert np.array_equal(read(tmp_path), full_decode_reference(path))
