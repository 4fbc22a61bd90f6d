"""Dataset pass overhead and memory, measured in one run.

Prints (1) the time of reportgen's recording pass (3 layers × all filters) divided by a bare
`inference_mode` forward over the same images with the same DataLoader, and (2) the peak RSS of the
pass over 60k images divided by over 10k (each in a fresh subprocess).
Goals: ≤ 1.25× and ≤ 1.1×.

    python benchmarks/dataset_pass.py demo          # the demo CNN on Fashion-MNIST (CPU)
    python benchmarks/dataset_pass.py vgg19 --images 256   # vgg19(weights=None) at 224 px
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reportgen.data import Dataset, TorchView, collate, load_dataset  # noqa: E402
from reportgen.record import RecordPlan  # noqa: E402
from reportgen.record import record  # noqa: E402
from reportgen.spec import DatasetSpec  # noqa: E402

FULL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def setup(model_name: str, n: int):
    if model_name == "demo":
        from reportgen.demo.fashion_cnn import build
        model = build().eval()
        weights = ROOT / "reportgen/demo/fashion_cnn.pt"
        if weights.is_file():
            model.load_state_dict(torch.load(weights, weights_only=True))
        root = FULL_FASHION if n > 10000 else ROOT / "configs/data/fashion-mnist"
        split = "train" if n > 10000 else "test"
        ds = load_dataset(DatasetSpec(format="fashion-mnist", root=root, split=split), 28, 28, 1)
        layers = {"features.conv2_relu": 32, "features.conv4_relu": 64, "features.conv5_relu": 128}
        mean, std = 0.286, 0.353
    else:
        import torchvision
        model = torchvision.models.vgg19(weights=None).eval()
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
        ds = Dataset("synthetic", n, ["a", "b"], np.arange(n) % 2, "x", [str(i) for i in range(n)],
                     lambda i: images[i].transpose(2, 0, 1).copy())
        layers = {"features.11": 256, "features.20": 512, "features.29": 512}
        mean, std = 0.45, 0.225
    norm = lambda x: (x.float() / 255 - mean) / std  # noqa: E731
    return model, ds, layers, norm


def bare(model, ds, indices, norm, batch):
    loader = torch.utils.data.DataLoader(TorchView(ds, indices, False), batch_size=batch, collate_fn=collate)
    with torch.inference_mode():
        for _, imgs, _ in loader:
            model(norm(imgs))


def timing(args):
    model, ds, layers, norm = setup(args.model, args.images)
    indices = np.arange(min(args.images, ds.size))
    plan = RecordPlan(layers, num_classes=len(ds.classes), k=9, pooled=set(indices[:5000].tolist()),
                      samples=set(indices[:8].tolist()), batch_size=args.batch)
    bare(model, ds, indices[: args.batch], norm, args.batch)  # warm-up
    t_bare, t_pass = [], []
    for _ in range(args.repeats):  # interleaved, best of n: robust to a busy machine
        t0 = time.perf_counter(); bare(model, ds, indices, norm, args.batch); t_bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); record(model, norm, ds, indices, plan, progress=False); t_pass.append(time.perf_counter() - t0)
    print(f"{args.model}: {len(indices)} images, 3 layers × all filters: bare forward {min(t_bare):.2f} s, "
          f"recording pass {min(t_pass):.2f} s, ratio {min(t_pass) / min(t_bare):.3f} (goal ≤ 1.25)")


def peak_rss(args):
    model, ds, layers, norm = setup(args.model, args.images)
    indices = np.arange(min(args.images, ds.size))
    record(model, norm, ds, indices, RecordPlan(layers, num_classes=len(ds.classes), k=9,
           pooled=set(indices[:5000].tolist()), samples=set(indices[:8].tolist()), batch_size=args.batch),
           progress=False)
    print(json.dumps({"images": len(indices), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory(args):
    out = {}
    for n in (10000, 60000):
        cmd = [sys.executable, __file__, args.model, "--images", str(n), "--batch", str(args.batch), "--rss-only"]
        out[n] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    print(f"{args.model}: peak RSS {out[60000]['peak_rss_mb']:.0f} MB over 60k images / "
          f"{out[10000]['peak_rss_mb']:.0f} MB over 10k = ratio "
          f"{out[60000]['peak_rss_mb'] / out[10000]['peak_rss_mb']:.3f} (goal ≤ 1.1)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=["demo", "vgg19"])
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rss-only", action="store_true")
    p.add_argument("--memory", action="store_true", help="also measure peak RSS 60k vs 10k")
    a = p.parse_args()
    if a.rss_only:
        peak_rss(a)
    else:
        timing(a)
        if a.memory:
            memory(a)
