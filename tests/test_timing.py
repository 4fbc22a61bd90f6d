"""Where the time goes: the lap timer and its table, the probe's prices, and builds that print, write and
show their timings (never in report.json), with an up-front estimate close to what the build then took."""

import json
import re
from collections import OrderedDict

import pytest
import torch
from torch import nn

from reportgen.pipeline import build
from reportgen.cli import main
from reportgen.spec import load_spec
from reportgen.timing import Probe, Rate, Timer, Work, duration, estimate_text, tsne_seconds
from tests.helpers.tiny import FASHION_DIR

SPEC = f"""
title: timed
seed: 1
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
    filters: [0, 3]
    embedding: pca
  - name: features.c3
    filters: [1]
    embedding: none
feature_vis: {{steps: 200}}   # enough work to show in a table of hundredths on a quiet machine
attribution: {{images: 1, methods: [saliency]}}
concepts: {{k: 2}}   # below block1_conv2's 6 channels: concepts run and have their row
"""
BUILD_PHASES = ["load", "receptive fields", "estimate", "dataset pass"]
END_PHASES = ["assemble", "render", "write"]


# -- the timer ---------------------------------------------------------------------------------------
def test_laps_add_up_and_layers_show_only_when_verbose():
    timer = Timer()
    timer.rows = []
    for phase, layer, seconds, cached in [("load", None, 2.0, False), ("feature_vis", "conv1", 5.0, False),
                                          ("feature_vis", "conv2", 2.0, True), ("render", None, 1.0, False)]:
        timer.last -= seconds   # as if `seconds` had passed since the previous lap
        timer.lap(phase, layer, cached)
    timer.expected = {("feature_vis", "conv1"): 4.0, ("feature_vis", "conv2"): 0.0}
    brief = timer.summary()
    assert [r["phase"] for r in brief["phases"]] == ["load", "feature_vis", "render"]
    fv = brief["phases"][1]
    assert fv["seconds"] == pytest.approx(7.0, abs=0.01) and fv["share"] == pytest.approx(70.0, abs=0.2)
    assert fv["estimate"] == 4.0 and fv["cached"] is False          # cached only if every layer was
    assert sum(r["share"] for r in brief["phases"]) == pytest.approx(100.0, abs=0.2)
    assert brief["total_seconds"] == pytest.approx(10.0, abs=0.01)
    full = timer.summary(verbose=True)
    assert [(r["phase"], r["layer"], r["cached"]) for r in full["phases"]] == [
        ("load", None, False), ("feature_vis", None, False), ("feature_vis", "conv1", False),
        ("feature_vis", "conv2", True), ("render", None, False)]
    assert "conv2" in timer.table(verbose=True) and "conv2" not in timer.table()
    line = next(l for l in timer.table(verbose=True).splitlines() if "conv2" in l)
    assert line.split()[-1] == "cached"


def test_estimate_text_and_durations():
    text = estimate_text({("dataset pass", None): 30.0, ("feature_vis", "a"): 200.0, ("feature_vis", "b"): 100.0})
    assert text.splitlines() == ["estimated time: 5.5 min (cached work counts 0)",
                                 "  dataset pass  30 s", "  feature_vis   5.0 min (2 layers)"]
    assert [duration(s) for s in (0.44, 42, 210, 9000)] == ["0.4 s", "42 s", "3.5 min", "2.5 h"]


def test_price_counts_calls_and_images_scaled_by_area_and_depth():
    probe = Probe.__new__(Probe)   # a probe's measurements, set by hand
    probe.forward, probe.backward, probe.load, probe.size = Rate(0.1, 0.01), Rate(0.2, 0.03), 0.002, (28, 28)
    probe.fraction = {"early": 0.25}
    pass_ = Work(forward=100, batch=10, loads=100)
    assert probe.price(pass_) == pytest.approx(10 * 0.1 + 100 * 0.01 + 100 * 0.002)
    early = Work(backward=10, batch=5, size=(56, 56), layer="early")   # the images' area ×4, a quarter deep
    assert probe.price(early) == pytest.approx((2 * 0.2 + 10 * 0.03 * 4) * 0.25)
    assert probe.price((pass_, early)) == pytest.approx(probe.price(pass_) + probe.price(early))
    assert probe.price(Work(tsne_points=1000)) == pytest.approx(tsne_seconds(1000)) and tsne_seconds(1000) > 0
    assert tsne_seconds(20_000) > tsne_seconds(5000) > tsne_seconds(1000)


def test_rates_fitted_to_two_batches():
    assert Probe._fit(0.3, 0.5, 5) == Rate(pytest.approx(0.25), pytest.approx(0.05))
    assert Probe._fit(0.3, 0.2, 5) == Rate(0.2, 0.0)     # noise: the images look free, the call is what shows
    assert Probe._fit(2.0, 2.0, 1) == Rate(0.0, 2.0)     # one image only (a large model): all of it per image
    calls = []

    def run(x):   # 0.1 s a call and 1 ms an image: batches grow until the images show
        calls.append(len(x))
        return 0.1 + 0.001 * len(x)
    assert Probe._rate(run, torch.zeros(1, 1, 2, 2), budget=1.0) == Rate(pytest.approx(0.1), pytest.approx(0.001))
    assert calls == [1] * 2 + [4] * 2 + [16] * 2 + [64] * 2 + [256] * 2   # each the least of two (> budget / 8 s)


# -- builds ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A cold build through the CLI with -v, then a warm one (all cached) through `build`."""
    tmp = tmp_path_factory.mktemp("timed")
    (tmp / "spec.yaml").write_text(SPEC)
    return tmp


def _table(lines: list[str]) -> list[str]:
    """The closing table in the log: its header, a row per phase (and indented layer), the total."""
    rows = "\n".join(lines).split("where the time went:\n", 1)[1].splitlines()
    return rows[:next(n for n, r in enumerate(rows) if r.startswith("total")) + 1]


def test_cold_build_prints_estimate_and_table_per_layer_with_verbose(built, capsys):
    assert main(["build", "-v", "-q", str(built / "spec.yaml"), "--out", str(built / "site")]) == 0
    err = capsys.readouterr().err.splitlines()
    start = err.index(next(l for l in err if l.startswith("estimated time: ")))
    assert err[start + 1].split()[:2] == ["dataset", "pass"]
    report = json.loads((built / "site" / "report.json").read_text())
    ran = [a["name"] for a in report["analyses"] if a["absent"] is None]
    assert {"feature_vis", "circuits", "attribution"} <= set(ran)
    table = _table(err)
    phases = [r.split("  ")[0] for r in table[1:] if not r.startswith(" ")]
    assert phases == BUILD_PHASES + ran + END_PHASES + ["total"]
    layers = [r.split()[0] for r in table if r.startswith("  ")]
    assert layers.count("block1_conv2") >= 3 and "features.c3" in layers   # feature vis, circuits, guided …
    rows = table[1:-1]
    shares = [float(re.search(r"([\d.]+) %", r).group(1)) for r in rows if not r.startswith(" ")]
    assert sum(shares) == pytest.approx(100, abs=0.05 * len(shares))
    fv = next(r for r in rows if r.startswith("feature_vis"))
    assert fv.split()[-1] != "cached" and float(fv.split()[4]) > 0    # computed, with an estimate


def test_site_has_timings_json_and_section_but_report_json_none(built):
    site = built / "site"
    times = json.loads((site / "timings.json").read_text())
    rows = times["phases"]
    assert [r["phase"] for r in rows if r["layer"] is None][:4] == BUILD_PHASES
    assert rows[-1]["phase"] == "render" and "write" not in [r["phase"] for r in rows]   # written while rendering
    assert {r["layer"] for r in rows if r["phase"] == "feature_vis"} == {None, "block1_conv2", "features.c3"}
    assert sum(r["share"] for r in rows if r["layer"] is None) == pytest.approx(100, abs=0.5)
    page = (site / "build.html").read_text()
    section = re.search(r'<section id="timings">.*?</section>', page, re.S).group(0)
    assert "<td>feature_vis</td><td>block1_conv2</td>" in section and "Where the time went" in section
    report = (site / "report.json").read_text()
    assert "seconds" not in report and "timings" not in report and "estimate" not in report


def test_warm_build_shows_cached_parts_and_estimates_nothing(built):
    log = []
    build(load_spec(built / "spec.yaml"), out=built / "site", progress=False, log=log.append)
    text = "\n".join(log)
    assert "estimated time: 0.0 s" in text
    rows = _table(log)[1:-1]
    assert not any(r.startswith(" ") for r in rows)                    # no per-layer rows without -v
    by_phase = {r.split("  ")[0]: r for r in rows}
    for phase in ["dataset pass", "feature_vis", "circuits", "attribution"]:
        assert by_phase[phase].split()[-1] == "cached", by_phase[phase]
    assert by_phase["render"].split()[-1] != "cached"
    # the pages but the timings section are the same bytes as the cold build's would be: nothing else moved
    times = json.loads((built / "site" / "timings.json").read_text())
    assert all(r["estimate"] in (None, 0.0) for r in times["phases"])


# -- the estimate's quality ---------------------------------------------------------------------------
class WideCNN(nn.Module):
    """1×64×64 → 10: enough arithmetic per image that feature vis' time is the model's, not Python's."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("c1", nn.Conv2d(1, 32, 3, padding=1)), ("r1", nn.ReLU()),
            ("c2", nn.Conv2d(32, 64, 3, padding=1)), ("r2", nn.ReLU()),
            ("c3", nn.Conv2d(64, 64, 3, padding=1)), ("r3", nn.ReLU())]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def wide_cnn() -> WideCNN:
    torch.manual_seed(0)
    return WideCNN()


WIDE_SPEC = f"""
seed: 1
model: {{factory: "tests.test_timing:wide_cnn", mean: [0.5], std: [0.25], input_size: 64}}
dataset: {{format: fashion-mnist, root: {FASHION_DIR}, limit: 40, samples: 1}}
layers: [{{name: features.c3, filters: [0, 1, 2, 3, 4, 5, 6, 7], embedding: none}}]
feature_vis: {{steps: 40, classes: []}}
circuit: {{enabled: false}}
attribution: {{enabled: false}}
concepts: {{enabled: false}}     # a feature-vis build: concepts' own synthesis and NMF would blur the ratio
unit_labels: {{enabled: false}}
"""


@pytest.fixture
def one_thread():
    """On a 2-core machine shared with other jobs, a second thread's wake-ups cost at random more than this
    model's arithmetic; with one, the probe and the build measure the same work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_estimate_is_within_3x_of_a_feature_vis_build(tmp_path, one_thread):
    """Ratios measured in one run: a loaded machine slows the probe and the build alike."""
    (tmp_path / "spec.yaml").write_text(WIDE_SPEC)
    build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda *_: None)
    rows = json.loads((tmp_path / "site" / "timings.json").read_text())["phases"]
    fv = next(r for r in rows if r["phase"] == "feature_vis" and r["layer"] is None)
    assert fv["share"] > 30, rows                       # the build's time is feature vis' …
    assert 1 / 3 <= fv["estimate"] / fv["seconds"] <= 3, fv   # … and the estimate priced it
