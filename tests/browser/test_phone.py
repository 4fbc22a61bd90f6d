"""Phones: every page of a site, and every section of the single file, at 390 × 844 px (a current phone) has
no horizontal page scroll: wide tables, heatmaps and plots scroll inside their own box."""

import pytest

from tests.browser.conftest import DEMO_SITE, SITES, demo_sample
from tests.browser.crawler import PLOTS_DONE_JS
from tests.browser.test_single_file import show
from tests.browser.test_site import listing
from reportgen.single_file import page_id

pytestmark = pytest.mark.browser
PHONE = {"width": 390, "height": 844}
WIDTH_JS = "() => document.documentElement.scrollWidth"
# the widest element that sticks out past the viewport: names the culprit when a page overflows
CULPRIT_JS = """(w) => { let worst = null;
  for (const e of document.querySelectorAll('body *')) { const r = e.getBoundingClientRect();
    if (r.right > w + 1 && (!worst || r.right > worst.r)) worst = {r: r.right, what: e.tagName.toLowerCase() + (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ').join('.') : '')}; }
  return worst ? `${worst.what} reaches ${Math.round(worst.r)} px` : ''; }"""


def overflow(page) -> str:
    """'' when the page does not scroll sideways, else its scroll width and the widest culprit."""
    width = page.evaluate(WIDTH_JS)
    return "" if width <= PHONE["width"] else f"scrollWidth {width}: {page.evaluate(CULPRIT_JS, PHONE['width'])}"


@pytest.mark.parametrize("site", SITES)
def test_no_page_scrolls_sideways_on_a_phone(browser, site_dirs, site):
    folder = site_dirs[site]
    keep = demo_sample(DEMO_SITE) if site == "demo" else (lambda rel: True)
    pages = sorted(rel for rel in (p.relative_to(folder).as_posix() for p in folder.rglob("*.html")) if keep(rel))
    context = browser.new_context(viewport=PHONE, device_scale_factor=1, is_mobile=True)
    page = context.new_page()
    problems = []
    for rel in pages:
        page.goto((folder / rel).as_uri(), wait_until="load")
        page.wait_for_function(PLOTS_DONE_JS, timeout=15_000)   # Bokeh sizes its plots once rendered
        if found := overflow(page):
            problems.append(f"{rel}: {found}")
    context.close()
    assert len(pages) > 3
    assert not problems, "pages wider than a phone:\n" + listing(problems)


def test_no_section_of_the_single_file_scrolls_sideways_on_a_phone(browser, built):
    site, single = built
    context = browser.new_context(viewport=PHONE, device_scale_factor=1, is_mobile=True)
    page = context.new_page()
    page.goto(single.as_uri(), wait_until="load")
    problems = []
    for rel in sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")):
        show(page, page_id(rel))
        page.wait_for_function(PLOTS_DONE_JS, timeout=15_000)
        if found := overflow(page):
            problems.append(f"{rel}: {found}")
    context.close()
    assert not problems, "sections wider than a phone:\n" + listing(problems)
