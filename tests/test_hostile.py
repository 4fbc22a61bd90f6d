"""Hostile and odd input: names that look like markup or paths, odd images, one class, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EVIL = '<script>alert("x")</script> ü ../'


def write_images(root: Path):
    rng = np.random.default_rng(0)
    classes = {EVIL.replace("/", "∕"): 6, "plain cat": 5}       # '/' cannot be in a folder name
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f'img "{i}" <b>.png')
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(root / "plain cat" / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(root / "plain cat" / "deep16.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).convert("CMYK").save(root / "plain cat" / "cmyk.jpg")
    (root / "plain cat" / "not-an-image.png").write_bytes(b"hello")
    (root / "plain cat" / "truncated.png").write_bytes((root / "plain cat" / "rgba.png").read_bytes()[:100])


SPEC = """
title: '<img src=x onerror=alert(1)>'
model: {factory: rgbnet:build, channels: 3, input_size: 32, classes: ['<b>zero</b>', one, two, three, four, five, six, seven, eight, nine]}
dataset: {format: imagefolder, root: images, samples: 3, labels: folder}   # names ≠ folders: trusted
layers:
  - {name: block1_conv1, filters: all, embedding: pca}
feature_vis: {steps: 4}
attribution: {images: 2}
"""


def page_text(html: str) -> str:
    """The text a browser shows (entities decoded, scripts and styles left out), one node per line."""
    class Text(HTMLParser):
        skip, parts = 0, []

        def handle_starttag(self, tag, attrs):
            self.skip += tag in ("script", "style")

        def handle_endtag(self, tag):
            self.skip -= tag in ("script", "style")

        def handle_data(self, data):
            if not self.skip:
                self.parts.append(data.strip())
    parser = Text()
    parser.parts = []
    parser.feed(html)
    return "\n".join(parser.parts)


@pytest.mark.slow
def test_markup_and_paths_in_names_are_text(tmp_path):
    write_images(tmp_path / "images")
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "rgbnet.py").write_text("from tests.helpers.tiny import TinyCNN\n\ndef build():\n    return TinyCNN(3)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "reportgen", "build", "-q", str(tmp_path / "spec.yaml")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "2 unreadable images skipped" in r.stderr
    site = tmp_path / "site"
    files = [p.relative_to(site).as_posix() for p in site.rglob("*")]
    assert all(".." not in f and "<" not in f and '"' not in f and " " not in f for f in files)
    for page in site.rglob("*.html"):
        html = page.read_text()
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>zero</b>" not in html
    index = (site / "index.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in index
    report = json.loads((site / "report.json").read_text())
    evil = EVIL.replace("/", "∕")
    assert report["dataset"]["classes"][0] == evil
    assert report["dataset"]["used"] == 16 and report["dataset"]["skipped_count"] == 2

    # shown, escaped: the page source holds the entities and a browser reads the name back as plain text
    shown = [("index.html", s["class"]) for s in report["samples"]] + [("index.html", "<b>zero</b>")]
    shown += [(f["page"], evil) for layer in report["layers"] for f in layer["filters"]]   # its top classes
    assert ("index.html", evil) in shown and len(shown) > 4
    for page, name in shown:
        html = (site / page).read_text()
        assert name in page_text(html), (page, name)
        assert escape(name) in html.replace("&#34;", "&quot;").replace("&#39;", "&#x27;"), (page, name)


def test_ctrl_c_stops_cleanly(tmp_path):
    from tests.helpers.tiny import FASHION_DIR
    (tmp_path / "spec.yaml").write_text(
        f"model: {{factory: tests.helpers.tiny:tiny_cnn, mean: [0.5], std: [0.25], input_size: 28}}\n"
        f"dataset: {{format: fashion-mnist, root: {FASHION_DIR}, batch_size: 8}}\n"
        "layers: [{name: block1_conv1}]\n"
        "feature_vis: {steps: 10000}\n")   # work left whenever the signal comes: the pass alone takes seconds
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1")   # a hang shows its stack on SIGABRT
    proc = subprocess.Popen([sys.executable, "-m", "reportgen", "build", str(tmp_path / "spec.yaml")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    err = ""
    while time.time() < deadline:                       # wait until the dataset pass is running
        time.sleep(0.5)
        if proc.poll() is not None:
            break
        if (tmp_path / ".reportgen-cache").exists() or time.time() > deadline - 100:
            break
    time.sleep(3)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=30)
        pytest.fail("still running 30 s after Ctrl-C; its stack:\n" + err[-4000:])
    assert proc.returncode == 130
    assert time.time() - sent < 5
    assert err.strip().splitlines()[-1].split("\r")[-1].strip() == "interrupted; the previous site is unchanged"
    assert not (tmp_path / "site").exists()
