"""Command line: `reportgen build|pdf|layers|clean|schema|serve`. The only place that prints errors and sets exit codes.

Exit status: 0 success, 2 a ReportgenError (one line `error: ...`), 130 interrupted (Ctrl-C).
"""

import argparse
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import ReportgenError, SpecError
from .interrupt import handling_ctrl_c


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _warning(message, category, filename, lineno, file=None, line=None):
    _log(f"warning: {message}")


def cmd_build(args) -> int:
    from .pipeline import build
    from .spec import load_spec
    from .pipeline import pick_device
    from .distributed import PeerLost, init_from_env, shutdown
    if args.max_size and args.single_file is None:   # before a long build, not after it
        raise SpecError("--max-size", "sizes the --single-file bundle: add --single-file")
    spec = load_spec(args.spec)
    group = init_from_env(pick_device(spec.device))   # under torchrun: this process's rank
    try:
        out = build(spec, out=Path(args.out).absolute() if args.out else None, use_cache=not args.no_cache,
                    progress=not args.quiet, log=_log, group=group, strict=args.strict,
                    verbose=args.verbose)
    except PeerLost as exc:
        raise group.named(exc) from None   # which rank stopped, asked while the group still stands
    finally:
        shutdown()
    if not group.is_main:
        return 0
    print(out / "index.html")
    if args.single_file is not None:
        from .single_file import bundle_bytes, warn_if_large
        target = Path(args.single_file or f"{out}.html").absolute()
        warn_if_large(target, _within(args.max_size, "the single file", lambda rung: bundle_bytes(out, rung), target))
        print(target)
    return 0


def _within(max_size: int | None, what: str, make, target: Path, ladder=None) -> int:
    """Write `target` (atomically) from `make(rung) -> bytes`, at the first rung of the size ladder that fits
    `max_size` (as it is without --max-size); log its size and what was reduced; return the size."""
    from .artifacts import atomic_write_bytes
    from .size_budget import FULL, LADDER, fit
    data, rung = fit(make, max_size, what, ladder or LADDER) if max_size else (make(FULL), FULL)
    atomic_write_bytes(target, data)
    reduced = f"; {rung.describe()}" if rung != FULL else ""
    _log(f"wrote {target} ({len(data) / 1e6:.2f} MB{reduced})")
    return len(data)


def cmd_pdf(args) -> int:
    import json
    from .pdf import pdf_bytes
    from .size_budget import PDF_LADDER
    from .printable import parse_filters
    site = Path(args.spec_or_site)
    if site.is_file():   # a spec: build it (cached analyses make this quick when it was built before)
        from .pipeline import build
        from .spec import load_spec
        site = build(load_spec(site), use_cache=True, progress=not args.quiet, log=_log)
    if not (site / "report.json").is_file():
        raise SpecError("SPEC_OR_SITE", f"{str(site)!r} is neither a spec file nor a built site (no report.json)")
    selection = parse_filters(args.filters, json.loads((site / "report.json").read_text(encoding="utf-8")))
    target = Path(args.out).absolute()
    sections = []

    def make(rung) -> bytes:
        data, sections[:] = pdf_bytes(site, selection, rung)
        return data
    _within(args.max_size, "the PDF", make, target, PDF_LADDER)
    _log(f"{len(sections)} sections: " + ", ".join(s.title for s in sections))
    print(target)
    return 0


def cmd_layers(args) -> int:
    from .layers import list_layers
    from .models import load_model
    from .spec import load_spec
    spec = load_spec(args.spec)
    model = load_model(spec.model, spec.spec_path)
    rows = [(li.path, li.alias or "", li.type, "×".join(map(str, li.output_shape)), str(li.params))
            for li in list_layers(model.module, model.input_size, model.channels)]
    header = ("path", "alias", "type", "output", "params")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(5)]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_clean(args) -> int:
    from .artifacts import Cache
    spec_dir = Path(args.spec).resolve().parent
    removed = Cache(spec_dir / ".reportgen-cache").clear()
    _log(f"removed {spec_dir / '.reportgen-cache'}" if removed else "no cache to remove")
    return 0


def cmd_schema(args) -> int:
    """The JSON Schema of report.json (docs/report.schema.json is this output)."""
    import json
    from .analyses import ANALYSES
    from .schema import json_schema
    print(json.dumps(json_schema(ANALYSES), indent=1, sort_keys=True, ensure_ascii=False))
    return 0


def cmd_serve(args) -> int:
    from .errors import SpecError as _SpecError
    from .serve import make_server
    site = Path(args.site)
    if not (site / "index.html").is_file():
        raise _SpecError("SITE", f"{str(site)!r} has no index.html; build it first with 'reportgen build SPEC'")
    server = make_server(site, args.base, args.host, args.port)
    host, port = server.server_address[:2]
    base = "/" + args.base.strip("/") + "/" if args.base.strip("/") else "/"
    _log(f"serving {site} at http://{host}:{port}{base} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _size(text: str) -> int:
    """argparse type of --max-size: the size in bytes (argparse prints the one-line error, exit 2)."""
    from .size_budget import parse_size
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reportgen", description="Turn a trained CNN into a browsable report.")
    parser.add_argument("--version", action="version", version=f"reportgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="compute every analysis and write the site")
    p.add_argument("spec", help="the YAML spec")
    p.add_argument("--out", help="output directory (overrides the spec's 'output')")
    p.add_argument("--no-cache", action="store_true", help="recompute everything")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="the closing time table has a row per layer")
    p.add_argument("--strict", action="store_true",
                   help="fail when a part of the report cannot be made for this model (default: a note in the report)")
    p.add_argument("--single-file", nargs="?", const="", default=None, metavar="HTML",
                   help="also write the whole site as one .html (default: OUTPUT.html)")
    p.add_argument("--max-size", type=_size, metavar="SIZE",
                   help="with --single-file: lower image quality and leave out downloads until the file fits, "
                        "e.g. 5MB or 800KB (fails, writing nothing, when it cannot fit)")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("pdf", help="a printable PDF of a built site (overview, chosen layers and filters, "
                                   "attribution), for submission")
    p.add_argument("spec_or_site", metavar="SPEC_OR_SITE", help="a built site, or a spec (built first if needed)")
    p.add_argument("--filters", metavar="LAYER:F,...",
                   help="filters to include, e.g. block3_conv1:31,block2_conv2:0-3 (default: the first "
                        "two shown of each layer)")
    p.add_argument("--out", default="report.pdf", help="the PDF to write (default: report.pdf)")
    p.add_argument("--max-size", type=_size, metavar="SIZE", help="lower image quality until the PDF fits, e.g. 5MB")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pdf)
    p = sub.add_parser("layers", help="list the model's layers (path, alias, type, output shape)")
    p.add_argument("spec")
    p.set_defaults(func=cmd_layers)
    p = sub.add_parser("clean", help="remove the spec's cache (.reportgen-cache beside it)")
    p.add_argument("spec")
    p.set_defaults(func=cmd_clean)
    p = sub.add_parser("schema", help="print the JSON Schema of report.json")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("serve", help="preview a site as GitHub Pages serves it under a sub-path")
    p.add_argument("site", help="the site directory")
    p.add_argument("--base", default="/", help="the sub-path, e.g. /REPO/ for https://USER.github.io/REPO/")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)
    args = parser.parse_args(argv)
    warnings.showwarning = _warning
    try:
        with handling_ctrl_c():
            return args.func(args)
    except SpecError as exc:
        for err in getattr(exc, "errors", [exc]):
            _log(f"error: {err.key}: {err.message}")
        return 2
    except ReportgenError as exc:
        _log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _log("interrupted; the previous site is unchanged")
        return 130
    except Exception as exc:  # a bug in reportgen: still one line, the traceback on request
        if os.environ.get("REPORTGEN_DEBUG"):
            raise
        _log(f"error: internal error ({exc.__class__.__name__}: {exc}); rerun with REPORTGEN_DEBUG=1 "
             "for the traceback and report it")
        return 1


if __name__ == "__main__":
    sys.exit(main())
