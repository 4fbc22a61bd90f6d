"""The command line as users run it (`python -m reportgen ...` in a subprocess): `layers`, `clean`, and
`build --single-file`."""

import hashlib
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.helpers.tiny import FASHION_DIR

REPO = Path(__file__).resolve().parents[1]
SPEC = f"""
title: CLI test
model: {{factory: tests.helpers.tiny:tiny_cnn, mean: [0.5], std: [0.25], input_size: 28}}
dataset: {{format: fashion-mnist, root: {FASHION_DIR}, limit: 100, samples: 2}}
layers:
  - {{name: block1_conv1, filters: [0, 1], embedding: none}}
  - {{name: features.c3, filters: [2]}}
feature_vis: {{enabled: false}}
attribution: {{enabled: false}}
"""


def reportgen(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "reportgen", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def test_layers_lists_every_module_with_keras_aliases(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    r = reportgen("layers", "spec.yaml", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    header, *lines = r.stdout.splitlines()
    starts = [header.index(h) for h in ("path", "alias", "type", "output", "params")]
    assert header.split() == ["path", "alias", "type", "output", "params"] and starts[0] == 0
    rows = [tuple(line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])) for line in lines]
    # TinyCNN: conv 1→4, conv 4→6, pool, conv 6→8 (3×3 kernels, padding 1), global pool, linear 8→10
    assert rows == [
        ("features", "", "Sequential", "8×14×14", "0"),
        ("features.c1", "", "Conv2d", "4×28×28", str(1 * 4 * 9 + 4)),
        ("features.r1", "block1_conv1", "ReLU", "4×28×28", "0"),
        ("features.c2", "", "Conv2d", "6×28×28", str(4 * 6 * 9 + 6)),
        ("features.r2", "block1_conv2", "ReLU", "6×28×28", "0"),
        ("features.p1", "block1_pool", "MaxPool2d", "6×14×14", "0"),
        ("features.c3", "", "Conv2d", "8×14×14", str(6 * 8 * 9 + 8)),
        ("features.r3", "block2_conv1", "ReLU", "8×14×14", "0"),
        ("pool", "", "AdaptiveAvgPool2d", "8×1×1", "0"),
        ("fc", "", "Linear", "10", str(8 * 10 + 10)),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]          # lists; writes nothing


def test_layers_with_a_bad_spec_is_one_error_line(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC.replace("tiny_cnn", "no_such_net"))
    r = reportgen("layers", "spec.yaml", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "error: model.factory: 'tests.helpers.tiny' has no callable 'no_such_net'\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A folder with spec.yaml, built by `reportgen build spec.yaml -q --single-file`: site/, site.html, cache."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "spec.yaml").write_text(SPEC)
    r = reportgen("build", "spec.yaml", "-q", "--single-file", cwd=folder)     # the README's order: SPEC first
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(folder / "site" / "index.html"), str(folder / "site.html")]
    assert r.stderr.splitlines()[-1].startswith(f"wrote {folder / 'site.html'} (")
    return folder


class Refs(HTMLParser):
    """Every src/href attribute of a page, its (first) <title>, and the titles of its <section class="page">s (the
    pages of a single-file report)."""

    def __init__(self, html: str):
        super().__init__()
        self.refs, self.sections, self.title, self._in_title = [], [], "", False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.refs += [(tag, k, v) for k, v in attrs.items() if k in ("src", "href") and v is not None]
        if tag == "section" and "page" in (attrs.get("class") or "").split():
            self.sections.append(attrs.get("data-title"))
        self._in_title = tag == "title" and not self.title    # the page's, not an SVG tooltip's

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def test_single_file_holds_every_page_and_links_nothing_outside(built):
    bundle = Refs((built / "site.html").read_text(encoding="utf-8"))
    pages = [Refs(p.read_text(encoding="utf-8")) for p in (built / "site").rglob("*.html")]
    assert len(pages) >= 6 and sorted(bundle.sections) == sorted(p.title for p in pages)   # one section a page
    assert [(tag, attr, value[:60]) for tag, attr, value in bundle.refs if not value.startswith(("data:", "#"))] == []
    site_refs = [v for p in pages for _, _, v in p.refs]
    assert any(v.endswith(".png") for v in site_refs) and any(v.endswith(".html") for v in site_refs)
    assert any(v.startswith("#") for _, _, v in bundle.refs)                      # page links became anchors


def test_clean_removes_the_cache_and_nothing_else(built):
    cache = built / ".reportgen-cache"
    assert cache.is_dir() and any(p.is_file() for p in cache.rglob("*"))
    site_before, bundle_before = tree(built / "site"), (built / "site.html").read_bytes()
    r = reportgen("clean", "spec.yaml", cwd=built)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", f"removed {cache}\n")
    assert not cache.exists()
    assert tree(built / "site") == site_before and (built / "site.html").read_bytes() == bundle_before
    assert sorted(p.name for p in built.iterdir()) == ["site", "site.html", "spec.yaml"]
    again = reportgen("clean", "spec.yaml", cwd=built)
    assert (again.returncode, again.stderr) == (0, "no cache to remove\n")
