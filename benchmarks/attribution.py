"""Occlusion speed: reportgen's incremental occlusion vs Captum's `Occlusion`, one run, same maps.

    python benchmarks/attribution.py [--threads 1] [--repeats 2]

For each model (a small 3-conv CNN and the demo Fashion-MNIST CNN, random weights with a fixed
seed), 8 images of 28 px, window 5, stride 1: Captum's time for each `perturbations_per_eval`
in a grid, its best, reportgen's time, and the ratio. Each figure is the best of `--repeats`
runs, alternating the contenders. The maps are compared too (max |difference|).
Goal (issue "order 6 of 8"): reportgen ≥ 2× faster than Captum at its best setting.
"""

import argparse
import time

import torch
from captum.attr import Occlusion
from torch import nn

from reportgen.analyses.attribution import occlusion
from reportgen.demo.fashion_cnn import FashionCNN

WINDOW, STRIDE, IMAGES = 5, 1, 8
PER_EVAL = (1, 16, 64, 256, 576)


def small_cnn() -> nn.Module:
    """The issue's "small 3-conv CNN": 1×28×28 → 10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def demo_cnn() -> nn.Module:
    model = FashionCNN()
    for m in model.modules():   # non-trivial BatchNorm statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench(name: str, model: nn.Module, repeats: int) -> None:
    model.eval()
    x = torch.randn(IMAGES, 1, 28, 28)
    with torch.no_grad():
        target = model(x).argmax(1)
    captum = Occlusion(lambda t: model(t).softmax(1))

    def run_captum(per_eval):
        return captum.attribute(x, target=target, sliding_window_shapes=(1, WINDOW, WINDOW),
                                strides=(1, STRIDE, STRIDE), baselines=0.0, perturbations_per_eval=per_eval)

    def run_ours():
        return occlusion(model, x, target, window=WINDOW, stride=STRIDE, baseline=0.0)

    ours_t, captum_t = float("inf"), {p: float("inf") for p in PER_EVAL}
    for _ in range(repeats):
        t, ours = timed(run_ours)
        ours_t = min(ours_t, t)
        for p in PER_EVAL:
            t, ref = timed(lambda: run_captum(p))
            captum_t[p] = min(captum_t[p], t)
    best = min(captum_t, key=captum_t.get)
    diff = (torch.from_numpy(ours) - ref[:, 0]).abs().max().item()
    print(f"{name}: captum " + ", ".join(f"ppe={p} {t:.3f}s" for p, t in captum_t.items()))
    print(f"{name}: captum best (ppe={best}) {captum_t[best]:.3f}s, reportgen {ours_t:.3f}s, "
          f"speed-up {captum_t[best] / ours_t:.2f}x (goal >= 2x); max |map difference| {diff:.2e} "
          f"(map max {abs(ref).max().item():.2e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # one thread by default: on a shared 2-core machine, thread synchronisation under load swamps
    # small ops and makes the figures noise; both contenders run with the same setting
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {IMAGES} images 28x28, "
          f"window {WINDOW}, stride {STRIDE}")
    for name, build in (("small 3-conv CNN", small_cnn), ("demo CNN", demo_cnn)):
        torch.manual_seed(0)
        bench(name, build(), args.repeats)


if __name__ == "__main__":
    main()
