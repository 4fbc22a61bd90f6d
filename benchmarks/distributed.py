"""A build with 1 vs N processes (torchrun, gloo on CPU), measured in one run, interleaved, best of n.

Each run is a whole `reportgen build --no-cache`, as a user launches it: one process with the machine's
threads (torch's default: one per core), against torchrun's N processes with one thread each (torchrun's
default, OMP_NUM_THREADS=1). Two specs: `pass` records 3 layers × all filters over the 10k shipped test images
and nothing else (the dataset pass dominates); `demo` is configs/fashion_mnist.yaml, every section.

    python benchmarks/distributed.py [--spec pass|demo] [--nproc 2] [--repeats 2]

GPU figures need a CUDA machine: run the same builds there with `device: cuda`; see the README's "Big runs".
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASS_SPEC = f"""
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


def run(spec: Path, out: Path, nproc: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    launcher = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    t0 = time.perf_counter()
    subprocess.run(launcher + ["-m", "reportgen", "build", "-q", "--no-cache", "--out", str(out), str(spec)],
                   env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", choices=["pass", "demo"], default="pass")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = ROOT / "configs" / "fashion_mnist.yaml"
        if args.spec == "pass":
            spec = folder / "spec.yaml"
            spec.write_text(PASS_SPEC)
        one, many = [], []
        for _ in range(args.repeats):
            one.append(run(spec, folder / "one", 1))
            many.append(run(spec, folder / "many", args.nproc))
    print(f"{args.spec} spec: 1 process ({os.cpu_count()} threads) {min(one):.1f} s, {args.nproc} processes "
          f"(1 thread each) {min(many):.1f} s: {min(one) / min(many):.2f}x on {os.cpu_count()} cores (whole build)")


if __name__ == "__main__":
    main()
