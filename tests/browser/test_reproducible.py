"""Building the same spec twice, with nothing cached in between, gives byte-identical files."""

import pytest

from tests.browser.conftest import build_site

pytestmark = pytest.mark.slow   # a second whole build


def test_two_builds_are_byte_identical(built, tmp_path):
    first_site, first_single = built
    # the same layout (folder/spec.yaml, folder/site) in a new folder: its own, empty cache beside the spec
    second_site, second_single = build_site(tmp_path / "b")
    files = lambda root: {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    first, second = files(first_site), files(second_site)
    assert sorted(first) == sorted(second)
    differ = [rel for rel in first if first[rel].read_bytes() != second[rel].read_bytes()]
    assert not differ, f"{len(differ)} of {len(first)} files differ between two builds: {differ[:10]}"
    assert first_single.read_bytes() == second_single.read_bytes(), "the --single-file bundles differ"
