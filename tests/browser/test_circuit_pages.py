"""Circuit sections of modern blocks in a browser: the filter pages of the hand-built blocks model (a residual
sum, a projection skip, a conv reading a concatenation, a depthwise filter, a grouped one) fit a laptop and a
phone screen, show their terms and kernels, and pass axe-core."""

import pytest

from reportgen.pipeline import build
from reportgen.spec import load_spec
from tests.analyses.test_circuits_blocks import SPEC
from tests.browser.crawler import AXE_RUN_JS

PAGES = {"layers/res/f0.html": ["skip from stem", "Share"],
         "layers/proj/f1.html": ["skip through proj.down.0"],
         "layers/mix/f0.html": ["by branch of the concatenation"],
         "layers/dw/f5.html": ["Through to the unit that makes its one input channel", "dw.pw"],
         "layers/grouped/f6.html": ["group 1 of 2, input channels 8–15"]}


@pytest.fixture(scope="module")
def blocks_site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blocks")
    (folder / "spec.yaml").write_text(SPEC)
    return build(load_spec(folder / "spec.yaml"), out=folder / "site", progress=False, log=lambda *_: None)


@pytest.mark.browser
@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
def test_circuit_sections_fit_the_screen_and_read(browser, blocks_site, axe_js, width, height):
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    page = context.new_page()
    errors, problems = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    for rel, phrases in PAGES.items():
        page.goto((blocks_site / rel).as_uri(), wait_until="load")
        section = page.locator("section[aria-labelledby='circuit-h']")
        text = section.inner_text()
        problems += [f"{rel}: {p!r} not shown" for p in phrases if p not in text]
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 0:
            problems.append(f"{rel} at {width} px is {overflow} px wider than the screen")
        # every kernel heatmap and tile image is drawn (a broken image has no natural width)
        broken = page.evaluate("() => [...document.querySelectorAll('section img')]"
                               ".filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        problems += [f"{rel}: image {src} did not load" for src in broken]
        page.add_script_tag(path=str(axe_js))
        problems += [f"{rel}: {v['impact']} {v['id']} on {v['count']} element(s), e.g. {v['target']}"
                     for v in page.evaluate(AXE_RUN_JS)]
    context.close()
    assert not errors and not problems, "\n".join(errors + problems)
