"""`--single-file`: the whole site as one self-contained .html (for uploading to a course site).

Every page's <main> becomes a <section>; links between pages become #anchors (a few lines of script show
one section at a time, like separate pages); every image, stylesheet and script is inlined. Each PNG is stored once, in a table a
script copies into the <img> elements at load (a picture shown on many pages would otherwise be repeated);
the explorers' sprite sheets sit in CSS variables (--rg-sprite-0, ...) as data URIs, each stored once.
"""

import base64
import mimetypes
import posixpath
import re
import warnings
from pathlib import Path

from .artifacts import atomic_write_bytes

WARN_BYTES = 50 * 1024 * 1024
_PIXEL = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="
_MAIN = re.compile(r"<main>(.*?)</main>", re.S)
_SCRIPTS = re.compile(r"<script\b[^>]*>.*?</script>", re.S)
_ATTR = re.compile(r'(src|href)="([^"#:]*)(#[^"]*)?"')
_ID = re.compile(r'(?<![\w-])id="([^"]+)"')
_SPRITE_ARG = re.compile(r'"url","(?:\.\./)*img/sprite-\{\}\.webp"')


def page_id(rel: str) -> str:
    return "p-" + re.sub(r"[^A-Za-z0-9_-]", "-", rel.removesuffix(".html"))


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _sprite_var(text: str) -> str:
    """Point the explorers' thumbnails at the CSS variables holding the sprite sheets ("{}": the sheet number)."""
    return _SPRITE_ARG.sub('"url","var(--rg-sprite-{})"', text)


def bundle(site: Path, out: Path) -> int:
    """Write `out` from the built `site`; returns its size in bytes (warns past 50 MB)."""
    site = Path(site)
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    pages.remove("index.html")
    pages.insert(0, "index.html")
    head_scripts: dict[str, str] = {}
    sections, page_scripts = [], []
    htmls = {rel: (site / rel).read_text(encoding="utf-8") for rel in pages}
    seen: dict[str, int] = {}
    for html in htmls.values():
        for i in set(_ID.findall(_MAIN.search(html).group(1))):
            seen[i] = seen.get(i, 0) + 1
    shared = {i for i, n in seen.items() if n > 1}   # e.g. section headings: made unique per page
    assets: dict[str, str] = {}   # site path -> key; a picture shown on many pages is stored once
    sheets = sorted((site / "img").glob("sprite-*.webp"), key=lambda p: int(p.stem.split("-")[1]))
    sprite_css = ":root{" + ";".join(f"--{p.stem.replace('sprite', 'rg-sprite')}:url({_data_uri(p)})"
                                     for p in sheets) + "}" if sheets else ""
    for rel in pages:
        html = htmls[rel]
        base = posixpath.dirname(rel)
        for tag in re.findall(r'<script src="([^"]+)"></script>', html):   # shared libraries (BokehJS), once
            target = posixpath.normpath(posixpath.join(base, tag))
            head_scripts.setdefault(target, (site / target).read_text(encoding="utf-8"))
        body = _MAIN.search(html).group(1)
        pid = page_id(rel)

        def unique(m, attr, pid=pid):
            return f'{attr}="{pid}-{m.group(1)}"' if m.group(1) in shared else m.group(0)
        body = _ID.sub(lambda m: unique(m, "id"), body)
        body = re.sub(r'aria-labelledby="([^"]+)"', lambda m: unique(m, "aria-labelledby"), body)
        body = re.sub(r'href="#([^"]+)"', lambda m, pid=pid: f'href="#{pid}-{m.group(1)}"'
                      if m.group(1) in shared else m.group(0), body)
        body = _sprite_var(body)

        def rewrite(m, base=base):
            attr, target = m.group(1), m.group(2)
            full = posixpath.normpath(posixpath.join(base, target))
            if target.endswith(".html"):
                return f'href="#{page_id(full)}"'
            if attr == "src" and full.endswith(".png") and (site / full).is_file():
                # each image once, in the asset table; a 1-pixel placeholder until the script fills it in
                key = assets.setdefault(full, f"a{len(assets)}")
                return f'src="{_PIXEL}" data-rg-asset="{key}"'
            if (site / full).is_file():
                return f'{attr}="{_data_uri(site / full)}"'
            return m.group(0)
        body = _ATTR.sub(rewrite, body)
        inline = [s for s in _SCRIPTS.findall(html.split("</main>", 1)[1] if "</main>" in html else "")
                  if "src=" not in s.split(">", 1)[0]]
        page_scripts += [_sprite_var(s) for s in inline]
        title = re.search(r"<title>(.*?)</title>", html, re.S).group(1)
        sections.append(f'<section class="page" id="{pid}" data-title="{title}">{body}</section>')
    index = (site / "index.html").read_text(encoding="utf-8")
    css = (site / "static" / "style.css").read_text(encoding="utf-8")
    title = re.search(r"<title>(.*?)</title>", index, re.S).group(1)
    libs = "".join(f"<script>{code}</script>" for code in head_scripts.values())
    table = ",".join(f'"{k}":"{_data_uri(site / path)}"' for path, k in assets.items())
    loader = ("<script>(function(){var A={" + table + "};document.querySelectorAll('img[data-rg-asset]')"
              ".forEach(function(i){i.src=A[i.dataset.rgAsset];});})();</script>")
    router = ("<script>function show(){var id=location.hash.slice(1),el=document.getElementById(id);"
              "var page=el?el.closest('section.page'):null;if(!page){page=document.querySelector('section.page');}"
              "document.querySelectorAll('section.page').forEach(function(s){s.hidden=(s!==page);});"
              "document.title=page.dataset.title;if(el&&el!==page){el.scrollIntoView();}else{window.scrollTo(0,0);}}"
              "window.addEventListener('hashchange',show);show();</script>")
    nav = re.search(r'<header class="site-header">.*?</header>', index, re.S).group(0)
    nav = _ATTR.sub(lambda m: f'href="#{page_id(posixpath.normpath(m.group(2)))}"' if m.group(2).endswith(".html")
                    else m.group(0), nav)
    doc = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
           f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title}</title>\n'
           f"<style>{css}{sprite_css}</style>\n{libs}\n</head>\n<body>\n{nav}\n<main>\n" + "\n".join(sections)
           + "\n</main>\n" + loader + "\n".join(page_scripts) + router + "\n</body>\n</html>\n")
    data = doc.encode("utf-8")
    atomic_write_bytes(Path(out), data)
    if len(data) > WARN_BYTES:
        warnings.warn(f"{Path(out).name} is {len(data) / 2**20:.0f} MB; course sites often refuse files "
                      "past 50 MB: use fewer layers/filters or record.top_k", stacklevel=2)
    return len(data)
