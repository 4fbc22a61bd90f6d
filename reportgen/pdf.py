"""`reportgen pdf`: a built site as a paginated PDF, printed by headless Chromium (`--print-to-pdf`).

Why Chromium and not WeasyPrint: see the README ("PDF for submission"). Chromium prints what the browser
shows with the site's own stylesheet (its `@media print` rules, page numbers from `@page` margin boxes);
it is found as $REPORTGEN_CHROMIUM or on PATH, never downloaded.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import RenderError
from .printable import Section, document
from .size_budget import FULL, Rung

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 300


def find_chromium() -> str:
    """The Chromium binary: $REPORTGEN_CHROMIUM, else the first of BROWSERS on PATH."""
    given = os.environ.get("REPORTGEN_CHROMIUM")
    if given:
        if not (shutil.which(given) or Path(given).is_file()):
            raise RenderError(f"REPORTGEN_CHROMIUM={given!r} is not an executable file")
        return shutil.which(given) or given
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    raise RenderError("reportgen pdf needs Chromium or Google Chrome: install it (Debian/Ubuntu: "
                      "'apt-get install chromium') or set REPORTGEN_CHROMIUM to its path")


def print_html(html: Path, pdf: Path) -> None:
    """Print the HTML file `html` to `pdf` with headless Chromium (A4 from the stylesheet's @page)."""
    args = [find_chromium(), "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-pdf-header-footer", "--allow-file-access-from-files",
            f"--print-to-pdf={pdf}", html.as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(1, "--no-sandbox")   # Chromium refuses to start as root (containers, CI) with its sandbox
    with tempfile.TemporaryDirectory(prefix="reportgen-chromium-") as profile:
        args.insert(1, f"--user-data-dir={profile}")   # a fresh profile: no lock held by a running browser
        try:
            run = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RenderError(f"Chromium did not finish printing within {TIMEOUT_S} s") from None
    if run.returncode != 0 or not pdf.is_file() or pdf.stat().st_size == 0:
        last = (run.stderr.strip().splitlines() or ["no message"])[-1]
        raise RenderError(f"Chromium could not print the PDF (exit {run.returncode}): {last}")


def pdf_bytes(site: Path, selection: dict[str, list[int]], rung: Rung = FULL) -> tuple[bytes, list[Section]]:
    """(the PDF, its sections in order) of the built `site`: `selection` {layer: filters}, pictures as `rung`
    says (size_budget.py)."""
    with tempfile.TemporaryDirectory(prefix="reportgen-pdf-") as tmp:
        tmp = Path(tmp)
        html, found = document(site, selection, tmp, rung.quality)
        (tmp / "print.html").write_text(html, encoding="utf-8")
        print_html(tmp / "print.html", tmp / "out.pdf")
        return (tmp / "out.pdf").read_bytes(), found
