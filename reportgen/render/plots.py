"""The representation-space explorer: a Bokeh scatter of an embedding, its thumbnail sprite sheet, BokehJS.

    layout = sprite_layout(len(thumbs), (28, 28))     # tiles per sheet, sheets of at most 2048 px a side
    for s in range(layout.sheets):                    # sheet s holds thumbnails s*per_sheet ... (N, h, w, C) uint8
        write_sprite_sheet(thumbs[layout.tiles(s)], site / "assets" / f"sprite-{s}.webp", layout.columns)
    scripts = copy_bokehjs(site / "static")          # once per site
    head = script_tags(scripts, depth=2)              # in each page with a plot, two folders below the root
    script, div = explorer_plot(points, labels, preds, indices, class_names,
                                sprite=layout, sprite_url="../assets/sprite-{}.webp",
                                detail_url_template="../images/{index}.html", title="layer3")

With `frames` (the same points at several checkpoints), a range input above the plot switches the points
(and the predictions the tooltips name) between checkpoints in the browser: every checkpoint's coordinates
sit in the shared per-point table, and a CustomJS callback refills each renderer's data source from it.

Each page carries only its plot's data (`bokeh.embed.components`, numeric columns as base64 typed arrays in
the smallest integer type that holds them: about 26 bytes a point at 60k points, 35 in base64); BokehJS
comes from the one copy in the site's static folder, and the thumbnails from sprite sheets beside the page,
shown through CSS background-position: the browser loads a sheet when a tooltip first shows one of its
tiles. Nothing is inlined per point and nothing is fetched from a CDN, so pages work from file://.
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
    "Frames",
    "sprite_layout",
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


SHEET_SIDE = 2048  # px: a sheet decodes to at most 16 MB in the browser, and a hover loads one sheet


@dataclass(frozen=True)
class SpriteLayout:
    """Where each thumbnail lies in the sprite sheets: tile i is tile j = i % per_sheet of sheet
    i // per_sheet, at column j % columns, row j // columns."""

    file: str  # the sheet's file name; "{}" in it stands for the sheet number
    count: int
    columns: int
    rows: int  # rows of a full sheet (the last one may have fewer)
    tile_width: int
    tile_height: int

    @property
    def per_sheet(self) -> int:
        return self.columns * self.rows

    @property
    def sheets(self) -> int:
        return math.ceil(self.count / self.per_sheet)

    def tiles(self, sheet: int) -> slice:
        """The tiles (thumbnail indices) of sheet `sheet`."""
        return slice(sheet * self.per_sheet, min((sheet + 1) * self.per_sheet, self.count))

    def offsets(self) -> np.ndarray:
        """(count, 2) int pixel offsets (x, y) of each tile's top-left corner in its sheet."""
        j = np.arange(self.count) % self.per_sheet
        return np.stack([(j % self.columns) * self.tile_width, (j // self.columns) * self.tile_height], axis=1)


@dataclass(frozen=True)
class Frames:
    """The explorer's points at each checkpoint, oldest first; the plot opens on the last (its `points` and
    `preds` arguments)."""

    names: list[str]      # the checkpoints' names
    points: np.ndarray    # (K, N, 2) coordinates, aligned so that a point's motion is a change of features
    preds: np.ndarray     # (K, N) each checkpoint's predicted class


def sprite_layout(count: int, tile_size: tuple[int, int], file: str = "sprite-{}.webp",
                  side: int = SHEET_SIDE) -> SpriteLayout:
    """Square-ish sheets of at most `side` px a side for `count` tiles of `tile_size` (h, w): one sheet
    when they fit (a few thousand small thumbnails), else as many full sheets as needed."""
    h, w = tile_size
    columns = max(1, min(math.ceil(math.sqrt(count)), side // w))
    rows = max(1, min(math.ceil(count / columns), side // h))
    return SpriteLayout(file, count, columns, rows, w, h)


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


# Tile q's CSS (sheet, offset, scaled size) from the layout: shared by the tooltip and the neighbour panel.
# `url` has "{}" for the sheet number; --single-file makes it a CSS variable (var(--rg-sprite-{})).
_TILE_JS = """
const tile = (q) => {
  const s = Math.floor(q / per), j = q % per, u = url.replace('{}', s);
  const bg = u.startsWith('var(') ? u : 'url("' + encodeURI(u) + '")';
  return 'width:' + w + 'px;height:' + h + 'px;background-image:' + bg + ';background-repeat:no-repeat;'
    + 'background-size:' + bw + 'px auto;background-position:-' + (j % cols) * w + 'px -'
    + Math.floor(j / cols) * h + 'px;image-rendering:pixelated';
};
"""

# value: the point's position (column "pos"); format: what to show of it. Bokeh HTML-escapes the result.
_TIP_JS = _TILE_JS + """
const d = info.data;
if (format === 'index') { return String(d.idx[value]); }
if (format === 'thumb') { return tile(value) + ';border:1px solid #888'; }
const c = format === 'label' ? d.lab[value] : d.pred[value];
return names[c] ?? String(c);
"""


def _tooltip(sprite: SpriteLayout | None) -> str:
    """The hover template: the thumbnail, true and predicted class, dataset index, each from the point's
    position through the formatter (`_TIP_JS`), which looks them up in the shared per-point columns."""
    rows = (
        '<div class="rg-tip-text">'
        "<div>true: <b>@{pos}{label}</b></div>"
        "<div>predicted: <b>@{pos}{pred}</b></div>"
        "<div>index: @{pos}{index}</div></div>"
    )
    if sprite is None:
        return f'<div class="rg-tip">{rows}</div>'
    thumb = '<div class="rg-thumb" style="@{pos}{thumb}"></div>'
    return f'<div class="rg-tip" style="display:flex;gap:6px;align-items:flex-start">{thumb}{rows}</div>'


def _compact(values: np.ndarray) -> np.ndarray:
    """Non-negative integers in the smallest unsigned type that holds them: the page carries N of each."""
    top = int(values.max()) if values.size else 0
    return values.astype(np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32)


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
    frames: Frames | None = None,
) -> bokeh.plotting.figure:
    """Bokeh scatter of `points` (N, 2) coloured by true class.

    One renderer pair per class (circles for correct, crosses for misclassified) under one legend entry,
    so a legend click hides the class; a "misclassified" entry hides all crosses. Hover shows tile i of
    `sprite` (point i's thumbnail, from `sprite_url`, relative to the page, "{}" for the sheet number,
    scaled to about `thumb_px`), the true and predicted class names and the dataset index. With
    `detail_url_template` (a relative URL containing `{index}`), clicking a point opens it in the same tab;
    else with `neighbours` (N, k) positions, clicking shows them in the element `panel_id`. WebGL from
    `WEBGL_FROM_POINTS` points. With `frames`, setting the per-point table's `tags` to [k] (the table is
    the model named FRAMES_MODEL; `explorer_plot` adds the control that does it) shows checkpoint k.

    Each renderer carries its points' x, y (float32) and position `pos` in the arrays given; everything
    else per point (index, classes, neighbours) sits once in a shared table that the tooltip's formatter
    and the panel read by position, so the page grows by about 26 bytes a point (k = 6).
    """
    from bokeh.models import ColumnDataSource, CustomJSHover, HoverTool, Legend, LegendItem, OpenURL, TapTool
    from bokeh.plotting import figure

    pts = np.asarray(points, dtype=np.float32)
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    index = np.asarray(dataset_indices, dtype=np.int64)
    n = pts.shape[0]
    if pts.ndim != 2 or pts.shape[1] != 2 or not (labels.shape == preds.shape == index.shape == (n,)):
        raise RenderError(
            f"explorer needs points (N, 2) and labels, preds, indices (N,); got {pts.shape}, {labels.shape}, "
            f"{preds.shape}, {index.shape}"
        )
    if n and (min(labels.min(), preds.min()) < 0 or max(labels.max(), preds.max()) >= len(class_names)):
        raise RenderError(f"labels and predictions must lie in [0, {len(class_names)}), the class names' range")
    if n and index.min() < 0:
        raise RenderError("dataset indices must be 0 or more")
    if sprite is not None and sprite.count != n:
        raise RenderError(f"the sprite sheet has {sprite.count} tiles for {n} points")

    table = {"idx": _compact(index), "lab": _compact(labels), "pred": _compact(preds)}
    if frames is not None:
        table.update(_frame_columns(frames, n, len(class_names)))
    if neighbours is not None:
        nn = np.asarray(neighbours, np.int64)
        table.update({f"nn{j}": _compact(nn[:, j]) for j in range(nn.shape[1])})
    # numpy columns serialize as binary; CustomJS args would go element by element
    info = ColumnDataSource(table, name=FRAMES_MODEL if frames is not None else None)
    thumbs = sprite is not None and sprite_url is not None
    scale = max(1, round(thumb_px / max(sprite.tile_width, sprite.tile_height))) if thumbs else 1
    args = {"info": info, "names": [str(s) for s in class_names], "url": sprite_url or "",
            "per": sprite.per_sheet if thumbs else 1, "cols": sprite.columns if thumbs else 1,
            "w": sprite.tile_width * scale if thumbs else 0, "h": sprite.tile_height * scale if thumbs else 0,
            "bw": sprite.columns * sprite.tile_width * scale if thumbs else 0}
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
    items, renderers, wrong_all, groups = [], [], [], []
    for c, (name, color) in enumerate(zip(class_names, _palette(len(class_names)))):
        if not (labels == c).any():
            continue  # a class without points (40 of ImageNet's 1000) gets no legend entry
        pair = []
        for wrong in (False, True):
            keep = (labels == c) & ((preds != labels) if wrong else (preds == labels))
            data = {"x": pts[keep, 0], "y": pts[keep, 1], "pos": _compact(np.nonzero(keep)[0])}
            if detail_url_template is not None:
                data["index"] = index[keep].astype(np.int32)  # for OpenURL's @{index}
            source = ColumnDataSource(data)
            if wrong:
                r = fig.scatter("x", "y", source=source, marker="x", size=size + 3, line_color=color, line_width=2)
                wrong_all.append(r)
            else:
                r = fig.scatter("x", "y", source=source, size=size, fill_color=color, line_color=None, fill_alpha=0.7)
            pair.append(r)
            groups.append([c, wrong])
        renderers += pair
        items.append(LegendItem(label=str(name), renderers=pair))
    # a grey cross drawn last over the class-coloured ones is the entry's swatch
    swatch = fig.scatter(x=[], y=[], marker="x", size=size + 3, line_color="#444444", line_width=2)
    items.append(LegendItem(label="misclassified", renderers=wrong_all + [swatch]))
    fig.add_layout(Legend(items=items, click_policy="hide", title="class (click to hide)"), "right")

    # limit=1: in a dense cluster show the nearest point's tooltip, not a column of thumbnails
    fig.add_tools(HoverTool(renderers=renderers, tooltips=_tooltip(sprite if thumbs else None), limit=1,
                            formatters={"@{pos}": CustomJSHover(args=args, code=_TIP_JS)}))  # fmt: skip
    if detail_url_template is not None:
        fig.add_tools(TapTool(renderers=renderers, callback=OpenURL(url=_bokeh_url(detail_url_template), same_tab=True)))
    elif neighbours is not None and panel_id and thumbs:
        fig.add_tools(TapTool(renderers=renderers))
        _neighbour_panel(renderers, args, int(np.shape(neighbours)[1]), panel_id)
    if frames is not None:
        from bokeh.models import CustomJS

        info.js_on_change("tags", CustomJS(args={"info": info, "srcs": [r.data_source for r in renderers],
                                                 "groups": groups}, code=_FRAME_JS))
    return fig


FRAMES_MODEL = "rg-frames"   # the per-point table of a plot with checkpoints (its `tags`: the checkpoint shown)


def _frame_columns(frames: Frames, n: int, classes: int) -> dict[str, np.ndarray]:
    """Columns x{k}, y{k} (float32) and pred{k} of each checkpoint k for the per-point table."""
    pts = np.asarray(frames.points, dtype=np.float32)
    preds = np.asarray(frames.preds, dtype=np.int64)
    k = len(frames.names)
    if k == 0 or pts.shape != (k, n, 2) or preds.shape != (k, n):
        raise RenderError(f"checkpoint frames need points ({k}, {n}, 2) and predictions ({k}, {n}) for {k} names; "
                          f"got {pts.shape} and {preds.shape}")
    if n and (preds.min() < 0 or preds.max() >= classes):
        raise RenderError(f"checkpoint predictions must lie in [0, {classes}), the class names' range")
    cols = {}
    for j in range(k):
        cols.update({f"x{j}": pts[j, :, 0], f"y{j}": pts[j, :, 1], f"pred{j}": _compact(preds[j])})
    return cols


# Show checkpoint k = the table's tags[0]: each renderer (class c, misclassified or not by that checkpoint)
# gets the positions that belong to it then, with their coordinates then; tooltips and the neighbour panel
# read `pred` from the table, so it becomes checkpoint k's.
_FRAME_JS = """
const k = cb_obj.tags[0];
const d = info.data, X = d['x' + k], Y = d['y' + k], P = d['pred' + k], L = d.lab;
if (X === undefined) { return; }
srcs.forEach((src, r) => {
  const c = groups[r][0], wrong = groups[r][1], pos = [];
  for (let q = 0; q < L.length; q++) {
    if (L[q] === c && (P[q] !== c) === wrong) { pos.push(q); }
  }
  const data = {x: pos.map((q) => X[q]), y: pos.map((q) => Y[q]), pos: pos};
  if (src.data.index !== undefined) { data.index = pos.map((q) => d.idx[q]); }
  src.selected.indices = [];
  src.data = data;
});
info.data = Object.assign({}, d, {pred: P});
"""


_PANEL_JS = _TILE_JS + """
const i = cb_obj.indices[0];
const el = document.getElementById(panel);
if (i === undefined || !el) { return; }
const d = info.data;
const src = srcs.find((s) => s.selected === cb_obj);
if (!src) { return; }
const p = src.data.pos[i];
const esc = (t) => String(t).replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'})[c]);
const fig = (q) => '<figure class="rg-nn"><div role="img" aria-label="image ' + d.idx[q] + '" style="' + esc(tile(q))
  + '"></div><figcaption>#' + d.idx[q] + ' ' + esc(names[d.lab[q]]) + '</figcaption></figure>';
const near = [];
for (let j = 0; j < k; j++) { near.push(d['nn' + j][p]); }
const same = near.filter((q) => d.lab[q] === d.lab[p]).length;
el.innerHTML = '<h3>Image #' + d.idx[p] + ': ' + esc(names[d.lab[p]]) + ' (predicted ' + esc(names[d.pred[p]]) + ')</h3>'
  + '<div class="rg-nn-row">' + fig(p) + '</div><p>Its ' + k + ' nearest neighbours in the feature space of this layer ('
  + same + ' of ' + k + ' of the same class):</p><div class="rg-nn-row">' + near.map(fig).join('') + '</div>';
el.hidden = false;
"""


def _neighbour_panel(renderers, args: dict, k: int, panel_id: str) -> None:
    """On click, show the point and its k nearest neighbours (columns nn0.. of the shared table in `args`)
    in the page element `panel_id` (CustomJS)."""
    from bokeh.models import CustomJS

    # one callback for every renderer (it finds the renderer whose selection changed): the arguments,
    # the sprite URL among them, are written once per plot
    callback = CustomJS(args=dict(args, panel=panel_id, k=k, srcs=[r.data_source for r in renderers]),
                        code=_PANEL_JS)
    for r in renderers:
        r.data_source.selected.js_on_change("indices", callback)


def explorer_plot(*args, **kwargs) -> tuple[str, str]:
    """`explorer_figure(...)` as `bokeh.embed.components` (script, div) for a page that loads BokehJS
    with `script_tags`; the same arguments. With `frames`, the div starts with a range input (one step
    per checkpoint, on the last) and the script with what connects it to the plot."""
    from bokeh.embed import components

    fig = explorer_figure(*args, **kwargs)
    script, div = components(fig)
    frames = inspect.signature(explorer_figure).bind(*args, **kwargs).arguments.get("frames")
    if frames is None:
        return script, div
    control, glue = _frame_control(frames.names, fig.id)
    return glue + "\n" + script, control + "\n" + div


def _frame_control(names: list[str], root_id: str) -> tuple[str, str]:
    """(markup, script) of the checkpoint slider of the plot whose root model is `root_id`: moving it names
    the checkpoint and sets the plot's FRAMES_MODEL `tags` (a plain range input: Bokeh's Slider would add its
    382 kB widget bundle to every page with a plot)."""
    import json

    fid = f"{root_id}-frame"
    last = len(names) - 1
    markup = (f'<div class="rg-frames"><label for="{fid}">Checkpoint</label> '
              f'<input type="range" id="{fid}" min="0" max="{last}" step="1" value="{last}" '
              f'aria-valuetext="{html.escape(names[-1])}" data-names="{html.escape(json.dumps(names))}"> '
              f'<output for="{fid}" id="{fid}-name">{html.escape(names[-1])}</output></div>')
    script = ("<script>(() => {\n"
              f"const input = document.getElementById({json.dumps(fid)});\n"
              f"const shown = document.getElementById({json.dumps(fid + '-name')});\n"
              "const names = JSON.parse(input.dataset.names);\n"
              "input.addEventListener('input', () => {\n"
              "  const k = Number(input.value);\n"
              "  shown.textContent = names[k];\n"
              "  input.setAttribute('aria-valuetext', names[k]);\n"
              f"  const doc = window.Bokeh && Bokeh.documents.find((d) => d.get_model_by_id({json.dumps(root_id)}));\n"
              f"  if (doc) {{ doc.get_model_by_name({json.dumps(FRAMES_MODEL)}).tags = [k]; }}\n"
              "});\n})();</script>")
    return markup, script


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
