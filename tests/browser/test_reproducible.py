"""Building the same spec twice, with nothing cached in between, gives byte-identical files (but for the
wall-clock timings: timings.json and build.html's timings section)."""

import re

import pytest

from tests.browser.conftest import build_site

pytestmark = pytest.mark.slow   # a second whole build
TIMINGS = re.compile(rb'<section id="timings">.*?</section>', re.S)


def content(path) -> bytes:
    return TIMINGS.sub(b"", path.read_bytes())


def test_two_builds_are_byte_identical(built, tmp_path):
    first_site, first_single = built
    # the same layout (folder/spec.yaml, folder/site) in a new folder: its own, empty cache beside the spec
    second_site, second_single = build_site(tmp_path / "b")
    files = lambda root: {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
                          if p.is_file() and p.name != "timings.json"}
    first, second = files(first_site), files(second_site)
    assert sorted(first) == sorted(second)
    differ = [rel for rel in first if content(first[rel]) != content(second[rel])]
    assert not differ, f"{len(differ)} of {len(first)} files differ between two builds: {differ[:10]}"
    assert content(first_single) == content(second_single), "the --single-file bundles differ"
