"""How far to trust each attribution map: deletion and insertion curves against a random pixel order, beside the
randomization check's rank correlation, and a per-model summary of which methods track the evidence.

For every map of the `attribution` analysis (image, target kind, method), on the sample images it computed:

- the deletion curve (Petsiuk et al. 2018, "RISE", section 4.2): the model's softmax probability of the map's
  target as the map's most attributed pixels are removed, a share 1/steps of the pixels per step, each removed
  pixel replaced by its value in a blurred copy of the image (Gaussian, σ = BLUR × the shorter input side);
- the insertion curve: the same pixels, in the same order, put back into that blurred copy.

  One blurred copy for both (RISE blurs for insertion and uses black for deletion): a removed pixel loses its
  detail but keeps the image's coarse layout. The training mean (occlusion's fill, 0 after normalization) was
  measured first: on the demo Fashion-MNIST model it turns the black background grey, so removing random pixels
  already destroyed the class (random deletion area 0.34 against 0.58 with the blur) and deletion could not tell
  a map from chance. RISE's 224 px blur (σ = 5, an 11 px kernel) would barely touch a 28 px image, hence a share
  of the side;
- the same two curves for `random_orders` seeded random pixel orders, averaged: the baseline any map must beat.

Probability rather than logit, as RISE defines the curves: it is bounded, so an area is in [0, 1] and areas
compare and average across images, methods and models; a logit can rise while the class loses to another.
Areas are over the share of pixels changed (trapezoid rule). A map's ties (Grad-CAM's zeros, saliency's flat
background) are broken in a seeded random order, so a flat region is not removed top to bottom.
Pixel orders come from `np.random.default_rng((seed, dataset_index))`: the tie-break permutation first, then
the random orders; the map's order is `np.lexsort((tiebreak, -map))`.

Verdicts (README, "How far to trust each attribution map"): a map tracks the evidence when its deletion area is
below the random order's by MARGIN and its insertion area above by MARGIN; it depends on the weights when the
randomization check's ρ is below SIMILAR (unknown without the check); it passes when both hold (only the first
without the check). A method is trusted on the model when at least MAJORITY of its maps pass.
"""

import numpy as np
import torch
from pydantic import BaseModel

from ..analysis import Analysis
from ..report import rounded
from ..timing import Work
from .attribution.deletion import area, blurred, curve_probs, perturbed, pixel_order, step_counts

BLUR = 1 / 16       # insertion's canvas: Gaussian σ as a share of the shorter input side (1.75 px at 28, 14 at 224)
MARGIN = 0.05       # areas beat the random order's by at least this (5% of the probability range, on average)
SIMILAR = 0.5       # ρ with the randomized model's map at or above: the map hardly depends on what was learned
MAJORITY = 0.5      # a method is trusted on the model when at least this share of its maps passes


class MapTrust(BaseModel):
    dataset_index: int
    target_kind: str                 # "predicted" or "true", as in attribution.records
    method: str
    target: int
    deletion: list[float]            # target probability at each step (attribution_trust.fractions)
    insertion: list[float]
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float       # the random orders' mean curve, same image and target
    random_insertion_auc: float
    randomized_similarity: float | None   # from attribution.records: Spearman ρ with the randomized model's map
    tracks_evidence: bool            # deletion below random and insertion above, each by `margin`
    depends_on_weights: bool | None  # ρ below `similar`; None without the sanity check
    passes: bool                     # tracks the evidence and does not ignore the weights


class RandomCurve(BaseModel):
    dataset_index: int
    target_kind: str
    target: int
    deletion: list[float]            # mean over the random orders
    insertion: list[float]
    deletion_auc: float
    insertion_auc: float


class MethodTrust(BaseModel):
    method: str
    maps: int
    deletion_auc: float              # means over the method's maps
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    tracking: float                  # share of maps that track the evidence
    weights: float | None            # share of checked maps that depend on the weights; None: none checked
    passing: float                   # share of maps that pass
    trusted: bool                    # passing ≥ `majority`


class AttributionTrustResult(BaseModel):
    steps: int
    random_orders: int
    fractions: list[float]           # share of pixels changed at each point of every curve
    blur_sigma: float                # insertion canvas, input pixels
    margin: float                    # the thresholds the verdicts used
    similar: float
    majority: float
    records: list[MapTrust]          # in attribution.records' order
    random: list[RandomCurve]
    summary: list[MethodTrust]       # in attribution.methods' order


def blur_sigma(input_size) -> float:
    return BLUR * min(input_size)


def orders(seed: int, index: int, pixels: int, random_orders: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(tie-break permutation, random orders) of an image's pixels, seeded by (seed, dataset index)."""
    rng = np.random.default_rng((seed, index))
    tiebreak = rng.permutation(pixels)
    return tiebreak, [rng.permutation(pixels) for _ in range(random_orders)]


def curves(model, x: torch.Tensor, canvas: torch.Tensor, order: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(2, S, K): probabilities along the deletion (x → canvas) and insertion (canvas → x) curves of `order`,
    both in one forward of 2S images."""
    inputs = torch.cat([perturbed(x, canvas, order, counts), perturbed(canvas, x, order, counts)])
    return curve_probs(model, inputs).reshape(2, len(counts), -1)


def verdict(deletion: float, insertion: float, random_deletion: float, random_insertion: float,
            similarity: float | None) -> dict:
    """The three booleans of a MapTrust from its areas and ρ (None: not checked)."""
    tracks = random_deletion - deletion >= MARGIN and insertion - random_insertion >= MARGIN
    weights = None if similarity is None else similarity < SIMILAR
    return {"tracks_evidence": tracks, "depends_on_weights": weights, "passes": tracks and weights is not False}


class AttributionTrust(Analysis):
    name = "attribution_trust"
    spec_key = "attribution.trust"
    version = 2             # 2: deletion fills with the blurred copy (1: the training mean)
    requires = ("attribution",)
    templates = {"attribution": "analyses/attribution_trust.html"}
    SiteResult = AttributionTrustResult

    def settings(self, ctx):
        return ctx.spec.attribution.trust

    def enabled(self, ctx, layer=None):
        return ctx.spec.attribution.enabled and ctx.spec.attribution.trust.enabled

    def turned_off(self, ctx):
        off = "attribution.enabled" if not ctx.spec.attribution.enabled else "attribution.trust.enabled"
        return f"turned off in the spec ({off}: false)"

    def cost(self, ctx, layer=None):
        s, t = ctx.spec.attribution, ctx.spec.attribution.trust
        n = len(s.images) if isinstance(s.images, list) else min(s.images, len(ctx.indices))
        kinds = 2 if s.target == "both" else 1
        curves_per_image = kinds * len(s.methods) + t.random_orders
        size = 2 * (t.steps + 1)
        return Work(forward=n * curves_per_image * size, batch=size, loads=n)

    def compute(self, ctx, layer):
        t = ctx.spec.attribution.trust
        maps = ctx.artifact("attribution")
        entries = maps["meta"]["entries"]
        model, sigma = ctx.model.module, blur_sigma(ctx.model.input_size)

        def work(mine: list[int]) -> dict:
            part = {}
            for i in mine:
                x = ctx.batch([i])                                  # (1, C, H, W)
                canvas = blurred(x, sigma)[0]
                x = x[0]
                pixels = x.shape[1] * x.shape[2]
                counts = step_counts(pixels, t.steps)
                tiebreak, randoms = orders(ctx.spec.seed, i, pixels, t.random_orders)
                mean_random = np.mean([curves(model, x, canvas, o, counts) for o in randoms], 0)   # (2, S, K)
                for e in (e for e in entries if e["dataset_index"] == i):
                    got = curves(model, x, canvas, pixel_order(maps[e["array"]], tiebreak), counts)
                    part[e["array"]] = got[:, :, e["target"]]
                    part[("random", e["target_kind"], i)] = mean_random[:, :, e["target"]]
            return part

        merged = ctx.sharded(maps["index"].tolist(), 4, work)
        pixels = int(np.prod(ctx.model.input_size))
        out = {"counts": step_counts(pixels, t.steps), "meta": {"sigma": sigma, "entries": entries}}
        for e in entries:
            out[e["array"]] = merged[e["array"]].astype(np.float64)                               # (2, S)
            out[f"random_{e['target_kind']}_{e['dataset_index']}"] = merged[("random", e["target_kind"],
                                                                             e["dataset_index"])].astype(np.float64)
        return out

    def report(self, ctx, res, out):
        t = ctx.spec.attribution.trust
        counts = res["counts"]
        records, random, seen = [], [], set()
        for e in res["meta"]["entries"]:       # attribution.records' order
            i, kind = e["dataset_index"], e["target_kind"]
            (dele, ins), (rdel, rins) = res[e["array"]], res[f"random_{kind}_{i}"]
            aucs = [rounded(area(counts, c), 4) for c in (dele, ins, rdel, rins)]   # the verdict reads what is shown
            sim = rounded(e["similarity"], 3)
            records.append({"dataset_index": i, "target_kind": kind, "method": e["method"], "target": e["target"],
                            "deletion": _curve(dele), "insertion": _curve(ins),
                            "deletion_auc": aucs[0], "insertion_auc": aucs[1],
                            "random_deletion_auc": aucs[2], "random_insertion_auc": aucs[3],
                            "randomized_similarity": sim, **verdict(*aucs, sim)})
            if (i, kind) not in seen:
                seen.add((i, kind))
                random.append({"dataset_index": i, "target_kind": kind, "target": e["target"],
                               "deletion": _curve(rdel), "insertion": _curve(rins),
                               "deletion_auc": aucs[2], "insertion_auc": aucs[3]})
        out.site({"steps": t.steps, "random_orders": t.random_orders,
                  "fractions": [rounded(c / counts[-1], 4) for c in counts], "blur_sigma": rounded(res["meta"]["sigma"], 4),
                  "margin": MARGIN, "similar": SIMILAR, "majority": MAJORITY, "records": records, "random": random,
                  "summary": summary(records, ctx.spec.attribution.methods)})


def _curve(values: np.ndarray) -> list[float]:
    return [rounded(v, 4) for v in values]


def summary(records: list[dict], methods: list[str]) -> list[dict]:
    """Per method (in `methods`' order, those with maps): mean areas, and the shares tracking, depending on the
    weights and passing."""
    out = []
    for m in methods:
        rs = [r for r in records if r["method"] == m]
        if not rs:
            continue
        checked = [r["depends_on_weights"] for r in rs if r["depends_on_weights"] is not None]
        passing = float(np.mean([r["passes"] for r in rs]))
        out.append({"method": m, "maps": len(rs),
                    **{k: rounded(np.mean([r[k] for r in rs]), 4) for k in (
                        "deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc")},
                    "tracking": rounded(np.mean([r["tracks_evidence"] for r in rs]), 4),
                    "weights": rounded(np.mean(checked), 4) if checked else None,
                    "passing": rounded(passing, 4), "trusted": passing >= MAJORITY})
    return out
