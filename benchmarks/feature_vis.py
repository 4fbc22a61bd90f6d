"""Feature visualization: reportgen's batched `synthesize` vs torch-lucent's `render_vis`, one run, CPU; and
a candidate setting of `feature_vis` against its defaults on the lab's layers.

    python benchmarks/feature_vis.py [--steps 64] [--size 128] [--filters 16] [--lucent-filters 2]
                                     [--threads N] [--grid-steps 16] [--skip-grids]
                                     [--lab-units 8] [--lab-layers block3_conv1,...] [--lab-divide 1]
                                     [--lab-baseline '{"steps": 256, "settle": 0, "precision": "float32"}']
                                     [--lab-candidate '{}'] [--lab-candidate-size 128] [--skip-lucent]

Lab (`--lab-units` > 0): the lab's layers of `vgg19(weights=None)` (block2_conv2, block3_conv1 and
block5_conv3, as `circuit.expand` adds them; each its conv's ReLU, as the alias means) at 128 px, the
same units synthesized with `--lab-candidate` (spec fields over `feature_vis`' defaults; default: the
defaults) and with `--lab-baseline` (default: the loop before settling and bfloat16 became defaults: 256
warped steps in float32), both through `optimizer_for` as a build runs them (`precision: auto` resolved on
this machine). Printed per layer: seconds of each and their ratio, and the mean final activation (the
objective on the final, unwarped uint8 image, in float32) of each and their ratio, per unit too (goal for
the defaults: >= 3x less time, activation ratio >= 1 on every layer). `--lab-divide K` runs both with 1/K
of their steps (the same stages, shorter): a quick time ratio, activation not comparable.

Same model (`vgg19(weights=None)`, seed 0), layer (block3_conv1 = `features.10`), steps and image size.
reportgen renders `--filters` filters as one batch; lucent renders `--lucent-filters` of them one at a time
with its defaults (Fourier + decorrelated parameterization, standard transforms, Adam lr 0.05, upsampling
to 224 px, the whole network run). Goal: >= 5x less time per filter, mean final activation >= lucent's.

Activation is measured the same way for both, on the final images as a page shows them (no warp):
the mean of the channel after its ReLU (what lucent's `features_10` hook ends up holding, since VGG's
in-place ReLU overwrites the conv output) and before it (reportgen's objective for layer `features.10`);
at `--size` px, and at 224 px (lucent's own view: it upsamples before the model).
Then the time of a 64-filter grid: the demo CNN's conv4 at 28 px (trained weights if
`reportgen/demo/fashion_cnn.pt` exists) at `--steps`, and VGG19 block3_conv1 at 128 px measured over
`--grid-steps` steps and scaled to `--steps` and to 256 (time is linear in steps).
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from reportgen.analyses.feature_vis import optimizer_for
from reportgen.analyses.featvis import Objective, Optimizer, Parameterization, RandomAffine, synthesize
from reportgen.spec import FeatureVisSpec

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "reportgen" / "demo" / "fashion_cnn.pt"


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def vgg19() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg19(weights=None).eval()


def block3_conv1(model: torch.nn.Module, images: np.ndarray, channels: list[int], size: int) -> dict:
    """Mean of each image's channel of features.10, before and after ReLU, with the images at `size` px."""
    x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255                # (N, 3, H, W)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        conv = model.features[10](model.features[:10](x))                     # (N, 256, h, w), no ReLU
    picked = conv[torch.arange(len(channels)), torch.tensor(channels)]            # (N, h, w)
    return {"pre": picked.mean((1, 2)).numpy(), "post": picked.relu().mean((1, 2)).numpy()}


def run_lucent(model: torch.nn.Module, channels: list[int], steps: int, size: int) -> np.ndarray:
    from lucent.optvis import param, render

    images = []
    for ch in channels:
        torch.manual_seed(ch)
        out = render.render_vis(model, f"features_10:{ch}", param_f=lambda: param.image(size),
                                thresholds=(steps,), show_image=False, progress=False)
        images.append(np.round(np.clip(out[0][0], 0, 1) * 255).astype(np.uint8))  # (H, W, 3)
    return np.stack(images)


def compare(args: argparse.Namespace) -> None:
    model = vgg19()
    channels = list(range(args.filters))
    ours, wall, cpu = timed(lambda: synthesize(model, Objective("features.10", channels),
                                               Parameterization(3, IMAGENET_MEAN, IMAGENET_STD, size=args.size),
                                               RandomAffine(), Optimizer(steps=args.steps, seed=0)))
    lucent_channels = channels[:args.lucent_filters]
    lucent_images, lwall, lcpu = timed(lambda: run_lucent(model, lucent_channels, args.steps, args.size))

    per_ours, per_lucent = wall / len(channels), lwall / len(lucent_channels)
    print(f"VGG19 block3_conv1 (features.10), {args.steps} steps, {args.size} px, "
          f"{torch.get_num_threads()} torch threads")
    print(f"  reportgen, {len(channels)} filters batched: {wall:7.1f} s wall ({cpu:7.1f} s CPU), "
          f"{per_ours:6.2f} s per filter")
    print(f"  lucent, {len(lucent_channels)} filters one by one: {lwall:7.1f} s wall ({lcpu:7.1f} s CPU), "
          f"{per_lucent:6.2f} s per filter")
    print(f"  speed-up per filter: {per_lucent / per_ours:.1f}x wall, "
          f"{(lcpu / len(lucent_channels)) / (cpu / len(channels)):.1f}x CPU  (goal >= 5x)")
    k = len(lucent_channels)
    for size in (args.size, 224):
        mine = block3_conv1(model, ours.images, channels, size)
        theirs = block3_conv1(model, lucent_images, lucent_channels, size)
        for kind in ("post", "pre"):
            print(f"  mean activation, {'after' if kind == 'post' else 'before'} ReLU, images at {size} px: "
                  f"reportgen {mine[kind][:k].mean():.4f} (all {len(channels)}: {mine[kind].mean():.4f}), "
                  f"lucent {theirs[kind].mean():.4f}  ratio {mine[kind][:k].mean() / theirs[kind].mean():.2f}")


def grids(args: argparse.Namespace) -> None:
    from reportgen.demo.fashion_cnn import build

    demo = build()
    trained = DEMO_WEIGHTS.exists()
    if trained:
        demo.load_state_dict(torch.load(DEMO_WEIGHTS, map_location="cpu", weights_only=True))
    demo.eval()
    _, wall, cpu = timed(lambda: synthesize(demo, Objective("features.conv4", range(64)),
                                            Parameterization(1, [0.2860], [0.3530], size=28),
                                            RandomAffine(), Optimizer(steps=args.steps)))
    print(f"64-filter grid, demo CNN ({'trained' if trained else 'random weights'}) features.conv4, 28 px, "
          f"{args.steps} steps: {wall:.1f} s wall ({cpu:.1f} s CPU); x{256 / args.steps:.0f} for 256 steps")
    model = vgg19()
    _, wall, cpu = timed(lambda: synthesize(model, Objective("features.10", range(64)),
                                            Parameterization(3, IMAGENET_MEAN, IMAGENET_STD, size=128),
                                            RandomAffine(), Optimizer(steps=args.grid_steps)))
    per_step = wall / args.grid_steps
    print(f"64-filter grid, VGG19 block3_conv1, 128 px: {wall:.1f} s wall ({cpu:.1f} s CPU) for "
          f"{args.grid_steps} steps = {per_step:.2f} s/step -> {per_step * args.steps:.0f} s for "
          f"{args.steps} steps, {per_step * 256:.0f} s for 256")


LAB_LAYERS = {"block2_conv2": "features.8", "block3_conv1": "features.11", "block5_conv3": "features.33"}


def lab(args: argparse.Namespace) -> None:
    model = vgg19()
    params = {"candidate": Parameterization(3, IMAGENET_MEAN, IMAGENET_STD, size=args.lab_candidate_size),
              "baseline": Parameterization(3, IMAGENET_MEAN, IMAGENET_STD, size=128)}
    k = args.lab_divide
    settings = {"candidate": FeatureVisSpec(**json.loads(args.lab_candidate)),
                "baseline": FeatureVisSpec(**json.loads(args.lab_baseline))}
    loops = {}
    for name, s in settings.items():
        opt = optimizer_for(s, params[name].hw, "channel", seed=0)
        loops[name] = replace(opt, steps=max(len(opt.sizes), opt.steps // k))
    units = list(range(0, 64, 64 // args.lab_units))[:args.lab_units]
    print(f"candidate ({args.lab_candidate_size} px) vs baseline (128 px), VGG19 (random weights), units {units}, "
          f"{torch.get_num_threads()} threads:" + "".join(f"\n  {n}: {o}" for n, o in loops.items())
          + (f"\n  steps divided by {k}: time only" if k > 1 else ""))
    for alias in args.lab_layers.split(","):
        (a, ta, _), (b, tb, _) = (timed(lambda n=n: synthesize(model, Objective(LAB_LAYERS[alias], units), params[n],
                                                               RandomAffine(), loops[n])) for n in loops)
        print(f"  {alias}: {ta:6.1f} s vs {tb:6.1f} s = {tb / ta:.2f}x faster; mean activation "
              f"{a.activation.mean():.4f} vs {b.activation.mean():.4f} = ratio "
              f"{a.activation.mean() / b.activation.mean():.2f} (per unit: {np.round(a.activation / b.activation, 2).tolist()})",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--lucent-filters", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--grid-steps", type=int, default=16)
    parser.add_argument("--skip-grids", action="store_true")
    parser.add_argument("--skip-lucent", action="store_true")
    parser.add_argument("--lab-units", type=int, default=8, help="units per lab layer (0: skip)")
    parser.add_argument("--lab-layers", default=",".join(LAB_LAYERS))
    parser.add_argument("--lab-candidate-size", type=int, default=128,
                        help="the candidate's image side (the baseline's is 128 px): e.g. 64, the canvas fitted "
                             "to block2_conv2's receptive field when circuit.expand adds it")
    parser.add_argument("--lab-divide", type=int, default=1, help="run 1/K of the steps: a quick time ratio")
    parser.add_argument("--lab-candidate", default="{}", help="feature_vis fields over the defaults, JSON")
    parser.add_argument("--lab-baseline", default='{"steps": 256, "settle": 0, "precision": "float32"}',
                        help="feature_vis fields over the defaults, JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lab_units:
        lab(args)
    if not args.skip_lucent:
        compare(args)
    if not args.skip_grids:
        grids(args)


if __name__ == "__main__":
    main()
