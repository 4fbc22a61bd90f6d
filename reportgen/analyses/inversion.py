"""Feature inversion (Mahendran & Vedaldi 2015, "Understanding Deep Image Representations by Inverting Them"):
for each spec layer and the first `inversion.images` sample images, the image whose features at the layer are
closest to the sample's, found from noise. What survives in it is what the layer keeps of the image; what is
lost, it throws away. Side by side across layers, detail fades with depth.

The loop is feature visualization's (`featvis.synthesize`: Fourier parameterization, random warps, the last
quarter of the steps unwarped), with the objective 'match': minus the relative distance
‖f(x) − f(x0)‖ / ‖f(x0)‖ of the layer's output f. The parameterization and the warps are the regularizer, in
place of the paper's total-variation and norm terms. Each image starts from its own seeded noise (the same at
every layer), and both the start's distance and the final one are kept.
"""

import numpy as np
import torch
from pydantic import BaseModel
from tqdm import tqdm

from ..analysis import Analysis
from ..hooks import run_until
from ..models import standardize
from ..report import rounded
from ..schema import ImageRef
from ..timing import Work
from .featvis import MATCH, Objective, Optimizer, Parameterization, RandomAffine, initial_pixels, relative_distance, \
    synthesize
from .featvis.hooks import frozen

PAGE = "inversion.html"


def invert(model, layer: str, x0: torch.Tensor, param: Parameterization, optimizer: Optimizer,
           device: str = "cpu", progress=None) -> dict:
    """Reconstruct the (N, C, H, W) normalized images `x0` from `layer`'s output → {"pixels": (N, H, W, C) uint8,
    "start": (N,) and "final": (N,) relative feature distances of the noise start and of the reconstruction}."""
    with frozen(model), torch.no_grad():
        target = run_until(model, layer, x0).float()
        start = initial_pixels(param, range(len(x0)), optimizer.seed, device)          # (N, C, H, W) in [0, 1]
        start_distance = relative_distance(run_until(model, layer, standardize(start, param.mean, param.std)), target)
    res = synthesize(model, Objective(layer, range(len(x0)), MATCH, targets=target.cpu()), param, RandomAffine(),
                     optimizer, device=device, progress=progress)
    return {"pixels": res.images, "start": start_distance.cpu().numpy().astype(np.float64),
            "final": -res.activation.astype(np.float64)}


def synthesis_setup(ctx, steps: int, lr: float, batch: int) -> tuple[Parameterization, Optimizer]:
    """Feature visualization's Fourier parameterization at the model's input size, and a float32 loop of
    `steps` at `lr` (one size: the features are compared at the targets' shape)."""
    param = Parameterization(ctx.model.channels, ctx.model.mean, ctx.model.std, size=tuple(ctx.model.input_size))
    return param, Optimizer(steps=steps, lr=lr, seed=ctx.spec.seed, batch_size=max(1, batch))


def model_order(ctx, layers) -> list:
    """`layers` in the order their modules appear in the model."""
    position = {li.path: i for i, li in enumerate(ctx.layer_infos)}
    return sorted(layers, key=lambda l: position.get(l.path, len(position)))


class Reconstruction(BaseModel):
    dataset_index: int
    image: str
    start_distance: float | None     # relative feature distance of the noise the optimization starts from
    distance: float | None           # ‖f(x) − f(x0)‖ / ‖f(x0)‖ of the reconstruction x


class LayerInversion(BaseModel):
    reconstructions: list[Reconstruction]    # in the order of the site part's `images`


class InversionPage(BaseModel):
    page: str
    steps: int
    images: list[ImageRef]       # the sample images reconstructed
    layers: list[str]            # paths of the layers reconstructed, in model order


class Inversion(Analysis):
    """Per spec layer: the first sample images reconstructed from the layer's output, with their distances."""
    name = "inversion"
    spec_key = "inversion"
    version = 1
    per_layer = True
    templates = {"overview": "analyses/inversion_overview.html"}
    LayerResult = LayerInversion
    SiteResult = InversionPage

    def enabled(self, ctx, layer=None) -> bool:
        return ctx.spec.inversion.enabled and (layer is None or not layer.expanded)   # the spec's layers only

    def _images(self, ctx) -> np.ndarray:
        return ctx.samples[:ctx.spec.inversion.images]

    def key_parts(self, ctx):
        return ([int(i) for i in self._images(ctx)],)

    def cost(self, ctx, layer):
        n = len(self._images(ctx))
        return Work(backward=n * ctx.spec.inversion.steps, batch=n, layer=layer.path)

    def compute(self, ctx, layer):
        s, images = ctx.spec.inversion, self._images(ctx)
        param, optimizer = synthesis_setup(ctx, s.steps, s.lr, len(images))
        with tqdm(total=len(images) * s.steps, unit="img·step", desc=f"inversion {layer.name}", leave=False,
                  disable=not (ctx.progress and ctx.group.is_main)) as bar:
            out = invert(ctx.model.module, layer.path, ctx.batch(images), param, optimizer, ctx.device, bar.update)
        return {"images": np.asarray(images, np.int64), **out}

    def report(self, ctx, artifacts, out):
        layers = model_order(ctx, [ctx.layer(p) for p in artifacts])
        for layer in layers:
            art = artifacts[layer.path]
            out.layer(layer.path, {"reconstructions": [
                {"dataset_index": int(i),
                 "image": out.image(f"img/inversion/{layer.slug}_{int(i)}.png", lambda j=j, art=art: art["pixels"][j]),
                 "start_distance": rounded(art["start"][j], 4), "distance": rounded(art["final"][j], 4)}
                for j, i in enumerate(art["images"])]})
        images = next(iter(artifacts.values()))["images"] if artifacts else self._images(ctx)
        out.site({"page": inversion_page(out), "steps": ctx.spec.inversion.steps,
                  "images": [out.image_ref(int(i)) for i in images], "layers": [l.path for l in layers]})


def inversion_page(out) -> str:
    """The page inversion and texture share, added once (by whichever of them reports first)."""
    if not any(p["page"] == PAGE for p in out.report["pages"]):
        out.page(PAGE, "analyses/inversion_page.html", "Inversion")
    return PAGE
