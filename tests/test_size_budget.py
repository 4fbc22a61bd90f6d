"""`--max-size`: sizes as users write them, the ladder's first fitting rung, the error when none fits, and the
committed demo's single file brought under 5 MB (its browser checks: tests/browser/test_single_file.py)."""

import base64
import gzip
import re
from pathlib import Path

import pytest

from reportgen.cli import main
from reportgen.errors import ReportgenError
from reportgen.single_file import bundle_bytes
from reportgen.size_budget import FULL, LADDER, Rung, fit, parse_size

DEMO = Path(__file__).resolve().parents[1] / "site"


@pytest.mark.parametrize("text, size", [("5MB", 5_000_000), ("800KB", 800_000), ("1.5 MiB", 1_572_864),
                                        ("2000000", 2_000_000), ("12b", 12), ("3mb", 3_000_000)])
def test_sizes_read_as_upload_limits_are_written(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "5XB", "-1MB", "0MB", "MB", "5 M B"])
def test_what_is_not_a_size_is_refused(text):
    with pytest.raises(ValueError, match=re.escape(f"{text!r} is not a size such as 5MB or 800KB")):
        parse_size(text)


def test_a_bad_max_size_is_a_usage_error(capsys):
    assert main_exit(["build", "x.yaml", "--single-file", "--max-size", "5XB"]) == 2
    assert "argument --max-size: '5XB' is not a size such as 5MB or 800KB" in capsys.readouterr().err


def main_exit(argv) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_fit_takes_the_first_rung_that_fits_and_refuses_when_none_does():
    sizes = {rung: 1000 - 100 * i for i, rung in enumerate(LADDER)}   # each rung 100 bytes smaller
    tried = []

    def make(rung: Rung) -> bytes:
        tried.append(rung)
        return b"x" * sizes[rung]
    data, rung = fit(make, 750, "the file")
    assert (len(data), rung, tried) == (700, LADDER[3], list(LADDER[:4]))
    smallest = sizes[LADDER[-1]]
    with pytest.raises(ReportgenError) as exc:
        fit(make, smallest - 1, "the file")
    assert str(exc.value) == (f"the file cannot fit in {(smallest - 1) / 1e6:.2f} MB: even with "
                              f"{LADDER[-1].describe()} it is {smallest / 1e6:.2f} MB (nothing written); "
                              "choose fewer layers or filters")


@pytest.mark.slow
def test_the_demo_single_file_fits_in_5_mb_with_its_content():
    full = bundle_bytes(DEMO, FULL)
    data, rung = fit(lambda r: bundle_bytes(DEMO, r), 5_000_000, "the single file")
    assert len(full) > 5_000_000 >= len(data) and rung.packed
    text = data.decode("utf-8")
    inner = gzip.decompress(base64.b64decode(re.search(r'id="rg-packed"[^>]*>([^<]*)<', text).group(1))).decode()
    # every page is still a section of the file, each picture in the table it is shown from
    pages = sorted(p.relative_to(DEMO).as_posix() for p in DEMO.rglob("*.html"))
    assert inner.count('<section class="page"') == len(pages)
    keys = set(re.findall(r'data-rg-asset="(a\d+)"', inner))
    assert keys and keys <= set(re.findall(r'"(a\d+)":"data:image/', text))
    assert f"Reduced to fit: {rung.describe()}" in inner


def test_max_size_without_single_file_is_refused_before_building(capsys):
    assert main(["build", "no-such-spec.yaml", "--max-size", "5MB"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-size: sizes the --single-file bundle: add --single-file"


@pytest.mark.slow
def test_the_last_rung_halves_the_sprite_and_keeps_one_top_image_per_checkpoint():
    import io

    from PIL import Image
    rung = LADDER[-1]
    assert rung.sprite_scale == 0.5 and rung.thumbs == 1
    text = bundle_bytes(DEMO, rung).decode("utf-8")
    sheet = re.search(r"--rg-sprite-0:url\(data:image/webp;base64,([^)]+)\)", text).group(1)
    with Image.open(io.BytesIO(base64.b64decode(sheet))) as small, Image.open(DEMO / "img" / "sprite-0.webp") as full:
        assert small.size == (round(full.width / 2), round(full.height / 2))
    inner = gzip.decompress(base64.b64decode(re.search(r'id="rg-packed"[^>]*>([^<]*)<', text).group(1))).decode()
    strips = re.findall(r'<div class="evo-tops">(.*?)</div>', inner, re.S)
    site_strip = re.search(r'<div class="evo-tops">(.*?)</div>',
                           (DEMO / "layers" / "block1_conv2" / "f0.html").read_text(encoding="utf-8"), re.S).group(1)
    assert site_strip.count("<img") > 1          # the site shows several; the reduced file the first only
    assert strips and all(s.count("<img") == 1 for s in strips)
