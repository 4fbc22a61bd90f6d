"""The search index: what the header's search box (templates/static/search.js) looks through.

`search_index(report)` derives it from the Report's data (report.json) at assembly time: one entry per unit
with a page (layer, filter index, its top classes and, when the `unit_labels` analysis ran, its label, AUC and
significance), per other channel with a significant label (linking to its layer's page), per layer, per
concept of the `concepts` analysis, per class. `index_script(entries)` is the file the pages load,
`search-index.js`: a script setting a global rather than a JSON file, because a page opened from file:// may
not fetch() a file beside it, while it may run a relative <script src>.
"""

from __future__ import annotations

import json

INDEX_FILE = "search-index.js"
TOP_CLASSES = 3   # a unit is found by its first few classes by mean activation, ranked in that order


def search_index(report: dict) -> list[dict]:
    """Entries, each with `kind` ("unit", "layer", "concept" or "class"), its names and the site-relative
    `page` it links to; None fields are left out (a report without unit labels has no `label`/`auc`)."""
    entries: list[dict] = []
    for layer in report["layers"]:
        entries.append(_layer(layer))
        entries += [_unit(layer, f) for f in layer["filters"]]
        entries += _labelled_channels(layer)
        entries += _concepts(layer)
    entries += [{"kind": "class", "name": name, "class": i, "page": "index.html"}
                for i, name in enumerate(report["dataset"]["classes"])]
    return [{k: v for k, v in e.items() if v is not None} for e in entries]


def _layer(layer: dict) -> dict:
    # the spec's name and the module path both find a layer ("block3", "features.c3")
    return {"kind": "layer", "layer": layer["name"], "path": layer["path"] if layer["path"] != layer["name"] else None,
            "page": layer["page"], "channels": layer["channels"]}


def _unit(layer: dict, f: dict) -> dict:
    entry = {"kind": "unit", "layer": layer["name"], "filter": f["index"], "page": f["page"],
             "classes": [c["class"] for c in f["top_classes"][:TOP_CLASSES]]}
    return entry | _unit_label(f.get("unit_labels"))


def _unit_label(part: dict | None) -> dict:
    """A unit's label from the `unit_labels` analysis' record of it (null when the analysis did not run)."""
    if not part:
        return {}
    return _label(part | {"text": part["label"]["text"] if part.get("label") else None})


def _labelled_channels(layer: dict) -> list[dict]:
    """Channels with a significant label but no page of their own (not spec filters): found all the same, they
    link to their layer's page, whose tables name them."""
    part = layer.get("unit_labels")
    if not part:
        return []
    pages = {f["index"] for f in layer["filters"]}
    return [{"kind": "unit", "layer": layer["name"], "filter": u["unit"], "page": layer["page"]} | _unit_label(u)
            for u in part["units"] if u["significant"] and u["unit"] not in pages]


def _label(label: dict) -> dict:
    return {"label": label.get("text"), "auc": label.get("auc"), "p": label.get("p_value"),
            "significant": label.get("significant")}


def _concepts(layer: dict) -> list[dict]:
    """The `concepts` analysis' part of a layer: one page per layer, a section per concept."""
    part = layer.get("concepts")
    if not part:
        return []
    return [{"kind": "concept", "layer": layer["name"], "concept": c["index"],
             "page": f"{part['page']}#concept-{c['index']}"} | _label(c["label"]) for c in part["concepts"]]


def index_script(entries: list[dict]) -> bytes:
    """search-index.js: `window.REPORTGEN_SEARCH = [...]`, compact; '<' escaped so that the script can be
    inlined in an HTML page (the single-file report) whatever a label holds."""
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    return f"window.REPORTGEN_SEARCH={text};\n".encode("utf-8")
