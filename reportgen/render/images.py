"""Pictures for the pages: PNG writing, colour maps, overlays, grids, boxes.

Pure numpy in, PNG files out. PNGs are written without metadata so the same pixels give the
same bytes (rebuilds are byte-identical).
"""

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..artifacts import atomic_write_bytes

# Our names for matplotlib's colour maps: perceptually uniform maps for magnitudes, and a diverging map
# (blue below the middle, red above) for signed values.
COLORMAPS = {"viridis": "viridis", "inferno": "inferno", "diverging": "RdBu_r"}


@functools.cache
def _lut(cmap: str) -> np.ndarray:
    """(N, 3) uint8: matplotlib's colours of `cmap`'s N entries (256 for ours), built on first use (imports
    matplotlib then: most commands never draw a colour map)."""
    import matplotlib

    if cmap not in COLORMAPS:
        raise ValueError(f"unknown colour map {cmap!r}; known: {', '.join(map(repr, COLORMAPS))}")
    colors = matplotlib.colormaps[COLORMAPS[cmap]]
    return colors(np.arange(colors.N), bytes=True)[:, :3]


def to_hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) uint8 → (H, W, C) with C in {1, 3}."""
    if image.ndim == 2:
        return image[:, :, None]
    return image.transpose(1, 2, 0) if image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3) else image


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W), (H, W, 1) or (H, W, 3) uint8 → PNG bytes (no metadata: deterministic)."""
    import io
    arr = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def save_png(image: np.ndarray, path: Path) -> None:
    atomic_write_bytes(Path(path), png_bytes(image))


def normalize01(values: np.ndarray, symmetric: bool = False) -> np.ndarray:
    """Scale to [0, 1] (min-max), or around 0 (|max| → 0/1, 0 → 0.5) when `symmetric`."""
    v = np.nan_to_num(values.astype(np.float64))
    if symmetric:
        m = np.abs(v).max()
        return 0.5 + 0.5 * v / m if m > 0 else np.full_like(v, 0.5)
    lo, hi = v.min(), v.max()
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def colorize(values01: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """(H, W) in [0, 1] → (H, W, 3) uint8: matplotlib's colour of each value (values outside [0, 1] clipped,
    NaN as 0). `cmap`: a key of COLORMAPS."""
    lut = _lut(cmap)
    v = np.clip(np.nan_to_num(np.asarray(values01, np.float64)), 0, 1)
    # matplotlib's float lookup: entry floor(v * N), the top value 1.0 in the last entry
    return lut[np.minimum((v * len(lut)).astype(np.int64), len(lut) - 1)]


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map (h, w) to (H, W)."""
    img = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)


def overlay(image: np.ndarray, values: np.ndarray, alpha: float = 0.55, cmap: str = "inferno",
            symmetric: bool = False) -> np.ndarray:
    """Heat map `values` (any h×w) resized onto `image` (H, W, C uint8) → (H, W, 3) uint8."""
    base = to_hwc(image)
    base = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base
    heat = colorize(normalize01(resize_map(values, base.shape[:2]), symmetric), cmap)
    return np.round(base * (1 - alpha) + heat * alpha).astype(np.uint8)


def grid(tiles: np.ndarray, columns: int, pad: int = 1, fill: int = 255) -> np.ndarray:
    """(N, h, w, C) uint8 tiles → one (H, W, C) image, row-major, `pad` pixels between tiles."""
    n, h, w, c = tiles.shape
    rows = -(-n // columns)
    out = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, c), fill, np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        out[r * (h + pad): r * (h + pad) + h, col * (w + pad): col * (w + pad) + w] = tiles[i]
    return out


def draw_box(image: np.ndarray, box: tuple[int, int, int, int], color=(255, 196, 0)) -> np.ndarray:
    """Outline `box` (x0, y0, x1, y1, half-open) on a copy of `image` → (H, W, 3) uint8."""
    base = to_hwc(image)
    base = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base
    img = Image.fromarray(np.ascontiguousarray(base))
    x0, y0, x1, y1 = box
    width = max(1, min(img.size) // 56)
    ImageDraw.Draw(img).rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=width)
    return np.asarray(img)


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return to_hwc(image)[y0:y1, x0:x1]
