"""Data-parallel builds: the dataset pass in fixed shards, 2 processes under torchrun (gloo, CPU, one thread
each) give the single-process (two threads) site byte for byte, and a rank killed in the middle of the pass
ends the build with an error naming it, keeps the finished shards, and the rerun records only the rest."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reportgen.pipeline import prepare
from reportgen.distributed import SHARD_BATCHES, Group, fixed_shards
from reportgen.evidence import gather_evidence
from reportgen.record import layer_to_arrays
from reportgen.spec import load_spec
from tests.helpers.tiny import FASHION_DIR

REPO = Path(__file__).resolve().parents[1]
BATCH, LIMIT = 16, 3000                                   # 12 shards of 256 images
SHARDS = -(-LIMIT // (SHARD_BATCHES * BATCH))
SPEC = f"""
model: {{factory: killable:build, mean: [0.5], std: [0.25], input_size: 28}}
dataset: {{format: fashion-mnist, root: {FASHION_DIR}, limit: {LIMIT}, batch_size: {BATCH}}}
layers:
  - {{name: block1_conv2, filters: [0, 2]}}
  - {{name: block2_conv1, filters: all, embedding: both}}
feature_vis: {{steps: 6}}
attribution: {{images: 3}}
"""

# tiny_cnn; with KILL_RANK1_AT=n, rank 1 SIGKILLs itself at its n-th forward in inference mode (the dataset
# pass's batches; feature vis and the gradient methods need gradients), after n - 1 whole batches
KILLABLE = """
import os, signal
import torch
from tests.helpers.tiny import TinyCNN


class KillableCNN(TinyCNN):
    calls = 0

    def forward(self, x):
        if isinstance(x, torch.Tensor) and torch.is_inference_mode_enabled() and os.environ.get("RANK") == "1":
            KillableCNN.calls += 1
            if KillableCNN.calls == int(os.environ.get("KILL_RANK1_AT", "0")):
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def build():
    torch.manual_seed(0)
    return KillableCNN()
"""


def test_shards_are_whole_batches_whatever_the_world_size():
    idx = np.random.default_rng(0).permutation(10_000)[:1000]
    shards = fixed_shards(idx, 8)
    assert [len(s) for s in shards] == [128] * 7 + [104]          # SHARD_BATCHES (16) batches of 8
    assert np.concatenate(shards).tolist() == idx.tolist()         # in order, each image once
    assert fixed_shards(idx[:0], 8) == []


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100])
def test_ranks_take_disjoint_chunks_round_robin(n):
    items = list(range(n))
    zero, one = Group(0, 2).shard_list(items, 1), Group(1, 2).shard_list(items, 1)
    assert zero == items[0::2] and one == items[1::2]
    zero, one = Group(0, 2).shard_list(items, 8), Group(1, 2).shard_list(items, 8)
    assert zero == [i for i in items if i // 8 % 2 == 0] and one == [i for i in items if i // 8 % 2 == 1]
    assert Group(0, 1).shard_list(items, 8) == items


def test_the_pass_resumes_from_its_cached_shards_and_gives_the_same_evidence(tmp_path):
    """In one process: shards deleted from the cache (with the merged per-layer results) are the only ones
    recorded again, and the merged evidence equals an uncached pass, array for array."""
    (tmp_path / "spec.yaml").write_text(f"""
model: {{factory: tests.helpers.tiny:tiny_cnn, mean: [0.5], std: [0.25], input_size: 28}}
dataset: {{format: fashion-mnist, root: {FASHION_DIR}, limit: 600, batch_size: 8, samples: 3}}
layers: [{{name: block1_conv2, filters: all}}, {{name: features.c3, filters: all}}]
record: {{pooled_limit: 250, negatives: true}}
""")

    def evidence(use_cache: bool) -> tuple[dict, list[str]]:
        lines = []
        ctx = prepare(load_spec(tmp_path / "spec.yaml"), use_cache, lines.append, analyses=[])
        ctx.progress = False
        gather_evidence(ctx)
        arrays = {f"{p} {k}": v for p, e in ctx.evidence.layers.items() for k, v in layer_to_arrays(e).items()}
        ev = ctx.evidence
        arrays |= {"pred_index": ev.pred_index, "preds": ev.preds, "top5": ev.top5}
        return arrays | {f"probs {i}": v for i, v in ev.sample_probs.items()}, lines

    cold, lines = evidence(True)
    assert "dataset pass: 5 of 5 shards to record" in lines           # 600 images, 128 a shard
    cache = tmp_path / ".reportgen-cache"
    shards = sorted((cache / "record-shard").glob("*.npz"))
    assert len(shards) == 5
    for entry in list((cache / "record").glob("*.npz")) + shards[:2]:
        entry.unlink()
    resumed, lines = evidence(True)
    assert "dataset pass: 2 of 5 shards to record (3 cached)" in lines
    plain, _ = evidence(False)
    for other in (resumed, plain):
        assert other.keys() == cold.keys()
        assert [k for k in cold if not np.array_equal(cold[k], other[k])] == []


def build(folder: Path, nproc: int, cache: bool = True, **env) -> subprocess.CompletedProcess:
    """`reportgen build` of SPEC in `folder`: one process with the machine's threads, or torchrun's `nproc`
    processes (one thread each, torchrun's default)."""
    folder.mkdir(exist_ok=True)
    (folder / "spec.yaml").write_text(SPEC)
    (folder / "killable.py").write_text(KILLABLE)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | env
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 \
        else [sys.executable]
    return subprocess.run(launcher + ["-m", "reportgen", "build", "-q", "spec.yaml"] + ([] if cache else ["--no-cache"]),
                          env=env, capture_output=True, text=True, timeout=1200, cwd=folder)


def site_files(site: Path) -> dict[str, bytes]:
    """Every file of a built site but timings.json, with build.html's timings section cut out: wall-clock
    times are the only content allowed to differ between two builds."""
    out = {}
    for p in sorted(site.rglob("*")):
        if p.is_file() and p.name != "timings.json":
            data = p.read_bytes()
            if p.name == "build.html":
                data = re.sub(rb'<section id="timings">.*?</section>', b"", data, flags=re.S)
            out[str(p.relative_to(site))] = data
    return out


def assert_same_site(a: Path, b: Path) -> None:
    one, two = site_files(a), site_files(b)
    assert sorted(one) == sorted(two)
    assert "report.json" in one and any(f.endswith(".html") for f in one)
    assert [f for f in one if one[f] != two[f]] == []


def shard_files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (folder / ".reportgen-cache" / "record-shard").glob("*.npz")}


@pytest.mark.slow
def test_two_processes_equal_one_and_a_killed_rank_resumes(tmp_path):
    one = build(tmp_path / "one", 1, cache=False)
    assert one.returncode == 0, one.stderr[-3000:]
    two = build(tmp_path / "two", 2, cache=False)
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_site(tmp_path / "one" / "site", tmp_path / "two" / "site")   # t-SNE of 3000 points included

    # rank 1 records shards 1, 3, 5, …: killed at the first batch of its third, after caching two
    killed = tmp_path / "killed"
    (killed / "site").mkdir(parents=True)
    (killed / "site" / ".reportgen-site").write_text("")
    (killed / "site" / "index.html").write_text("the previous site")
    run = build(killed, 2, KILL_RANK1_AT=str(2 * SHARD_BATCHES + 1))
    assert run.returncode != 0
    cached = shard_files(killed)
    message = re.search(r"error: (.*)", run.stderr).group(1)
    # torchrun's SIGTERM or, when rank 0 already waits in the collective, gloo's error
    assert re.fullmatch(rf"rank 1 stopped during the dataset pass \((torchrun then sent SIGTERM to the others|the "
                        rf"collective failed: .+)\); {len(cached)} of {SHARDS} shards are cached; rerun to compute "
                        rf"only the rest", message), run.stderr[-3000:]
    assert 2 <= len(cached) < SHARDS
    assert (killed / "site" / "index.html").read_text() == "the previous site"

    rerun = build(killed, 2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"dataset pass: {SHARDS - len(cached)} of {SHARDS} shards to record ({len(cached)} cached)" in rerun.stderr
    after = shard_files(killed)
    assert len(after) == SHARDS and {f: after[f] for f in cached} == cached   # the cached ones not rewritten
    assert_same_site(tmp_path / "one" / "site", killed / "site")
