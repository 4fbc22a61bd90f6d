"""Data-parallel builds: 2 processes under torchrun (gloo, CPU) give the single-process site, byte for byte."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reportgen.distributed import Group
from tests.helpers.tiny import FASHION_DIR

REPO = Path(__file__).resolve().parents[1]
SPEC = f"""
model: {{factory: tests.helpers.tiny:tiny_cnn, mean: [0.5], std: [0.25], input_size: 28}}
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


def build(folder: Path, nproc: int) -> Path:
    folder.mkdir()
    (folder / "spec.yaml").write_text(SPEC)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 \
        else [sys.executable]
    result = subprocess.run(launcher + ["-m", "reportgen", "build", "-q", "--no-cache", str(folder / "spec.yaml")],
                            env=env, capture_output=True, text=True, timeout=900, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "site"


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    one, two = build(tmp_path / "one", 1), build(tmp_path / "two", 2)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert Path("report.json") in files and any(f.suffix == ".html" for f in files)
    different = [str(f) for f in files if not filecmp.cmp(one / f, two / f, shallow=False)]
    assert different == []
