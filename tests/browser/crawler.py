"""Crawl a built site in headless Chromium from its index, following every link, and record what a visitor
would run into: console errors, failed or off-site requests, links and fragments that do not resolve,
images that do not load, Bokeh plots that do not render, pages no link reaches, and axe-core's serious or
critical violations. `crawl()` only records; the tests assert, so one crawl serves several tests.
"""

import posixpath
from collections import deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin

from playwright.sync_api import Error as PlaywrightError

LOCAL_SCHEMES = ("data:", "blob:", "about:")

COLLECT_JS = """async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });   // check every image, not the visible
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return {
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    images: imgs.map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
  };
}"""

# Bokeh renders each root into its `data-root-id` div asynchronously after load: done when every such div has
# its rendered element and every Bokeh document is idle
PLOTS_DONE_JS = """() => {
  const roots = [...document.querySelectorAll('[data-root-id]')];
  return roots.length === 0 || (window.Bokeh !== undefined && Bokeh.documents.length > 0
    && roots.every(d => d.children.length > 0) && Bokeh.documents.every(doc => doc.is_idle));
}"""

AXE_RUN_JS = """async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations.filter(v => v.impact === 'serious' || v.impact === 'critical').map(v => ({
    id: v.id, impact: v.impact, help: v.help, count: v.nodes.length,
    target: v.nodes[0].target.join(' '), summary: v.nodes[0].failureSummary.replace(/\\s+/g, ' ')}));
}"""


@dataclass
class Crawl:
    """What a crawl found; each list holds one readable line per problem, prefixed by the page."""
    root: str                                            # the site root URL, ending in '/'
    visited: list[str] = field(default_factory=list)     # site-relative pages opened, in order
    console: list[str] = field(default_factory=list)     # console errors and uncaught exceptions
    requests: list[str] = field(default_factory=list)    # failed requests, HTTP status >= 400
    offsite: list[str] = field(default_factory=list)     # requests outside the site (aborted)
    links: list[str] = field(default_factory=list)       # links or #fragments that do not resolve
    images: list[str] = field(default_factory=list)      # <img> that did not load
    plots: list[str] = field(default_factory=list)       # Bokeh plots that did not render
    unreached: list[str] = field(default_factory=list)   # HTML files of the site no link leads to
    axe: list[str] = field(default_factory=list)         # serious/critical axe-core violations


def site_path(url: str, root: str) -> str | None:
    """The site-relative path of `url` (fragment dropped), or None if it lies outside the site."""
    url = url.split("#", 1)[0].split("?", 1)[0]
    if not url.startswith(root):
        return None
    rel = unquote(url[len(root):])
    norm = posixpath.normpath(rel) if rel else ""
    return None if norm.startswith("..") else ("" if norm == "." else norm)


class _Refs(HTMLParser):
    """What a page links to and loads, read from its file (for pages the crawl does not open)."""

    def __init__(self):
        super().__init__()
        self.links, self.loads, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag in ("img", "script") and a.get("src"):
            self.loads.append(a["src"])
        elif tag == "link" and a.get("href"):
            self.loads.append(a["href"])


def read_page(site: Path, rel: str, root: str) -> dict:
    """COLLECT_JS's answer for page `rel`, from its HTML file instead of the browser (images: exist on disk)."""
    refs = _Refs()
    refs.feed((site / rel).read_text(encoding="utf-8"))
    base = root + rel
    images = []
    for src in refs.loads:
        url = urljoin(base, src)
        target = site_path(url, root)
        images.append({"src": url, "ok": url.startswith(LOCAL_SCHEMES) or
                       (target is not None and (site / target).is_file())})
    return {"links": [urljoin(base, h) for h in refs.links], "ids": sorted(refs.ids), "images": images}


def crawl(context, root: str, site: Path, axe_js: Path | None = None, visit=None,
          route: bool = True, plot_timeout_ms: int = 15_000) -> Crawl:
    """Crawl from `root`index.html in a new page of the Playwright `context`.

    `root` is the site as the browser reaches it (a file:// URL or the served sub-path, ending in '/'),
    `site` the same directory on disk. Every request outside `root` is recorded; with `route` it is also
    aborted, so the crawl never leaves the machine (but Chromium then skips its /favicon.ico request,
    which a served site must answer: serve-mode crawls pass route=False). `visit(rel)` limits which pages
    are opened (default: all); the others are read from their files: links, ids and the files they load
    checked on disk. axe checks every opened page when `axe_js` (axe.min.js) is given.
    """
    found = Crawl(root)
    page = context.new_page()
    current = ["index.html"]
    aborted = set()

    def on_route(handle):
        url = handle.request.url
        if url.startswith(root) or url.startswith(LOCAL_SCHEMES):
            handle.continue_()
        else:
            aborted.add(url)
            found.offsite.append(f"{current[0]}: {handle.request.resource_type} {url}")
            handle.abort()

    def on_request(request):
        # with `route`, on_route has seen every request (file:// ones included)
        url = request.url
        if not (route or url.startswith(root) or url.startswith(LOCAL_SCHEMES)):
            found.offsite.append(f"{current[0]}: {request.resource_type} {url}")

    def on_failed(request):
        if request.url not in aborted:
            found.requests.append(f"{current[0]}: {request.url} failed ({request.failure})")

    def on_response(response):
        if response.status >= 400:
            found.requests.append(f"{current[0]}: {response.url} answered {response.status}")

    def on_console(message):
        if message.type == "error":
            where = message.location.get("url", "")
            found.console.append(f"{current[0]}: {message.text}" + (f" ({where})" if where else ""))

    if route:
        page.route("**/*", on_route)
    page.on("request", on_request)
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: found.console.append(f"{current[0]}: uncaught {exc}"))

    queue, seen, ids, fragments = deque(["index.html"]), {"index.html"}, {}, []
    while queue:
        rel = current[0] = queue.popleft()
        if visit is not None and not visit(rel):
            info = read_page(site, rel, root)
        else:
            try:
                page.goto(root + rel, wait_until="load")
            except PlaywrightError as exc:
                found.links.append(f"{rel}: cannot be opened ({exc.message.splitlines()[0]})")
                continue
            found.visited.append(rel)
            try:
                page.wait_for_function(PLOTS_DONE_JS, timeout=plot_timeout_ms)
            except PlaywrightError:
                found.plots.append(f"{rel}: Bokeh plots did not render within {plot_timeout_ms / 1000:g} s")
            info = page.evaluate(COLLECT_JS)
            if axe_js is not None:
                page.add_script_tag(path=str(axe_js))
                for v in page.evaluate(AXE_RUN_JS):
                    found.axe.append(f"{rel}: {v['impact']} {v['id']} ({v['help']}) on {v['count']} element(s), "
                                     f"e.g. {v['target']}: {v['summary']}")
        ids[rel] = set(info["ids"])
        found.images += [f"{rel}: image {img['src'][:120]} did not load" for img in info["images"] if not img["ok"]]
        for href in dict.fromkeys(info["links"]):
            target = site_path(href, root)
            frag = unquote(href.split("#", 1)[1]) if "#" in href else ""
            if target is None:
                found.links.append(f"{rel}: link {href} leaves the site")
            elif not (site / target).is_file():
                # a link to a folder works on a server but not from file://, so it is broken too
                found.links.append(f"{rel}: link {href} → {target or '(site root)'}, not a file of the site")
            elif target.endswith(".html"):
                if frag:
                    fragments.append((rel, target, frag))
                if target not in seen:
                    seen.add(target)
                    queue.append(target)
    page.close()

    found.links += [f"{src}: link to {target}#{frag}: no element with id {frag!r} there"
                    for src, target, frag in fragments if frag not in ids.get(target, set())]
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    found.unreached = [p for p in pages if p not in seen]
    return found
