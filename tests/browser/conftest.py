"""Fixtures of the browser suite: one small site built once per session (plus its --single-file bundle),
headless Chromium launched the way CI runs it, a local server that mimics GitHub Pages under /sub/path/,
and the crawls of each site, done once and shared by the tests that check their findings.

The committed demo report (`site/index.html` at the repo root) is crawled too when it exists: it is what
users see.
"""

import re
import threading
from pathlib import Path

import pytest

from reportgen.pipeline import build
from reportgen.serve import make_server
from reportgen.single_file import bundle
from reportgen.spec import load_spec
from tests.browser.crawler import crawl
from tests.helpers.tiny import FASHION_DIR

REPO = Path(__file__).resolve().parents[2]
DEMO_SITE = REPO / "site"
AXE_PATH = REPO / "node_modules" / "axe-core" / "axe.min.js"
AXE_INSTALL = "npm install --no-save axe-core@4"
CHROMIUM = "/usr/bin/chromium"
# exactly the flags CI uses: no sandbox (containers), nothing that phones home or updates itself
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
BASE = "/sub/path/"
SITES = ["built"] + (["demo"] if (DEMO_SITE / "index.html").is_file() else [])
MODES = ["file", "served"]

# Two layers with a few filters, both embeddings on one; 300 images keep the build well under a minute.
# feature_vis/attribution are sized down so the suite stays fast once the pipeline renders them.
SPEC = f"""
title: Browser test report
seed: 3
model:
  factory: tests.helpers.tiny:tiny_cnn
  mean: [0.5]
  std: [0.25]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 300
  samples: 3
layers:
  - name: block1_conv2
    filters: [0, 3]
    embedding: both
  - name: features.c3
    filters: [1, 2, 5]
feature_vis: {{steps: 8, classes: [0, 1]}}
attribution: {{images: 2}}
"""


def build_site(folder: Path) -> tuple[Path, Path]:
    """Build SPEC into `folder`/site (its cache beside the spec in `folder`) and bundle `folder`/site.html."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(SPEC)
    out = build(load_spec(folder / "spec.yaml"), out=folder / "site", progress=False, log=lambda *_: None)
    bundle(out, folder / "site.html")
    return out, folder / "site.html"


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(site directory, single-file .html) of SPEC, built once per session."""
    return build_site(tmp_path_factory.mktemp("browser") / "a")


@pytest.fixture(scope="session")
def site_dirs(built) -> dict[str, Path]:
    return {"built": built[0], "demo": DEMO_SITE}


@pytest.fixture(scope="session")
def serve():
    """`serve(site_dir) -> root URL` ('http://127.0.0.1:PORT/sub/path/'), one server per site for the session."""
    servers = {}

    def start(site: Path) -> str:
        if site not in servers:
            server = make_server(site, BASE, "127.0.0.1", 0)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers[site] = server
        host, port = servers[site].server_address[:2]
        return f"http://{host}:{port}{BASE}"

    yield start
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def axe_js() -> Path:
    if not AXE_PATH.is_file():
        pytest.fail(f"axe-core is missing ({AXE_PATH}); run `{AXE_INSTALL}` at the repo root")
    return AXE_PATH


FILTER_PAGE = re.compile(r"layers/[^/]+/f(\d+)\.html")


def demo_sample(site: Path):
    """Pages of the demo opened in the browser: all but filter pages, and the first two filter pages of each
    layer. The demo has ~200 filter pages of one template, too many to open within the suite's budget; the
    others are still read from their files (links, ids, images checked on disk)."""
    keep = set()
    for layer in (site / "layers").glob("*"):
        pages = sorted((p for p in layer.glob("f*.html") if FILTER_PAGE.fullmatch(f"layers/{layer.name}/{p.name}")),
                       key=lambda p: int(p.stem[1:]))
        keep.update(f"layers/{layer.name}/{p.name}" for p in pages[:2])
    return lambda rel: FILTER_PAGE.fullmatch(rel) is None or rel in keep


@pytest.fixture(scope="session")
def crawls(browser, serve, site_dirs):
    """`crawls(site, mode)`: the Crawl of site 'built'/'demo' from 'file' or 'served', done once per session.
    axe runs in the served crawl only (the DOM is the same from file://), if installed (the axe tests fail
    with the command to install it otherwise). The served crawl does not route requests, so that Chromium
    asks for /favicon.ico as it does for a visitor; off-site requests are still recorded (and fail tests)."""
    done = {}

    def get(site: str, mode: str):
        if (site, mode) not in done:
            folder = site_dirs[site]
            root = folder.as_uri() + "/" if mode == "file" else serve(folder)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            try:
                sample = demo_sample(folder) if site == "demo" else None
                axe = AXE_PATH if mode == "served" and AXE_PATH.is_file() else None
                done[site, mode] = crawl(context, root, folder, axe_js=axe, visit=sample, route=mode == "file")
            finally:
                context.close()
        return done[site, mode]

    return get
