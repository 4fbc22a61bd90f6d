"""t-SNE of 10k pooled features: reportgen's `embed` vs `sklearn.manifold.TSNE()` defaults, one run;
then the explorer's page weight for 5k points.

    python benchmarks/embedding.py [--data /usr/share/datasets/fashion-mnist] [--n 10000] [--skip-weight]

Goal: >= 3x faster than sklearn, trustworthiness (k=10, 3k subsample) >= sklearn's - 0.01. Features: the
demo CNN's globally pooled last conv layer if `reportgen/demo/fashion_cnn.pt` exists, else PCA-50 of the
pixels. sklearn runs twice: as installed (its OpenMP threads on all cores) and limited to one thread,
because on a shared machine its threads spin-wait for each other and the default run is the slower one.
Page weight: HTML (`components()` plus a minimal page) + the sprite sheet + the shared BokehJS, for 5k
28x28 Fashion-MNIST thumbnails and for 5k 64 px photographic crops (sklearn's two bundled sample photos).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from reportgen.analyses.embedding import embed, global_average_pool, trustworthiness, tsne_settings
from reportgen.idx import load_idx_split
from reportgen.render.plots import copy_bokehjs, explorer_plot, script_tags, write_sprite_sheet

DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "reportgen" / "demo" / "fashion_cnn.pt"


def features(images: np.ndarray) -> tuple[np.ndarray, str]:
    """(N, 28, 28) uint8 -> (N, D) features and what they are."""
    if DEMO_WEIGHTS.exists():
        from reportgen.demo.fashion_cnn import build
        from reportgen.demo.train import MEAN, STD

        model = build()
        model.load_state_dict(torch.load(DEMO_WEIGHTS, map_location="cpu", weights_only=True))
        model.eval()
        x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - MEAN) / STD  # (N, 1, 28, 28)
        with torch.inference_mode():
            acts = torch.cat([model.features(x[i : i + 1000]) for i in range(0, len(x), 1000)])  # (N, 128, 7, 7)
        return global_average_pool(acts.numpy()), "demo CNN, pooled features.conv5_relu (128-D)"
    pixels = images.reshape(len(images), -1).astype(np.float32) / 255
    return PCA(50, random_state=0).fit_transform(pixels), "PCA-50 of pixels (demo weights not found)"


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench_tsne(feats: np.ndarray) -> None:
    runs = {
        "reportgen embed": lambda: embed(feats, "tsne", seed=0),
        "sklearn TSNE() defaults": lambda: TSNE(random_state=0).fit_transform(feats),
    }
    results = {}
    for name, fn in runs.items():
        points, wall, cpu = timed(fn)
        results[name] = (wall, cpu, trustworthiness(feats, points, k=10, max_points=3000, seed=0))
    with threadpool_limits(1):
        points, wall, cpu = timed(lambda: TSNE(random_state=0).fit_transform(feats))
    results["sklearn TSNE() defaults, 1 thread"] = (wall, cpu, trustworthiness(feats, points, seed=0))
    ours_wall, _, ours_trust = results["reportgen embed"]
    print(f"t-SNE engine for N={len(feats)}: {tsne_settings(len(feats))}")
    for name, (wall, cpu, trust) in results.items():
        print(f"  {name:36s} {wall:7.1f} s wall {cpu:7.1f} s cpu  trustworthiness {trust:.4f}  "
              f"speed-up {wall / ours_wall:5.2f}x")  # fmt: skip
    sk_wall, _, sk_trust = results["sklearn TSNE() defaults"]
    ok = sk_wall / ours_wall >= 3 and ours_trust >= sk_trust - 0.01
    print(f"goal (>= 3x faster than sklearn defaults, trustworthiness >= sklearn - 0.01): {'met' if ok else 'NOT met'}")


def page_weight(name: str, thumbs: np.ndarray, sprite_name: str, labels: np.ndarray, out: Path) -> None:
    """Write one explorer page for `thumbs` (N, h, w, C) and print what a browser downloads for it."""
    n = len(thumbs)
    site = out / name
    layout = write_sprite_sheet(thumbs, site / "assets" / sprite_name)
    scripts = copy_bokehjs(site / "static")
    rng = np.random.default_rng(0)
    preds = np.where(rng.random(n) < 0.1, rng.integers(0, 10, n), labels)
    script, div = explorer_plot(rng.normal(size=(n, 2)) * 20, labels, preds, np.arange(n), [f"class {i}" for i in
                                range(10)], layout, f"../assets/{sprite_name}", "../images/{index}.html", name)  # fmt: skip
    page = site / "pages" / "plot.html"
    page.parent.mkdir(parents=True)
    page.write_text(f"<!doctype html><html><head>{script_tags(scripts, 1)}{script}</head><body>{div}</body></html>")
    sizes = {
        "page HTML": page.stat().st_size,
        "sprite": (site / "assets" / sprite_name).stat().st_size,
        "BokehJS (shared)": sum((site / "static" / s).stat().st_size for s in scripts),
    }
    parts = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())
    print(f"  {name:34s} total {sum(sizes.values()) / 1e6:5.2f} MB  ({parts})")


def photo_crops(n: int, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8 random crops (24-160 px, resized) of sklearn's two bundled photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    crops = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(24, 161))
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
        crops[i] = np.asarray(crop)
    return crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--skip-weight", action="store_true")
    args = parser.parse_args()
    images, labels = load_idx_split(args.data, "test")
    feats, what = features(images[: args.n])
    print(f"{len(feats)} Fashion-MNIST test images; features: {what}")
    bench_tsne(feats)
    if args.skip_weight:
        return
    print("page weight for 5000 points (HTML + sprite sheet + BokehJS copied once per site):")
    with tempfile.TemporaryDirectory() as tmp:
        for sprite in ["s.png", "s.webp"]:
            grey = images[:5000, :, :, None]
            page_weight(f"28x28 grey, {sprite[2:].upper()} sprite", grey, sprite, labels[:5000], Path(tmp))
        crops, photo_labels = photo_crops(5000, 64), np.arange(5000) % 10
        for sprite in ["s.png", "s.jpg", "s.webp"]:
            page_weight(f"64x64 photo crops, {sprite[2:].upper()} sprite", crops, sprite, photo_labels, Path(tmp))


if __name__ == "__main__":
    main()
