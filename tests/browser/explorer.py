"""Driving the representation explorer (a Bokeh figure) in a page: find a point on screen, check that the plot
drew its points, hover for the thumbnail tooltip, click for the neighbour panel.

Points are located through BokehJS's own view of the figure (`Bokeh.index`, the frame's scales), so the tests
hover exactly over a data point instead of scanning the canvas.
"""

import io
import re

import numpy as np
from PIL import Image

# the n-th figure with a size (in --single-file, figures of hidden sections have none), scrolled into view:
# its frame and the viewport position of one visible data point
POINT_JS = """(n) => {
  const figs = [...Bokeh.index].filter(v => v.model.type === 'Figure' && v.el.getBoundingClientRect().width > 0);
  const v = figs[n];
  if (v === undefined) return {count: figs.length};
  v.el.scrollIntoView({block: 'center'});
  const r = v.canvas_view.el.getBoundingClientRect(), f = v.frame.bbox;
  const frame = {x: r.left + f.left, y: r.top + f.top, width: f.width, height: f.height};
  for (const rv of v.renderer_views.values()) {
    const d = rv.model.data_source === undefined ? undefined : rv.model.data_source.data;
    if (!rv.model.visible || d === undefined || d.x === undefined || d.x.length === 0) continue;
    const x = r.left + v.frame.x_scale.compute(d.x[0]), y = r.top + v.frame.y_scale.compute(d.y[0]);
    return {count: figs.length, frame, x, y};
  }
  return {count: figs.length, frame};
}"""


def locate_point(page, n: int = 0) -> dict:
    """{count, frame, x, y} of figure n of the page (count: figures shown); x, y absent if it has no point."""
    page.wait_for_function("() => window.Bokeh !== undefined && Bokeh.documents.every(d => d.is_idle)")
    return page.evaluate(POINT_JS, n)


def hue_buckets(png: bytes) -> int:
    """How many of 12 hue sectors the clearly coloured pixels of a screenshot fall in (a blank or grey plot: 0)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(float) / 255
    mx, mn = rgb.max(1), rgb.min(1)
    coloured = rgb[(mx - mn) > 0.25]
    if len(coloured) == 0:
        return 0
    hsv = np.asarray(Image.fromarray((coloured[None] * 255).astype(np.uint8), "RGB").convert("HSV"))[0]
    return len(np.unique(hsv[:, 0] // 22))


def hover_tooltip(page, x: float, y: float, timeout_ms: int = 5000):
    """Move the mouse to (x, y); return the tooltip Bokeh shows on top. Near points of several classes Bokeh
    stacks one tooltip per renderer; the last one in the document is painted over the others."""
    page.mouse.move(x - 30, y - 30)
    page.mouse.move(x, y, steps=3)
    tips = page.locator(".rg-tip").filter(visible=True)
    tips.first.wait_for(state="visible", timeout=timeout_ms)
    return tips.last


def tooltip_index(tip) -> int:
    """The dataset index the tooltip names ('index: 123')."""
    match = re.search(r"index:\s*(\d+)", tip.inner_text())
    assert match, f"the tooltip names no dataset index: {tip.inner_text()!r}"
    return int(match.group(1))


def shown_pixels(page, element, border: int = 0) -> np.ndarray:
    """`element` (a locator in view) as it appears on screen, (h, w) grey levels inside its `border`."""
    box = element.bounding_box()
    # a clip of the page, not element.screenshot(): that scrolls, and a tooltip vanishes when the page moves
    png = page.screenshot(clip=box, animations="disabled")
    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return grey[border:grey.shape[0] - border, border:grey.shape[1] - border]


def likeness(shown: np.ndarray, image: np.ndarray) -> float:
    """Correlation of a pixelated on-screen upscale `shown` (h, w) with the source `image` (H, W) blown up by
    the same integer factor. Correlation, not equality: the sprite is lossy WebP and Bokeh's tooltip is
    slightly translucent, so the plot's markers shine through."""
    scale = max(1, round(shown.shape[0] / image.shape[0]))
    big = np.kron(image.astype(float), np.ones((scale, scale)))[: shown.shape[0], : shown.shape[1]]
    if big.shape != shown.shape or big.std() == 0 or shown.std() == 0:
        return 0.0
    return float(np.corrcoef(big.ravel(), shown.ravel())[0, 1])
