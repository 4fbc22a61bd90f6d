"""Dataset pass with 1 vs 2 processes (torchrun, gloo on CPU), measured in one run on the demo model.

Each run is a whole `reportgen build --no-cache` of a spec that only records (3 layers × all filters over the
10k shipped test images; no synthesis, circuits, attribution or embedding), so the pass dominates; each
process gets one thread (torchrun's default), the single process too, so the ratio shows the parallel speed-up.

    python benchmarks/distributed.py [--nproc 2] [--repeats 2]

GPU figures (VGG19 block3_conv1 synthesis, 5k-image pass at 224 px) need a CUDA machine: run the same
builds there with `device: cuda`; see the README's "Big runs".
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = f"""
model:
  factory: reportgen.demo.fashion_cnn:build
  checkpoint: {ROOT}/reportgen/demo/fashion_cnn.pt
  mean: [0.286]
  std: [0.353]
  input_size: 28
dataset: {{format: fashion-mnist, root: {ROOT}/configs/data/fashion-mnist, batch_size: 64, samples: 2}}
layers:
  - {{name: block1_conv2, filters: all, embedding: none}}
  - {{name: block2_conv2, filters: all, embedding: none}}
  - {{name: block3_conv1, filters: [0], embedding: none}}
record: {{pooled_limit: 0}}
feature_vis: {{enabled: false}}
circuit: {{enabled: false}}
attribution: {{enabled: false}}
"""


def run(folder: Path, nproc: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    launcher = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    t0 = time.perf_counter()
    subprocess.run(launcher + ["-m", "reportgen", "build", "-q", "--no-cache", str(folder / "spec.yaml")],
                   env=env, check=True, capture_output=True, cwd=folder)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "spec.yaml").write_text(SPEC)
        one, many = [], []
        for _ in range(args.repeats):   # interleaved, best of n
            one.append(run(folder, 1))
            many.append(run(folder, args.nproc))
    print(f"demo CNN, 10k images, 3 layers: 1 process {min(one):.1f} s, {args.nproc} processes {min(many):.1f} s "
          f"(whole build, incl. ~startup), speed-up {min(one) / min(many):.2f}x on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
