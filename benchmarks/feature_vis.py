"""Feature visualization: reportgen's batched `synthesize` vs torch-lucent's `render_vis`, one run, CPU; and
a candidate setting of `feature_vis` against its defaults on the lab's layers.

    python benchmarks/feature_vis.py [--steps 64] [--size 128] [--units 4] [--crops 64] [--factors all]
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

Versus lucent (unless `--skip-lucent`), on the same `--units` units of VGG19 (random weights, seed 0)
block3_conv1, at lucent's settings: `--steps` steps (the same for all), Adam lr 0.05, `--size` px images
(lucent's default 128; it upsamples them to 224 px before the model). Four sets of images:
- ours, Fourier: `feature_vis`' defaults as a build runs them (`optimizer_for`: settle, `precision: auto`
  resolved on this machine), the alias' layer `features.11` (block3_conv1's ReLU), `RandomAffine`;
- ours, MACO: the same with the magnitude fixed to the mean amplitude spectrum (`mean_amplitude`) of
  `--crops` random 128 px crops of scikit-learn's two sample photos (`load_sample_images`, bundled);
- lucent, one unit a call: `render_vis(model, "features_10:u")` with its defaults (Fourier + colour
  decorrelation, standard transforms, upsampling to 224, the whole network run);
- lucent, batched: one `render_vis` for all units, `param.image(size, batch=N)` and the sum of
  `channel("features_10", u, batch=i)`: what lucent gives a user who wants many filters (the fair speed ratio).
Lucent's hook on `features_10` ends up holding the ReLU's output (VGG's in-place ReLU overwrites it), so both
maximize the channel's mean after ReLU. The model's weights are frozen for all (lucent would otherwise also
compute weight gradients nobody uses).

Printed per set: seconds per filter and the speed-up over each lucent; the mean activation after ReLU of the
final uint8 images (no warp, float32) at `--size` px and in lucent's 224 px view (upsampled, corners aligned,
as lucent's last transform does), with its ratio to lucent batched; and trust scores (the helpers of
`reportgen.analyses.trust`) against the same crops as natural images (each unit's top 8 by the objective):
activation ratio (÷ the best crop), path agreement and foreign share (per-input-channel contributions at the
strongest position vs the crops'), and stability (ρ of those contributions between two seeds: ours at seeds 0
and 1; lucent's between its two sets, whose starts differ). Naturalness is left out: crops of two photos are
each other's nearest neighbours, so the k-NN ratio would count the photos, and a random network's penultimate
features mean little. Goal (issue "How far to trust each picture"): in the 224 px view >= 1.0x lucent's
activation, >= 10x faster per filter.

`--factors all` (or some of `FACTORS`, comma-separated): our Fourier run again with one factor changed
(precision, settle, pre-ReLU objective `features.10`, decorrelation, lr, lucent's own transforms through an
adapter, the model seeing the image upsampled to 224 px, rendering at 224 px), each row its activation in the
224 px view, ratio to lucent batched, and seconds per filter: why we score what we score there.

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

from reportgen.analyses.amplitude_spectrum import mean_amplitude
from reportgen.analyses.feature_vis import optimizer_for
from reportgen.analyses.featvis import Objective, Optimizer, Parameterization, RandomAffine, synthesize
from reportgen.analyses.trust import _Conv, foreign_share, pictures_input, read, spearman
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


LUCENT_LAYER, LAYER, VIEW = "features_10", "features.11", 224   # block3_conv1: lucent's hook, our alias's ReLU


def natural_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 random crops, at their own scale, half from each of scikit-learn's two sample
    photos (bundled with it: no download)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
        crops.append(photo[top:top + size, left:left + size])
    return np.stack(crops)


class LucentWarp:
    """lucent's `standard_transforms` (pad 12 px of grey, jitter 8, scale 0.9-1.1, rotate up to 10 degrees,
    jitter 4: one draw for the whole batch, from numpy's global RNG; the image grows by 24 px) in place of
    `RandomAffine`: un-normalizes our input, applies them in pixel space as lucent does, normalizes again."""

    def __call__(self, x: torch.Tensor, generators) -> torch.Tensor:
        from lucent.optvis import transform

        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (transform.compose(transform.standard_transforms)(x.float() * std + mean) - mean) / std


class Upsampled(torch.nn.Module):
    """`net` behind lucent's last transform: its input resized to `size` px (bilinear, corners aligned)."""

    def __init__(self, net: torch.nn.Module, size: int = VIEW):
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.interpolate(x, size=self.size, mode="bilinear", align_corners=True))


def run_ours(model: torch.nn.Module, units: list[int], steps: int, size: int, seed: int = 0, spec: dict | None = None,
             param: dict | None = None, layer: str = LAYER, warp: str = "ours", view: int | None = None) -> np.ndarray:
    """(N, H, W, 3) our images of `units` as a build makes them (`feature_vis` defaults over `spec`, the
    loop from `optimizer_for`), with one factor changed where asked: `param` fields, the objective's `layer`,
    lucent's `warp`, or the model seeing the image resized to `view` px."""
    p = Parameterization(3, IMAGENET_MEAN, IMAGENET_STD, **{"size": size, **(param or {})})
    opt = optimizer_for(FeatureVisSpec(**{"steps": steps, **(spec or {})}), p.hw, "channel", seed=seed)
    if view:
        model, layer = Upsampled(model, view), f"net.{layer}"
    np.random.seed(seed)                                    # lucent's warp draws from numpy's global RNG
    return synthesize(model, Objective(layer, units), p, LucentWarp() if warp == "lucent" else RandomAffine(),
                      opt).images


def run_lucent(model: torch.nn.Module, units: list[int], steps: int, size: int, seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) lucent's images with its defaults, one `render_vis` per unit."""
    from lucent.optvis import param, render

    images = []
    for u in units:
        torch.manual_seed(seed * 10_000 + u)
        np.random.seed(seed * 10_000 + u)
        out = render.render_vis(model, f"{LUCENT_LAYER}:{u}", param_f=lambda: param.image(size),
                                thresholds=(steps,), show_image=False, progress=False)
        images.append(out[0][0])                                                   # (H, W, 3) in [0, 1]
    return np.round(np.stack(images) * 255).astype(np.uint8)


def run_lucent_batched(model: torch.nn.Module, units: list[int], steps: int, size: int,
                       seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) lucent's images of all `units` in one `render_vis`: a batch of N images, image i
    maximizing its own unit (the sum of `channel(layer, unit, batch=i)`; the warp is shared by the batch)."""
    from lucent.optvis import objectives, param, render

    torch.manual_seed(999_999 - seed)                 # not a seed `run_lucent` gives one of the units
    np.random.seed(999_999 - seed)
    objective = objectives.Objective.sum([objectives.channel(LUCENT_LAYER, u, batch=i) for i, u in enumerate(units)])
    out = render.render_vis(model, objective, param_f=lambda: param.image(size, batch=len(units)),
                            thresholds=(steps,), show_image=False, progress=False)
    return np.round(out[0] * 255).astype(np.uint8)


class Paths:
    """Trust scores of pictures (`reportgen.analyses.trust`), with `natural_crops` as the natural images: each
    unit's top `top` crops (by the objective, block3_conv1's channel mean after ReLU) give its best natural
    activation and its natural path (mean per-input-channel contributions at the strongest position)."""

    def __init__(self, model: torch.nn.Module, crops: np.ndarray, units: list[int], top: int = 8):
        self.model, self.conv = model, _Conv(model, LAYER)
        n = len(crops)
        values, contributions = [], []
        for u in units:
            v, c = self.read(crops, [u] * n)
            best = np.argsort(-v)[:top]
            values.append(v[best[0]])
            contributions.append(c[best].mean(0))
        self.best, self.natural = np.array(values), np.stack(contributions)          # (U,), (U, Cin)

    def read(self, images: np.ndarray, units: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Objective (N,) and per-input-channel contributions (N, Cin) of image i for units[i], at its size."""
        got = read(self.model, LAYER, self.conv.path,
                   pictures_input(images, None, IMAGENET_MEAN, IMAGENET_STD, "cpu"), whole=False)
        values, positions = got.units(list(range(len(images))), units, "channel")
        return values, self.conv.contributions(got.conv_input, units, positions)

    def scores(self, images: np.ndarray, again: np.ndarray, units: list[int]) -> dict[str, float]:
        """Means over units: activation ratio, path agreement, foreign share of `images`; stability, the ρ of
        each image's contributions with those of `again` (the same units from another seed)."""
        values, c = self.read(images, units)
        _, c2 = self.read(again, units)
        rows = {"activation ratio": values / self.best,
                "path agreement": [spearman(c[i], self.natural[i]) for i in range(len(units))],
                "foreign share": [foreign_share(c[i], self.natural[i]) for i in range(len(units))],
                "stability": [spearman(c[i], c2[i]) for i in range(len(units))]}
        return {k: float(np.mean([x for x in v if x is not None] or [np.nan])) for k, v in rows.items()}


def compare(args: argparse.Namespace) -> None:
    model = vgg19()
    model.requires_grad_(False)                  # lucent too computes no weight gradients (ours never does)
    units = list(range(0, 64, 64 // args.units))[:args.units]
    crops = natural_crops(args.crops, args.size)
    amplitude = mean_amplitude(crops.transpose(0, 3, 1, 2) / 255)              # (3, H, W//2+1)
    runs = {"ours, Fourier": lambda seed: run_ours(model, units, args.steps, args.size, seed),
            "ours, MACO": lambda seed: run_ours(model, units, args.steps, args.size, seed,
                                                param={"amplitude": amplitude}),
            "lucent, one unit a call": lambda seed: run_lucent(model, units, args.steps, args.size, seed),
            "lucent, batched": lambda seed: run_lucent_batched(model, units, args.steps, args.size, seed)}
    print(f"VGG19 (random weights) block3_conv1, units {units}, {args.steps} steps at lr 0.05, {args.size} px, "
          f"{torch.get_num_threads()} torch threads; ours: feature_vis defaults "
          f"({optimizer_for(FeatureVisSpec(steps=args.steps), (args.size,) * 2, 'channel', 0)})", flush=True)
    images, seconds = {}, {}
    for name, run in runs.items():
        images[name], seconds[name], _ = timed(lambda: run(0))
        print(f"  {name}: {seconds[name]:.1f} s", flush=True)
    paths = Paths(model, crops, units)
    lucent = {view: block3_conv1(model, images["lucent, batched"], units, view)["post"].mean()
              for view in (args.size, VIEW)}
    print(f"\n| images | s per filter | speed-up vs lucent one / batched | activation at {args.size} px | "
          f"at {VIEW} px (ratio to lucent batched) | activation ratio | path agreement | foreign share | stability |"
          f"\n|---|---|---|---|---|---|---|---|---|")
    for name in runs:
        again = images["lucent, batched" if name == "lucent, one unit a call" else "lucent, one unit a call"] \
            if "lucent" in name else runs[name](1)
        act = {view: block3_conv1(model, images[name], units, view)["post"].mean() for view in (args.size, VIEW)}
        s = paths.scores(images[name], again, units)
        per = seconds[name] / len(units)
        print(f"| {name} | {per:.2f} | {seconds['lucent, one unit a call'] / seconds[name]:.1f}x / "
              f"{seconds['lucent, batched'] / seconds[name]:.1f}x | {act[args.size]:.4f} | {act[VIEW]:.4f} "
              f"({act[VIEW] / lucent[VIEW]:.2f}x) | " + " | ".join(f"{v:.2f}" for v in s.values()) + " |", flush=True)
    if args.factors:
        factors(args, model, units, images["ours, Fourier"], seconds["ours, Fourier"], lucent[VIEW])


FACTORS = {  # one change from our defaults each: run_ours' keyword arguments
    "float32": {"spec": {"precision": "float32"}},
    "settle0": {"spec": {"settle": 0.0}},
    "pre_relu": {"layer": "features.10"},
    "no_decorrelation": {"param": {"decorrelate": False}},
    "gain4": {"param": {"gain": 4.0}},                                     # the Fourier gain before this issue
    "lr_lucent": {"spec": {"lr": 0.05 / 2.74}},
    "lr_0.1": {"spec": {"lr": 0.1}},
    "lucent_warp": {"warp": "lucent"},
    "upsampled": {"view": VIEW},
    "lucent_warp_upsampled": {"warp": "lucent", "view": VIEW},
    "rendered_224": {"param": {"size": VIEW}},
    "lr_0.1_upsampled": {"spec": {"lr": 0.1}, "view": VIEW},     # two: the two largest gains above
}


def factors(args: argparse.Namespace, model: torch.nn.Module, units: list[int], defaults: np.ndarray,
            seconds: float, lucent: float) -> None:
    """Our Fourier images with one factor changed, against lucent's (batched) in its 224 px view."""
    names = list(FACTORS) if args.factors == "all" else args.factors.split(",")
    print(f"\n| factor changed | activation at {VIEW} px | ratio to lucent | s per filter |\n|---|---|---|---|")
    for name in ["none (defaults)", *names]:
        images, wall = (defaults, seconds) if name not in FACTORS else \
            timed(lambda: run_ours(model, units, args.steps, args.size, **FACTORS[name]))[:2]
        act = block3_conv1(model, images, units, VIEW)["post"].mean()
        print(f"| {name} | {act:.4f} | {act / lucent:.2f}x | {wall / len(units):.2f} |", flush=True)


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
    parser.add_argument("--units", type=int, default=4, help="units compared with lucent (spread over 0..63)")
    parser.add_argument("--crops", type=int, default=64, help="natural crops: trust scores and MACO's amplitude")
    parser.add_argument("--factors", default="", help=f"'all' or some of {','.join(FACTORS)}: our Fourier with "
                                                      "that factor changed, in lucent's 224 px view")
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
