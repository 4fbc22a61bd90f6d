"""The FeatureVis analysis: its loop settings, and a stopped build resuming with the batches it had finished.

FeatureVis caches each optimizer batch on its own (`Context.cached_parts`): the build is interrupted after
two of three batches of a layer, and the rerun must synthesize only the third and give the bytes of a build
that was never interrupted (built in another folder, so with its own cache).
"""

import json
from pathlib import Path

import pytest
import torch

import reportgen.analyses.feature_vis as feature_vis
from reportgen.analyses.featvis import Optimizer
from reportgen.pipeline import build
from reportgen.spec import FeatureVisSpec, load_spec
from tests.helpers.tiny import FASHION_DIR

SPEC = f"""
seed: 3
model:
  factory: tests.helpers.tiny:tiny_cnn
  mean: [0.5]
  std: [0.25]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 60
  samples: 2
layers:
  - name: features.c3
    filters: [0, 1, 2, 3, 4, 5]
feature_vis: {{steps: 5, batch_size: 2, classes: []}}
circuit: {{enabled: false}}
attribution: {{enabled: false}}
"""


SYNTHESIZE = feature_vis.synthesize


class Stop(BaseException):
    """Stands for a kill: not an Exception, so no analysis catches it."""


def counting(monkeypatch, stop_after=None) -> list:
    """Record the units of every `synthesize` call FeatureVis makes; raise Stop once `stop_after` are done."""
    calls = []

    def synthesize(model, objective, *args, **kwargs):
        if stop_after is not None and len(calls) == stop_after:
            raise Stop
        calls.append(list(objective.units))
        return SYNTHESIZE(model, objective, *args, **kwargs)
    monkeypatch.setattr(feature_vis, "synthesize", synthesize)
    return calls


def build_in(folder: Path) -> tuple[dict, dict[str, bytes]]:
    folder.mkdir(exist_ok=True)
    (folder / "spec.yaml").write_text(SPEC)
    out = build(load_spec(folder / "spec.yaml"), progress=False, log=lambda *_: None)
    filters = json.loads((out / "report.json").read_text())["layers"][0]["filters"]
    vis = {f["index"]: f["feature_vis"] for f in filters}
    return vis, {p.name: p.read_bytes() for p in sorted(out.rglob("*_vis.png"))}


def test_a_stopped_build_resumes_with_its_finished_batches(tmp_path, monkeypatch):
    calls = counting(monkeypatch, stop_after=2)
    with pytest.raises(Stop):
        build_in(tmp_path / "stopped")
    assert calls == [[0, 1], [2, 3]]

    calls = counting(monkeypatch)
    resumed = build_in(tmp_path / "stopped")
    assert calls == [[4, 5]]                       # only the batch the stop interrupted

    calls = counting(monkeypatch)
    whole = build_in(tmp_path / "whole")
    assert calls == [[0, 1], [2, 3], [4, 5]]
    assert resumed[0] == whole[0]
    assert len(whole[1]) == 6 and resumed[1] == whole[1]


def test_coarse_to_fine_only_where_the_images_can_shrink():
    s = FeatureVisSpec(progressive=True, steps=96, lr=0.1, settle=0.5, precision="float32")
    opt = feature_vis.optimizer_for(s, (128, 96), "channel", seed=2)
    assert opt == Optimizer(steps=96, lr=0.1, seed=2, batch_size=64, sizes=feature_vis.PROGRESSIVE_SIZES,
                            settle=0.5, autocast=None)
    assert feature_vis.optimizer_for(s, (128, 96), "channel", seed=2, device="cuda").batch_size == 256
    assert feature_vis.optimizer_for(s, (28, 28), "channel", seed=2).sizes == (1.0,)     # too small to shrink
    assert feature_vis.optimizer_for(s, (128, 128), "logit", seed=2).sizes == (1.0,)     # the model's fixed input
    assert feature_vis.optimizer_for(s.model_copy(update={"progressive": False}), (128, 128), "channel",
                                     seed=2).sizes == (1.0,)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_auto_precision_is_bfloat16_exactly_where_the_cpu_has_it():
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert feature_vis.native_bfloat16("cpu") == native
    assert feature_vis.autocast_dtype("auto", "cpu") == (torch.bfloat16 if native else None)
    assert feature_vis.autocast_dtype("float32", "cpu") is None
    assert feature_vis.autocast_dtype("bfloat16", "cpu") == torch.bfloat16
    spec = FeatureVisSpec(precision="float32")
    assert feature_vis.optimizer_for(spec, (32, 32), "channel", seed=0).autocast is None
