"""`--single-file`: the whole site as one self-contained .html (for uploading to a course site).

Every page's <main> becomes a <section>; links between pages become #anchors (a few lines of script show
one section at a time, like separate pages); every image, stylesheet and script is inlined. Each PNG is stored once, in a table a
script copies into the <img> elements at load (a picture shown on many pages would otherwise be repeated);
the explorers' sprite sheets sit in CSS variables (--rg-sprite-0, ...) as data URIs, each stored once.
"""

import base64
import gzip
import io
import mimetypes
import posixpath
import re
import warnings
from pathlib import Path

from PIL import Image

from .artifacts import atomic_write_bytes
from .size_budget import FULL, Rung

WARN_BYTES = 50 * 1024 * 1024
_PIXEL = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="
MAIN = re.compile(r"<main>(.*?)</main>", re.S)
SCRIPTS = re.compile(r"<script\b[^>]*>.*?</script>", re.S)
ATTR = re.compile(r'(src|href)="([^"#:]*)(#[^"]*)?"')
_ID = re.compile(r'(?<![\w-])id="([^"]+)"')
_CARD = re.compile(r'<figure class="card">\s*<img[^>]*?src="[^"]*/f\d+_box(\d+)\.png"[^>]*>.*?</figure>\s*', re.S)
_THUMB = re.compile(r'<img[^>]*?src="[^"]*/f\d+_(?:patch|gb)(\d+)\.png"[^>]*>\s*')
_EVO_TOPS = re.compile(r'(<div class="evo-tops">)(.*?)(</div>)', re.S)   # a checkpoint's top images
_SPRITE_ARG = re.compile(r'"url","(?:\.\./)*img/sprite-\{\}\.webp"')


def page_id(rel: str) -> str:
    return "p-" + re.sub(r"[^A-Za-z0-9_-]", "-", rel.removesuffix(".html"))


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _fewer_thumbs(body: str, keep: int) -> str:
    """`body` without the filter pages' top-image cards, patches and guided-backprop maps of rank >= `keep`
    (their file names carry the rank: fN_boxR, fN_patchR, fN_gbR), and each checkpoint's top images of the
    evolution strip past the first `keep`."""
    body = _EVO_TOPS.sub(lambda m: m.group(1) + "".join(re.findall(r"<img[^>]*>", m.group(2))[:keep]) + m.group(3),
                         body)
    body = _CARD.sub(lambda m: "" if int(m.group(1)) >= keep else m.group(0), body)
    return _THUMB.sub(lambda m: "" if int(m.group(1)) >= keep else m.group(0), body)


def sprite_css(site: Path, uri) -> str:
    """The CSS variables --rg-sprite-0, ... holding the site's sprite sheets as `uri(path)` gives them ("": none)."""
    sheets = sorted((site / "img").glob("sprite-*.webp"), key=lambda p: int(p.stem.split("-")[1]))
    return ":root{" + ";".join(f"--{p.stem.replace('sprite', 'rg-sprite')}:url({uri(p)})"
                               for p in sheets) + "}" if sheets else ""


def inline_scripts(page: str) -> list[str]:
    """The page's own scripts after its <main> (the explorers' plots; not linked libraries), pointed at the
    sprite variables."""
    after = page.split("</main>", 1)[1] if "</main>" in page else ""
    return [sprite_var(s) for s in SCRIPTS.findall(after) if "src=" not in s.split(">", 1)[0]]


def sprite_var(text: str) -> str:
    """Point the explorers' thumbnails at the CSS variables holding the sprite sheets ("{}": the sheet number)."""
    return _SPRITE_ARG.sub('"url","var(--rg-sprite-{})"', text)


def bundle(site: Path, out: Path, rung: Rung = FULL) -> int:
    """Write `out` from the built `site`; returns its size in bytes (warns past 50 MB)."""
    data = bundle_bytes(site, rung)
    atomic_write_bytes(Path(out), data)
    warn_if_large(Path(out), len(data))
    return len(data)


def warn_if_large(out: Path, size: int) -> None:
    if size > WARN_BYTES:
        warnings.warn(f"{out.name} is {size / 2**20:.0f} MB; course sites often refuse files past 50 MB: use "
                      "fewer layers/filters or record.top_k, or --max-size", stacklevel=3)


def _picture_uri(path: Path, quality: int | None, scale: float = 1.0) -> str:
    """`path` as a data: URI; with `quality`, re-encoded as lossy WebP of that quality, `scale` times its size
    (--max-size; a sprite sheet is drawn at a fixed CSS size, so a smaller sheet only blurs its thumbnails)."""
    if quality is None and scale == 1:
        return data_uri(path)
    buf = io.BytesIO()
    with Image.open(path) as img:
        if scale != 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS)
        img.save(buf, "WEBP", quality=quality or 90)
    return f"data:image/webp;base64,{base64.b64encode(buf.getvalue()).decode()}"


def bundle_bytes(site: Path, rung: Rung = FULL) -> bytes:
    """The single file of the built `site`, its pictures and downloads as `rung` says (size_budget.py)."""
    site = Path(site)
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    pages.remove("index.html")
    pages.insert(0, "index.html")
    head_scripts: dict[str, str] = {}
    sections, page_scripts = [], []
    htmls = {rel: (site / rel).read_text(encoding="utf-8") for rel in pages}
    seen: dict[str, int] = {}
    for html in htmls.values():
        for i in set(_ID.findall(MAIN.search(html).group(1))):
            seen[i] = seen.get(i, 0) + 1
    shared = {i for i, n in seen.items() if n > 1}   # e.g. section headings: made unique per page
    assets: dict[str, str] = {}   # site path -> key; a picture shown on many pages is stored once
    sprites = sprite_css(site, lambda p: _picture_uri(p, rung.quality, rung.sprite_scale))
    for rel in pages:
        html = htmls[rel]
        base = posixpath.dirname(rel)
        for tag in re.findall(r'<script src="([^"]+)"></script>', html):   # shared libraries (BokehJS), once
            target = posixpath.normpath(posixpath.join(base, tag))
            head_scripts.setdefault(target, (site / target).read_text(encoding="utf-8"))
        body = MAIN.search(html).group(1)
        pid = page_id(rel)

        def unique(m, attr, pid=pid):
            return f'{attr}="{pid}-{m.group(1)}"' if m.group(1) in shared else m.group(0)
        body = _ID.sub(lambda m: unique(m, "id"), body)
        body = re.sub(r'aria-labelledby="([^"]+)"', lambda m: unique(m, "aria-labelledby"), body)
        body = re.sub(r'href="#([^"]+)"', lambda m, pid=pid: f'href="#{pid}-{m.group(1)}"'
                      if m.group(1) in shared else m.group(0), body)
        body = sprite_var(body)

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
                if attr == "href" and not rung.downloads:   # a raw-data download: left to the site
                    return ""
                return f'{attr}="{data_uri(site / full)}"'
            return m.group(0)
        body = ATTR.sub(rewrite, _fewer_thumbs(body, rung.thumbs) if rung.thumbs else body)
        page_scripts += inline_scripts(html)
        title = re.search(r"<title>(.*?)</title>", html, re.S).group(1)
        sections.append(f'<section class="page" id="{pid}" data-title="{title}">{body}</section>')
    index = (site / "index.html").read_text(encoding="utf-8")
    css = (site / "static" / "style.css").read_text(encoding="utf-8")
    title = re.search(r"<title>(.*?)</title>", index, re.S).group(1)
    libs = "".join(f"<script>{code}</script>" for code in head_scripts.values())
    table = ("<script>var RG_ASSETS={" + ",".join(f'"{k}":"{_picture_uri(site / path, rung.quality)}"'
                                                  for path, k in assets.items()) + "};</script>")
    loader = ("<script>document.querySelectorAll('img[data-rg-asset]')"
              ".forEach(function(i){i.src=RG_ASSETS[i.dataset.rgAsset];});</script>")
    # rgReady: the sections are in place (at once, or once a packed file has unpacked itself)
    router = ("<script>function show(){var id=location.hash.slice(1),el=document.getElementById(id);"
              "var page=el?el.closest('section.page'):null;if(!page){page=document.querySelector('section.page');}"
              "document.querySelectorAll('section.page').forEach(function(s){s.hidden=(s!==page);});"
              "document.title=page.dataset.title;if(el&&el!==page){el.scrollIntoView();}else{window.scrollTo(0,0);}}"
              "window.addEventListener('hashchange',show);show();document.documentElement.dataset.rgReady='1';"
              "</script>")
    nav = re.search(r'<header class="site-header">.*?</header>', index, re.S).group(0)
    nav = ATTR.sub(lambda m: f'href="#{page_id(posixpath.normpath(m.group(2)))}"' if m.group(2).endswith(".html")
                    else m.group(0), nav)
    head = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title}</title>\n'
            f"<style>{css}{sprites}</style>\n")
    note = "" if rung == FULL else f'<p class="reduced">Reduced to fit: {rung.describe()}; the site has it all.</p>\n'
    pages_html = f"{nav}\n<main>\n{note}" + "\n".join(sections) + "\n</main>\n"
    scripts = loader + "\n".join(page_scripts) + router   # run once the pages are in place
    if rung.packed:   # the asset table stays outside: base64 pictures do not compress
        doc = head + "</head>\n<body>\n" + table + _packed(libs + pages_html + scripts)
    else:
        doc = head + libs + "\n</head>\n<body>\n" + pages_html + table + scripts
    return (doc + "\n</body>\n</html>\n").encode("utf-8")


# Unpacks the gzip of the page's markup and scripts (the browser's own DecompressionStream: Chrome 80,
# Firefox 113, Safari 16.4), inserts it, then runs its scripts in order (scripts set by innerHTML never run).
_UNPACK = ("<script>(function(){var b=atob(document.getElementById('rg-packed').textContent),"
           "u=new Uint8Array(b.length);for(var i=0;i<b.length;i++)u[i]=b.charCodeAt(i);"
           "var old=new Set(document.scripts);"
           "new Response(new Blob([u]).stream().pipeThrough(new DecompressionStream('gzip'))).text()"
           ".then(function(h){document.body.insertAdjacentHTML('beforeend',h);"
           "[...document.scripts].filter(function(s){return !old.has(s);}).forEach(function(s){"
           "var n=document.createElement('script');n.text=s.text;s.replaceWith(n);});});})();</script>")


def _packed(html: str) -> str:
    """`html` as a gzip in base64 and the script that unpacks it: text (pages, BokehJS) shrinks ~6x."""
    data = base64.b64encode(gzip.compress(html.encode("utf-8"), compresslevel=9, mtime=0)).decode()
    return f'<script id="rg-packed" type="application/octet-stream">{data}</script>{_UNPACK}'
