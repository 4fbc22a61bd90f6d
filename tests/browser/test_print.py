"""The site's print stylesheet: a page printed from the browser (print media, Chromium's PDF) has no header,
search or jump controls, keeps its content, and prints ink on every page."""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser
HIDDEN = ".site-header, .crumbs, form.jump, form.search"


def test_a_layer_page_prints_without_navigation(browser, built, tmp_path):
    site, _ = built
    layer = sorted(site.glob("layers/*/index.html"))[0]
    page = browser.new_page()
    page.goto(layer.as_uri(), wait_until="load")
    shown = "(sel) => [...document.querySelectorAll(sel)].filter(e => getComputedStyle(e).display !== 'none').length"
    assert page.evaluate(shown, HIDDEN) > 0, "the screen shows the navigation"
    page.emulate_media(media="print")
    assert page.evaluate(shown, HIDDEN) == 0, "navigation or controls still shown in print"
    assert page.evaluate(shown, "main h1, .filter-grid") == 2
    pdf = tmp_path / "layer.pdf"
    pdf.write_bytes(page.pdf(prefer_css_page_size=True))
    page.close()
    if not shutil.which("pdftoppm"):
        pytest.fail("pdftoppm is missing: install poppler-utils (Debian: apt-get install poppler-utils)")
    subprocess.run(["pdftoppm", "-r", "20", "-gray", "-png", str(pdf), str(tmp_path / "p")], check=True)
    pages = sorted(tmp_path.glob("p-*.png"))
    assert pages
    for p in pages:
        assert (np.asarray(Image.open(p)) < 200).mean() > 0.005, f"{p.name} is blank"
