"""The header's search box in Chromium, from file://, served under /sub/path/ and in the single file: a layer and
filter number, a class, a unit's label each list the right entries first, in the order report.json implies, and
the keyboard opens the first one; without JavaScript the box is not shown."""

import json
import re
from pathlib import Path

import pytest

from reportgen.pipeline import build
from reportgen.single_file import bundle, page_id
from reportgen.spec import load_spec
from tests.browser.crawler import AXE_RUN_JS
from tests.helpers.planted_detectors import PLANTED
from tests.helpers.tiny import FASHION_DIR

pytestmark = pytest.mark.browser
MODES = ["file", "served", "single"]
PLANTED_SPEC = f"""
title: Planted detectors
seed: 0
model:
  factory: tests.helpers.planted_detectors:planted_cnn
  mean: [0.2860]
  std: [0.3530]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 600
  samples: 1
layers:
  - name: detectors
    filters: [0, 1, 4]
feature_vis: {{enabled: false}}
circuit: {{enabled: false}}
attribution: {{enabled: false}}
concepts: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def report(built) -> dict:
    return json.loads((built[0] / "report.json").read_text())


def start(browser, built, serve, mode):
    """A page open where a reader would search from: a filter page two folders down (links go up to the root),
    or the single file. Returns (page, the site's root URL or None for the single file, console errors)."""
    site, single = built
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda exc: errors.append(f"uncaught {exc}"))
    if mode == "single":
        page.goto(single.as_uri())
        return page, None, errors
    root = site.as_uri() + "/" if mode == "file" else serve(site)
    first = json.loads((site / "report.json").read_text())["layers"][0]["filters"][0]["page"]
    page.goto(root + first)
    return page, root, errors


def results(page, query: str) -> list[str]:
    """Type `query` into the box; the listed results' texts."""
    page.fill("#search-q", query)
    page.wait_for_function("() => !document.getElementById('search-results').hidden")
    return page.locator("#search-results a").all_inner_texts()


def opened(page, root, rel: str) -> None:
    """`rel` (a site page, maybe with a #fragment) is what the browser shows now."""
    if root is None:   # the single file: its section is the one shown
        section = page_id(rel.split("#")[0])
        page.wait_for_function("(id) => { const s = document.getElementById(id); return s && !s.hidden; }",
                               arg=section)
        assert page.evaluate("location.hash").startswith(f"#{section}")
    else:
        page.wait_for_url(root + rel)


@pytest.mark.parametrize("mode", MODES)
def test_layer_and_filter_number_opens_that_filter_from_the_keyboard(browser, built, serve, report, mode):
    layer = report["layers"][-1]
    f = layer["filters"][-1]
    page, root, errors = start(browser, built, serve, mode)
    listed = results(page, f"{layer['name']} {f['index']}")
    assert listed[0].startswith(f"{layer['name']} filter {f['index']}")
    assert len(listed) == 1     # the layer's name and the number: that one unit (no other layer shares the name)
    assert page.inner_text("form.search .search-status") == "1 result"
    page.keyboard.press("ArrowDown")                 # into the list: the first result has the focus
    assert page.evaluate("document.activeElement.textContent") == listed[0]
    page.keyboard.press("Enter")
    opened(page, root, f["page"])
    heading = f"#{page_id(f['page'])} h1" if root is None else "h1"
    assert f"filter {f['index']}" in page.inner_text(heading)
    assert not errors, errors
    page.close()


def unit_of(text: str) -> tuple[str, int]:
    """(layer, filter) of a listed unit ("block1_conv2 filter 3 — …")."""
    layer, rest = text.split(" filter ", 1)
    return layer, int(rest.split(" ")[0])


def found_by_class(report: dict, name: str) -> set[str]:
    """What a class's name finds, as listed: the class, the units ranking it among their first 3 classes by
    mean activation or naming it in their label, the concepts naming it in theirs."""
    def named(label) -> bool:
        return bool(label) and name in [t["name"] for t in label["terms"]]
    found = {f"class {name}"}
    for layer in report["layers"]:
        pages = {f["index"]: f for f in layer["filters"]}
        labels = {u["unit"]: u for u in (layer.get("unit_labels") or {"units": []})["units"]}
        for unit in sorted(set(pages) | {u for u, r in labels.items() if r["significant"]}):
            classes = [c["class"] for c in pages[unit]["top_classes"][:3]] if unit in pages else []
            if name in classes or named((labels.get(unit) or {}).get("label")):
                found.add(f"{layer['name']} filter {unit}")
        for c in (layer.get("concepts") or {"concepts": []})["concepts"]:
            if name in [t["name"] for t in c["label"].get("terms", [])] or c["label"]["text"] == name:
                found.add(f"{layer['name']} concept {c['index']}")
    return found


def distinct_class(report: dict) -> str:
    """A class of the first filter's top classes whose name starts no word of another class's name (the query
    "shirt" also finds "T-shirt/top")."""
    classes = report["dataset"]["classes"]
    words = {c: set(re.split(r"[^a-z0-9]+", c.lower())) | {c.lower()} for c in classes}
    for c in (t["class"] for t in report["layers"][0]["filters"][0]["top_classes"]):
        if not any(w.startswith(c.lower()) for other in classes if other != c for w in words[other]):
            return c
    raise AssertionError("no class of the first filter has a name of its own")


@pytest.mark.parametrize("mode", ["file", "single"])
def test_a_class_finds_the_class_and_every_unit_of_it(browser, built, serve, report, mode):
    name = distinct_class(report)
    expected = found_by_class(report, name)
    page, root, errors = start(browser, built, serve, mode)
    listed = results(page, name.lower())
    heads = {re.match(r"(class .+|\S+ (?:filter|concept) \d+)", t.split(" — ")[0].split(" · ")[0]).group(1)
             for t in listed}
    assert page.inner_text("form.search .search-status").split(" ")[0] == str(len(expected))
    assert heads <= expected and len(heads) == min(len(expected), 20)
    page.locator("#search-results a", has_text=f"class {name}").click()
    opened(page, root, "index.html")
    assert not errors, errors
    page.close()


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path]:
    """(site, single file) of the network with planted detectors (tests/helpers/planted_detectors.py): its
    `detectors` layer's unit 0 is the probability of Trouser, unit 4 a class-blind hash."""
    folder = tmp_path_factory.mktemp("planted")
    (folder / "spec.yaml").write_text(PLANTED_SPEC)
    out = build(load_spec(folder / "spec.yaml"), out=folder / "site", progress=False, log=lambda *_: None)
    bundle(out, folder / "site.html")
    return out, folder / "site.html"


def exact_label_order(report: dict, text: str) -> list[tuple[str, int]]:
    """The units labelled exactly `text`, significantly: by AUC, ties in the report's order."""
    found = [(-u["auc"], n, layer["name"], u["unit"])
             for layer in report["layers"] for n, u in enumerate(layer["unit_labels"]["units"])
             if u["significant"] and u["label"] and u["label"]["text"].lower() == text.lower()]
    return [(layer, unit) for *_, layer, unit in sorted(found)]


@pytest.mark.parametrize("mode", MODES)
def test_a_planted_units_class_lists_that_unit_first_and_opens_its_page(browser, planted, serve, mode):
    report = json.loads((planted[0] / "report.json").read_text())
    assert PLANTED[0] == "Trouser"
    page, root, errors = start(browser, planted, serve, mode)
    listed = [unit_of(t) for t in results(page, "trouser") if " filter " in t]
    assert listed[0] == ("detectors", 0)                       # the planted Trouser detector, first
    expected = exact_label_order(report, "Trouser")
    assert listed[:len(expected)] == expected                   # then the other units labelled Trouser, by AUC
    page.locator("#search-results a").first.click()
    opened(page, root, "layers/detectors/f0.html")
    assert not errors, errors
    page.close()


def test_auc_filter_keeps_only_units_above_it(browser, built, report):
    # the units in the index: the spec filters, and the other channels with a significant label
    records = [u for layer in report["layers"] if layer.get("unit_labels") for u in layer["unit_labels"]["units"]
               if u["significant"] or u["unit"] in {f["index"] for f in layer["filters"]}]
    units = [(not u["significant"], -u["auc"], n) for n, u in enumerate(records) if u["auc"] is not None]
    if not units:
        pytest.skip("no unit of this report has an AUC (unit_labels not in its data)")
    cut = sorted(-auc for _, auc, _ in units)[len(units) // 2]
    page = browser.new_page()
    page.goto((built[0] / "index.html").as_uri())
    listed = results(page, f"unit AUC > {cut}")       # "unit": units only (concepts have an AUC too)
    shown = [float(t.split("AUC ")[1].split(" ")[0]) for t in listed]
    # significant labels first, then by AUC (ties in the report's order)
    expected = [-auc for _, auc, _ in sorted(u for u in units if -u[1] > cut)][:20]
    assert shown == pytest.approx(expected, abs=0.006)
    page.close()


def test_nothing_found_is_said_and_escape_closes_the_list(browser, built):
    page = browser.new_page()
    page.goto((built[0] / "index.html").as_uri())
    assert results(page, "zzqx") == []
    assert page.inner_text("#search-results") == "nothing matches"
    assert page.inner_text("form.search .search-status") == "0 results"
    page.keyboard.press("Escape")
    assert page.is_hidden("#search-results")
    page.close()


def test_without_javascript_the_box_is_not_shown(browser, built):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto((built[0] / "index.html").as_uri())
    assert page.locator("form.search").count() == 1 and page.is_hidden("form.search")
    context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_with_the_results_open(browser, built, serve, axe_js, scheme):
    context = browser.new_context(color_scheme=scheme, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(serve(built[0]) + "index.html", wait_until="load")
    assert len(results(page, "unit")) > 1              # the word "unit" lists every unit
    page.keyboard.press("ArrowDown")                   # a result focused, as a keyboard user sees it
    page.add_script_tag(path=str(axe_js))
    problems = [f"{v['impact']} {v['id']} on {v['count']} element(s), e.g. {v['target']}: {v['summary']}"
                for v in page.evaluate(AXE_RUN_JS)]
    context.close()
    assert not problems, "axe-core violations:\n" + "\n".join(problems)
