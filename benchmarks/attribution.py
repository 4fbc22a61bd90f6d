"""Occlusion speed: reportgen's incremental occlusion vs Captum's `Occlusion`, one run, same maps; and per-filter
guided backprop on the receptive field's crop vs on the whole image.

    python benchmarks/attribution.py [--threads 1] [--repeats 2]

For each model (a small 3-conv CNN and the demo Fashion-MNIST CNN, random weights with a fixed
seed), 8 images of 28 px, window 5, stride 1: Captum's time for each `perturbations_per_eval`
in a grid, its best, reportgen's time, and the ratio. Each figure is the best of `--repeats`
runs, alternating the contenders. The maps are compared too (max |difference|).
Goal (issue "order 6 of 8"): reportgen ≥ 2× faster than Captum at its best setting.

Guided backprop of a filter's strongest unit, as the filter pages compute it: VGG19 (random weights, fixed
seed) at 224 px, block2_conv2 (features.8) and block3_conv1 (features.11), 8 filters × 4 random images, each
filter's unit found by a forward first (the dataset pass's part, not timed): `guided_backprop_unit` on the whole
image vs `guided_backprop_unit_crops` on the crops of the units' receptive fields; seconds (best of
`--repeats`, alternating), the ratio, and the max |map difference|.
"""

import argparse
import time

import torch
import torchvision
from captum.attr import Occlusion
from torch import nn

from reportgen.analyses.attribution import guided_backprop_unit, guided_backprop_unit_crops, occlusion, unit_crop_size
from reportgen.demo.fashion_cnn import FashionCNN
from reportgen.graph import receptive_fields
from reportgen.hooks import run_until

WINDOW, STRIDE, IMAGES = 5, 1, 8
PER_EVAL = (1, 16, 64, 256, 576)
GUIDED_LAYERS = {"block2_conv2": "features.8", "block3_conv1": "features.11"}   # VGG19: the ReLUs the aliases record
GUIDED_SIZE, GUIDED_FILTERS, GUIDED_TOP = 224, 8, 4


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


def bench_guided(repeats: int) -> None:
    torch.manual_seed(0)
    model = torchvision.models.vgg19().eval()
    fields = receptive_fields(model, list(GUIDED_LAYERS.values()), (GUIDED_SIZE, GUIDED_SIZE))
    for name, path in GUIDED_LAYERS.items():
        field = fields[path]
        x = torch.randn(GUIDED_FILTERS, GUIDED_TOP, 3, GUIDED_SIZE, GUIDED_SIZE)      # each filter's top images
        with torch.no_grad():                                                         # the pass: strongest units
            fmaps = [run_until(model, path, x[f])[:, f] for f in range(GUIDED_FILTERS)]   # (TOP, h, w) each
        units = [torch.stack(torch.unravel_index(m.flatten(1).argmax(1), m.shape[1:]), 1).numpy() for m in fmaps]
        values = [m.flatten(1).amax(1).numpy() for m in fmaps]

        def run_whole():
            return [guided_backprop_unit(model, x[f], path, f) for f in range(GUIDED_FILTERS)]

        def run_crops():
            return [guided_backprop_unit_crops(model, x[f], path, f, units[f], values[f], field)
                    for f in range(GUIDED_FILTERS)]

        whole_t = crops_t = float("inf")
        for _ in range(repeats):
            t, whole = timed(run_whole)
            whole_t = min(whole_t, t)
            t, crops = timed(run_crops)
            crops_t = min(crops_t, t)
        diff = max(float(abs(w - c).max()) for w, (c, _) in zip(whole, crops))
        used = sum(int(cropped.sum()) for _, cropped in crops)
        print(f"guided backprop, VGG19 {name} ({path}, receptive field {field.size[0]} px, crop "
              f"{unit_crop_size(field)}), {GUIDED_FILTERS} filters x {GUIDED_TOP} images: whole image "
              f"{whole_t:.2f}s, crops {crops_t:.2f}s ({used}/{GUIDED_FILTERS * GUIDED_TOP} cropped), "
              f"speed-up {whole_t / crops_t:.1f}x; "
              f"max |map difference| {diff:.2e} (map max {max(float(w.max()) for w in whole):.2e})")


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
    bench_guided(args.repeats)


if __name__ == "__main__":
    main()
