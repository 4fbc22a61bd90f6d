"""Texture and style (Gatys, Ecker & Bethge 2015 "Texture Synthesis Using Convolutional Neural Networks", 2016
"Image Style Transfer Using Convolutional Neural Networks"): what the spec layers' Gram matrices keep of an image.

- Texture: from noise, an image whose Gram matrices at every spec layer match those of sample image
  `texture.image`: which features co-occur, with where they are thrown away.
- Style transfer, as the lecture closes, combining it with inversion: sample image `content_image`'s activations
  at `content_layer` (the deepest spec layer by default) matched together with `style_image`'s Gram matrices.

Both run feature visualization's loop (Fourier parameterization, random warps) with the objective 'match' on
`featvis.style`'s statistics: each layer's Gram matrix (and the content layer's activations) scaled by
sqrt(weight) / its target's norm, so the loop minimizes sqrt(Σ weight × relative distance²). The weights: each
layer's Gram matrix 1 / layers for the texture; the content 1 and each layer's Gram matrix
style_weight / layers for the transfer. The relative distance per part is kept at the noise start and at the end.
"""

import numpy as np
import torch
from pydantic import BaseModel
from tqdm import tqdm

from ..analysis import Analysis
from ..models import standardize
from ..report import rounded
from ..schema import ImageRef
from ..timing import Work
from .featvis import MATCH, Objective, Part, RandomAffine, initial_pixels, relative_distance, statistics_model, \
    synthesize
from .featvis.hooks import frozen
from .featvis.style import scaled
from .inversion import inversion_page, model_order, synthesis_setup


def match_statistics(model, parts: list[Part], weights: list[float], sources: list[torch.Tensor], param, optimizer,
                     device: str = "cpu", progress=None) -> dict:
    """One image whose parts' values match those of the (1, C, H, W) normalized `sources` (one per part) →
    {"pixels": (H, W, C) uint8, "start": (parts,) and "final": (parts,) relative distance of each part}."""
    with frozen(model), statistics_model(model, parts) as raw, torch.no_grad():
        targets = [raw.split(src)[i][0] for i, src in enumerate(sources)]          # each part from its source
        start = raw.split(standardize(initial_pixels(param, [0], optimizer.seed, device), param.mean, param.std))
    parts = scaled(parts, targets, weights)
    target = torch.cat([t.flatten() * p.scale for p, t in zip(parts, targets)])[None]   # (1, D)
    with statistics_model(model, parts) as stats:
        res = synthesize(stats, Objective(None, [0], MATCH, targets=target.cpu()), param, RandomAffine(), optimizer,
                         device=device, progress=progress)
        with frozen(model), torch.no_grad():
            final = raw_split(stats, torch.from_numpy(res.images).to(device), param.mean, param.std)
    return {"pixels": res.images[0],
            "start": np.array([float(relative_distance(s, t[None])) for s, t in zip(start, targets)]),
            "final": np.array([float(relative_distance(f, t[None])) for f, t in zip(final, targets)])}


def raw_split(stats, pixels: torch.Tensor, mean, std) -> list[torch.Tensor]:
    """Each part's unscaled values on (N, H, W, C) uint8 `pixels`, as the page shows them."""
    return stats.split(standardize(pixels.permute(0, 3, 1, 2).float() / 255, mean, std))


class Distance(BaseModel):
    layer: str                       # the spec layer's name
    part: str                        # "gram" (its Gram matrix) or "content" (its activations)
    start_distance: float | None     # relative distance at the noise start
    distance: float | None           # relative distance at the end


class Synthesized(BaseModel):
    image: str
    distances: list[Distance]


class TextureResult(BaseModel):
    page: str
    steps: int
    source: ImageRef                 # texture: the image whose Gram matrices are matched
    texture: Synthesized
    style: ImageRef                  # style transfer: the image giving the Gram matrices
    content: ImageRef                # and the one giving the content layer's activations
    content_layer: str
    style_weight: float
    transfer: Synthesized


class Texture(Analysis):
    """Site-level: a texture from one sample image's Gram matrices, and one sample in another's style."""
    name = "texture"
    spec_key = "texture"
    version = 1
    SiteResult = TextureResult

    def _layers(self, ctx) -> list:
        return model_order(ctx, [l for l in ctx.layers if not l.expanded])

    def _content_layer(self, ctx):
        name = ctx.spec.texture.content_layer
        return next(l for l in self._layers(ctx) if l.name == name) if name else self._layers(ctx)[-1]

    def _images(self, ctx) -> tuple[int, int, int]:
        """Dataset indices of the texture's source, the style image and the content image."""
        t = ctx.spec.texture
        return tuple(int(ctx.samples[i]) for i in (t.image, t.style_image, t.content_image))

    def applies(self, ctx, layer=None):
        t = ctx.spec.texture
        top = max(t.image, t.style_image, t.content_image)
        if top >= len(ctx.samples):
            return f"sample image {top} is asked for, but the dataset gives {len(ctx.samples)} sample images"
        return None

    def key_parts(self, ctx):
        # site-level: the runner's key holds no layer, so the layers matched (and the images) go in here
        return ([l.path for l in self._layers(ctx)], self._content_layer(ctx).path, self._images(ctx))

    def cost(self, ctx, layer=None):
        return Work(backward=2 * ctx.spec.texture.steps, batch=1, layer=self._layers(ctx)[-1].path)

    def compute(self, ctx, layer=None):
        t, model = ctx.spec.texture, ctx.model.module
        layers, content = self._layers(ctx), self._content_layer(ctx)
        source, style, subject = (ctx.batch([i]) for i in self._images(ctx))
        param, optimizer = synthesis_setup(ctx, t.steps, t.lr, 1)
        grams = [Part(l.path) for l in layers]
        with tqdm(total=2 * t.steps, unit="step", desc="texture", leave=False,
                  disable=not (ctx.progress and ctx.group.is_main)) as bar:
            texture = match_statistics(model, grams, [1 / len(grams)] * len(grams), [source] * len(grams), param,
                                       optimizer, ctx.device, bar.update)
            transfer = match_statistics(model, [Part(content.path, gram=False)] + grams,
                                        [1.0] + [t.style_weight / len(grams)] * len(grams),
                                        [subject] + [style] * len(grams), param, optimizer, ctx.device, bar.update)
        return {f"{name}_{k}": v for name, res in (("texture", texture), ("transfer", transfer))
                for k, v in res.items()} | {"images": np.array(self._images(ctx), np.int64),
                                            "meta": {"layers": [l.path for l in layers], "content": content.path}}

    def report(self, ctx, art, out):
        source, style, content = (int(i) for i in art["images"])
        names = [ctx.layer(p).name for p in art["meta"]["layers"]]
        content_name = ctx.layer(art["meta"]["content"]).name

        def synthesized(kind: str, labels: list[tuple[str, str]]) -> dict:
            return {"image": out.image(f"img/texture/{kind}.png", lambda: art[f"{kind}_pixels"]),
                    "distances": [{"layer": layer, "part": part, "start_distance": rounded(art[f"{kind}_start"][j], 4),
                                   "distance": rounded(art[f"{kind}_final"][j], 4)}
                                  for j, (layer, part) in enumerate(labels)]}
        out.site({"page": inversion_page(out), "steps": ctx.spec.texture.steps, "source": out.image_ref(source),
                  "texture": synthesized("texture", [(n, "gram") for n in names]),
                  "style": out.image_ref(style), "content": out.image_ref(content), "content_layer": content_name,
                  "style_weight": ctx.spec.texture.style_weight,
                  "transfer": synthesized("transfer", [(content_name, "content")] + [(n, "gram") for n in names])})
