"""Jinja filters: presentation made from the Report's numbers (number format, chart points, cell colours).

The Report holds numbers only; how a number looks on a page is decided here and in the templates.
"""

import numpy as np

from . import images as im


def fmt(value, digits: int = 4) -> str:
    """Numbers on pages: 4 significant digits, no '-0', a dash for none."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    text = f"{float(value):.{digits}g}"
    return "0" if text in ("-0", "0") else text


def pct(value) -> str:
    if value is None:
        return "–"
    return fmt(100 * float(value), 3) + "%"


def polyline(values: list[float], width: float = 100, height: float = 40, lo: float | None = None,
             hi: float | None = None) -> str:
    """SVG polyline points of `values` over a width × height box (y grows downwards; 1 unit margin), the y range
    lo..hi (default: the values' own, so two curves drawn on one scale pass both). Hand-written SVG rather than
    a matplotlib figure: a 48-point sparkline as text costs nothing."""
    if not values:
        return ""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    span = (hi - lo) or 1.0
    last = max(len(values) - 1, 1)
    return " ".join(f"{width * i / last:.1f},{height - (height - 2) * (v - lo) / span:.1f}"
                    for i, v in enumerate(values))


def diverging_hex(value: float, peak: float) -> str:
    """A kernel cell's background: the diverging colour map on one scale ±peak."""
    rgb = im.colorize(np.array(0.5 + 0.5 * float(value) / (peak or 1.0)), "diverging")
    return "#{:02x}{:02x}{:02x}".format(*[int(v) for v in rgb])


def is_dark(hex_colour: str) -> bool:
    """True when white text on this background meets WCAG contrast (relative luminance < 0.179)."""
    rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2] < 0.179


def short(value: float) -> str:
    """A kernel weight in a small cell: 2 significant digits, scientific below 1e-3."""
    return f"{value:.2g}" if abs(value) >= 1e-3 else f"{value:.0e}"


FILTERS = {"fmt": fmt, "pct": pct, "polyline": polyline, "diverging_hex": diverging_hex, "is_dark": is_dark,
           "short": short}
