"""Adversarial examples: per sample image, the smallest L∞ perturbation (PGD, bisection on the budget: `pgd.py`)
that changes the prediction (untargeted) and that makes it a chosen class (targeted, `adversarial.target`),
with the new top 3, the perturbation (amplified on the page, raw in an NPZ) and the saliency of the clean and
the fooled image, on a page of their own.
"""

import math

import numpy as np
import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

from ..analysis import Analysis
from ..errors import SpecError
from ..report import class_name, rounded
from ..render import images as im
from ..timing import Work
from . import attribution as at
from ..models import standardize
from .deepdream import to_png
from .pgd import STEP_FACTOR, join, logits_of, pgd, smallest_budget, targeted, untargeted

# `adversarial.target` → probabilities (B, K) → the targeted attack's class per image (a class name: that class)
TARGETS = {"next": lambda probs: probs.argsort(1, descending=True)[:, 1],
           "least_likely": lambda probs: probs.argmin(1)}


def target_rule(target: str, classes: list[str]):
    """The rule for `adversarial.target`, or SpecError naming the key."""
    if target in TARGETS:
        return TARGETS[target]
    if target in classes:
        c = classes.index(target)
        return lambda probs: torch.full((len(probs),), c, dtype=torch.long)
    shown = ", ".join(map(repr, classes[:12])) + (", …" if len(classes) > 12 else "")
    raise SpecError("adversarial.target", f"{target!r} is neither 'next', 'least_likely' nor a class of the model "
                                          f"({shown})")


class Prob(BaseModel):
    label: int
    class_: str = Field(alias="class")
    prob: float | None


class Attack(BaseModel):
    kind: str                    # "untargeted" (leave the clean prediction) or "targeted" (reach `target`)
    target: int | None           # the targeted attack's class (None: untargeted)
    target_class: str | None
    flipped: bool                # the attack reached its goal within max_budget
    budget: float                # the smallest flipping L∞ budget found, pixel units [0, 1] (max_budget if none)
    linf: float                  # the perturbation's measured L∞ norm (≤ budget)
    top3: list[Prob]             # the attacked image's
    image: str                   # the attacked image
    perturbation: str            # attacked − clean, scaled so ±`perturbation_scale` spans the colours
    perturbation_scale: float
    saliency: str                # |∂ logit / ∂ pixel| of the attacked image's top class
    array: str                   # the perturbation's name in `npz`, (C, H, W) in pixel units


class AttackedImage(BaseModel):
    dataset_index: int
    image: str
    class_: str = Field(alias="class")   # the true class
    top3: list[Prob]             # the clean image's
    saliency: str                # of the clean image's top class
    attacks: list[Attack]


class Adversarial(BaseModel):
    steps: int
    step_factor: float           # PGD's step is step_factor × budget / steps
    max_budget: float
    tolerance: float
    target: str                  # adversarial.target as given
    npz: str
    images: list[AttackedImage]


class AdversarialExamples(Analysis):
    """Minimal untargeted and targeted L∞ perturbations of the sample images, on their own page."""
    name = "adversarial"
    spec_key = "adversarial"
    version = 1
    SiteResult = Adversarial

    def prepare(self, ctx):
        target_rule(ctx.spec.adversarial.target, ctx.model.classes)   # a bad target fails before any work

    def applies(self, ctx, layer=None):
        return None if len(ctx.samples) else "no sample images (dataset.samples: 0)"

    def _images(self, ctx) -> np.ndarray:
        readable = [int(i) for i in ctx.samples if int(i) in ctx.evidence.sample_probs]
        return np.array(readable[:ctx.spec.adversarial.images], np.int64)

    def _runs(self, ctx) -> int:
        """PGD runs per image and goal: max_budget, the bisection's halvings, the final image."""
        s = ctx.spec.adversarial
        return 2 + max(0, math.ceil(math.log2(s.max_budget / s.tolerance)))

    def cost(self, ctx, layer=None):
        n = min(ctx.spec.adversarial.images, len(ctx.samples))
        return Work(backward=2 * n * self._runs(ctx) * ctx.spec.adversarial.steps, batch=2 * n, loads=n)

    def compute(self, ctx, layer):
        s, m, model = ctx.spec.adversarial, ctx.model, ctx.model.module
        idx = self._images(ctx)
        x = ctx.pixels(idx)                                                  # (B, C, H, W) in [0, 1]
        probs = logits_of(model, x, m.mean, m.std).softmax(1).cpu()
        pred = probs.argmax(1)
        goals = {"untargeted": untargeted(pred), "targeted": targeted(target_rule(s.target, m.classes)(probs))}
        both, n = join(list(goals.values())), len(idx)
        xs = x.repeat(len(goals), 1, 1, 1)          # both attacks in one batch: half the model calls
        with tqdm(total=self._runs(ctx), unit="PGD", desc="adversarial", leave=False,
                  disable=not (ctx.progress and ctx.group.is_main)) as bar:
            budget, _ = smallest_budget(model, xs, both, s.steps, s.max_budget, s.tolerance, m.mean, m.std,
                                        bar.update)
            already = both.targeted & (both.labels == pred.repeat(len(goals)))    # the target is the prediction
            budget = torch.where(already, 0.0, budget)
            adv = pgd(model, xs, both, budget, s.steps, m.mean, m.std)
            bar.update(1)
        logits = logits_of(model, adv, m.mean, m.std)
        saliency = self._saliency(ctx, adv)
        out = {"index": idx, "clean_probs": probs.numpy(), "clean_saliency": self._saliency(ctx, x)}
        for k, kind in enumerate(goals):
            part = slice(k * n, (k + 1) * n)
            out |= {f"{kind}_delta": (adv[part] - x).cpu().numpy().astype(np.float32),
                    f"{kind}_budget": budget[part].numpy().astype(np.float64),
                    f"{kind}_flipped": both.reached(logits)[part].numpy(),
                    f"{kind}_target": both.labels[part].numpy(),
                    f"{kind}_probs": logits[part].softmax(1).cpu().numpy(),
                    f"{kind}_saliency": saliency[part]}
        out["meta"] = {"kinds": list(goals)}
        return out

    def _saliency(self, ctx, x01) -> np.ndarray:
        """(B, H, W) saliency of each image's own top class."""
        x = standardize(x01, ctx.model.mean, ctx.model.std)
        return at.saliency(ctx.model.module, x, logits_of(ctx.model.module, x01, ctx.model.mean,
                                                          ctx.model.std).argmax(1))

    def report(self, ctx, res, out):
        s, classes = ctx.spec.adversarial, ctx.model.classes
        kinds = res["meta"]["kinds"]
        npz = out.npz("data/adversarial.npz", lambda: {f"{k}_{int(i)}": res[f"{k}_delta"][n] for k in kinds
                                                      for n, i in enumerate(res["index"])})

        def top3(p) -> list[dict]:
            return [{"label": int(c), "class": class_name(classes, int(c), f"output {int(c)}"),
                     "prob": rounded(p[c], 4)} for c in np.argsort(-p, kind="stable")[:3]]

        def saliency(rel, values, i):
            return out.image(rel, lambda: im.overlay(ctx.dataset.image(i), values, cmap="inferno"))

        images = []
        for n, i in enumerate(int(i) for i in res["index"]):
            attacks = []
            for k in kinds:
                delta = res[f"{k}_delta"][n]
                scale = float(np.abs(delta).max())
                target = int(res[f"{k}_target"][n]) if k == "targeted" else None
                attacks.append({
                    "kind": k, "target": target,
                    "target_class": None if target is None else class_name(classes, target, f"output {target}"),
                    "flipped": bool(res[f"{k}_flipped"][n]), "budget": rounded(res[f"{k}_budget"][n], 4),
                    "linf": rounded(scale, 4), "top3": top3(res[f"{k}_probs"][n]),
                    "image": out.image(f"adversarial/{k}_{i}.png",
                                       lambda d=delta, i=i: to_png(ctx.dataset.image(i) / 255 + d)),
                    "perturbation": out.image(f"adversarial/{k}_{i}_delta.png", lambda d=delta: perturbation_png(d)),
                    "perturbation_scale": rounded(scale, 4),
                    "saliency": saliency(f"adversarial/{k}_{i}_saliency.png", res[f"{k}_saliency"][n], i),
                    "array": f"{k}_{i}"})
            ref = out.image_ref(i)
            images.append({"dataset_index": i, "image": ref["image"], "class": ref["class"],
                           "top3": top3(res["clean_probs"][n]),
                           "saliency": saliency(f"adversarial/clean_{i}_saliency.png", res["clean_saliency"][n], i),
                           "attacks": attacks})
        out.site({"steps": s.steps, "step_factor": STEP_FACTOR, "max_budget": s.max_budget,
                  "tolerance": rounded(s.tolerance, 4), "target": s.target, "npz": npz, "images": images})
        out.page("adversarial.html", "adversarial.html", "Adversarial examples")


def perturbation_png(delta: np.ndarray) -> np.ndarray:
    """(C, H, W) signed perturbation → (H, W, 3) uint8 amplified to its largest |value|: one channel on the
    diverging map (blue −, white 0, red +), colour images as 0.5 + delta scaled per pixel value."""
    if delta.shape[0] == 1:
        return im.colorize(im.normalize01(delta[0], symmetric=True), "diverging")
    return to_png(im.normalize01(delta, symmetric=True))
