"""`--max-size`: a ladder of ever smaller renderings of one document (the single file, the PDF); the first
that fits is kept. A rung says how pictures are stored and whether downloads (raw NPZ data) are included;
the writer (single_file.py, pdf.py) applies it.
"""

import re
from dataclasses import dataclass, replace

from .errors import ReportgenError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@dataclass(frozen=True)
class Rung:
    quality: int | None = None   # pictures re-encoded lossy at this quality (WebP in HTML, JPEG in a PDF)
    downloads: bool = True       # raw data files (NPZ) inlined as downloads
    packed: bool = False         # an HTML file's text gzipped, unpacked by the browser as it opens (lossless)
    thumbs: int | None = None    # top images, patches and guided-backprop maps kept per filter (None: all)
    sprite_scale: float = 1.0    # the explorers' hover thumbnails stored at this share of their resolution

    def describe(self) -> str:
        parts = ([] if self.downloads else ["downloads left out (they are in the site)"]) + \
            (["pages packed (gzip, unpacked by the browser)"] if self.packed else [])
        parts += [f"pictures at quality {self.quality}"] if self.quality else []
        parts += [f"the first {self.thumbs} top images and patches of each filter"] if self.thumbs else []
        return ", ".join(parts + ([f"explorer thumbnails at {self.sprite_scale:.0%} resolution"]
                                  if self.sprite_scale != 1 else []))


FULL = Rung()
# downloads go first (the site keeps them, they are MBs of raw arrays), then packing (lossless), then picture
# quality, step by step, then fewer thumbnails (below quality 45, 28 px images blur), then the explorers' hover
# thumbnails at half resolution and one top image per filter (the demo with its 4 checkpoints needs that for 5 MB)
QUALITIES = (85, 65, 45, 30)
_SMALL = Rung(downloads=False, packed=True)
LADDER = (FULL, Rung(downloads=False), _SMALL, *(replace(_SMALL, quality=q) for q in QUALITIES[:3]),
          replace(_SMALL, quality=45, thumbs=6), replace(_SMALL, quality=45, thumbs=3),
          replace(_SMALL, quality=30, thumbs=3), replace(_SMALL, quality=30, thumbs=3, sprite_scale=0.5),
          replace(_SMALL, quality=30, thumbs=1, sprite_scale=0.5))
PDF_LADDER = (FULL, *(Rung(q) for q in QUALITIES))   # a PDF has no downloads and nothing to pack


def parse_size(text: str) -> int:
    """'5MB', '800KB', '1.5 MiB', '2000000' → bytes (KB/MB decimal, as upload limits are stated)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a size such as 5MB or 800KB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def fit(make, limit: int, what: str, ladder: tuple[Rung, ...] = LADDER) -> tuple[bytes, Rung]:
    """(bytes, rung) of the first rung of `ladder` for which `make(rung) -> bytes` is at most `limit` bytes.
    Raises ReportgenError saying how big the smallest rendering is, when none fits."""
    for rung in ladder:
        data = make(rung)
        if len(data) <= limit:
            return data, rung
    raise ReportgenError(f"{what} cannot fit in {limit / 1e6:.2f} MB: even with {rung.describe()} it is "
                         f"{len(data) / 1e6:.2f} MB (nothing written); choose fewer layers or filters")
