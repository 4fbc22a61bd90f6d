"""The analysis contract: a new analysis in one module and one template reaches the pages and report.json,
is cached (a second build computes nothing), and the runner orders, skips and explains."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from reportgen.analyses import ANALYSES
from reportgen.analysis import Analysis, check_analyses, ordered, run_analyses
from reportgen.pipeline import build, prepare
from reportgen.errors import ReportgenError
from reportgen.evidence import gather_evidence
from reportgen.schema import json_schema, report_model
from reportgen.spec import load_spec
from tests.helpers.tiny import FASHION_DIR, tiny_cnn
from tests.helpers.weight_norm import WeightNorm

SPEC = f"""
title: contract
seed: 3
model:
  factory: tests.helpers.tiny:tiny_cnn
  mean: [0.5]
  std: [0.25]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 120
  samples: 2
layers:
  - name: block1_conv2
    filters: [0, 3, 5]
  - name: features.c3
    filters: [1, 2]
feature_vis: {{enabled: false}}
attribution: {{enabled: false}}
"""


def _spec(tmp_path: Path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    return load_spec(tmp_path / "spec.yaml")


def _build(spec, analyses):
    lines = []
    out = build(spec, progress=False, log=lines.append, analyses=analyses)
    return out, json.loads((out / "report.json").read_text()), lines


def test_a_new_analysis_reaches_pages_and_report_and_is_cached(tmp_path):
    spec = _spec(tmp_path)
    analyses = [*ANALYSES, WeightNorm()]
    out, report, lines = _build(spec, analyses)
    assert any(l.startswith("weight_norm:") and "computed" in l for l in lines)
    model = tiny_cnn()
    convs = {"block1_conv2": model.features.c2, "features.c3": model.features.c3}
    for layer in report["layers"]:
        w = convs[layer["name"]].weight.detach().double()
        norms = {f["index"]: float(w[f["index"]].norm()) for f in layer["filters"]}
        expected_rank = {f: r + 1 for r, f in enumerate(sorted(norms, key=lambda f: -norms[f]))}
        for f in layer["filters"]:
            got = f["weight_norm"]
            assert got["norm"] == pytest.approx(norms[f["index"]], rel=1e-9)
            assert got["rank"] == expected_rank[f["index"]]
            page = (out / f["page"]).read_text()
            shown = f"{norms[f['index']]:.4g}"          # the page's 4 significant digits
            assert f"data-weight-norm>{shown}</span>" in page
    assert "weight_norm" in [a["name"] for a in report["analyses"]]
    report_model(analyses).model_validate(report)      # report.json holds to its schema, the new part included

    out, report2, lines = _build(spec, analyses)       # nothing changed: nothing is computed
    assert lines[-1].endswith("computed: nothing (all cached)"), lines[-1]
    assert report2 == report

    class WeightNorm2(WeightNorm):
        version = 2                                     # a changed meaning: only this analysis recomputes
    _, _, lines = _build(spec, [*ANALYSES, WeightNorm2()])
    assert lines[-1].split("computed: ")[1] == "weight_norm:block1_conv2, weight_norm:features.c3"


class _NormShare(Analysis):
    """Reads weight_norm's artifact in compute: each filter's share of the layer's spec-filter norms."""
    name = "norm_share"
    per_layer = True
    requires = ("weight_norm",)

    def compute(self, ctx, layer):
        art = ctx.artifact("weight_norm", layer)
        return {"share": art["norm"] / art["norm"].sum()}

    def report(self, ctx, artifacts, out):
        pass


def test_an_analysis_reads_what_it_requires_and_recomputes_when_that_changes(tmp_path):
    spec = _spec(tmp_path)
    reader = _NormShare()
    ctx = prepare(spec, log=lambda *_: None)
    ctx.progress = False
    gather_evidence(ctx)
    outcomes = run_analyses(ctx, check_analyses(ctx, [WeightNorm(), reader]))
    model = tiny_cnn()
    w = model.features.c3.weight.detach().double()[[1, 2]].flatten(1).norm(dim=1).numpy()
    np.testing.assert_allclose(outcomes["norm_share"].artifact["features.c3"]["share"], w / w.sum(), rtol=1e-9)

    class WeightNorm2(WeightNorm):
        version = 2                                     # what the reader reads changed: the reader recomputes
    analyses = [*ANALYSES, WeightNorm(), reader]
    _build(spec, analyses)
    _, _, lines = _build(spec, analyses)
    assert lines[-1].endswith("computed: nothing (all cached)")
    _, _, lines = _build(spec, [*ANALYSES, WeightNorm2(), reader])
    assert set(lines[-1].split("computed: ")[1].split(", ")) == {
        f"{n}:{layer}" for n in ("weight_norm", "norm_share") for layer in ("block1_conv2", "features.c3")}


class _Named(Analysis):
    def __init__(self, name, requires=(), uses=()):
        self.name, self.requires, self.uses = name, requires, uses


def test_order_follows_requires_and_uses_then_registry_order():
    a, b, c, d = _Named("a", requires=("c",)), _Named("b"), _Named("c", uses=("d", "missing")), _Named("d")
    assert [x.name for x in ordered([a, b, c, d])] == ["d", "c", "a", "b"]
    with pytest.raises(ReportgenError, match="'a' requires 'z', which is not registered"):
        ordered([_Named("a", requires=("z",))])
    with pytest.raises(ReportgenError, match="depends on itself"):
        ordered([_Named("a", requires=("b",)), _Named("b", requires=("a",))])


class _NeverApplies(Analysis):
    name = "never"
    SiteResult = dict

    def applies(self, ctx, layer=None):
        return "this model has no such thing"


class _NeedsNever(Analysis):
    name = "needs_never"
    requires = ("never",)

    def compute(self, ctx, layer):   # pragma: no cover - must not run
        raise AssertionError("a skipped requirement must skip this analysis")


def test_skipped_analyses_say_why_in_report_and_on_the_overview(tmp_path):
    out, report, _ = _build(_spec(tmp_path), [*ANALYSES, _NeverApplies(), _NeedsNever()])
    status = {a["name"]: a for a in report["analyses"]}
    assert status["never"] == {"name": "never", "version": 1, "absent": "this model has no such thing"}
    assert status["needs_never"]["absent"] == "needs never, which cannot run"
    assert status["feature_vis"]["absent"] == "turned off in the spec (feature_vis.enabled: false)"
    assert status["circuits"]["absent"] is None
    assert report["never"] is None
    index = (out / "index.html").read_text()
    assert "this model has no such thing" in index and "needs never, which cannot run" in index


def test_per_layer_skip_reason_is_on_the_layer(tmp_path):
    ctx = prepare(_spec(tmp_path), log=lambda *_: None)
    ctx.progress = False
    gather_evidence(ctx)

    class OnlyFirst(WeightNorm):
        def applies(self, ctx, layer=None):
            return "not this one" if layer is not None and layer.name == "features.c3" else None
    outcome = run_analyses(ctx, check_analyses(ctx, [OnlyFirst()]))["weight_norm"]
    assert list(outcome.artifact) == ["features.r2"] and outcome.layers_absent == {"features.c3": "not this one"}


def test_the_schema_in_docs_is_current():
    """docs/report.schema.json is what `reportgen schema` prints (regenerate it when the report changes)."""
    committed = json.loads((Path(__file__).parent.parent / "docs" / "report.schema.json").read_text())
    assert committed == json_schema(ANALYSES)
    assert committed["properties"]["schema_version"]["type"] == "integer"
    assert "circuits" in json.dumps(committed) and "feature_vis" in json.dumps(committed)


def test_report_data_holds_no_markup_or_colours(tmp_path):
    _, report, _ = _build(_spec(tmp_path), ANALYSES)
    text = json.dumps(report)
    for banned in ("<svg", "<div", "<script", "#ff", "polyline", "style="):
        assert banned not in text
    assert not any(isinstance(v, str) and v.startswith("#") and len(v) == 7 for v in _strings(report))


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


class _FailsOnC3(WeightNorm):
    name = "fails_on_c3"

    def compute(self, ctx, layer):
        if layer.name == "features.c3":
            raise RuntimeError("cannot run here\nsecond line")
        return super().compute(ctx, layer)


def test_an_analysis_that_fails_late_leaves_a_note_and_keeps_the_rest(tmp_path):
    spec = _spec(tmp_path)
    out, report, lines = _build(spec, [*ANALYSES, _FailsOnC3()])
    c3 = report["layers"][1]
    assert c3["absent"]["fails_on_c3"] == "failed: RuntimeError: cannot run here"
    assert all(f["fails_on_c3"] is None for f in c3["filters"])
    assert all(f["fails_on_c3"]["norm"] > 0 for f in report["layers"][0]["filters"])
    assert "warning: fails_on_c3 on features.c3 failed: RuntimeError: cannot run here; the report is built without it" in lines
    page = (out / c3["filters"][0]["page"]).read_text()
    assert "is not shown for this layer: failed: RuntimeError: cannot run here." in page
    _, _, lines = _build(spec, [*ANALYSES, _FailsOnC3()])      # what succeeded is cached; the failure is retried
    assert lines[-1].split("computed: ")[1] == "nothing (all cached)"


STRICT_SPEC = SPEC.replace("  - name: features.c3\n    filters: [1, 2]\n", "  - name: fc\n    filters: [0]\n").replace(
    "attribution: {enabled: false}", "attribution: {images: 1, methods: [saliency], sanity_check: false}\n"
                                     "concepts: {k: 4}")   # below block1_conv2's 6 channels: concepts apply


def test_strict_turns_notes_into_one_error_before_the_pass(tmp_path):
    import subprocess
    import sys
    (tmp_path / "spec.yaml").write_text(STRICT_SPEC)
    cmd = [sys.executable, "-m", "reportgen", "build", str(tmp_path / "spec.yaml"), "-q"]
    run = subprocess.run(cmd + ["--strict"], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert run.returncode == 2
    errors = [l for l in run.stderr.splitlines() if l.startswith("error:")]
    assert errors == ["error: --strict: 2 part(s) of the report cannot be made: circuits on fc: no circuit: layer 'fc' "
                      "is not the output of a conv, a sum or a concatenation: it comes from Linear 'fc'; "
                      "guided_backprop on fc: guided backprop needs a spatial layer"], run.stderr
    assert "dataset pass" not in run.stderr and not (tmp_path / "site").exists()
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "site" / "report.json").read_text())
    assert report["layers"][1]["absent"] == {"circuits": report["layers"][1]["absent"]["circuits"],
                                             "guided_backprop": "guided backprop needs a spatial layer"}
    page = (tmp_path / "site" / report["layers"][1]["filters"][0]["page"]).read_text()
    assert "Guided backprop</strong> is not shown for this layer: guided backprop needs a spatial layer." in page


def _tree(root: Path) -> dict[str, bytes]:
    """Every file's bytes but the wall-clock timings (timings.json, build.html's timings section)."""
    return {p.relative_to(root).as_posix(): re.sub(rb'<section id="timings">.*?</section>', b"", p.read_bytes(), flags=re.S)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "timings.json"}


def test_a_cold_build_and_a_warm_rebuild_write_the_same_bytes(tmp_path):
    """A fresh result is used as the cache gives it back (e.g. `meta`'s key order), so the cache never shows."""
    spec = _spec(tmp_path)
    cold = _tree(build(spec, progress=False, log=lambda *_: None, use_cache=False))
    build(spec, progress=False, log=lambda *_: None)                          # fills the cache
    lines = []
    warm = _tree(build(spec, progress=False, log=lines.append))               # reads it
    assert lines[-1].endswith("computed: nothing (all cached)")
    assert warm.keys() == cold.keys()
    assert [k for k in cold if cold[k] != warm[k]] == []


def test_the_cache_key_follows_what_the_model_is_fed(tmp_path):
    """Same weights and data, another input size or normalization: nothing may come from the cache."""
    spec = _spec(tmp_path)
    build(spec, progress=False, log=lambda *_: None)
    for change in ("  input_size: 28\n", "  std: [0.25]\n"):
        new = SPEC.replace(change, {"  input_size: 28\n": "  input_size: [28, 24]\n",
                                    "  std: [0.25]\n": "  std: [0.3]\n"}[change])
        (tmp_path / "spec.yaml").write_text(new)
        lines = []
        build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lines.append)
        assert "record" in lines[-1].split("computed: ")[1], (change, lines[-1])


def test_a_key_excluded_from_an_analysis_leaves_its_cache_key_alone(tmp_path):
    """attribution.trust scores the maps: changing it re-keys attribution_trust only, not the maps it reads."""
    from reportgen.analysis import result_key

    spec = _spec(tmp_path)
    spec.attribution.enabled = True
    ctx = prepare(spec, log=lambda *_: None)
    by_name = {a.name: a for a in ANALYSES}
    check_analyses(ctx, ANALYSES)
    ctx.evidence_key = "pass"
    layer = ctx.layers[0]
    before = {n: result_key(ctx, by_name[n], layer if by_name[n].per_layer else None)
              for n in ("attribution", "guided_backprop", "attribution_trust")}
    ctx.spec.attribution.trust.steps += 1
    after = {n: result_key(ctx, by_name[n], layer if by_name[n].per_layer else None) for n in before}
    assert after["attribution"] == before["attribution"] and after["guided_backprop"] == before["guided_backprop"]
    assert after["attribution_trust"] != before["attribution_trust"]
    ctx.spec.attribution.images += 1                 # the maps' own settings still re-key them, and their reader
    again = {n: result_key(ctx, by_name[n], layer if by_name[n].per_layer else None) for n in before}
    assert again["attribution"] != after["attribution"] and again["attribution_trust"] != after["attribution_trust"]
