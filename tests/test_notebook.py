"""A notebook, as users run one: written with nbformat, executed by nbclient in an ipykernel python3 kernel, then
exported by nbconvert. The filter and the layer's explorer display with no error, and the exported HTML holds the
filter's images and the Bokeh plot's script (offline: everything inlined)."""

import html
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
nbconvert = pytest.importorskip("nbconvert")

from tests.helpers.tiny import FASHION_DIR  # noqa: E402

pytestmark = pytest.mark.slow   # a kernel start and a build

SPEC = {"title": "notebook", "output": "site", "seed": 1,
        "model": {"factory": "tests.helpers.tiny:tiny_cnn", "mean": [0.5], "std": [0.25], "input_size": 28},
        "dataset": {"format": "fashion-mnist", "root": str(FASHION_DIR), "limit": 150, "samples": 2},
        "layers": [{"name": "block1_conv2", "filters": [0, 3], "embedding": "pca"}],
        "feature_vis": {"steps": 4, "classes": [0]}, "attribution": {"images": 1, "trust": False},
        "concepts": {"enabled": False}, "unit_labels": {"enabled": False}, "trust": {"enabled": False}}

CELLS = [
    "import reportgen",
    f"report = reportgen.build({SPEC!r}, progress=False)",
    "report",
    "report.filter('block1_conv2', 3)",
    "report.layer('block1_conv2')",
]


def _html(cell) -> str:
    return "".join(o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}))


def test_notebook_displays_filter_and_explorer(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    # the kernel inherits this process's environment and runs in tmp_path: the repository on its PYTHONPATH
    # finds the spec's factory (tests.helpers.tiny), as a user's own module beside their notebook would be
    repo = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.outputs if o["output_type"] == "error"]
    assert errors == []
    overview, filter_, layer = (_html(nb.cells[i]) for i in (2, 3, 4))
    assert "block1_conv2" in overview and str(tmp_path / "site") in overview
    doc = html.unescape(filter_)   # the page is the iframe's srcdoc attribute
    assert doc.count('src="data:image/png;base64,') >= 9 and "filter 3" in doc
    assert "Bokeh.embed.embed_items(docs_json" in html.unescape(layer)   # the explorer's plot, not only BokehJS
    assert "<script src=" not in html.unescape(layer)   # BokehJS inlined: nothing to fetch offline
    exported, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    (tmp_path / "exported.html").write_text(exported, encoding="utf-8")
    page = html.unescape(exported)
    assert page.count('src="data:image/png;base64,') >= 9
    assert "Bokeh.embed.embed_items(docs_json" in page and exported.count("<iframe ") == 2
