"""Data-parallel builds: 2 processes under torchrun (gloo, CPU) give the single-process site, byte for byte,
and each rank's dataset pass sees only its own shard of the images."""

import filecmp
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reportgen.data import subset_indices
from reportgen.distributed import Group
from reportgen.idx import load_idx_split
from tests.helpers.tiny import FASHION_DIR

REPO = Path(__file__).resolve().parents[1]
SPEC = f"""
model: {{factory: seen:build, mean: [0.5], std: [0.25], input_size: 28}}
dataset: {{format: fashion-mnist, root: {FASHION_DIR}, limit: 700, batch_size: 64}}
layers:
  - {{name: block1_conv2, filters: [0, 2]}}
  - {{name: block2_conv1, filters: all, embedding: pca}}
feature_vis: {{steps: 6}}
attribution: {{images: 3}}
"""


def test_shards_cover_every_image_once_in_whole_batches():
    idx = np.arange(1000)
    shards = [Group(r, 3).shard_batches(idx, 64) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == idx.tolist()
    assert shards[1][:64].tolist() == list(range(64, 128))          # rank 1 takes the 2nd batch
    items = list(range(10))
    assert sorted(sum((Group(r, 2).shard_list(items, 3) for r in range(2)), [])) == items


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 700, 1000])
def test_two_ranks_split_disjoint_whole_batches(n):
    """World size 2: rank 0 takes batches 0, 2, 4, … and rank 1 batches 1, 3, …; together each image once."""
    idx = np.random.default_rng(n).permutation(10_000)[:n]
    batches = [idx[s:s + 64].tolist() for s in range(0, n, 64)]
    zero, one = (Group(r, 2).shard_batches(idx, 64).tolist() for r in range(2))
    assert zero == sum(batches[0::2], []) and one == sum(batches[1::2], [])
    assert not set(zero) & set(one) and sorted(zero + one) == sorted(idx.tolist())
    items = list(range(n))
    zero, one = Group(0, 2).shard_list(items, 8), Group(1, 2).shard_list(items, 8)
    assert zero == [i for i in items if i // 8 % 2 == 0] and one == [i for i in items if i // 8 % 2 == 1]
    assert Group(0, 1).shard_batches(idx, 64).tolist() == idx.tolist() and Group(0, 1).shard_list(items, 8) == items


# tiny_cnn, writing a hash of every image its dataset pass sees (inference mode: feature vis and the gradient
# methods need gradients) to seen-rank{RANK}.txt: what each process of a build actually computed
SEEN = """
import hashlib, os
import torch
from tests.helpers.tiny import TinyCNN


class SeenCNN(TinyCNN):
    def forward(self, x):
        if isinstance(x, torch.Tensor) and torch.is_inference_mode_enabled():   # not while torch.fx traces
            pixels = ((x * 0.25 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()   # (B, 1, 28, 28)
            with open(f"seen-rank{os.environ.get('RANK', '0')}.txt", "a") as f:
                f.writelines(hashlib.sha1(p.tobytes()).hexdigest() + "\\n" for p in pixels)
        return super().forward(x)


def build():
    torch.manual_seed(0)
    return SeenCNN()
"""


def build(folder: Path, nproc: int) -> Path:
    folder.mkdir()
    (folder / "spec.yaml").write_text(SPEC)
    (folder / "seen.py").write_text(SEEN)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 \
        else [sys.executable]
    result = subprocess.run(launcher + ["-m", "reportgen", "build", "-q", "--no-cache", str(folder / "spec.yaml")],
                            env=env, capture_output=True, text=True, timeout=900, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "site"


def seen(folder: Path) -> dict[int, list[int]]:
    """{rank: the used images (dataset indices) its model was fed in inference mode, repeats kept}."""
    images, _ = load_idx_split(FASHION_DIR, "test")
    used = subset_indices(len(images), 700, seed=0)
    index = {hashlib.sha1(images[i].tobytes()).hexdigest(): int(i) for i in used}
    assert len(index) == 700                        # no two used images alike: a hash names one image
    return {int(f.stem.removeprefix("seen-rank")): [index[h] for h in f.read_text().split() if h in index]
            for f in folder.glob("seen-rank*.txt")}


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    one, two = build(tmp_path / "one", 1), build(tmp_path / "two", 2)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert Path("report.json") in files and any(f.suffix == ".html" for f in files)
    different = [str(f) for f in files if not filecmp.cmp(one / f, two / f, shallow=False)]
    assert different == []

    # the work was split: each rank's dataset pass fed its model its own shard, once. Rank 0 also attributes the
    # spec's 3 images (under 8 a rank: all its own), which may feed those images again, and no other.
    used = subset_indices(10_000, 700, seed=0)
    shard = {r: Group(r, 2).shard_batches(used, 64).tolist() for r in range(2)}
    assert len(shard[0]) + len(shard[1]) == 700 and not set(shard[0]) & set(shard[1])
    single, ranks = seen(tmp_path / "one"), seen(tmp_path / "two")
    assert sorted(single) == [0] and set(single[0]) == set(used.tolist())
    assert sorted(ranks) == [0, 1]                                               # two processes computed
    assert sorted(ranks[1]) == sorted(shard[1])                                  # rank 1: its half, each once
    assert set(shard[0]) <= set(ranks[0])                                        # rank 0: its half
    again = {i for i in ranks[0] if ranks[0].count(i) > 1 or i not in shard[0]}
    assert len(again) <= 3, sorted(again)                                        # + at most the attributed ones
