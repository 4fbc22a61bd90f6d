"""`--single-file`: one .html with every image, plot and page inlined; links between its sections work and no
request leaves the file."""

import base64
import gzip
import re

import pytest
from playwright.sync_api import Error as PlaywrightError

from tests.browser.crawler import COLLECT_JS, PLOTS_DONE_JS
from tests.browser.explorer import hover_tooltip, locate_point, shown_pixels, tooltip_index
from tests.browser.test_site import listing
from reportgen.single_file import bundle, page_id
from reportgen.size_budget import FULL, LADDER

pytestmark = pytest.mark.browser


# the single file as --single-file writes it, and the smallest rung of --max-size (packed, pictures re-encoded)
VARIANTS = {"full": FULL, "reduced": LADDER[-1]}


@pytest.fixture(scope="module", params=list(VARIANTS))
def opened(browser, built, request, tmp_path_factory):
    """The single file open in Chromium, every request other than the file itself recorded and aborted, with
    its console errors; yields (page, requests, errors, sections, file) and closes it."""
    site, single = built
    if request.param != "full":
        single = tmp_path_factory.mktemp("reduced") / "site.html"
        bundle(site, single, VARIANTS[request.param])
    url = single.as_uri()
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    requests, errors = [], []

    def only_the_file(route):   # file:// requests are routed too
        if route.request.url == url or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            requests.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_file)
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda exc: errors.append(f"uncaught {exc}"))
    page.goto(url, wait_until="load")
    page.wait_for_function("() => document.documentElement.dataset.rgReady === '1'")   # a packed file unpacks
    sections = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    yield page, requests, errors, sections, single
    context.close()


def markup(single) -> str:
    """The file's markup, a packed file's payload unpacked (what the browser inserts)."""
    text = single.read_text(encoding="utf-8")
    packed = re.search(r'<script id="rg-packed" type="application/octet-stream">([^<]*)</script>', text)
    return text if not packed else text + gzip.decompress(base64.b64decode(packed.group(1))).decode("utf-8")


def show(page, section: str):
    """Go to #section, as a link would, and wait for the router to show it."""
    page.evaluate("(h) => { location.hash = h; }", section)
    page.wait_for_function("(id) => { const s = document.getElementById(id); return s !== null && !s.hidden; }",
                           arg=section)


def test_every_page_is_a_section_and_shows_alone(opened):
    page, requests, errors, sections, single = opened
    ids = page.evaluate("() => [...document.querySelectorAll('section.page')].map(s => s.id)")
    assert sorted(ids) == sorted(page_id(rel) for rel in sections)
    for rel in sections:
        show(page, page_id(rel))
        visible = page.evaluate("() => [...document.querySelectorAll('section.page')].filter(s => !s.hidden)"
                                ".map(s => s.id)")
        assert visible == [page_id(rel)], f"showing {rel} shows {visible}"
        assert page.title() == page.evaluate("(id) => document.getElementById(id).dataset.title", page_id(rel))


def test_everything_is_inlined_and_no_request_leaves_the_file(opened):
    page, requests, errors, sections, single = opened
    # the markup: no attribute and no CSS url() refers to anything but a data: URI or a fragment of the file
    # (script bodies left out: inlined BokehJS mentions a CDN for math text it never renders here; what
    # scripts fetch is caught below, as requests)
    text = re.sub(r"(<script\b[^>]*>).*?(</script>)", r"\1\2", markup(single), flags=re.S)
    refs = re.findall(r'\b(?:src|href)="(?!data:|#)([^"]*)"', text)
    urls = [u for u in re.findall(r"url\(\s*['\"]?(?:&quot;)?([^'\")&]+)", text) if not u.startswith("data:")]
    assert not refs, f"references to other files: {refs[:10]}"
    assert not urls, f"CSS url() of other files: {urls[:10]}"
    for rel in sections:   # every image of every section loads, which the browser can only do from the file
        show(page, page_id(rel))
        info = page.evaluate(COLLECT_JS)
        broken = [i["src"][:80] for i in info["images"] if not i["ok"]]
        assert not broken, f"{rel}: images that do not load: {broken}"
        assert all(i["src"].startswith("data:") for i in info["images"])
    assert not requests, "requests that leave the file:\n" + listing(requests)


def test_links_between_sections_work(opened):
    page, requests, errors, sections, single = opened
    anchors = page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))")
    outside = [a[:80] for a in anchors if not a.startswith(("#", "data:"))]   # data: = an inlined download
    missing = sorted({a for a in anchors if a.startswith("#")
                      and not page.evaluate("(id) => document.getElementById(id) !== null", a[1:])})
    assert not outside, f"links out of the file: {outside[:10]}"
    assert not missing, f"links to no element of the file: {missing[:10]}"
    # clicking through: overview → a layer (header nav) → one of its filters → back to the overview (breadcrumb)
    show(page, page_id("index.html"))
    layer = next(rel for rel in sections if rel.endswith("/index.html"))
    page.locator(f'header a[href="#{page_id(layer)}"]').click()
    page.wait_for_function("(id) => !document.getElementById(id).hidden", arg=page_id(layer))
    first_filter = page.locator(f"#{page_id(layer)} .filter-grid a").first
    target = first_filter.get_attribute("href")[1:]
    first_filter.click()
    page.wait_for_function("(id) => !document.getElementById(id).hidden", arg=target)
    page.locator(f"#{target} .crumbs a").first.click()
    page.wait_for_function("(id) => !document.getElementById(id).hidden", arg=page_id("index.html"))
    assert not requests, "requests that leave the file:\n" + listing(requests)


def test_plots_render_and_hover_shows_a_thumbnail(opened):
    page, requests, errors, sections, single = opened
    with_plots = [rel for rel in sections
                  if page.evaluate("(id) => document.getElementById(id).querySelector('[data-root-id]') !== null",
                                   page_id(rel))]
    assert with_plots, "no section has an explorer"
    for rel in with_plots:
        show(page, page_id(rel))
        failed = [e for e in errors if "Error rendering Bokeh" in e]
        try:
            page.wait_for_function(PLOTS_DONE_JS, timeout=1 if failed else 15_000)
        except PlaywrightError:
            pytest.fail(f"{rel}: the Bokeh plots did not render; errors: {errors[:5]}")
        at = locate_point(page, 0)
        assert at["count"] >= 1 and "x" in at, f"{rel}: no plot with points is shown; errors: {errors[:5]}"
        tip = hover_tooltip(page, at["x"], at["y"])
        shown = shown_pixels(page, tip.locator(".rg-thumb"), border=1)
        assert shown.std() > 10, f"{rel}: the thumbnail of image {tooltip_index(tip)} is blank; requests that " \
                                 f"left the file: {requests[:3]}"
    assert not requests, "requests that leave the file:\n" + listing(requests)
    assert not errors, "console errors:\n" + listing(errors)
