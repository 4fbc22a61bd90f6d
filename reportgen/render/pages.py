"""Rendering: the Report → every page, image and file of the site. A pure function of the Report and the
templates: it draws the Report's figures and fills templates, and computes nothing else.
"""

from jinja2 import ChoiceLoader, FileSystemLoader
from markupsafe import Markup

from . import plots
from .site import SiteWriter


def render_site(writer: SiteWriter, built, timings=None) -> None:
    """Write the whole site for `built` (report.Built) through `writer`.

    timings: None, or a function returning the build's time summary (timing.Timer.summary), called once
    after every other page is written so that rendering is in it: it goes to timings.json and to the
    build page, never into report.json (it is the only content that differs between two builds of a spec).
    """
    env = writer.env
    if built.template_folders:
        env.loader = ChoiceLoader([env.loader, *(FileSystemLoader(str(f)) for f in built.template_folders)])
    writer.copy_static()
    for rel in sorted(built.figures):
        writer.image(rel, built.figures[rel]())
    for rel in sorted(built.files):
        writer.bytes(rel, built.files[rel]())
    scripts = plots.copy_bokehjs(writer.root / "static") if built.widgets else []

    def bokeh(depth: int) -> Markup:
        return Markup(plots.script_tags(scripts, depth)) if scripts else Markup("")

    def widget(wid: str, root: str) -> Markup:
        script, div = built.widgets[wid](root)
        return Markup(div + "\n" + script)

    env.globals.update(widget=widget, fragments=built.templates)
    report = built.data
    writer.page("index.html", "index.html", report=report, crumbs=[], bokeh=bokeh(0))

    def top_page(rel: str, **extra) -> None:
        title = next(p["title"] for p in report["pages"] if p["page"] == rel)
        writer.page(rel, built.page_templates[rel], report=report, crumbs=[{"title": title, "page": None}],
                    bokeh=bokeh(rel.count("/")), **extra)
    for rel in built.page_templates:
        if rel != "build.html":   # last, with the timings
            top_page(rel)
    for layer in report["layers"]:
        writer.page(layer["page"], "layer.html", report=report, layer=layer, bokeh=bokeh(2),
                    crumbs=[{"title": layer["name"], "page": None}])
        fs = layer["filters"]
        for n, f in enumerate(fs):
            writer.page(f["page"], "filter.html", report=report, layer=layer, f=f, bokeh=bokeh(2),
                        prev=fs[n - 1] if n else None, next=fs[n + 1] if n + 1 < len(fs) else None,
                        crumbs=[{"title": layer["name"], "page": layer["page"]},
                                {"title": f"filter {f['index']}", "page": None}])
    writer.json("report.json", report)
    times = timings() if timings else None
    if times:
        writer.json("timings.json", times)
    top_page("build.html", timings=times)
