"""`reportgen pdf`: the committed demo site printed by headless Chromium, read back with poppler-utils
(pdfinfo, pdftoppm, pdftotext): every page has ink, the text is selectable, each chosen section opens a
new page in order, pages are numbered; bad --filters and impossible --max-size write nothing (exit 2)."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reportgen.cli import main

pytestmark = pytest.mark.browser
DEMO = Path(__file__).resolve().parents[1] / "site"
FILTERS = "block3_conv1:0,block2_conv2:3-4"
POPPLER = "poppler-utils (Debian: apt-get install poppler-utils)"


@pytest.fixture(scope="module")
def report() -> dict:
    if not (DEMO / "report.json").is_file():
        pytest.fail(f"the committed demo site {DEMO} is missing")
    if not shutil.which("pdftotext"):
        pytest.fail(f"pdftotext is missing: install {POPPLER}")
    return json.loads((DEMO / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def printed(report, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pdf") / "report.pdf"
    assert main(["pdf", str(DEMO), "--filters", FILTERS, "--out", str(out), "-q"]) == 0
    return out


def page_count(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    return int(next(line.split()[1] for line in info.splitlines() if line.startswith("Pages:")))


def page_text(pdf: Path, n: int) -> str:
    return subprocess.run(["pdftotext", "-layout", "-f", str(n), "-l", str(n), str(pdf), "-"],
                          capture_output=True, text=True, check=True).stdout


def expected_titles(report: dict) -> list[str]:
    """The <h1> of each page the PDF holds for FILTERS, in order, written out from the report's data."""
    by_layer = {"block2_conv2": [3, 4], "block3_conv1": [0]}
    titles = [report["title"]]
    for layer in report["layers"]:
        if layer["name"] in by_layer:
            titles += [f"Layer {layer['name']}"] + [f"{layer['name']} · filter {f}" for f in by_layer[layer["name"]]]
    return titles + ["Attribution: which pixels the decision rests on"]


def test_each_chosen_section_opens_a_page_in_order(report, printed):
    n = page_count(printed)
    firsts = [next((line.strip() for line in page_text(printed, i).splitlines() if line.strip()), "")
              for i in range(1, n + 1)]
    titles = expected_titles(report)
    assert [f for f in firsts if f in titles] == titles, f"first lines of the pages: {firsts}"
    assert n >= len(titles)


def test_pages_are_numbered_and_none_is_blank(printed, tmp_path):
    n = page_count(printed)
    for i in (1, n):
        assert f"{i} / {n}" in page_text(printed, i)
    subprocess.run(["pdftoppm", "-r", "20", "-gray", "-png", str(printed), str(tmp_path / "p")], check=True)
    pages = sorted(tmp_path.glob("p-*.png"))
    assert len(pages) == n
    for p in pages:
        ink = np.asarray(Image.open(p)) < 200   # darker than paper
        assert ink.mean() > 0.005, f"{p.name} is blank"


def test_each_explorer_becomes_a_picture(report, printed):
    """The layer with an explorer prints its caption over a picture as wide as the scatter drawn for it."""
    n = page_count(printed)
    at = [i for i in range(1, n + 1) if "t-SNE of the pooled features" in page_text(printed, i)]
    assert len(at) == 2, "the overview's and block3_conv1's explorers"   # block2_conv2 has none in the demo
    for i in at:
        listed = subprocess.run(["pdfimages", "-list", "-f", str(i), "-l", str(i), str(printed)],
                                capture_output=True, text=True, check=True).stdout.splitlines()[2:]
        assert any(int(row.split()[3]) >= 600 for row in listed), f"page {i}: no scatter picture in {listed}"


def test_bad_filters_name_the_culprit_and_write_nothing(report, tmp_path, capsys):
    out = tmp_path / "x.pdf"
    for given, message in [("block9:1", "error: --filters: unknown layer 'block9'; layers in this report: "
                                        "block1_conv2, block2_conv2, block3_conv1"),
                           ("block3_conv1:64", "error: --filters: layer 'block3_conv1' has no page for filter 64 "
                                               "in this report (filters shown: 0-63)"),
                           ("block3_conv1:5-2", "error: --filters: 'block3_conv1:5-2': '5-2' is not a filter "
                                                "number or a range FIRST-LAST")]:
        assert main(["pdf", str(DEMO), "--filters", given, "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == message
    assert not out.exists()


def test_max_size_lowers_picture_quality_to_fit_or_writes_nothing(report, printed, tmp_path, capsys):
    full = printed.stat().st_size
    out = tmp_path / "small.pdf"
    limit = int(full * 0.95)   # pictures are a small part of a PDF: lower quality saves ~10 %
    assert main(["pdf", str(DEMO), "--filters", FILTERS, "--out", str(out), "--max-size", f"{limit}B", "-q"]) == 0
    assert out.stat().st_size <= limit
    assert "pictures at quality" in capsys.readouterr().err
    assert main(["pdf", str(DEMO), "--filters", FILTERS, "--out", str(tmp_path / "no.pdf"), "--max-size", "10KB"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the PDF cannot fit in 0.01 MB: even with ") and "nothing written" in err
    assert not (tmp_path / "no.pdf").exists()


def test_without_chromium_the_error_says_how_to_get_it(report, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REPORTGEN_CHROMIUM", str(tmp_path / "no-such-browser"))
    assert main(["pdf", str(DEMO), "--out", str(tmp_path / "x.pdf")]) == 2
    assert capsys.readouterr().err.strip() == f"error: REPORTGEN_CHROMIUM={str(tmp_path / 'no-such-browser')!r} " \
                                              "is not an executable file"
    monkeypatch.delenv("REPORTGEN_CHROMIUM")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["pdf", str(DEMO), "--out", str(tmp_path / "x.pdf")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: reportgen pdf needs Chromium or Google Chrome: install it (Debian/Ubuntu: 'apt-get install "
        "chromium') or set REPORTGEN_CHROMIUM to its path")
    assert not (tmp_path / "x.pdf").exists()
