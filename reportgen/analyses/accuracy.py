"""Accuracy over the images the dataset pass read: top-1, top-5, per class, and the most confused pairs.

Counted from the pass's predictions (`Evidence.preds`, `Evidence.top5`); unreadable images are not in them,
so they count neither way. Stated only where the dataset's labels are the model's output indices.
"""

import numpy as np
from pydantic import BaseModel, Field

from ..analysis import Analysis
from ..report import class_name, rounded

TOP_K = 5


def labels_are_outputs(ctx) -> str | None:
    """None when the dataset's label i is the model's output i, else why accuracy cannot be stated."""
    outputs, classes = len(ctx.model.classes), len(ctx.dataset.classes)
    if outputs != classes:
        return (f"the model's {outputs} outputs are not the dataset's {classes} "
                f"class{'es' if classes != 1 else ''}: no accuracy to state")
    return None


def count_hits(labels: np.ndarray, preds: np.ndarray, top: np.ndarray, outputs: int) -> dict:
    """Per-class counts over the model's `outputs` classes, from true `labels` (N,), top-1 `preds` (N,) and
    the `top` (N, k) most probable classes: images, top-1 hits, top-5 hits (when outputs > 5), and every
    confused pair (true, predicted) with its count, most frequent first (ties by true, then predicted class)."""
    counts = {"images": np.bincount(labels, minlength=outputs),
              "top1": np.bincount(labels[preds == labels], minlength=outputs)}
    if outputs > TOP_K:   # with 5 classes or fewer every image is a top-5 hit
        counts["top5"] = np.bincount(labels[(top[:, :TOP_K] == labels[:, None]).any(1)], minlength=outputs)
    wrong = preds != labels
    # sparse, not a (outputs × outputs) matrix: a 21k-class model has few of its 441M pairs in any dataset
    pairs, n = np.unique(np.stack([labels[wrong], preds[wrong]], 1).reshape(-1, 2), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -n))
    return counts | {"pairs": pairs[order].astype(np.int64), "pair_counts": n[order].astype(np.int64)}


class ClassAccuracy(BaseModel):
    label: int
    class_: str = Field(alias="class")
    images: int
    top1: float
    top5: float | None


class Confusion(BaseModel):
    label: int                   # the true class
    class_: str = Field(alias="class")
    pred: int                    # the class predicted instead
    pred_class: str
    count: int
    share: float                 # of the true class's images


class AccuracyResult(BaseModel):
    images: int                  # images scored: every readable one
    top1: float
    top5: float | None           # None when the model has 5 outputs or fewer
    classes: list[ClassAccuracy]     # every class with images, worst first (top-1, then top-5, then label)
    confusions: list[Confusion]      # the most confused pairs (accuracy.confusions), most frequent first


class Accuracy(Analysis):
    """Top-1 and top-5 accuracy, per-class accuracy and the most confused pairs, on the overview."""
    name = "accuracy"
    spec_key = "accuracy"
    templates = {"overview": "analyses/accuracy.html"}
    SiteResult = AccuracyResult

    def applies(self, ctx, layer=None):
        return labels_are_outputs(ctx)

    def compute(self, ctx, layer):
        ev = ctx.evidence
        return count_hits(ctx.dataset.labels[ev.pred_index], ev.preds, ev.top5, len(ctx.model.classes))

    def report(self, ctx, art, out):
        images, top1, top5 = art["images"], art["top1"], art.get("top5")
        n_pairs = ctx.spec.accuracy.confusions

        def name(c) -> str:
            return class_name(ctx.model.classes, int(c), f"output {c}")

        def share(hits, c=slice(None)):
            return None if hits is None else rounded(hits[c].sum() / images[c].sum())
        present = np.flatnonzero(images)
        rate1 = top1[present] / images[present]
        rate5 = rate1 if top5 is None else top5[present] / images[present]
        worst = present[np.lexsort((present, rate5, rate1))]   # by top-1, then top-5, then label
        classes = [{"label": int(c), "class": name(c), "images": int(images[c]), "top1": share(top1, c),
                    "top5": share(top5, c)} for c in worst]
        confusions = [{"label": int(t), "class": name(t), "pred": int(p), "pred_class": name(p), "count": int(n),
                       "share": rounded(n / images[t])}
                      for (t, p), n in zip(art["pairs"][:n_pairs], art["pair_counts"][:n_pairs])]
        out.site({"images": int(images.sum()), "top1": share(top1), "top5": share(top5),
                  "classes": classes, "confusions": confusions})
