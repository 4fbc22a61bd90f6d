"""Writing the site safely: into a temporary directory beside the output, swapped in when complete.

A failure (or a kill) at any point leaves the previous site as it was. The output directory
carries a marker file; a non-empty directory without it is never replaced, and an output
that is or contains the spec, the dataset or the model file is refused.
"""

import os
import secrets
import shutil
import tempfile
from pathlib import Path

from .errors import SpecError
from .render.site import SITE_MARKER, SiteWriter

TMP_PREFIX = ".reportgen-tmp-"


def check_output(out: Path, protected: list[Path]) -> None:
    """Refuse outputs that would destroy the user's files (SpecError on key `output`)."""
    out = out.resolve()
    for p in protected:
        p = Path(p).resolve()
        if p == out or out in p.parents:
            raise SpecError("output", f"{str(out)!r} contains {str(p)!r}; choose an output directory of its own "
                                      "(e.g. 'site')")
    if out.exists() and not out.is_dir():
        raise SpecError("output", f"{str(out)!r} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).is_file():
        raise SpecError("output", f"{str(out)!r} is not empty and is not a reportgen site; "
                                  "choose another directory or empty it")


def write_site(out: Path, render, protected: list[Path]) -> None:
    """Call `render(SiteWriter(tmp))`, then replace `out` with `tmp` (old site kept until the swap)."""
    out = Path(out).absolute()
    check_output(out, protected)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out.parent)
    tmp = _make_temp_dir(out.parent, TMP_PREFIX + f"{out.name}-")
    try:
        render(SiteWriter(tmp))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + f"{out.name}-old-", dir=out.parent))
            os.replace(out, old / "site")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new directory with the mode any program's gets (0777 less the umask): it becomes the site, and
    mkdtemp's 0700 would make a published site answer 403."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir(0o777)
            return path
        except FileExistsError:
            continue


def _remove_stale_temps(parent: Path) -> None:
    """Temp dirs left by an interrupted build are removed (two builds into one output at once are unsupported)."""
    for p in parent.glob(TMP_PREFIX + "*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
