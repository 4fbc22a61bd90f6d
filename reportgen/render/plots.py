"""The representation-space explorer: a Bokeh scatter of an embedding, its thumbnail sprite sheet, BokehJS.

    layout = write_sprite_sheet(thumbs, site / "assets/layer3-sprites.webp")  # (N, h, w, C) uint8
    scripts = copy_bokehjs(site / "static")          # once per site
    head = script_tags(scripts, depth=2)              # in each page with a plot, two folders below the root
    script, div = explorer_plot(points, labels, preds, indices, class_names,
                                sprite=layout, sprite_url="../assets/layer3-sprites.webp",
                                detail_url_template="../images/{index}.html", title="layer3")

Each page carries only its plot's data (`bokeh.embed.components`, numeric columns as base64 typed arrays);
BokehJS comes from the one copy in the site's static folder, and the thumbnails from one image per plot,
shown through CSS background-position, so nothing is inlined per point and nothing is fetched from a CDN.
"""

from __future__ import annotations

import html
import inspect
import math
import re
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reportgen.errors import RenderError

__all__ = [
    "SpriteLayout",
    "write_sprite_sheet",
    "copy_bokehjs",
    "script_tags",
    "explorer_plot",
    "explorer_figure",
    "WEBGL_FROM_POINTS",
]

WEBGL_FROM_POINTS = 10_000  # canvas draws a few thousand points fine and crisper; WebGL keeps 10k+ pans smooth
BOKEHJS_FILES = ("bokeh.min.js", "bokeh-gl.min.js")  # core (models, tools, embed) and the WebGL backend
# Chosen by the suffix. 5000 Fashion-MNIST 28x28 tiles: PNG 2.04 MB (lossless), WebP q90 1.28 MB (PSNR 44 dB),
# JPEG q90 1.90 MB (39 dB); 5000 64 px photo crops: PNG 30.3 MB, JPEG q85 4.2 MB, WebP q90 4.4 MB. So WebP is the
# format to use for the 3 MB page budget; PNG where every grey level must survive.
_SAVE_OPTIONS = {
    ".png": {"format": "PNG", "compress_level": 9},
    ".jpg": {"format": "JPEG", "quality": 85},
    ".jpeg": {"format": "JPEG", "quality": 85},
    ".webp": {"format": "WEBP", "quality": 90, "method": 4},
}
_MAX_SIDE = {".webp": 16383, ".jpg": 65500, ".jpeg": 65500, ".png": 65500}


@dataclass(frozen=True)
class SpriteLayout:
    """Where each thumbnail lies in a sprite sheet: tile i is at column i % columns, row i // columns."""

    file: str  # the sheet's file name
    count: int
    columns: int
    rows: int
    tile_width: int
    tile_height: int

    def offsets(self) -> np.ndarray:
        """(count, 2) int pixel offsets (x, y) of each tile's top-left corner in the sheet."""
        i = np.arange(self.count)
        return np.stack([(i % self.columns) * self.tile_width, (i // self.columns) * self.tile_height], axis=1)


def write_sprite_sheet(images: np.ndarray, path: str | os.PathLike, columns: int | None = None) -> SpriteLayout:
    """Tile `images` (N, h, w, C) uint8, C in {1, 3, 4}, row by row into one image file at `path`.

    The format follows the suffix (.png, .jpg, .webp); the bytes depend only on the inputs. `columns`
    defaults to a square-ish sheet. Unused tiles at the end are black (transparent for C=4).
    """
    imgs = np.asarray(images)
    if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[0] == 0 or imgs.shape[3] not in (1, 3, 4):
        raise RenderError(
            f"thumbnails must be a non-empty (N, h, w, C) uint8 array with C in 1, 3, 4; "
            f"got {imgs.dtype} {imgs.shape}"
        )
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SAVE_OPTIONS:
        raise RenderError(f"sprite sheet {str(path)!r}: unsupported format; use one of {', '.join(_SAVE_OPTIONS)}")
    n, h, w, c = imgs.shape
    if c == 4 and suffix in (".jpg", ".jpeg"):
        raise RenderError(f"sprite sheet {str(path)!r}: JPEG has no alpha channel; use .png or .webp")
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    if max(columns * w, rows * h) > _MAX_SIDE[suffix]:
        raise RenderError(f"sprite sheet {str(path)!r} would be {columns * w}x{rows * h} px, over the format's limit")
    sheet = np.zeros((rows * columns, h, w, c), np.uint8)
    sheet[:n] = imgs
    # (rows, columns, h, w, C) -> (rows, h, columns, w, C): tiles side by side within each row
    sheet = sheet.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)
    _save_image(sheet, path, _SAVE_OPTIONS[suffix])
    return SpriteLayout(path.name, n, columns, rows, w, h)


def _save_image(array: np.ndarray, path: Path, options: dict) -> None:
    from PIL import Image

    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp, **options)
        os.replace(tmp, path)  # a half-written sheet never replaces a good one
    except OSError as exc:
        raise RenderError(f"cannot write sprite sheet {str(path)!r}: {exc}") from exc


def copy_bokehjs(static_dir: str | os.PathLike) -> list[str]:
    """Copy the installed bokeh package's own BokehJS (core + WebGL) into `static_dir`/bokeh-<version>/.

    Returns the scripts' paths relative to `static_dir`, in load order. Files already there with the
    same size are left alone, so calling it for every page costs nothing.
    """
    import bokeh
    from bokeh.util.paths import bokehjs_path

    source = Path(bokehjs_path()) / "js"
    folder = f"bokeh-{bokeh.__version__}"
    target = Path(static_dir) / folder
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in BOKEHJS_FILES:
            src, dst = source / name, target / name
            if not dst.exists() or dst.stat().st_size != src.stat().st_size:
                shutil.copyfile(src, dst)
    except OSError as exc:
        raise RenderError(f"cannot copy BokehJS into {str(static_dir)!r}: {exc}") from exc
    return [f"{folder}/{name}" for name in BOKEHJS_FILES]


def script_tags(scripts: list[str], depth: int, static_url: str = "static") -> str:
    """`<script src>` tags for `scripts` (paths inside the static folder, as `copy_bokehjs` returns them)
    in a page `depth` folders below the site root, whose static folder is `static_url` from the root."""
    prefix = "../" * depth + static_url.strip("/") + "/"
    return "\n".join(f'<script src="{html.escape(prefix + s)}"></script>' for s in scripts)


def _palette(n: int) -> list[str]:
    from bokeh.palettes import Category10, Category20, Turbo256

    if n <= 10:
        return list(Category10[10][:n])
    if n <= 20:
        return list(Category20[20][:n])
    return [Turbo256[int(i)] for i in np.linspace(0, 255, n)]


def _tooltip(sprite: SpriteLayout | None, sprite_url: str | None, thumb_px: int) -> tuple[str, float]:
    """The hover template and the thumbnail's scale. Values from the data go through Bokeh's `@{...}`
    placeholders, which BokehJS HTML-escapes unless `{safe}` is asked for (never here)."""
    rows = (
        '<div class="rg-tip-text">'
        "<div>true: <b>@{label}{custom}</b></div>"
        "<div>predicted: <b>@{pred}{custom}</b></div>"
        "<div>index: @{index}</div></div>"
    )
    if sprite is None or sprite_url is None:
        return f'<div class="rg-tip">{rows}</div>', 1.0
    scale = max(1, round(thumb_px / max(sprite.tile_width, sprite.tile_height)))
    # the URL is ours (a relative path), but quote it for both the CSS string and the HTML attribute
    css_url = sprite_url.replace("\\", "\\\\").replace('"', '\\"')
    style = (
        f"width:{sprite.tile_width * scale}px;height:{sprite.tile_height * scale}px;"
        f'background-image:url("{css_url}");background-repeat:no-repeat;'
        f"background-size:{sprite.columns * sprite.tile_width * scale}px {sprite.rows * sprite.tile_height * scale}px;"
        "background-position:-@{sx}px -@{sy}px;image-rendering:pixelated;border:1px solid #888"
    )
    thumb = f'<div class="rg-thumb" style="{html.escape(style)}"></div>'
    return f'<div class="rg-tip" style="display:flex;gap:6px;align-items:flex-start">{thumb}{rows}</div>', scale


def explorer_figure(
    points: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    dataset_indices: np.ndarray,
    class_names: list[str],
    sprite: SpriteLayout | None = None,
    sprite_url: str | None = None,
    detail_url_template: str | None = None,
    title: str = "",
    thumb_px: int = 84,
    neighbours: np.ndarray | None = None,
    panel_id: str | None = None,
) -> bokeh.plotting.figure:
    """Bokeh scatter of `points` (N, 2) coloured by true class.

    One renderer pair per class (circles for correct, crosses for misclassified) under one legend entry,
    so a legend click hides the class; a "misclassified" entry hides all crosses. Hover shows tile i of
    `sprite` (point i's thumbnail, from `sprite_url`, relative to the page, scaled to about `thumb_px`),
    the true and predicted class names and the dataset index. With `detail_url_template` (a relative URL
    containing `{index}`), clicking a point opens it in the same tab. WebGL from `WEBGL_FROM_POINTS` points.
    """
    from bokeh.models import ColumnDataSource, CustomJSHover, HoverTool, Legend, LegendItem, OpenURL, TapTool
    from bokeh.plotting import figure

    pts = np.asarray(points, dtype=np.float32)
    labels, preds = np.asarray(labels, dtype=np.int32), np.asarray(preds, dtype=np.int32)
    index = np.asarray(dataset_indices, dtype=np.int32)
    n = pts.shape[0]
    if pts.ndim != 2 or pts.shape[1] != 2 or not (labels.shape == preds.shape == index.shape == (n,)):
        raise RenderError(
            f"explorer needs points (N, 2) and labels, preds, indices (N,); got {pts.shape}, {labels.shape}, "
            f"{preds.shape}, {index.shape}"
        )
    if n and (min(labels.min(), preds.min()) < 0 or max(labels.max(), preds.max()) >= len(class_names)):
        raise RenderError(f"labels and predictions must lie in [0, {len(class_names)}), the class names' range")
    if sprite is not None and sprite.count != n:
        raise RenderError(f"the sprite sheet has {sprite.count} tiles for {n} points")

    tooltip, scale = _tooltip(sprite, sprite_url, thumb_px)
    offsets = (sprite.offsets() * scale).astype(np.int32) if sprite is not None else np.zeros((n, 2), np.int32)
    fig = figure(
        title=title,
        tools="pan,wheel_zoom,box_zoom,reset,save",
        output_backend="webgl" if n >= WEBGL_FROM_POINTS else "canvas",
        sizing_mode="stretch_width",
        height=600,
        match_aspect=True,
    )
    fig.axis.visible = False  # t-SNE axes have no units
    fig.grid.visible = False
    size = 7 if n < 2000 else 5
    items, renderers, wrong_all = [], [], []
    for c, (name, color) in enumerate(zip(class_names, _palette(len(class_names)))):
        if not (labels == c).any():
            continue  # a class without points (40 of ImageNet's 1000) gets no legend entry
        pair = []
        for wrong in (False, True):
            keep = (labels == c) & ((preds != labels) if wrong else (preds == labels))
            data = {"x": pts[keep, 0], "y": pts[keep, 1], "label": labels[keep], "pred": preds[keep],
                    "index": index[keep], "sx": offsets[keep, 0], "sy": offsets[keep, 1],
                    "pos": np.nonzero(keep)[0].astype(np.int32)}  # fmt: skip
            source = ColumnDataSource(data)
            if wrong:
                r = fig.scatter("x", "y", source=source, marker="x", size=size + 3, line_color=color, line_width=2)
                wrong_all.append(r)
            else:
                r = fig.scatter("x", "y", source=source, size=size, fill_color=color, line_color=None, fill_alpha=0.7)
            pair.append(r)
        renderers += pair
        items.append(LegendItem(label=str(name), renderers=pair))
    # a grey cross drawn last over the class-coloured ones is the entry's swatch
    swatch = fig.scatter(x=[], y=[], marker="x", size=size + 3, line_color="#444444", line_width=2)
    items.append(LegendItem(label="misclassified", renderers=wrong_all + [swatch]))
    fig.add_layout(Legend(items=items, click_policy="hide", title="class (click to hide)"), "right")

    names = CustomJSHover(args={"names": [str(s) for s in class_names]}, code="return names[value] ?? String(value)")
    # limit=1: in a dense cluster show the nearest point's tooltip, not a column of thumbnails
    fig.add_tools(HoverTool(renderers=renderers, tooltips=tooltip, limit=1,
                            formatters={"@{label}": names, "@{pred}": names}))  # fmt: skip
    if detail_url_template is not None:
        fig.add_tools(TapTool(renderers=renderers, callback=OpenURL(url=_bokeh_url(detail_url_template), same_tab=True)))
    elif neighbours is not None and panel_id and sprite is not None and sprite_url:
        fig.add_tools(TapTool(renderers=renderers))
        _neighbour_panel(renderers, neighbours, offsets, index, labels, preds, class_names, sprite, sprite_url,
                         scale, panel_id)
    return fig


_PANEL_JS = """
const i = cb_obj.indices[0];
const el = document.getElementById(panel);
if (i === undefined || !el) { return; }
const d = info.data;
const src = srcs.find((s) => s.selected === cb_obj);
if (!src) { return; }
const p = src.data.pos[i];
const esc = (t) => String(t).replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'})[c]);
const tile = (q) => '<figure class="rg-nn"><div role="img" aria-label="image ' + d.idx[q] + '" style="width:' + w + 'px;height:' + h
  + 'px;background-image:' + (url.startsWith('var(') ? url : 'url(&quot;' + encodeURI(url) + '&quot;)') + ';background-size:' + bw + 'px ' + bh + 'px;background-position:-'
  + d.ox[q] + 'px -' + d.oy[q] + 'px;image-rendering:pixelated"></div><figcaption>#' + d.idx[q] + ' '
  + esc(names[d.lab[q]]) + '</figcaption></figure>';
const near = [];
for (let j = 0; j < k; j++) { near.push(d['nn' + j][p]); }
const same = near.filter((q) => d.lab[q] === d.lab[p]).length;
el.innerHTML = '<h3>Image #' + d.idx[p] + ': ' + esc(names[d.lab[p]]) + ' (predicted ' + esc(names[d.pred[p]]) + ')</h3>'
  + '<div class="rg-nn-row">' + tile(p) + '</div><p>Its ' + k + ' nearest neighbours in the feature space of this layer ('
  + same + ' of ' + k + ' of the same class):</p><div class="rg-nn-row">' + near.map(tile).join('') + '</div>';
el.hidden = false;
"""


def _neighbour_panel(renderers, neighbours, offsets, index, labels, preds, class_names, sprite, sprite_url,
                     scale, panel_id) -> None:
    """On click, show the point and its nearest neighbours in the page element `panel_id` (CustomJS).

    The per-point arrays travel in one ColumnDataSource (numpy columns serialize as binary); as plain
    CustomJS arguments Bokeh would walk them element by element (minutes for 5k points).
    """
    from bokeh.models import ColumnDataSource, CustomJS

    nn = np.asarray(neighbours, np.int32)
    columns = {"idx": index.astype(np.int32), "lab": labels.astype(np.int32), "pred": preds.astype(np.int32),
               "ox": offsets[:, 0].astype(np.int32), "oy": offsets[:, 1].astype(np.int32)}
    columns.update({f"nn{j}": nn[:, j].copy() for j in range(nn.shape[1])})
    info = ColumnDataSource(columns)
    shared = {"panel": panel_id, "url": sprite_url, "k": int(nn.shape[1]), "info": info,
              "names": [str(n) for n in class_names], "w": sprite.tile_width * scale, "h": sprite.tile_height * scale,
              "bw": sprite.columns * sprite.tile_width * scale, "bh": sprite.rows * sprite.tile_height * scale}
    # one callback for every renderer (it finds the renderer whose selection changed): the arguments,
    # the sprite URL among them, are written once per plot
    callback = CustomJS(args=dict(shared, srcs=[r.data_source for r in renderers]), code=_PANEL_JS)
    for r in renderers:
        r.data_source.selected.js_on_change("indices", callback)


def explorer_plot(*args, **kwargs) -> tuple[str, str]:
    """`explorer_figure(...)` as `bokeh.embed.components` (script, div) for a page that loads BokehJS
    with `script_tags`; the same arguments."""
    from bokeh.embed import components

    return components(explorer_figure(*args, **kwargs))


explorer_plot.__signature__ = inspect.signature(explorer_figure).replace(return_annotation="tuple[str, str]")


def _bokeh_url(template: str) -> str:
    """`{index}` -> Bokeh's `@{index}`; '@' and '$' would be read as Bokeh placeholders, so refuse them."""
    if "{index}" not in template or "@" in template or "$" in template:
        raise RenderError(f"detail URL template {template!r} must contain '{{index}}' and no '@' or '$'")
    return template.replace("{index}", "@{index}")


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def stable_ids(script: str, div: str, prefix: str) -> tuple[str, str]:
    """Bokeh's components() uses random UUIDs; number them per plot instead, so rebuilds are byte-identical."""
    ids: dict[str, str] = {}
    for u in _UUID.findall(div + script):
        ids.setdefault(u, f"{prefix}-{len(ids)}")
    for u, v in ids.items():
        script, div = script.replace(u, v), div.replace(u, v)
    return script, div


def explorer_components(*args, id_prefix: str, **kwargs) -> tuple[str, str]:
    """`explorer_plot(...)` with ids that depend only on `id_prefix` (the same bytes on every build)."""
    from bokeh.settings import settings

    # Bokeh's default "simple" ids count up across the process; UUIDs are renumbered by stable_ids instead.
    settings.simple_ids.set_value(False)
    try:
        return stable_ids(*explorer_plot(*args, **kwargs), id_prefix)
    finally:
        settings.simple_ids.unset_value()
