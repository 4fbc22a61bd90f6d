"""Rebuild times of the demo report, measured in one run: cold, warm with nothing changed, warm after a
template edit. Each is a whole `reportgen build SPEC --out TMP` in a fresh process, as a user runs it.

    python benchmarks/rebuild.py [--spec configs/fashion_mnist.yaml] [--cold] [--repeats 1] [--profile OUT.prof]

Cold = `--no-cache` (the spec's cache, `.reportgen-cache` beside it, is neither read nor written). It takes
minutes on a CPU, so it runs only with `--cold`, or when the cache is absent: then the build that warms it is
the cold figure. The template edit appends an HTML comment to `base.html` in a *copy* of the packaged
templates, put first on the Jinja loader's path by a wrapper around `SiteWriter` (the checkout is never
touched, others may be editing it); the marker is checked in the written pages. Goal: warm rebuild after a
template edit <= 5 s with nothing recomputed. `--profile` runs that build under cProfile and prints where
the time goes.
"""

import argparse
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 5.0
MARKER = "<!-- rebuild.py: template edit -->"

# Run in the child process: the packaged templates, overlaid by the edited copy in EDITED_TEMPLATES.
# (SiteWriter builds its Environment from PackageLoader("reportgen.templates"); a loader first on a
# ChoiceLoader wins, and render_site keeps that loader first when it adds analyses' folders.)
LAUNCH = """
import os, sys
from jinja2 import ChoiceLoader, FileSystemLoader
from reportgen.render import site
edited = os.environ.get("EDITED_TEMPLATES")
if edited:
    init = site.SiteWriter.__init__
    def patched(self, root):
        init(self, root)
        self.env.loader = ChoiceLoader([FileSystemLoader(edited), self.env.loader])
    site.SiteWriter.__init__ = patched
from reportgen.cli import main
sys.exit(main(sys.argv[1:]))
"""


def build(spec: Path, out: Path, *flags: str, edited: Path | None = None, profile: Path | None = None) -> dict:
    """One `reportgen build` in a new process → wall seconds, build()'s own seconds, what it computed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("EDITED_TEMPLATES", None)
    if edited:
        env["EDITED_TEMPLATES"] = str(edited)
    launch = out.parent / "launch.py"   # a file, not -c: cProfile runs scripts only
    launch.write_text(LAUNCH)
    runner = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    t0 = time.perf_counter()
    proc = subprocess.run(runner + [str(launch), "build", "-q", str(spec), "--out", str(out), *flags],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = re.search(r"^wrote .* in ([\d.]+) s; computed: (.*)$", proc.stderr, re.M)
    if not m:
        sys.exit(f"no 'wrote ... computed:' line in the build's log:\n{proc.stderr[-3000:]}")
    return {"wall": wall, "inner": float(m.group(1)), "computed": m.group(2)}


def edited_templates(folder: Path) -> Path:
    """A copy of the packaged templates with a harmless comment appended to base.html (on every page)."""
    from importlib import resources
    src = resources.files("reportgen.templates")
    with resources.as_file(src) as path:
        shutil.copytree(path, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    base = folder / "base.html"
    base.write_text(base.read_text(encoding="utf-8") + MARKER + "\n", encoding="utf-8")
    return folder


def line(label: str, r: dict) -> str:
    return f"{label:<30} {r['wall']:7.1f} s wall ({r['inner']:.1f} s in build()); computed: {r['computed']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=ROOT / "configs" / "fashion_mnist.yaml")
    p.add_argument("--cold", action="store_true", help="also time a --no-cache build (minutes)")
    p.add_argument("--repeats", type=int, default=1, help="warm builds of each kind; the best is reported")
    p.add_argument("--profile", type=Path, help="cProfile the template-edit rebuild into this file")
    args = p.parse_args()
    spec = args.spec.resolve()
    cache = spec.parent / ".reportgen-cache"
    with tempfile.TemporaryDirectory(prefix="reportgen-rebuild-") as tmp:
        out = Path(tmp) / "site"   # one output, rebuilt in place, as a user's rebuilds are
        cold = None
        if not (cache.is_dir() and any(cache.iterdir())):
            print(f"no cache at {cache}: warming it; that build is the cold figure")
            cold = build(spec, out)
        elif args.cold:
            cold = build(spec, out, "--no-cache")
        edited = edited_templates(Path(tmp) / "templates")
        warm, templ = [], []
        for _ in range(args.repeats):   # interleaved, best of n
            warm.append(build(spec, out))
            templ.append(build(spec, out, edited=edited))
            marked = MARKER in (out / "index.html").read_text(encoding="utf-8")
        if args.profile:
            build(spec, out, edited=edited, profile=args.profile)
        pages = len(list(out.rglob("*.html")))
        images = sum(1 for f in out.rglob("*") if f.suffix in (".png", ".webp", ".jpg"))
    print(f"{spec.relative_to(ROOT) if spec.is_relative_to(ROOT) else spec}: {pages} pages, {images} images, "
          f"{os.cpu_count()} cores, 1-min load average {os.getloadavg()[0]:.1f} at the end")
    if args.repeats > 1:   # every run, so a recompute in one of them (a changed cache key) or noise shows
        for label, runs in (("warm runs", warm), ("template-edit runs", templ)):
            print(f"{label:<30} " + "; ".join(f"{r['wall']:.1f} s ({r['computed']})" for r in runs))
    warm, templ = min(warm, key=lambda r: r["wall"]), min(templ, key=lambda r: r["wall"])
    if cold:
        print(line("cold" + (" (--no-cache)" if args.cold else " (empty cache)"), cold))
    print(line("warm, nothing changed", warm))
    print(line("warm, template edited", templ))
    print(f"template edit reached the pages: {'yes' if marked else 'NO'}")
    if cold:
        print(f"warm / cold: {warm['wall'] / cold['wall']:.3f} (nothing changed), "
              f"{templ['wall'] / cold['wall']:.3f} (template edited); cold / warm {cold['wall'] / warm['wall']:.0f}x")
    ok = templ["wall"] <= GOAL_S and templ["computed"].startswith("nothing")
    print(f"goal (template-edit rebuild <= {GOAL_S:.0f} s, nothing recomputed): {'met' if ok else 'NOT met'}")
    if args.profile:
        print(f"\nprofile of the template-edit rebuild ({args.profile}), by cumulative time:")
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
