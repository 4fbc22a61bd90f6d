"""The ImageNet-size case: ResNet-18 at 224 px on an ImageNet-style folder, default sections, one cold build.

    python benchmarks/imagenet_scale.py                          # 500 images, every default
    python benchmarks/imagenet_scale.py --images 128 --feature-vis-steps 8 --repeats 1   # a quick run
    python benchmarks/imagenet_scale.py --baseline /tmp/before   # the same run on another checkout first

Writes (once, into --workdir) 500 JPEG photos of 500×375 or 375×500 px in 10 class folders named by
ImageNet WordNet IDs (ImageNet's first 10 classes). The photos are real: random crops (scaled, flipped,
colour-shifted) of the two photographs scikit-learn ships (`load_sample_images`: a temple in China, a
flower), saved at JPEG quality 90, so decoding costs what a photo's does. The model is torchvision's
resnet18 with `weights: IMAGENET1K_V1`, read through torchvision's own loading path from a stand-in random
state_dict saved as $TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth (a temporary TORCH_HOME).

Prints: the build's phase table (seconds and share, from the site's timings.json), the total, and the
dataset pass ÷ a bare forward: the pass is `record.record` with the build's plan (decoding included), the
bare forward the same images, decoded beforehand to one uint8 tensor, normalized and forwarded in batches of the same size
under `inference_mode`, no hooks. Best of --repeats, interleaved. Goal: ≤ 1.3×.
With --baseline DIR, the same benchmark runs first with `reportgen` imported from DIR (e.g. a git worktree
of an older commit), on the same images, and both tables are printed side by side.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475",
         "n01496331", "n01498041", "n01514668", "n01514859", "n01518878"]   # ImageNet classes 0-9

SPEC = """
title: ImageNet-scale benchmark
seed: 0
model:
  torchvision: resnet18
  weights: IMAGENET1K_V1
dataset:
  format: imagefolder
  root: {images}
  batch_size: {batch}
  workers: {workers}
layers:
  - name: {layer}
"""


def write_photos(root: Path, n: int, seed: int = 0) -> None:
    """`n` JPEG photos in WNID folders (see the module docstring); kept if already there."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    if root.is_dir() and sum(1 for _ in root.glob("*/*.jpg")) == n:
        return
    sources = [Image.fromarray(a) for a in load_sample_images().images]   # (427, 640, 3) each
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / WNIDS[i % len(WNIDS)]
        folder.mkdir(parents=True, exist_ok=True)
        src = sources[rng.integers(len(sources))]
        w = int(rng.integers(200, 640))                       # a crop of 200-640 px wide at 4:3
        h = min(427, w * 3 // 4)
        x0, y0 = int(rng.integers(0, 640 - w + 1)), int(rng.integers(0, 427 - h + 1))
        size = (375, 500) if rng.random() < 0.25 else (500, 375)   # a quarter portrait
        img = src.crop((x0, y0, x0 + w, y0 + h)).resize(size, Image.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(img, np.float32) * rng.uniform(0.7, 1.3, 3)   # white balance
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"img{i:04d}.jpg", quality=90)


def stand_in_weights(torch_home: Path, model: str = "resnet18", weights: str = "ResNet18_Weights") -> None:
    """A random state_dict of torchvision's `model` where its IMAGENET1K_V1 `weights` file is cached (written
    once), with TORCH_HOME pointing there: torchvision's own loading path reads it offline."""
    import torch
    import torchvision

    from reportgen.models import weights_cache_path
    os.environ["TORCH_HOME"] = str(torch_home)
    path = weights_cache_path(getattr(torchvision.models, weights).IMAGENET1K_V1)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(getattr(torchvision.models, model)().state_dict(), path)


def timed_build(spec) -> tuple[dict, float, list[str]]:
    """Build `spec` cold: ({phase: seconds} from the site's timings.json, total seconds, the build's log)."""
    from reportgen.pipeline import build

    lines: list[str] = []
    t0 = time.perf_counter()
    out = build(spec, progress=False, log=lines.append)
    total = time.perf_counter() - t0
    if not (out / "timings.json").is_file():     # a baseline from before the phase table: its total only
        return {}, total, lines
    timings = json.loads((out / "timings.json").read_text())
    return {r["phase"]: r["seconds"] for r in timings["phases"] if r["layer"] is None}, total, lines


def pass_vs_bare(spec, repeats: int) -> tuple[float, float]:
    """(best pass seconds, best bare forward seconds) over the build's images, interleaved."""
    import torch

    from reportgen.pipeline import prepare
    from reportgen.evidence import plan
    from reportgen.record import record

    ctx = prepare(spec, use_cache=False, log=lambda *_: None)
    batch = ctx.spec.dataset.batch_size
    p = plan(ctx, {l.path: l.channels for l in ctx.layers})
    images = torch.from_numpy(np.stack([ctx.dataset.image(int(i)) for i in ctx.indices]))   # (N, 3, H, W) uint8
    model = ctx.model.module

    def bare():
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                model(ctx.model.normalize(images[start:start + batch].to(ctx.device)))

    t_pass, t_bare = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        bare()
        t_bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        record(model, ctx.model.normalize, ctx.dataset, ctx.indices, p, progress=False)
        t_pass.append(time.perf_counter() - t0)
    return min(t_pass), min(t_bare)


def run(args) -> dict:
    import torch

    from reportgen.spec import load_spec
    work = Path(args.workdir)
    write_photos(work / "images", args.images)
    stand_in_weights(work / "torch")
    with tempfile.TemporaryDirectory(dir=work) as tmp:       # a fresh spec folder: a cold cache
        spec_file = Path(tmp) / "spec.yaml"
        spec_file.write_text(SPEC.format(images=work / "images", batch=args.batch, workers=args.workers,
                                         layer=args.layer))
        spec = load_spec(spec_file)
        if args.feature_vis_steps:
            spec.feature_vis.steps = args.feature_vis_steps
        if args.no_feature_vis:
            spec.feature_vis.enabled = False
        if args.attribution_images:
            spec.attribution.images = args.attribution_images
        spec.output = Path(tmp) / "site"
        phases, total, lines = timed_build(spec)
        t_pass, t_bare = pass_vs_bare(spec, args.repeats)
    return {"phases": phases, "total": total, "pass": t_pass, "bare": t_bare, "images": args.images,
            "threads": torch.get_num_threads(), "log": lines}


def table(results: dict[str, dict]) -> str:
    """Phase rows, one column pair (seconds, share) per result."""
    names = list(dict.fromkeys(n for r in results.values() for n in r["phases"]))
    head = f"{'phase':<22}" + "".join(f"{label:>22}" for label in results)
    rows = [head, "-" * len(head)]
    for n in names:
        rows.append(f"{n:<22}" + "".join(
            f"{r['phases'].get(n, 0):>12.1f} s {100 * r['phases'].get(n, 0) / r['total']:>5.1f} %"
            for r in results.values()))
    rows.append(f"{'total':<22}" + "".join(f"{r['total']:>12.1f} s {100:>5.1f} %" for r in results.values()))
    rows.append("")
    for label, r in results.items():
        rows.append(f"{label}: dataset pass {r['pass']:.2f} s ({r['images'] / r['pass']:.1f} images/s), bare "
                    f"inference_mode forward {r['bare']:.2f} s, ratio {r['pass'] / r['bare']:.2f}x (goal <= 1.3x)")
    return "\n".join(rows)


def use_checkout(root: Path) -> None:
    """Import reportgen from `root`, with its own templates: a git worktree has them at templates/, beside the
    package, so `reportgen/templates` is linked there when missing (the package `reportgen.templates` a wheel
    installs)."""
    link = root / "reportgen" / "templates"
    if root.resolve() != ROOT and not link.exists() and (root / "templates").is_dir():
        link.symlink_to(Path("..") / "templates")
    sys.path.insert(0, str(root))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--batch", type=int, default=64, help="dataset.batch_size (the spec's default)")
    p.add_argument("--workers", type=int, default=None, help="dataset.workers (default: the spec's default)")
    p.add_argument("--layer", default="layer3")
    p.add_argument("--feature-vis-steps", type=int, default=0, help="0: the spec's default")
    p.add_argument("--no-feature-vis", action="store_true")
    p.add_argument("--attribution-images", type=int, default=0, help="0: the spec's default")
    p.add_argument("--repeats", type=int, default=2, help="pass vs bare forward, best of n")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "reportgen-imagenet-scale"))
    p.add_argument("--baseline", help="a checkout (e.g. a git worktree) to run the same benchmark on first")
    p.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)   # where reportgen is imported from
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    use_checkout(Path(args.root))
    workers_given = args.workers is not None
    if not workers_given:
        from reportgen.spec import DatasetSpec
        args.workers = DatasetSpec.model_fields["workers"].default
    results = {}
    if args.baseline:
        child = [f"--images={args.images}", f"--batch={args.batch}", f"--layer={args.layer}",
                 f"--feature-vis-steps={args.feature_vis_steps}", f"--repeats={args.repeats}",
                 f"--attribution-images={args.attribution_images}", f"--workdir={args.workdir}"] \
            + (["--no-feature-vis"] if args.no_feature_vis else []) \
            + ([f"--workers={args.workers}"] if workers_given else [])   # else the baseline's own default
        out = subprocess.run([sys.executable, __file__, *child, "--root", args.baseline, "--json"],
                             check=True, stdout=subprocess.PIPE, text=True).stdout   # its errors show
        results["before"] = json.loads(out.strip().splitlines()[-1])
    results["after" if args.baseline else "this checkout"] = run(args)
    if args.json:
        print(json.dumps(results["this checkout"]))
        return
    for label, r in results.items():
        print(f"--- {label}: build log")
        print("\n".join(r["log"]))
    r = next(iter(results.values()))
    print(f"\nresnet18 (IMAGENET1K_V1 file, stand-in weights) at 224 px, {r['images']} JPEG photos, batch "
          f"{args.batch}, workers {args.workers}, {r['threads']} torch threads, layer {args.layer}, default sections"
          + (", no feature vis" if args.no_feature_vis else
             f", feature vis {args.feature_vis_steps} steps" if args.feature_vis_steps else "")
          + (f", attribution of {args.attribution_images} images" if args.attribution_images else ""))
    print(table(results))


if __name__ == "__main__":
    main()
