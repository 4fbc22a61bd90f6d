"""The Python API, for notebooks and scripts: `reportgen.build(spec)` with the CLI's contract, and `Report`.

    import reportgen
    report = reportgen.build("configs/fashion_mnist.yaml")   # a path, a dict or a Spec
    report                                                    # in Jupyter: a compact overview
    report.filter("block3_conv1", 31)                         # that filter's page, inline
    report.layer("block3_conv1")                              # the layer's page, its explorer included

A dict spec is the YAML spec as Python values; it may hold the model and the dataset as objects
(`model: {module: net, ...}`, `dataset: {data: torch_dataset}`, see spec.py). Its relative paths, its `output`
(default `reportgen-site`) and its cache (`.reportgen-cache`) are relative to the current directory.
Errors are the CLI's exceptions (errors.py): a SpecError carries the dotted key (`.key`; every error in `.errors`).
"""

from __future__ import annotations

import json
import os
import sys
import webbrowser
from pathlib import Path

from . import notebook
from .errors import SpecError
from .spec import Spec, load_spec, validate_spec

DEFAULT_OUTPUT = "reportgen-site"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def as_spec(spec: str | os.PathLike | dict | Spec) -> Spec:
    """A spec file's path, a dict (relative to the current directory) or a Spec → the validated Spec."""
    if isinstance(spec, (str, os.PathLike)):
        return load_spec(spec)
    if isinstance(spec, dict):
        return validate_spec({"output": DEFAULT_OUTPUT} | spec, Path.cwd())
    if isinstance(spec, Spec):   # made in Python: paths not yet resolved, unless it came from load_spec
        return spec if spec.spec_path else validate_spec(spec.model_copy(), Path.cwd())
    raise SpecError("(spec)", f"a {type(spec).__name__} is no spec; give a YAML file's path, a dict or a Spec")


def build(spec: str | os.PathLike | dict | Spec, out: str | os.PathLike | None = None, *, use_cache: bool = True,
          progress: bool = True, strict: bool = False, log=_stderr) -> Report:
    """Build the site, as `reportgen build SPEC [--out OUT] [--no-cache] [--strict]` does; returns its Report.

    Progress and the time table go to `log` (stderr, like the CLI). Raises what the CLI reports: SpecError with
    the key, ModelError, DataError, RenderError (all ReportgenError)."""
    from .pipeline import build as build_site   # torch and the analyses: imported when a build runs
    site = build_site(as_spec(spec), out=Path(out).absolute() if out else None, use_cache=use_cache,
                      progress=progress, log=log, strict=strict)
    return Report.load(site)


class Report:
    """A built site: `data` is its report.json, typed (schema.report_model: `report.data.layers[0].filters`), and
    `site` its directory. Fields of the data read as attributes too (`report.model.sha256`).

    In Jupyter the report shows an overview; `filter`, `layer` and `page` return a page of the site to display
    inline, self-contained (images and scripts embedded), so it survives an exported notebook."""

    def __init__(self, data, site: Path):
        self.data, self.site = data, Path(site)

    @classmethod
    def load(cls, site: str | os.PathLike) -> Report:
        """The Report of a site already built (its report.json)."""
        from .analyses import ANALYSES
        from .schema import report_model
        path = Path(site) / "report.json"
        if not path.is_file():
            raise SpecError("SITE", f"{str(site)!r} has no report.json; build it first with reportgen.build(spec)")
        return cls(report_model(ANALYSES).model_validate(json.loads(path.read_text(encoding="utf-8"))), site)

    def __getattr__(self, name: str):
        if name.startswith("_") or "data" not in self.__dict__:   # IPython's _repr_*_ probes, unpickling
            raise AttributeError(name)
        return getattr(self.data, name)

    def layer(self, name: str) -> notebook.Page:
        """The page of a layer, by its name in the spec or its module path."""
        return notebook.Page(self.site, self._layer(name).page, f"layer {name}")

    def filter(self, layer: str, index: int) -> notebook.Page:
        """The page of filter `index` of `layer` (one of the spec's `layers[].filters`)."""
        found = self._layer(layer)
        f = next((f for f in found.filters if f.index == index), None)
        if f is None:
            shown = ", ".join(str(f.index) for f in found.filters[:12]) + (", …" if len(found.filters) > 12 else "")
            raise LookupError(f"layer {layer!r} has no filter {index} in this report; its filters: {shown}")
        return notebook.Page(self.site, f.page, f"{layer} filter {index}")

    def page(self, title: str) -> notebook.Page:
        """A page beyond the overview, layers and filters (Attribution, Accuracy, Build ...), by its title."""
        found = next((p for p in self.data.pages if p.title.lower() == title.lower()), None)
        if found is None:
            raise LookupError(f"no page {title!r}; pages: {', '.join(p.title for p in self.data.pages)}")
        return notebook.Page(self.site, found.page, found.title)

    def overview(self) -> notebook.Page:
        """The site's own overview page (index.html), inline."""
        return notebook.Page(self.site, "index.html", "overview")

    def open(self) -> bool:
        """Open the site in the web browser."""
        return webbrowser.open((self.site / "index.html").absolute().as_uri())

    def _layer(self, name: str):
        found = next((l for l in self.data.layers if name in (l.name, l.path)), None)
        if found is None:
            raise LookupError(f"no layer {name!r} in this report; layers: "
                              f"{', '.join(l.name for l in self.data.layers)}")
        return found

    def _repr_html_(self) -> str:
        return notebook.overview_html(self.data.model_dump(mode="json", by_alias=True), self.site)

    def __repr__(self) -> str:
        return f"<reportgen.Report {self.data.title!r}: {len(self.data.layers)} layers, site {str(self.site)!r}>"
