"""reportgen.render.plots: the sprite sheet read back with PIL, BokehJS against the installed package, the
Bokeh model of the explorer, and (marked `browser`) the page in headless Chromium from file://."""

import hashlib
import io
import json
import re
from pathlib import Path

import bokeh
import numpy as np
import pytest
from bokeh.embed import components
from bokeh.models import CustomJSHover, HoverTool, OpenURL, TapTool
from PIL import Image

from reportgen.errors import RenderError
from reportgen.render.plots import (
    SpriteLayout,
    copy_bokehjs,
    explorer_figure,
    explorer_plot,
    script_tags,
    sprite_layout,
    write_sprite_sheet,
)

SPECIAL = 1234  # an isolated point whose thumbnail tile is neither in the first row nor the first column
NAMES = ["t-shirt", "trouser", '</script><img src=x onerror="window.__xss=1">', "bag \"'&"]


def scatter_data(n, n_classes=4, seed=0):
    """Clustered (N, 2) points, labels, predictions (~10% wrong) and dataset indices 1000.., with point
    SPECIAL an isolated, correctly classified class-2 point at (60, 60) so a browser can hover it alone."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    preds = np.where(rng.random(n) < 0.1, rng.integers(0, n_classes, n), labels)
    points = rng.normal(size=(n_classes, 2))[labels] * 10 + rng.normal(size=(n, 2))
    if n > SPECIAL:
        labels[SPECIAL] = preds[SPECIAL] = 2
        points[SPECIAL] = [60, 60]
    return points, labels, preds, np.arange(n) + 1000


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_sprite_sheet_reads_back_tile_by_tile(tmp_path, channels):
    imgs = np.random.default_rng(0).integers(0, 256, (11, 5, 7, channels), dtype=np.uint8)
    layout = write_sprite_sheet(imgs, tmp_path / "s.png", columns=4)
    assert layout == SpriteLayout("s.png", count=11, columns=4, rows=3, tile_width=7, tile_height=5)
    sheet = np.asarray(Image.open(tmp_path / "s.png"))
    assert sheet.shape[:2] == (15, 28)
    sheet = sheet.reshape(15, 28, channels)
    for i, (x, y) in enumerate(layout.offsets()):
        np.testing.assert_array_equal(sheet[y : y + 5, x : x + 7], imgs[i])
    assert (sheet[10:, 21:] == 0).all()  # the unused twelfth tile


def _written(imgs, path):
    write_sprite_sheet(imgs, path)
    return path.read_bytes()


def test_sprite_sheet_bytes_are_deterministic_and_format_follows_suffix(tmp_path):
    imgs = np.random.default_rng(1).integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)
    for suffix in ["png", "webp", "jpg"]:
        digests = {hashlib.sha256(_written(imgs, tmp_path / f"{name}.{suffix}")).hexdigest() for name in "ab"}
        assert len(digests) == 1
    layout = write_sprite_sheet(imgs, tmp_path / "c.jpg")
    assert (layout.columns, layout.rows) == (6, 5)  # square-ish by default
    assert Image.open(tmp_path / "c.jpg").format == "JPEG"
    write_sprite_sheet(imgs, tmp_path / "d.webp")
    assert Image.open(tmp_path / "d.webp").format == "WEBP"
    assert not list(tmp_path.glob("*.tmp"))


def test_sprite_sheet_errors(tmp_path):
    with pytest.raises(RenderError) as err:
        write_sprite_sheet(np.zeros((3, 4, 4, 1), np.float32), tmp_path / "s.png")
    assert str(err.value) == (
        "thumbnails must be a non-empty (N, h, w, C) uint8 array with C in 1, 3, 4; got float32 (3, 4, 4, 1)"
    )
    with pytest.raises(RenderError, match=r"JPEG has no alpha channel; use \.png or \.webp$"):
        write_sprite_sheet(np.zeros((3, 4, 4, 4), np.uint8), tmp_path / "s.jpg")
    with pytest.raises(RenderError, match=r"unsupported format; use one of \.png, \.jpg, \.jpeg, \.webp$"):
        write_sprite_sheet(np.zeros((3, 4, 4, 1), np.uint8), tmp_path / "s.gif")
    with pytest.raises(RenderError, match=r"would be 20000x4 px, over the format's limit$"):
        write_sprite_sheet(np.zeros((5, 4, 4000, 1), np.uint8), tmp_path / "s.webp", columns=5)


def test_copy_bokehjs_copies_the_installed_version_once(tmp_path):
    scripts = copy_bokehjs(tmp_path / "static")
    folder = f"bokeh-{bokeh.__version__}"
    assert scripts == [f"{folder}/bokeh.min.js", f"{folder}/bokeh-gl.min.js"]
    package_js = Path(bokeh.__file__).parent / "server" / "static" / "js"
    for script in scripts:
        copied = (tmp_path / "static" / script).read_bytes()
        assert copied == (package_js / Path(script).name).read_bytes()
    core = (tmp_path / "static" / scripts[0]).read_text()
    assert re.search(r'version="([^"]+)"', core).group(1) == bokeh.__version__
    before = (tmp_path / "static" / scripts[0]).stat().st_mtime_ns
    assert copy_bokehjs(tmp_path / "static") == scripts
    assert (tmp_path / "static" / scripts[0]).stat().st_mtime_ns == before


def test_script_tags_are_relative_to_the_page_depth():
    scripts = ["bokeh-3/bokeh.min.js", "bokeh-3/bokeh-gl.min.js"]
    assert script_tags(scripts, 0) == (
        '<script src="static/bokeh-3/bokeh.min.js"></script>\n<script src="static/bokeh-3/bokeh-gl.min.js"></script>'
    )
    assert script_tags(scripts[:1], 2, static_url="/assets/") == '<script src="../../assets/bokeh-3/bokeh.min.js"></script>'


def test_explorer_has_one_hideable_legend_entry_per_class_and_marks_mistakes(tmp_path):
    points, labels, preds, index = scatter_data(500)
    layout = write_sprite_sheet(np.zeros((500, 8, 8, 1), np.uint8), tmp_path / "s.png", columns=25)
    fig = explorer_figure(points, labels, preds, index, NAMES, layout, "s.png", "img/{index}.html", "layer")
    legend = fig.legend[0]
    assert legend.click_policy == "hide"
    assert [item.label.value for item in legend.items] == NAMES + ["misclassified"]
    for c, item in enumerate(legend.items[:4]):
        right, wrong = item.renderers
        assert right.glyph.marker == "circle" and wrong.glyph.marker == "x"
        for renderer, mistaken in [(right, False), (wrong, True)]:
            data = renderer.data_source.data
            expected = np.flatnonzero((labels == c) & ((preds != labels) == mistaken))
            np.testing.assert_array_equal(data["pos"], expected)  # the point's position in the arrays given
            np.testing.assert_array_equal(data["index"], index[expected])  # for the detail URL only
            np.testing.assert_allclose(np.stack([data["x"], data["y"]], 1), points[expected], rtol=1e-6)
            assert data["x"].dtype == np.float32 and data["pos"].dtype == np.uint16
    assert {id(r) for r in legend.items[-1].renderers[:-1]} == {id(item.renderers[1]) for item in legend.items[:4]}
    assert fig.output_backend == "canvas"
    hover = fig.select_one(HoverTool)
    assert "{safe}" not in hover.tooltips and '<div class="rg-thumb" style="@{pos}{thumb}">' in hover.tooltips
    tip = hover.formatters["@{pos}"]
    assert isinstance(tip, CustomJSHover) and tip.args["names"] == NAMES
    # everything else per point, once, in the smallest integer type: indices 1000..1499, 4 classes
    table = tip.args["info"].data
    assert set(table) == {"idx", "lab", "pred"}
    np.testing.assert_array_equal(table["idx"], index)
    np.testing.assert_array_equal(table["lab"], labels)
    np.testing.assert_array_equal(table["pred"], preds)
    assert (table["idx"].dtype, table["lab"].dtype, table["pred"].dtype) == (np.uint16, np.uint8, np.uint8)
    # one sheet of 25 columns; 8 px tiles shown 10x (84 px / 8 rounds to 10)
    assert {k: tip.args[k] for k in ["url", "per", "cols", "w", "h", "bw"]} == {
        "url": "s.png", "per": 500, "cols": 25, "w": 80, "h": 80, "bw": 2000}
    assert fig.select_one(TapTool).callback.url == "img/@{index}.html"
    assert fig.select_one(OpenURL).same_tab


def test_explorer_switches_to_webgl_at_10k_points():
    for n, backend in [(9_999, "canvas"), (10_000, "webgl")]:
        points, labels, preds, index = scatter_data(n)
        assert explorer_figure(points, labels, preds, index, NAMES).output_backend == backend


def test_explorer_errors():
    points, labels, preds, index = scatter_data(20)
    with pytest.raises(RenderError, match=r"^labels and predictions must lie in \[0, 2\), the class names' range$"):
        explorer_figure(points, labels, preds, index, NAMES[:2])
    with pytest.raises(RenderError, match=r"^the sprite sheet has 19 tiles for 20 points$"):
        explorer_figure(points, labels, preds, index, NAMES, SpriteLayout("s.png", 19, 5, 4, 8, 8), "s.png")
    with pytest.raises(RenderError, match=r"^detail URL template 'x/@\{index\}' must contain '\{index\}' and no"):
        explorer_figure(points, labels, preds, index, NAMES, detail_url_template="x/@{index}")
    with pytest.raises(RenderError, match=r"^explorer needs points \(N, 2\) and labels, preds, indices \(N,\)"):
        explorer_figure(points[:, :1], labels, preds, index, NAMES)


def test_page_carries_only_compact_plot_data_for_5k_points(tmp_path):
    points, labels, preds, index = scatter_data(5000)
    layout = write_sprite_sheet(np.zeros((5000, 28, 28, 1), np.uint8), tmp_path / "s.png")
    script, div = explorer_plot(points, labels, preds, index, NAMES, layout, "s.png", "img/{index}.html", "t")
    assert div.startswith("<div") and script.lstrip().startswith("<script")
    assert not re.search(r"https?://|cdn\.bokeh|data:image", script)
    assert "Bokeh.safely" in script  # components() data only: no BokehJS inlined
    # x, y, pos, index and 3 one- or two-byte columns, base64: ~25 bytes a point plus the model
    assert len(script) < 200_000, len(script)


def test_page_grows_by_under_40_bytes_a_point_so_60k_fit_in_5_mb():
    def page(n):
        points, labels, preds, index = scatter_data(n, n_classes=10)
        neighbours = np.random.default_rng(0).integers(0, n, (n, 6))
        layout = sprite_layout(n, (28, 28))
        return sum(map(len, explorer_plot(points, labels, preds, index, [str(c) for c in range(10)], layout,
                                          "s-{}.webp", neighbours=neighbours, panel_id="p")))
    small, large = page(4000), page(24_000)
    per_point = (large - small) / 20_000
    # base64 of x, y (float32), pos, idx, nn0..5 (uint16 below 65536 points), lab, pred (uint8): 34.7 bytes
    assert 30 < per_point < 40, per_point
    assert small + per_point * 56_000 < 5e6


def test_sprite_layout_splits_into_sheets_of_at_most_2048_px():
    one = sprite_layout(5000, (28, 28))
    assert (one.columns, one.rows, one.sheets, one.per_sheet) == (71, 71, 1, 5041)
    many = sprite_layout(60_000, (28, 28))
    assert (many.columns, many.rows, many.sheets) == (73, 73, 12)   # 2044 px a side
    assert many.tiles(11) == slice(11 * 5329, 60_000)
    offsets = many.offsets()   # tile 5329 + 74 starts sheet 1's second row, second column
    np.testing.assert_array_equal(offsets[[0, 5328, 5329 + 74]], [[0, 0], [72 * 28, 72 * 28], [28, 28]])
    wide = sprite_layout(300, (40, 64))   # (h, w): 32 columns of 64 px would pass 2048 only past 1024 tiles
    assert (wide.columns, wide.rows, wide.tile_width, wide.tile_height) == (18, 17, 64, 40)


def _serve_page(tmp_path, n, sprite_name):
    """Write a minimal site (static/, assets/, pages/plot.html, images/<index>.html) for `scatter_data(n)`."""
    points, labels, preds, index = scatter_data(n)
    imgs = np.random.default_rng(1).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
    imgs[SPECIAL] = [255, 0, 0]  # the hovered point's thumbnail is plain red
    layout = write_sprite_sheet(imgs, tmp_path / "assets" / sprite_name)
    tags = script_tags(copy_bokehjs(tmp_path / "static"), depth=1)
    script, div = explorer_plot(
        points, labels, preds, index, NAMES, layout, f"../assets/{sprite_name}", "../images/{index}.html", "t-SNE"
    )
    page = tmp_path / "pages" / "plot.html"
    page.parent.mkdir()
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'>{tags}{script}</head><body>{div}</body></html>")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / f"{1000 + SPECIAL}.html").write_text("<!doctype html><title>detail</title>")
    return page, points[SPECIAL]


# The plot view's data-to-screen mapping (Bokeh's own scales) locates a point on the page.
_POINT_ON_PAGE = """([x, y]) => {
  const view = Object.values(Bokeh.index).find(v => v.model.type == "Figure");
  const box = view.canvas_view.el.getBoundingClientRect();
  return [box.left + view.frame.x_scale.compute(x), box.top + view.frame.y_scale.compute(y),
          view.canvas_view.model.output_backend, view.canvas_view.webgl != null,
          [box.left, box.top, box.right, box.bottom]];
}"""


@pytest.mark.browser
@pytest.mark.parametrize(("n", "sprite_name"), [(2_000, "sprites.png"), (12_000, "sprites.webp")])
def test_page_in_chromium_shows_the_plot_and_a_thumbnail_tooltip(tmp_path, n, sprite_name, browser):
    page_path, outlier = _serve_page(tmp_path, n, sprite_name)
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors, requests = [], []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_path.as_uri())
    page.wait_for_function("() => window.Bokeh && Object.values(Bokeh.index).some(v => v.model.type == 'Figure')")
    page.wait_for_timeout(500)  # let the first paint land
    assert page.evaluate("() => Bokeh.version") == bokeh.__version__

    sx, sy, backend, webgl, box = page.evaluate(_POINT_ON_PAGE, outlier.tolist())
    assert (backend, webgl) == (("webgl", True) if n >= 10_000 else ("canvas", False))
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
    left, top, right, bottom = (round(v) for v in box)
    canvas = shot[top:bottom, left:right]
    saturated = (canvas.max(axis=2).astype(int) - canvas.min(axis=2)) > 60  # class colours, not greys
    assert saturated.mean() > 0.005, saturated.mean()

    page.mouse.move(sx + 4, sy + 4)
    page.mouse.move(sx, sy)
    thumb = page.locator(".rg-thumb")
    thumb.first.wait_for(state="visible", timeout=5000)
    assert thumb.count() == 1
    shown = np.asarray(Image.open(io.BytesIO(thumb.first.screenshot())).convert("RGB")).astype(int)
    inner = shown[12:-12, 12:-12].reshape(-1, 3)  # inside the border and lossy formats' bleed from neighbours
    assert (np.abs(inner - [255, 0, 0]).max(axis=1) < 40).mean() > 0.95  # the plain red tile is the one shown
    text = page.locator(".rg-tip-text").first.inner_text()
    assert text.split("\n") == [f"true: {NAMES[2]}", f"predicted: {NAMES[2]}", f"index: {1000 + SPECIAL}"]
    assert page.evaluate("() => window.__xss") is None  # the class name was shown, not run

    page.get_by_text(NAMES[0], exact=True).click()  # legend entry of class 0
    hidden, first_entry = page.evaluate("""() => {
        const fig = Object.values(Bokeh.index).find(v => v.model.type == "Figure").model;
        const legend = fig.right.find(m => m.type == "Legend");
        return [fig.renderers.filter(r => !r.visible).map(r => r.id).sort(),
                legend.items[0].renderers.map(r => r.id).sort()];
    }""")
    assert hidden == first_entry and len(hidden) == 2

    page.mouse.click(sx, sy)
    page.wait_for_url(f"**/images/{1000 + SPECIAL}.html", timeout=5000)
    assert page.title() == "detail"
    page.close()
    assert errors == []
    assert all(url.startswith("file://") for url in requests), [u for u in requests if not u.startswith("file:")]
    assert (tmp_path / "assets" / sprite_name).as_uri() in requests
