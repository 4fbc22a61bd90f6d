"""DeepDream: per spec layer, the first sample images with that layer's activations amplified (the loop in
`dream.py`), on the layer page, each with the ratio of the layer's activation norm after and before; and
optionally (`deepdream.filters`) the first sample image nudged towards each of the layer's first spec filters,
on the filter pages.
"""

import numpy as np
import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

from ..analysis import Analysis
from ..hooks import stopping_at
from ..report import rounded
from ..timing import Work
from ..models import standardize
from .dream import Dream, activation_norm, amplify, channels, dream


def dream_images(ctx) -> np.ndarray:
    """The first `deepdream.images` sample images the dataset pass could read (dataset indices)."""
    readable = [int(i) for i in ctx.samples if int(i) in ctx.evidence.sample_probs]
    return np.array(readable[:ctx.spec.deepdream.images], np.int64)


def to_png(x01: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] → (H, W, C) uint8."""
    return (np.clip(x01, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


class DreamImage(BaseModel):
    dataset_index: int
    original: str                # the image before
    image: str                   # the dreamed image
    norm_ratio: float | None = Field(description="the layer's activation L2 norm on the dreamed image over that "
                                                 "on the original")


class LayerDream(BaseModel):
    octaves: list[list[int]]     # [height, width] of each octave dreamed, smallest first
    steps: int                   # per octave
    lr: float
    jitter: int
    images: list[DreamImage]


class FilterDream(BaseModel):
    dataset_index: int
    original: str                # the image before
    image: str                   # the image nudged towards the filter
    channel_ratio: float | None = Field(description="the filter's mean activation on the nudged image over that on "
                                                    "the original (None where the original's is 0)")


class DeepDream(Analysis):
    """Per spec layer: sample images with the layer's activations amplified; per filter optionally nudged."""
    name = "deepdream"
    spec_key = "deepdream"
    version = 1
    per_layer = True
    templates = {"layer": "analyses/deepdream_layer.html", "filter": "analyses/deepdream_filter.html"}
    LayerResult = LayerDream
    FilterResult = FilterDream

    def enabled(self, ctx, layer=None) -> bool:
        return ctx.spec.deepdream.enabled and (layer is None or not layer.expanded)   # the spec's layers only

    def applies(self, ctx, layer=None):
        return None if len(ctx.samples) else "no sample images (dataset.samples: 0)"

    def _settings(self, ctx) -> Dream:
        s = ctx.spec.deepdream
        return Dream(octaves=s.octaves, octave_scale=s.octave_scale, steps=s.steps, lr=s.lr, jitter=s.jitter,
                     seed=ctx.spec.seed)

    def _filters(self, ctx, layer) -> list[int]:
        return layer.filters[:ctx.spec.deepdream.filters]

    def cost(self, ctx, layer):
        steps = len(self._settings(ctx).sizes(ctx.model.input_size)) * ctx.spec.deepdream.steps
        n, f = min(ctx.spec.deepdream.images, len(ctx.samples)), len(self._filters(ctx, layer))
        return (Work(backward=n * steps, batch=n, layer=layer.path, loads=n),
                Work(backward=f * steps, batch=max(f, 1), layer=layer.path))

    def compute(self, ctx, layer):
        settings, model, m = self._settings(ctx), ctx.model.module, ctx.model
        idx = dream_images(ctx)
        units = self._filters(ctx, layer)
        per_run = len(settings.sizes(m.input_size)) * settings.steps
        with tqdm(total=per_run * (1 + bool(units)), unit="step", desc=f"deepdream {layer.name}", leave=False,
                  disable=not (ctx.progress and ctx.group.is_main)) as bar:
            x = ctx.pixels(idx)                                                      # (B, C, H, W)
            dreamed = dream(model, layer.path, x, amplify, m.mean, m.std, settings, bar.update)
            out = {"index": idx, "dreamed": dreamed.cpu().numpy().astype(np.float32),
                   "norm_before": activation_norm(model, layer.path, x, m.mean, m.std).cpu().numpy(),
                   "norm_after": activation_norm(model, layer.path, dreamed, m.mean, m.std).cpu().numpy(),
                   "units": np.array(units, np.int64),
                   "meta": {"octaves": [list(s) for s in settings.sizes(m.input_size)]}}
            if units:
                target = torch.tensor(units)
                start = x[:1].expand(len(units), -1, -1, -1)
                nudged = dream(model, layer.path, start, channels(target), m.mean, m.std, settings, bar.update)
                out["nudged"] = nudged.cpu().numpy().astype(np.float32)
                out["channel_before"] = self._channel_means(ctx, layer, start, target)
                out["channel_after"] = self._channel_means(ctx, layer, nudged, target)
        return out

    def _channel_means(self, ctx, layer, x01, units) -> np.ndarray:
        with stopping_at(ctx.model.module, layer.path) as run, torch.no_grad():
            return channels(units)(run(standardize(x01, ctx.model.mean, ctx.model.std))).cpu().numpy()

    def report(self, ctx, artifacts, out):
        s = ctx.spec.deepdream
        for path, art in artifacts.items():
            layer = ctx.layer(path)
            base = f"layers/{layer.slug}/img"
            out.layer(path, {
                "octaves": art["meta"]["octaves"], "steps": s.steps, "lr": s.lr, "jitter": s.jitter,
                "images": [{"dataset_index": int(i), "original": out.image_ref(int(i))["image"],
                            "image": out.image(f"{base}/dream_{int(i)}.png", lambda a=a: to_png(a)),
                            "norm_ratio": ratio(after, before)}
                           for i, a, before, after in zip(art["index"], art["dreamed"], art["norm_before"],
                                                          art["norm_after"])]})
            first = int(art["index"][0])
            for n, f in enumerate(art["units"].tolist()):
                out.filter(path, f, {
                    "dataset_index": first, "original": out.image_ref(first)["image"],
                    "image": out.image(f"{base}/f{f}_dream.png", lambda a=art["nudged"][n]: to_png(a)),
                    "channel_ratio": ratio(art["channel_after"][n], art["channel_before"][n])})


def ratio(after: float, before: float) -> float | None:
    """after / before for report.json; None where `before` is 0 (no activation to amplify)."""
    return rounded(after / before, 4) if before > 0 else None
