"""The lab on a laptop: the shipped `configs/vgg19_block3_conv1.yaml`, built cold on ImageNet-style photos,
with `feature_vis`' defaults and with the loop they replaced (256 warped steps in float32).

    python benchmarks/lab_build.py                        # 200 photos; both loops
    python benchmarks/lab_build.py --baseline-divide 8    # the old loop at 1/8 of its steps, scaled back up
    python benchmarks/lab_build.py --only defaults        # one of the two

The spec is the shipped file, unchanged but for `dataset.root` (the photos) and `output` (a temporary folder):
VGG19 with `weights: IMAGENET1K_V1`, read by torchvision's own loading path from a stand-in random state_dict
saved as $TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth (a temporary TORCH_HOME; 548 MB, written once), the
64 filters of block3_conv1 with their circuits expanded into block2_conv2, block5_conv4's 4 filters expanded
into block5_conv3, attribution, an explorer. The photos are `imagenet_scale.py`'s (real JPEG photos, WNID
folders). "old loop" sets `feature_vis: {steps: 256, settle: 0, precision: float32}` over the same spec: with
settle 0 and float32 the loop is the one before this change, image for image (tests/analyses/test_featvis.py
pins it). Each build's own phase table (timings.json) is printed side by side; the goal is >= 3x less time.

`--baseline-divide K` runs the old loop with 1/K of its steps and multiplies its feature-vis rows by K (a step
costs the same whatever its number, so the time is linear in the steps), marked as scaled in the table.
`--baseline-feature-vis-only` runs the old loop's build with only what feature vis needs (the dataset pass,
circuits to expand the layers), and takes every other phase's time from the defaults' build, the same code:
the old build's table is then composed, each row marked by where it comes from.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from imagenet_scale import stand_in_weights, write_photos  # noqa: E402

OLD_LOOP = {"steps": 256, "settle": 0.0, "precision": "float32"}
FEATURE_VIS_PHASES = ("feature_vis", "class_models")


def build_lab(images: Path, feature_vis: dict, divide: int, only_feature_vis: bool = False) -> dict:
    """One cold build of the lab spec: {phases: {phase: s}, total, scaled: [phase], log}."""
    from reportgen.pipeline import build
    from reportgen.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(ROOT / "configs" / "vgg19_block3_conv1.yaml")
        spec.dataset.root = images
        spec.output = Path(tmp) / "site"
        spec.feature_vis = spec.feature_vis.model_copy(update=feature_vis)
        spec.feature_vis.steps = max(1, spec.feature_vis.steps // divide)
        if only_feature_vis:
            spec.attribution.enabled = False
            spec.accuracy.enabled = False
            for layer in spec.layers:
                layer.embedding = "none"
        lines: list[str] = []
        t0 = time.perf_counter()
        out = build(spec, progress=False, use_cache=False, log=lines.append)
        total = time.perf_counter() - t0
        timings = json.loads((out / "timings.json").read_text())
    phases = {r["phase"]: r["seconds"] for r in timings["phases"] if r["layer"] is None}
    scaled = [p for p in phases if p in FEATURE_VIS_PHASES] if divide > 1 else []
    for p in scaled:
        total += phases[p] * (divide - 1)
        phases[p] *= divide
    return {"phases": phases, "total": total, "scaled": scaled, "borrowed": [], "log": lines}


def table(results: dict[str, dict]) -> str:
    names = list(dict.fromkeys(n for r in results.values() for n in r["phases"]))
    head = f"{'phase':<22}" + "".join(f"{label:>26}" for label in results)
    rows = [head, "-" * len(head)]
    for n in names:
        rows.append(f"{n:<22}" + "".join(
            f"{r['phases'].get(n, 0):>12.1f} s {100 * r['phases'].get(n, 0) / r['total']:>5.1f} %"
            + (" (x)" if n in r["scaled"] else " (d)" if n in r["borrowed"] else "    ") for r in results.values()))
    rows.append(f"{'total':<22}" + "".join(f"{r['total']:>12.1f} s {100:>5.1f} %    " for r in results.values()))
    if any(r["scaled"] for r in results.values()):
        rows.append("(x): measured at a fraction of the steps and scaled up (--baseline-divide)")
    if any(r["borrowed"] for r in results.values()):
        rows.append("(d): the defaults' build's time for that phase, the same code (--baseline-feature-vis-only)")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--baseline-divide", type=int, default=1)
    p.add_argument("--only", choices=["defaults", "old"], default=None)
    p.add_argument("--baseline-feature-vis-only", action="store_true",
                   help="the old loop's build runs only what feature vis needs; other phases from the defaults'")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "reportgen-lab-build"))
    args = p.parse_args()
    import torch

    work = Path(args.workdir)
    write_photos(work / "images", args.images)
    stand_in_weights(work / "torch", "vgg19", "VGG19_Weights")
    runs = {"defaults": ({}, 1, False), "old loop": (OLD_LOOP, args.baseline_divide, args.baseline_feature_vis_only)}
    if args.only:
        runs = {k: v for k, v in runs.items() if (k == "defaults") == (args.only == "defaults")}
    results = {}
    for label, (fv, divide, only) in runs.items():
        results[label] = build_lab(work / "images", fv, divide, only)
        print(f"--- {label}: build log\n" + "\n".join(results[label]["log"]), flush=True)
    if args.baseline_feature_vis_only and len(results) == 2:      # the other phases: the defaults' build's
        old, new = results["old loop"], results["defaults"]
        for phase, seconds in new["phases"].items():
            if phase not in FEATURE_VIS_PHASES:
                old["phases"][phase] = seconds
                old["borrowed"].append(phase)
        old["total"] = sum(old["phases"].values())
        new["total"] = sum(new["phases"].values())
    print(f"\nconfigs/vgg19_block3_conv1.yaml, {args.images} JPEG photos, stand-in IMAGENET1K_V1 weights, "
          f"{torch.get_num_threads()} torch threads")
    print(table(results))
    if len(results) == 2:
        old, new = results["old loop"]["total"], results["defaults"]["total"]
        print(f"whole build: {old:.0f} s -> {new:.0f} s = {old / new:.2f}x less time (goal >= 3x)")


if __name__ == "__main__":
    main()
