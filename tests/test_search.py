"""The search index (reportgen/search.py): an entry for every unit, layer and class of a built report, with the
unit's top classes as a direct computation finds them; the unit-label and concept fields read from their
analyses' parts; a script that any label can be inlined in."""

import json

import numpy as np
import pytest
import torch

from reportgen.pipeline import build
from reportgen.data import subset_indices
from reportgen.idx import load_idx_split
from reportgen.search import INDEX_FILE, index_script, search_index
from reportgen.spec import load_spec
from tests.helpers.tiny import FASHION_DIR, tiny_cnn

SPEC = f"""
title: search checks
seed: 2
model:
  factory: tests.helpers.tiny:tiny_cnn
  mean: [0.5]
  std: [0.25]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 200
  samples: 2
layers:
  - name: block1_conv2
    filters: [0, 3]
  - name: features.c3
    filters: all
feature_vis: {{enabled: false}}
circuit: {{enabled: false}}
attribution: {{enabled: false}}
"""
PREFIX = "window.REPORTGEN_SEARCH="


def read_index(path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith(PREFIX) and text.endswith(";\n")
    return json.loads(text[len(PREFIX):-2])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    (tmp / "spec.yaml").write_text(SPEC)
    out = build(load_spec(tmp / "spec.yaml"), progress=False, log=lambda *_: None)
    return out, json.loads((out / "report.json").read_text()), read_index(out / INDEX_FILE)


def test_every_filter_layer_and_class_has_an_entry_with_its_page(site):
    out, report, index = site
    units = [e for e in index if e["kind"] == "unit" and e["page"] != "layers/block1_conv2/index.html"]
    assert [(e["layer"], e["filter"]) for e in units] == [("block1_conv2", 0), ("block1_conv2", 3)] + \
        [("features.c3", f) for f in range(8)]    # tiny_cnn's c3 has 8 channels: "all" is every one
    assert [e["page"] for e in units] == [f"layers/block1_conv2/f{f}.html" for f in (0, 3)] + \
        [f"layers/features-c3/f{f}.html" for f in range(8)]
    layers = [e for e in index if e["kind"] == "layer"]
    assert [(e["layer"], e.get("path"), e["channels"], e["page"]) for e in layers] == [
        ("block1_conv2", "features.r2", 6, "layers/block1_conv2/index.html"),
        ("features.c3", None, 8, "layers/features-c3/index.html")]      # a layer named by its path says it once
    classes = [e for e in index if e["kind"] == "class"]
    assert [(e["class"], e["name"]) for e in classes] == list(enumerate(
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]))
    assert all(e["page"] == "index.html" for e in classes)
    for e in index:   # every link leads to a page of the site
        assert (out / e["page"].split("#")[0]).is_file(), e


def test_labels_and_concepts_are_those_of_report_json(site):
    """Each unit's label, AUC, p-value and significance as unit_labels put them in report.json; block1_conv2's
    channels that are not spec filters are listed when significant, linking to the layer's page; each concept
    with its label and its section of the concepts page."""
    out, report, index = site
    first = report["layers"][0]
    if first.get("unit_labels") is None:
        pytest.skip(f"unit_labels did not run: {first['absent'].get('unit_labels')}")
    expected = []
    for layer in report["layers"]:
        for u in layer["unit_labels"]["units"]:
            f = next((f for f in layer["filters"] if f["index"] == u["unit"]), None)
            if f is not None or u["significant"]:
                expected.append((layer["name"], u["unit"], f["page"] if f else layer["page"],
                                 u["label"]["text"] if u["label"] else None, u["auc"], u["p_value"], u["significant"]))
    got = [(e["layer"], e["filter"], e["page"], e.get("label"), e.get("auc"), e["p"], e["significant"])
           for e in index if e["kind"] == "unit"]
    assert sorted(got, key=str) == sorted(expected, key=str)
    assert len([g for g in got if g[2].endswith("index.html")]) == \
        sum(u["significant"] for u in first["unit_labels"]["units"] if u["unit"] not in (0, 3))
    concepts = [(e["layer"], e["concept"], e["page"], e["label"], e["auc"], e["significant"])
                for e in index if e["kind"] == "concept"]
    assert concepts == [(layer["name"], c["index"], f"{layer['concepts']['page']}#concept-{c['index']}",
                         c["label"]["text"], c["label"]["auc"], c["label"]["significant"])
                        for layer in report["layers"] if layer.get("concepts") for c in layer["concepts"]["concepts"]]
    html = {e["page"].split("#")[0]: (out / e["page"].split("#")[0]).read_text() for e in index if "#" in e["page"]}
    for e in index:   # a #fragment names an element of its page
        if "#" in e["page"]:
            page, frag = e["page"].split("#")
            assert f'id="{frag}"' in html[page], e


def test_unit_classes_are_the_top_classes_by_mean_activation(site):
    """Recomputed by hand: the tiny model over the used images, each class's mean of c3's spatial means."""
    _, _, index = site
    images, labels = load_idx_split(FASHION_DIR, "test")
    idx = subset_indices(len(images), 200, seed=2)
    x = (torch.from_numpy(images[idx]).float().unsqueeze(1) / 255 - 0.5) / 0.25
    model = tiny_cnn().eval()
    got = {}
    handle = model.features.c3.register_forward_hook(lambda m, i, o: got.update(out=o.clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    means = got["out"].mean((2, 3)).numpy()                               # (N, C)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    for e in (e for e in index if e["kind"] == "unit" and e["layer"] == "features.c3"):
        per_class = np.array([means[labels[idx] == c, e["filter"]].mean() for c in range(10)])
        assert e["classes"] == [names[c] for c in np.argsort(-per_class, kind="stable")[:3]]


def test_index_is_small(site):
    out, report, index = site
    size = (out / INDEX_FILE).stat().st_size
    # ~130 bytes an entry, ~200 with three-class labels (the demo's 173 entries: 22 KB without labels, at most
    # 46 KB with a label on every channel); report.json is many times larger
    assert size < 250 * len(index)
    assert size < (out / "report.json").stat().st_size / 20


def small_report(unit_labels=None, concepts=None, channels=()) -> dict:
    """A report's data as search_index reads it: one layer with two filters (`unit_labels`: their parts, also
    the layer's records of channels 0 and 1, followed by `channels`), two classes."""
    filters = [{"index": i, "page": f"layers/l/f{i}.html",
                "top_classes": [{"label": 1 - i, "class": "b" if i == 0 else "a", "mean": 1.0}]} for i in (0, 1)]
    layer = {"name": "block3", "path": "features.7", "page": "layers/l/index.html", "channels": 8,
             "filters": filters}
    if unit_labels is not None:
        for f, part in zip(filters, unit_labels):
            f["unit_labels"] = part
        layer["unit_labels"] = {"units": [p | {"unit": i} for i, p in enumerate(unit_labels)] + list(channels)} \
            if all(unit_labels) else None
    if concepts is not None:
        layer["concepts"] = concepts
    return {"layers": [layer], "dataset": {"classes": ["a", "b"]}}


def test_unit_labels_and_concepts_are_read_when_present():
    formula = {"terms": [{"target": 1, "name": "b", "negated": False}, {"target": 0, "name": "a", "negated": False}],
               "ops": ["OR"], "text": "b OR a"}
    parts = [{"unit": 0, "label": formula, "auc": 0.97, "p_value": 0.001, "significant": True, "positives": 9},
             {"unit": 1, "label": None, "auc": None, "p_value": 1.0, "significant": False, "positives": 0}]
    concepts = {"page": "concepts/l.html", "k": 1, "concepts": [{"index": 0, "share": 1.0, "label": {
        "text": "a", "auc": 0.91, "p_value": 0.002, "significant": True, "positives": 5}}]}
    channels = [parts[0] | {"unit": 5}, parts[1] | {"unit": 6}]   # no pages: 5 is significant, 6 is not
    index = search_index(small_report(parts, concepts, channels))
    units = [e for e in index if e["kind"] == "unit"]
    assert units[0] == {"kind": "unit", "layer": "block3", "filter": 0, "page": "layers/l/f0.html",
                        "classes": ["b"], "label": "b OR a", "auc": 0.97, "p": 0.001, "significant": True}
    assert units[1] == {"kind": "unit", "layer": "block3", "filter": 1, "page": "layers/l/f1.html",
                        "classes": ["a"], "p": 1.0, "significant": False}     # no label, no AUC: no field
    assert units[2:] == [{"kind": "unit", "layer": "block3", "filter": 5, "page": "layers/l/index.html",
                          "label": "b OR a", "auc": 0.97, "p": 0.001, "significant": True}]
    assert [e for e in index if e["kind"] == "concept"] == [
        {"kind": "concept", "layer": "block3", "concept": 0, "page": "concepts/l.html#concept-0", "label": "a",
         "auc": 0.91, "p": 0.002, "significant": True}]
    # an analysis that did not run leaves its part null: the index is the same as without it
    assert search_index(small_report([None, None], {})) == search_index(small_report())


def test_script_holds_any_label_safely_inlined():
    hostile = '</script><script>alert(1)</script> "quoted" \\ ünïcode'
    part = {"label": {"terms": [], "ops": [], "text": hostile}, "auc": 0.9, "p_value": 0.01, "significant": True}
    index = search_index(small_report([part, part]))
    script = index_script(index).decode("utf-8")
    assert "<" not in script                       # nothing an HTML parser could end the inlined <script> at
    assert json.loads(script[len(PREFIX):-2]) == index
    assert [e["label"] for e in index if e["kind"] == "unit"] == [hostile, hostile]
