"""Jupyter display of a built site: a page of the site as one self-contained document in an <iframe srcdoc>.

The page is the site's own (rendered once, by render/pages.py): its <main> with every image, stylesheet and
script inlined as single_file.py inlines them, links to other pages made inert (a notebook has no site around
it). The iframe keeps the site's stylesheet away from the notebook's and the notebook's from the page's; BokehJS
runs inside it from the inlined copy the site ships, so the explorer works offline and in an nbconvert export
(the document is an attribute of the output's HTML, nothing is fetched).
"""

from __future__ import annotations

import html
import posixpath
import re
from pathlib import Path

from .render.site import SiteWriter
from .single_file import ATTR, MAIN, data_uri, inline_scripts, sprite_css, sprite_var

_SCRIPT_SRC = re.compile(r'<script src="([^"]+)"></script>')
# grows the frame to its page once loaded (srcdoc frames share the notebook's origin); 600 px until then
_FIT = "this.style.height=(this.contentDocument.documentElement.scrollHeight+16)+'px'"


def page_document(site: Path, rel: str) -> str:
    """The site page `rel` (site-relative path) as one HTML document that needs no other file."""
    site = Path(site)
    page = (site / rel).read_text(encoding="utf-8")
    base = posixpath.dirname(rel)

    def inline(m):
        attr, target = m.group(1), m.group(2)
        full = posixpath.normpath(posixpath.join(base, target))
        if target.endswith(".html"):
            return "" if attr == "href" else m.group(0)   # no site around the frame: the link stays as text
        return f'{attr}="{data_uri(site / full)}"' if (site / full).is_file() else m.group(0)
    body = ATTR.sub(inline, sprite_var(MAIN.search(page).group(1)))
    head = page.split("<main>", 1)[0]
    # BokehJS (linked in the head by pages with plots); the header's search and jump scripts need the whole site
    libs = [(site / posixpath.normpath(posixpath.join(base, src))).read_text(encoding="utf-8")
            for src in _SCRIPT_SRC.findall(head)]
    scripts = inline_scripts(page)
    sprites = sprite_css(site, data_uri) if "rg-sprite" in body + "".join(scripts) else ""
    css = (site / "static" / "style.css").read_text(encoding="utf-8")
    title = re.search(r"<title>(.*?)</title>", page, re.S).group(1)
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{title}</title>\n<style>{css}{sprites}</style>\n"
            + "".join(f"<script>{code}</script>\n" for code in libs)
            + f"</head>\n<body>\n<main>{body}</main>\n" + "\n".join(scripts) + "\n</body>\n</html>\n")


def iframe(document: str, title: str, height: int = 600) -> str:
    """`document` in a sandbox-free <iframe srcdoc> as wide as the output area, fitted to its height once loaded."""
    return (f'<iframe srcdoc="{html.escape(document, quote=True)}" title="{html.escape(title)}" '
            f'style="width:100%;height:{height}px;border:1px solid #ddd" onload="{_FIT}"></iframe>')


class Page:
    """A page of a built site, shown inline by Jupyter (`_repr_html_`); `document()` is its standalone HTML."""

    def __init__(self, site: Path, rel: str, title: str):
        self.site, self.rel, self.title = Path(site), rel, title

    def document(self) -> str:
        return page_document(self.site, self.rel)

    def _repr_html_(self) -> str:
        return iframe(self.document(), self.title)

    def __repr__(self) -> str:
        return f"<reportgen page {self.rel!r} of {str(self.site)!r}>"


def overview_html(report: dict, site: Path) -> str:
    """The compact overview a Report shows in a notebook: model, dataset, accuracy, layers, where the site is."""
    env = SiteWriter(site).env
    return env.get_template("notebook.html").render(report=report, site=str(Path(site).absolute()),
                                                    site_uri=Path(site).absolute().as_uri())
