"""The print-only document of a built site, for `reportgen pdf`: the overview, the chosen layers and filters
and the attribution page, one after another, each starting a new printed page (`section.print-page`);
every interactive explorer is replaced by a static picture of its scatter (render/scatter.py), scripts
and links between pages are dropped (a PDF cannot follow them), images keep pointing at the site's files.

`--filters` reads `LAYER:F,LAYER:A-B` (layer names as in the report; filters among those the site shows).
"""

import html
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PIL import Image

from .errors import SpecError
from .render.scatter import scatter_png
from .render.site import TEMPLATES
from .single_file import MAIN, SCRIPTS

DEFAULT_PER_LAYER = 2   # filters per layer when --filters is not given: a glimpse of each, a few pages long
_ATTR = re.compile(r'(src|href)="([^"#:]+)(#[^"]*)?"')
_ROOT_DIV = re.compile(r'<div id="rg-([\w.-]+?)-\d+" data-root-id="[^"]*"[^>]*></div>')


@dataclass(frozen=True)
class Section:
    page: str    # site-relative path of the page it comes from
    title: str   # its <h1>, the text that opens its first printed page


def parse_filters(text: str | None, report: dict) -> dict[str, list[int]]:
    """{layer name: filter indices}, in the report's layer order; the default selection for None. Raises
    SpecError('--filters', ...) naming the unknown layer or filter."""
    shown = {l["name"]: [f["index"] for f in l["filters"]] for l in report["layers"]}
    if text is None:
        return {name: fs[:DEFAULT_PER_LAYER] for name, fs in shown.items()}
    chosen: dict[str, list[int]] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        layer, sep, spec = item.rpartition(":")
        if not sep or not layer:
            raise SpecError("--filters", f"{item!r} is not LAYER:FILTER or LAYER:FIRST-LAST")
        if layer not in shown:
            raise SpecError("--filters", f"unknown layer {layer!r}; layers in this report: {', '.join(shown)}")
        first, _, last = spec.partition("-")
        if not first.isdigit() or not (last or first).isdigit() or int(last or first) < int(first):
            raise SpecError("--filters", f"{item!r}: {spec!r} is not a filter number or a range FIRST-LAST")
        for f in range(int(first), int(last or first) + 1):
            if f not in shown[layer]:
                raise SpecError("--filters", f"layer {layer!r} has no page for filter {f} in this report "
                                             f"(filters shown: {_ranges(shown[layer])})")
            picked = chosen.setdefault(layer, [])
            if f not in picked:
                picked.append(f)
    if not chosen:
        raise SpecError("--filters", "no filter given")
    return {name: sorted(chosen[name]) for name in shown if name in chosen}   # the report's order


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] → '0-2, 5'."""
    out, values = [], sorted(values)
    for v in values:
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in out)


def _jpeg(path: Path, folder: Path, quality: int) -> Path:
    """`path` as a JPEG of `quality` in `folder` (named by its path: each picture converted once), or `path`
    itself where the JPEG would be larger (a 28 px PNG often is smaller than any JPEG of it)."""
    out = folder / (re.sub(r"[^\w.-]", "_", str(path)) + ".jpg")
    if not out.is_file():
        with Image.open(path) as img:
            img.convert("RGB").save(out, "JPEG", quality=quality)
    return out if out.stat().st_size < path.stat().st_size else path


def _stylesheet() -> str:
    """This reportgen's stylesheet, not the site's copy: its print rules apply to sites built before them."""
    return (resources.files(TEMPLATES) / "static" / "style.css").read_text(encoding="utf-8")


def explorer_points(report: dict) -> dict[str, list]:
    """{plot id: points} of every explorer of the report (overview and layers)."""
    parts = [report.get("overview_explorer")] + [l.get("explorer") for l in report["layers"]]
    return {e["plot"]: e["points"] for part in parts if part for e in part["explorers"]}


def sections(report: dict, selection: dict[str, list[int]]) -> list[str]:
    """Site-relative pages of the document, in order."""
    pages = ["index.html"]
    for layer in report["layers"]:
        if layer["name"] in selection:
            pages.append(layer["page"])
            pages += [f["page"] for f in layer["filters"] if f["index"] in selection[layer["name"]]]
    return pages + [p["page"] for p in report["pages"] if p["page"] == "attribution.html"]


def document(site: Path, selection: dict[str, list[int]], pictures: Path,
             quality: int | None = None) -> tuple[str, list[Section]]:
    """(print HTML, its sections) of `site`; the explorers' pictures are written into folder `pictures`, and
    with `quality` every picture too, as a JPEG of that quality (what a PDF stores most compactly)."""
    site = Path(site).absolute()
    report = json.loads((site / "report.json").read_text(encoding="utf-8"))
    names = report["dataset"]["classes"]
    points = explorer_points(report)
    drawn: dict[str, str] = {}

    def picture(m) -> str:
        plot = m.group(1)
        if plot not in points:   # a plot the report holds no points for: say so rather than leave a hole
            return '<p class="muted">(interactive plot: see the site)</p>'
        if plot not in drawn:
            path = pictures / f"{plot}.png"
            path.write_bytes(scatter_png(points[plot], names))
            drawn[plot] = (_jpeg(path, pictures, quality) if quality else path).as_uri()
        return f'<img class="explorer-static" src="{drawn[plot]}" alt="Scatter of the embedding {plot}, by class">'

    parts, found = [], []
    for rel in sections(report, selection):
        body = MAIN.search((site / rel).read_text(encoding="utf-8")).group(1)
        body = _ROOT_DIV.sub(picture, SCRIPTS.sub("", body))
        base = (site / rel).parent

        def rewrite(m, base=base):
            attr, target = m.group(1), m.group(2)
            if attr == "href":   # other pages and downloads: nothing a reader of paper can open
                return ""
            path = (base / target).resolve()
            return f'src="{_jpeg(path, pictures, quality).as_uri() if quality else path.as_uri()}"'
        body = _ATTR.sub(rewrite, body)
        title = html.unescape(re.sub(r"<[^>]+>", "", re.search(r"<h1[^>]*>(.*?)</h1>", body, re.S).group(1))).strip()
        found.append(Section(rel, title))
        parts.append(f'<section class="print-page" data-page="{rel}">{body}</section>')
    head = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{html.escape(report["title"])}</title>\n'
            f"<style>{_stylesheet()}</style>\n</head>\n")
    return head + '<body class="print-doc">\n<main>\n' + "\n".join(parts) + "\n</main>\n</body>\n</html>\n", found
