"""Writing the site: the Jinja environment, pages, images and JSON, all with relative paths.

Every path handed to templates is relative to the site root; a page at depth d gets
`root = "../" * d`, so links work from file://, from a GitHub Pages sub-path and anywhere else.
"""

import json
from importlib import resources
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from .filters import FILTERS
from .images import png_bytes

# templates/ is installed as the package `reportgen.templates` (pyproject.toml): found the same way in a
# checkout's editable install and in a wheel
TEMPLATES = "reportgen.templates"
SITE_MARKER = ".reportgen-site"


def readable_json(obj, indent: str = "") -> str:
    """JSON indented by structure, but a list of plain values (a point, a row of numbers) on one line: as easy
    to read as `indent=1` at half the bytes (the explorers' points are most of report.json)."""
    plain = (str, int, float, bool, type(None))
    if isinstance(obj, dict) and obj:
        inner = indent + " "
        items = (f"{inner}{json.dumps(k if isinstance(k, str) else json.dumps(k), ensure_ascii=False)}: {readable_json(v, inner)}" for k, v in obj.items())
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, (list, tuple)) and obj and not all(isinstance(v, plain) for v in obj):
        inner = indent + " "
        return "[\n" + ",\n".join(inner + readable_json(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


class SiteWriter:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.env = Environment(loader=PackageLoader(TEMPLATES, "."), autoescape=select_autoescape(default=True),
                               undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                               lstrip_blocks=True)
        self.env.filters.update(FILTERS)
        self.written: set[str] = set()

    def image(self, rel: str, array: np.ndarray) -> str:
        """Write a PNG once at site-relative `rel`; return `rel`."""
        if rel not in self.written:
            self.bytes(rel, png_bytes(array))
        return rel

    def bytes(self, rel: str, data: bytes) -> str:
        # a plain write: the whole site is a temporary directory swapped in when complete (output.write_site),
        # so a file needs no temporary twin or fsync of its own (they cost 4 of a warm rebuild's 9 s)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.written.add(rel)
        return rel

    def json(self, rel: str, obj) -> str:
        return self.bytes(rel, (readable_json(obj) + "\n").encode("utf-8"))

    def page(self, rel: str, template: str, **context) -> str:
        depth = rel.count("/")
        html = self.env.get_template(template).render(root="../" * depth, page_path=rel, **context)
        return self.bytes(rel, html.encode("utf-8"))

    def copy_static(self) -> None:
        for rel, src in _walk(resources.files(TEMPLATES) / "static", "static/"):
            self.bytes(rel, src.read_bytes())
        self.bytes(SITE_MARKER, b"This directory is a site written by reportgen; reportgen may replace it.\n")


def _walk(node, prefix: str):
    """(site path, resource) for every file under a package resource directory, sorted by name."""
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            yield from _walk(child, f"{prefix}{child.name}/")
        else:
            yield f"{prefix}{child.name}", child
