"""The built site in real Chromium, from file:// and served under /sub/path/ as GitHub Pages would: every page
loads cleanly, every link and image resolves, nothing is fetched from elsewhere, axe finds no serious or
critical violation, the explorer draws its points and shows the hovered image's thumbnail."""

import json
import gzip
import os
import re
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Error as PlaywrightError

from tests.browser.conftest import FILTER_PAGE, MODES, SITES
from tests.browser.crawler import AXE_RUN_JS
from tests.browser.explorer import hover_tooltip, hue_buckets, likeness, locate_point, shown_pixels, tooltip_index
from tests.helpers.tiny import FASHION_DIR

pytestmark = pytest.mark.browser


def each_crawl(test):
    """Parametrize `test` over every site and both ways of opening it."""
    return pytest.mark.parametrize("mode", MODES)(pytest.mark.parametrize("site", SITES)(test))


def listing(problems: list[str], limit: int = 25) -> str:
    more = f"\n… and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n".join(problems[:limit]) + more


@each_crawl
def test_every_page_is_reached_and_loads_without_console_errors(crawls, site_dirs, site, mode):
    found = crawls(site, mode)
    if site == "built":   # the demo's crawl opens a sample (conftest.demo_sample) and reads the rest
        assert sorted(found.visited) == sorted(p.relative_to(site_dirs[site]).as_posix()
                                               for p in site_dirs[site].rglob("*.html"))
    assert not found.unreached, "pages no link leads to:\n" + listing(found.unreached)
    assert not found.console, "console errors:\n" + listing(found.console)
    assert not found.plots, listing(found.plots)


@each_crawl
def test_no_failed_or_offsite_requests(crawls, site, mode):
    found = crawls(site, mode)
    assert not found.requests, "failed requests:\n" + listing(found.requests)
    assert not found.offsite, "requests that leave the site:\n" + listing(found.offsite)


@each_crawl
def test_every_link_and_image_resolves(crawls, site, mode):
    found = crawls(site, mode)
    assert not found.links, "broken links:\n" + listing(found.links)
    assert not found.images, "images that do not load:\n" + listing(found.images)


@pytest.mark.parametrize("site", SITES)
def test_axe_finds_no_serious_or_critical_violation(axe_js, crawls, site):
    found = crawls(site, "served")
    assert not found.axe, "axe-core violations:\n" + listing(found.axe)


def first_filter_page(folder: Path) -> str:
    pages = sorted(p.relative_to(folder).as_posix() for p in folder.glob("layers/*/f*.html"))
    pages = [p for p in pages if FILTER_PAGE.fullmatch(p)]
    assert pages, f"no filter page in {folder}"
    return min(pages, key=lambda p: (p.split("/")[1], int(FILTER_PAGE.fullmatch(p).group(1))))


@pytest.mark.parametrize("site", SITES)
def test_axe_in_dark_mode(browser, serve, site_dirs, axe_js, site):
    """The dark palette (prefers-color-scheme: dark) on one page of each kind."""
    folder = site_dirs[site]
    root = serve(folder)
    layer = sorted(p.relative_to(folder).as_posix() for p in folder.glob("layers/*/index.html"))[0]
    context = browser.new_context(color_scheme="dark", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems = []
    for rel in ["index.html", "build.html", layer, first_filter_page(folder)]:
        page.goto(root + rel, wait_until="load")
        page.add_script_tag(path=str(axe_js))
        problems += [f"{rel}: {v['impact']} {v['id']} on {v['count']} element(s), e.g. {v['target']}: {v['summary']}"
                     for v in page.evaluate(AXE_RUN_JS)]
    context.close()
    assert not problems, "axe-core violations in dark mode:\n" + listing(problems)


@lru_cache(maxsize=1)
def fashion_images() -> np.ndarray:
    """The shipped Fashion-MNIST test images, (N, 28, 28) uint8, decoded here from the IDX bytes."""
    raw = gzip.decompress((FASHION_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    n, h, w = struct.unpack(">III", raw[4:16])
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def explorer_pages(folder: Path) -> list[str]:
    return [rel for rel in ["index.html"] + sorted(p.relative_to(folder).as_posix()
                                                   for p in folder.glob("layers/*/index.html"))
            if "data-root-id" in (folder / rel).read_text(encoding="utf-8")]


@each_crawl
def test_explorer_draws_points_and_hover_shows_the_thumbnail(browser, serve, site_dirs, site, mode):
    folder = site_dirs[site]
    root = folder.as_uri() + "/" if mode == "file" else serve(folder)
    pages = explorer_pages(folder)
    assert pages, "no page of the site has an explorer"
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught {exc}"))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    for rel in pages[:2] if site == "demo" else pages:
        page.goto(root + rel, wait_until="load")
        figures = (folder / rel).read_text(encoding="utf-8").count("data-root-id")
        for n in range(figures):
            at = locate_point(page, n)
            assert at["count"] == figures, f"{rel}: {at['count']} of {figures} plots rendered"
            assert "x" in at, f"{rel}: plot {n} has no visible point"
            frame = page.screenshot(clip=at["frame"])
            assert hue_buckets(frame) >= 3, f"{rel}: plot {n} drew no class-coloured points"

            tip = hover_tooltip(page, at["x"], at["y"])
            index = tooltip_index(tip)
            shown = shown_pixels(page, tip.locator(".rg-thumb"), border=1)
            assert shown.std() > 10, f"{rel}: the thumbnail of image {index} is blank (sprite sheet not loaded?)"
            if site == "built":  # the tooltip shows the image it names: compare with the dataset's own pixels
                images = fashion_images()
                same, other = likeness(shown, images[index]), likeness(shown, images[(index + 1) % len(images)])
                assert same > 0.9 > other, f"{rel}: the thumbnail is not image {index} (correlation {same:.2f})"

            page.mouse.click(at["x"], at["y"])   # tap: the neighbour panel under the plot opens
            panel = page.locator(".nn-panel:not([hidden])")
            try:
                panel.first.wait_for(state="visible", timeout=5000)
            except PlaywrightError:
                pytest.fail(f"{rel}: clicking a point of plot {n} opens no neighbour panel; page errors: {errors}")
            assert panel.count() == 1, f"{rel}: {panel.count()} neighbour panels open after one click"
            tiles = panel.locator(".rg-nn")
            assert tiles.count() >= 2, f"{rel}: the neighbour panel shows no neighbours"
            for t in range(3):   # the clicked image and its first neighbours show their own pixels
                tiles.nth(t).scroll_into_view_if_needed()
                caption = tiles.nth(t).inner_text()
                shown = shown_pixels(page, tiles.nth(t).locator("[role=img]"))
                assert shown.std() > 10, f"{rel}: neighbour panel tile {caption!r} is blank"
                if site == "built":
                    named = int(re.search(r"#(\d+)", caption).group(1))
                    assert likeness(shown, fashion_images()[named]) > 0.9, f"{rel}: panel tile {caption!r} shows " \
                                                                           "another image"
            page.evaluate("() => document.querySelectorAll('.nn-panel').forEach(p => { p.hidden = true; })")
    context.close()
    assert not errors, f"errors while using the explorer: {errors}"


@pytest.mark.parametrize("site", SITES)
def test_screenshots_fit_desktop_and_phone(browser, site_dirs, tmp_path, site):
    """Screenshots of the index and a filter page at desktop and phone width (kept in REPORTGEN_SCREENS if set,
    to look at); no page is wider than the screen."""
    folder = site_dirs[site]
    out = Path(os.environ.get("REPORTGEN_SCREENS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    wide = []
    for width, height in [(1280, 900), (390, 844)]:
        context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        page = context.new_page()
        for rel in ["index.html", first_filter_page(folder)]:
            page.goto(folder.as_uri() + "/" + rel, wait_until="load")
            page.wait_for_function("() => window.Bokeh === undefined || Bokeh.documents.every(d => d.is_idle)")
            name = f"{site}-{rel.replace('/', '_').removesuffix('.html')}-{width}.png"
            assert len(page.screenshot(path=out / name, full_page=True)) > 10_000
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            if overflow > 0:
                wide.append(f"{rel} at {width} px is {overflow} px wider than the screen")
        context.close()
    assert not wide, "\n".join(wide)


@pytest.mark.browser
@pytest.mark.parametrize("single", [False, True])
def test_jump_to_filter_box(browser, built, single):
    """The header's jump box opens a filter's page (or section), and says so when the filter is not in the report."""
    site, single_file = built
    report = json.loads((site / "report.json").read_text())
    layer = report["layers"][-1]
    wanted = layer["filters"][-1]["index"]
    page = browser.new_page()
    page.goto((single_file if single else site / "index.html").as_uri())
    page.select_option("#jump-layer", layer["slug"])
    page.fill("#jump-filter", str(layer["channels"] + 5))
    page.click("form.jump button")
    assert "is not in this report" in page.inner_text("form.jump output")
    page.fill("#jump-filter", str(wanted))
    page.click("form.jump button")
    page.wait_for_load_state()
    if single:
        assert page.evaluate("location.hash") == f"#p-layers-{layer['slug']}-f{wanted}"
        assert page.is_visible(f"#p-layers-{layer['slug']}-f{wanted}")
    else:
        assert page.url.endswith(f"/layers/{layer['slug']}/f{wanted}.html")
        assert f"filter {wanted}" in page.inner_text("h1")
    page.close()
