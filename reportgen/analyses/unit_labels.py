"""Unit labels: what each channel of a layer detects, named with the dataset's own classes (and user concepts).

After INVERT (Bykov et al., "Labeling Neural Representations with Inverse Recognition", NeurIPS 2023): a unit's
label is the formula over targets (classes, and the concepts of `dataset.concepts`) whose images the unit's
pooled activation separates best, scored by the AUC (Mann-Whitney U: the probability that an image where the
formula holds activates the unit more than one where it does not). Formulas join up to `max_terms` targets
left to right with OR, AND and AND NOT ("Sandal OR Sneaker", "(Bag OR Coat) AND NOT dark"), found by a beam
search: the `beam` best formulas of each length are extended by every target and operator. A formula must hold
on at least MIN_SHARE of the images and fail on as many (a rare formula's AUC is noise); a longer formula
replaces a shorter one only when it raises the AUC by MIN_GAIN (the shorter name is the better one to read).

The p-value corrects for the search: the statistic is the AUC of the formula the whole search picks, and its
null distribution comes from running the same search on `permutations` units whose ranks are random
permutations (seeded), which is what shuffling the targets against the unit's activations gives. The null is
that of a unit without ties; ties (a ReLU unit silent on many images) only narrow a unit's true null, so its
p-value is conservative. A unit is labelled ("significant" in the data) when p ≤ `alpha` and its AUC ≥
`min_auc`: on thousands of images p ≤ 0.01 alone is reached by AUCs barely above 0.5, which name nothing a
reader could use. It is a per-unit p-value: over a layer of 512 units at α = 0.01, about 5 labels may be
chance (the layer table says how many units were labelled).

Computed on the dataset pass's pooled subset (`record.pooled_limit` images, 5000 by default: every image of
a smaller dataset), the same images for every layer. Images with the same targets (the same class and
concepts) are one "pattern"; a formula is a set of patterns, so each candidate's AUC costs a sum over
patterns, not images: the search is O(units × beam × targets × patterns) per length, a few seconds per layer.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from scipy import sparse
from scipy.stats import rankdata

from ..analysis import Analysis
from ..errors import SpecError
from ..report import rounded

MIN_SHARE = 0.01    # a formula must hold, and fail, on at least 1 % of the images: rarer sets give noisy AUCs
MIN_GAIN = 0.01     # one more term must raise the AUC by this much to be worth reading
ROC_POINTS = 41     # the ROC curve exported per spec filter: TPR at FPR 0, 0.025, …, 1
TOP_UNITS = 3       # the most selective units listed per class
AND, OR, AND_NOT = 1, 2, 3                                   # how a term joins the formula before it
OP_WORDS = {AND: ("AND", False), OR: ("OR", False), AND_NOT: ("AND", True)}   # → (operator, negated term)


# ---- the search, on arrays (no report, no context): also labels other scores (NMF concepts) ----

@dataclass(frozen=True)
class Targets:
    """What units are labelled with: `matrix` (N, T) bool, image i is an instance of target t; `names` (T,)."""
    matrix: np.ndarray
    names: list[str]

    def __post_init__(self):
        if self.matrix.ndim != 2 or self.matrix.shape[1] != len(self.names):
            raise ValueError(f"targets: a (N, {len(self.names)}) matrix for {len(self.names)} names, "
                             f"got {self.matrix.shape}")


@dataclass(frozen=True)
class LabelSettings:
    alpha: float = 0.01        # significance level of the search-corrected p-value
    min_auc: float = 0.75      # and the least AUC a label needs (see `UnitLabelsSpec.min_auc`)
    permutations: int = 1000   # null units (random rank permutations) searched for the p-value
    max_terms: int = 3         # targets in a formula
    beam: int = 5              # formulas of each length kept for extension
    seed: int = 0


@dataclass(frozen=True)
class Term:
    target: int
    negated: bool = False


@dataclass
class UnitLabel:
    """The best formula of one unit: terms joined left to right by `ops` ("AND"/"OR", one fewer than terms)."""
    terms: list[Term]
    ops: list[str]
    auc: float
    p_value: float
    significant: bool
    positives: int             # images where the formula holds

    def mask(self, matrix: np.ndarray) -> np.ndarray:
        """(N,) bool: where the formula holds, for a (N, T) target matrix."""
        def holds(t: Term) -> np.ndarray:
            return ~matrix[:, t.target] if t.negated else matrix[:, t.target]
        out = holds(self.terms[0])
        for op, t in zip(self.ops, self.terms[1:]):
            out = (out & holds(t)) if op == "AND" else (out | holds(t))
        return out

    def text(self, names: list[str]) -> str:
        """"Sandal OR Sneaker", "(Bag OR Coat) AND NOT dark": parentheses where the operator changes."""
        out = names[self.terms[0].target]
        for i, (op, t) in enumerate(zip(self.ops, self.terms[1:])):
            if i and op != self.ops[i - 1]:
                out = f"({out})"
            out += f" {op} {'NOT ' if t.negated else ''}{names[t.target]}"
        return out


def unit_ranks(scores: np.ndarray) -> np.ndarray:
    """(N, U) mid-ranks of each unit's scores (1..N): the AUC of a set is a sum of its ranks."""
    if not np.isfinite(scores).all():
        raise ValueError("unit scores hold NaN or infinite values")
    return rankdata(scores, axis=0).astype(np.float64)


def label_scores(scores: np.ndarray, targets: Targets, settings: LabelSettings) -> list[UnitLabel]:
    """The best formula of each unit (column of `scores` (N, U)) over `targets`, with its search-corrected
    p-value (see the module docstring)."""
    n_images = len(scores)
    if targets.matrix.shape[0] != n_images:
        raise ValueError(f"{n_images} images of scores but {targets.matrix.shape[0]} of targets")
    patterns = _Patterns(targets.matrix, settings.seed)
    found = _search(patterns.sums(unit_ranks(scores)), patterns, settings)
    rng = np.random.default_rng([settings.seed, 22])
    null_ranks = np.stack([rng.permutation(n_images) + 1.0 for _ in range(settings.permutations)], 1)
    null = np.sort(_search(patterns.sums(null_ranks), patterns, settings).auc)
    # p = (1 + nulls at least as high) / (1 + permutations): never 0, exact under the null
    higher = len(null) - np.searchsorted(null, found.auc - 1e-12, side="left")
    p_values = np.where(np.isfinite(found.auc), (1 + higher) / (1 + len(null)), 1.0)
    return [UnitLabel(terms, ops, float(found.auc[u]), float(p_values[u]),
                      bool(p_values[u] <= settings.alpha and found.auc[u] >= settings.min_auc),
                      int(found.positives[u])) for u, (terms, ops) in enumerate(found.formulas)]


def target_aucs(scores: np.ndarray, targets: Targets) -> np.ndarray:
    """(U, T) AUC of each unit for each single target; NaN where a target holds on no image or on all."""
    ranks = unit_ranks(scores)
    m = targets.matrix.astype(np.float64)
    n1 = m.sum(0)                                   # (T,)
    n0 = len(m) - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (ranks.T @ m - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def roc_curve_points(scores: np.ndarray, truth: np.ndarray, points: int = ROC_POINTS) -> np.ndarray:
    """(points,) true-positive rate at false-positive rates linspace(0, 1, points), read off the ROC curve of
    `scores` for `truth` (ties form one step, as the AUC counts them half)."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]   # the end of each run of tied scores
    tp, fp = np.cumsum(t)[last], np.cumsum(~t)[last]
    tpr = np.r_[0, tp / max(t.sum(), 1)]
    fpr = np.r_[0, fp / max((~t).sum(), 1)]
    return np.interp(np.linspace(0, 1, points), fpr, tpr)


class _Patterns:
    """Images grouped by their targets: `masks` (T, M) which patterns each target holds on, `counts` (M,)."""

    def __init__(self, matrix: np.ndarray, seed: int):
        uniq, inverse = np.unique(matrix.astype(bool), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        self.n_images, self.masks = len(matrix), uniq.T.copy()            # (T, M)
        self.counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
        self.onehot = sparse.csr_matrix((np.ones(len(inverse)), (inverse, np.arange(len(inverse)))),
                                        shape=(len(uniq), len(inverse)))
        # a formula's identity: the sum of random 64-bit weights over its patterns (wrapping; linear in the set,
        # so OR and AND NOT follow from AND by addition), equal sets ⇒ equal keys
        rng = np.random.default_rng([seed, 23])
        self.weights = rng.integers(-2 ** 62, 2 ** 62, len(uniq), dtype=np.int64)
        self.min_images = max(1, math.ceil(MIN_SHARE * self.n_images))

    def sums(self, ranks: np.ndarray) -> np.ndarray:
        """(U, M) each unit's rank sum over each pattern's images."""
        return np.asarray((self.onehot @ ranks).T)

    def auc(self, rank_sum, n1) -> np.ndarray:
        """AUC of sets with these rank sums and sizes; -inf where a set is too small or too large."""
        n0 = self.n_images - n1
        ok = (n1 >= self.min_images) & (n0 >= self.min_images)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ok, (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0), -np.inf)


@dataclass
class _Found:
    auc: np.ndarray            # (U,) the chosen formula's AUC
    positives: np.ndarray      # (U,) its images
    formulas: list             # per unit: (terms, ops)


def _search(sums: np.ndarray, pat: _Patterns, settings: LabelSettings, chunk: int = 4096) -> _Found:
    """The beam search for every unit (row of `sums` (U, M)), in chunks of units."""
    parts = [_search_chunk(sums[s:s + chunk], pat, settings) for s in range(0, len(sums), chunk)]
    return _Found(np.concatenate([p.auc for p in parts]) if parts else np.zeros(0),
                  np.concatenate([p.positives for p in parts]) if parts else np.zeros(0),
                  [f for p in parts for f in p.formulas])


def _search_chunk(sums: np.ndarray, pat: _Patterns, settings: LabelSettings) -> _Found:
    units = len(sums)
    rows = np.arange(units)[:, None]
    atoms = pat.masks                                              # (T, M)
    atom_sum = sums @ atoms.T.astype(np.float64)                   # (U, T)
    atom_n = atoms.astype(np.float64) @ pat.counts                 # (T,)
    atom_key = atoms.astype(np.int64) @ pat.weights                # (T,)
    auc1 = pat.auc(atom_sum, atom_n[None])
    slot, ok = _top_distinct(auc1, np.broadcast_to(atom_key, auc1.shape), settings.beam)
    # the beam: per unit and slot, its patterns, rank sum, size, key; and how each slot was made
    masks, b_sum, b_n, b_key = atoms[slot], atom_sum[rows, slot], atom_n[slot], atom_key[slot]
    history = [(np.full(slot.shape, -1), slot, np.zeros(slot.shape, np.int64))]   # (parent slot, atom, op)
    first = np.argmax(auc1, 1)
    best = [(np.full(units, -1), first, np.zeros(units, np.int64), auc1[np.arange(units), first])]
    for _ in range(1, settings.max_terms):
        weighted = masks * sums[:, None, :]                                      # (U, B, M)
        s_and = weighted @ atoms.T.astype(np.float64)                             # (U, B, T)
        n_and = (masks * pat.counts) @ atoms.T.astype(np.float64)
        k_and = (masks.astype(np.int64) * pat.weights) @ atoms.T.astype(np.int64)   # wraps: still linear
        s_b, n_b, k_b = b_sum[..., None], b_n[..., None], b_key[..., None]
        s = np.stack([s_and, s_b + atom_sum[:, None] - s_and, s_b - s_and], -1)    # (U, B, T, 3): AND, OR, AND NOT
        n = np.stack([n_and, n_b + atom_n - n_and, n_b - n_and], -1)
        k = np.stack([k_and, k_b + atom_key - k_and, k_b - k_and], -1)
        auc = pat.auc(s, n)
        auc[~ok[..., None, None] | (k == k_b[..., None])] = -np.inf    # an empty slot, or no change to the set
        shape = auc.shape[1:]
        flat, s, n, k = auc.reshape(units, -1), s.reshape(units, -1), n.reshape(units, -1), k.reshape(units, -1)
        top = np.argmax(flat, 1)
        parent, atom, op = np.unravel_index(top, shape)
        best.append((parent, atom, op + 1, flat[np.arange(units), top]))
        pick, ok = _top_distinct(flat, k, settings.beam)
        parent, atom, op = np.unravel_index(pick, shape)
        history.append((parent, atom, op + 1))
        old = masks[rows, parent]
        new = atoms[atom]
        masks = np.where((op == 0)[..., None], old & new, np.where((op == 1)[..., None], old | new, old & ~new))
        b_sum, b_n, b_key = s[rows, pick], n[rows, pick], k[rows, pick]
    return _choose(best, history, pat)


def _top_distinct(auc: np.ndarray, keys: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the `width` highest-AUC entries with distinct keys (the first by position among equal AUCs):
    (indices (U, w), whether each is a real entry (not -inf))."""
    count = auc.shape[1]
    order = np.argsort(-auc, axis=1, kind="stable")
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(count)[None].repeat(len(auc), 0), 1)
    by_key = np.lexsort((position, keys), axis=1)                  # each key's best entry first
    sorted_keys = np.take_along_axis(keys, by_key, 1)
    first = np.ones(by_key.shape, bool)
    first[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    keep = np.zeros(auc.shape, bool)
    np.put_along_axis(keep, by_key, first, 1)
    kept = np.where(keep, auc, -np.inf)
    top = np.argsort(-kept, axis=1, kind="stable")[:, :width]
    return top, np.take_along_axis(kept, top, 1) > -np.inf


def _choose(best: list, history: list, pat: _Patterns) -> _Found:
    """Per unit: the shortest formula unless a longer one gains MIN_GAIN of AUC; its terms, read back through
    the beam's history."""
    units = len(best[0][3])
    level = np.zeros(units, np.int64)
    auc = best[0][3].copy()
    for length in range(1, len(best)):
        better = best[length][3] >= auc + MIN_GAIN
        level[better], auc[better] = length, best[length][3][better]
    formulas, positives = [], np.zeros(units, np.int64)
    for u in range(units):
        parent, atom, op = (int(x[u]) for x in best[level[u]][:3])
        terms, ops = [], []
        for length in range(level[u], -1, -1):
            if length < level[u]:
                parent, atom, op = (int(x[u, parent]) for x in history[length])
            word, negated = OP_WORDS.get(op, ("", False))
            terms.insert(0, Term(atom, negated))
            if op:
                ops.insert(0, word)
        formulas.append((terms, ops))
        label = UnitLabel(terms, ops, 0.0, 1.0, False, 0)
        positives[u] = int(pat.counts[label.mask(pat.masks.T)].sum())
    return _Found(auc, positives, formulas)


# ---- user concepts: dataset.concepts ----

CONCEPTS_HEADER = ["image", "concepts"]


def read_concepts(path: Path, image_names: list[str], class_names: list[str]) -> tuple[np.ndarray, list[str]]:
    """`dataset.concepts`: a CSV `image,concepts`, one row per image, the image by its name in the report
    (`test[12]`, `cat/img0.png`) or its dataset index, its concepts separated by ';'. Images not listed have
    none. → ((dataset size, K) bool, the K concept names in order of first appearance). Bad rows: SpecError
    naming the line."""
    def bad(message: str) -> SpecError:
        return SpecError("dataset.concepts", f"{path.name}: {message}")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise SpecError("dataset.concepts", f"cannot read {str(path)!r}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SpecError("dataset.concepts", f"cannot read {str(path)!r}: {exc}") from None
    if not rows or [c.strip() for c in rows[0]] != CONCEPTS_HEADER:
        raise bad(f"line 1: the header must be '{','.join(CONCEPTS_HEADER)}'"
                  + (f", not {','.join(rows[0])!r}" if rows else " (the file is empty)"))
    by_name = {n: i for i, n in enumerate(image_names)}
    seen: dict[int, int] = {}
    concepts: dict[str, int] = {}
    pairs = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != 2:
            raise bad(f"line {line}: {len(row)} columns; give 2 ({','.join(CONCEPTS_HEADER)}), concepts "
                      f"separated by ';'")
        image, names = row[0].strip(), [c.strip() for c in row[1].split(";")]
        index = by_name.get(image, int(image) if image.isdigit() else None)
        if index is None or not 0 <= index < len(image_names):
            raise bad(f"line {line}: no image {image!r} in the dataset (give its name as the report shows it, "
                      f"e.g. {image_names[0]!r}, or its index 0 to {len(image_names) - 1})")
        if index in seen:
            raise bad(f"line {line}: image {image!r} is listed again (first on line {seen[index]})")
        seen[index] = line
        if not all(names):
            raise bad(f"line {line}: an empty concept name in {row[1]!r}")
        for name in names:
            if name in class_names:
                raise bad(f"line {line}: concept {name!r} is also a class's name; rename the concept")
            concepts.setdefault(name, len(concepts))
            pairs.append((index, concepts[name]))
    if not pairs:
        raise bad("no rows after the header")
    matrix = np.zeros((len(image_names), len(concepts)), bool)
    matrix[tuple(np.array(pairs).T)] = True
    return matrix, list(concepts)


# ---- the analysis ----

class Formula(BaseModel):
    terms: list[dict]            # {target, name, negated}: target indexes LayerLabels.targets
    ops: list[str]               # "AND" / "OR" joining term i+1 to the formula of terms up to i
    text: str                    # the formula as one line: "Sandal OR Sneaker"


class UnitRecord(BaseModel):
    unit: int                    # the channel
    label: Formula | None        # the best formula (None when no formula can be scored)
    auc: float | None            # of the unit's pooled activation for the images where it holds
    p_value: float               # search-corrected (permutations)
    significant: bool            # p_value ≤ alpha and auc ≥ min_auc: the unit's label; otherwise "no label"
    positives: int               # images where the formula holds


class ClassMeanActivation(BaseModel):
    target: int
    name: str
    mean: float | None           # mean pooled activation over the target's images of the subset


class RocCurve(BaseModel):
    fpr: list[float]
    tpr: list[float]


class FilterLabel(UnitRecord):
    roc: RocCurve | None         # of the label's formula (ROC_POINTS points, TPR at evenly spaced FPR)
    class_means: list[ClassMeanActivation]   # every class, in class order


class TargetInfo(BaseModel):
    name: str
    kind: str                    # "class" or "concept"
    images: int                  # of the pooled subset


class SelectiveUnit(BaseModel):
    unit: int
    auc: float


class ClassDetectors(BaseModel):
    target: int
    name: str
    detectors: list[int]         # units whose significant label names this class (not negated)
    selective: list[SelectiveUnit]   # the TOP_UNITS units with the highest AUC for the class alone


class LayerLabels(BaseModel):
    images: int                  # the pooled subset the labels are computed on
    alpha: float
    min_auc: float
    permutations: int
    max_terms: int
    beam: int
    min_share: float
    min_gain: float
    targets: list[TargetInfo]
    units: list[UnitRecord]      # every channel of the layer
    labelled: int                # units with a significant label
    share: float
    classes: list[ClassDetectors]    # every class
    data: str                    # site path of an .npz: dataset_index (P,), activation (P, C), targets (P, T)


class LayerOverview(BaseModel):
    name: str
    page: str
    units: int
    labelled: int
    share: float
    classes_with_detectors: int


class BestUnit(BaseModel):
    target: int
    name: str
    layer: str | None            # the layer and unit with the highest AUC for the class alone
    unit: int | None
    auc: float | None
    significant: bool            # whether that unit's own label is significant
    page: str | None             # its filter page, when it is a spec filter


class LabelOverview(BaseModel):
    layers: list[LayerOverview]
    classes: list[BestUnit]


def layer_targets(ctx, pooled_index: np.ndarray) -> tuple[Targets, list[str]]:
    """The classes, then the user concepts, on the pooled images: (Targets, each target's kind)."""
    classes = ctx.dataset.classes
    matrix = np.eye(len(classes), dtype=bool)[ctx.dataset.labels[pooled_index]]
    names, kinds = list(classes), ["class"] * len(classes)
    if ctx.spec.dataset.concepts is not None:
        concepts, concept_names = read_concepts(ctx.spec.dataset.concepts, ctx.dataset.names, classes)
        matrix = np.concatenate([matrix, concepts[pooled_index]], 1)
        names += concept_names
        kinds += ["concept"] * len(concept_names)
    return Targets(matrix, names), kinds


def label_settings(ctx) -> LabelSettings:
    """The search's settings from the spec's `unit_labels` section (concepts are labelled with them too)."""
    s = ctx.spec.unit_labels
    return LabelSettings(s.alpha, s.min_auc, s.permutations, s.max_terms, s.beam, ctx.spec.seed)


def _encode(labels: list[UnitLabel], max_terms: int) -> dict:
    """UnitLabels as arrays for the cache: term targets (U, max_terms) (-1: none), negated, op codes."""
    targets = np.full((len(labels), max_terms), -1, np.int64)
    negated = np.zeros((len(labels), max_terms), bool)
    ors = np.zeros((len(labels), max(max_terms - 1, 1)), bool)
    for u, label in enumerate(labels):
        for i, t in enumerate(label.terms):
            targets[u, i], negated[u, i] = t.target, t.negated
        for i, op in enumerate(label.ops):
            ors[u, i] = op == "OR"
    return {"term_target": targets, "term_negated": negated, "op_or": ors,
            "auc": np.array([l.auc for l in labels]), "p_value": np.array([l.p_value for l in labels]),
            "significant": np.array([l.significant for l in labels], bool),
            "positives": np.array([l.positives for l in labels], np.int64)}


def _decode(art: dict, u: int) -> UnitLabel:
    count = int((art["term_target"][u] >= 0).sum())
    terms = [Term(int(art["term_target"][u, i]), bool(art["term_negated"][u, i])) for i in range(count)]
    ops = ["OR" if art["op_or"][u, i] else "AND" for i in range(count - 1)]
    return UnitLabel(terms, ops, float(art["auc"][u]), float(art["p_value"][u]), bool(art["significant"][u]),
                     int(art["positives"][u]))


class UnitLabels(Analysis):
    """Per spec layer, every channel: its best formula over the classes (and concepts), AUC and p-value."""
    name = "unit_labels"
    spec_key = "unit_labels"
    version = 1
    per_layer = True
    templates = {"grid": "analyses/unit_labels_grid.html", "filter_top": "analyses/unit_labels.html",
                 "layer": "analyses/unit_labels_layer.html", "overview": "analyses/unit_labels_overview.html"}
    FilterResult = FilterLabel
    LayerResult = LayerLabels
    SiteResult = LabelOverview

    def prepare(self, ctx):
        if ctx.spec.dataset.concepts is not None:   # a bad file fails the build now, before the pass
            read_concepts(ctx.spec.dataset.concepts, ctx.dataset.names, ctx.dataset.classes)

    def applies(self, ctx, layer=None):
        if min(len(ctx.indices), ctx.spec.record.pooled_limit) < 2:
            return f"record.pooled_limit is {ctx.spec.record.pooled_limit}: no pooled features to label units with"
        if len(ctx.dataset.classes) < 2 and ctx.spec.dataset.concepts is None:
            return "the dataset has one class and no concepts (dataset.concepts): nothing to label units with"
        return None

    def key_parts(self, ctx):
        path = ctx.spec.dataset.concepts   # the file's content, not its name, decides the labels
        return (hashlib.sha256(path.read_bytes()).hexdigest(),) if path is not None else ()

    def compute(self, ctx, layer):
        index, pooled = ctx.evidence.layers[layer.path].pooled_array()
        targets, kinds = layer_targets(ctx, index)
        settings = label_settings(ctx)
        labels = label_scores(pooled, targets, settings)
        filters = np.array(layer.filters, np.int64)
        roc = np.stack([roc_curve_points(pooled[:, f], labels[f].mask(targets.matrix)) if np.isfinite(labels[f].auc)
                        else np.full(ROC_POINTS, np.nan) for f in filters]) if len(filters) else \
            np.zeros((0, ROC_POINTS))
        classes = targets.matrix[:, :len(ctx.dataset.classes)]
        with np.errstate(invalid="ignore", divide="ignore"):
            class_means = (classes.T.astype(np.float64) @ pooled.astype(np.float64)) / classes.sum(0)[:, None]
        return _encode(labels, settings.max_terms) | {
            "pooled_index": index, "target_auc": target_aucs(pooled, targets), "target_images": targets.matrix.sum(0),
            "filters": filters, "roc_tpr": roc, "class_means": class_means.T,   # (C, classes)
            "meta": {"names": targets.names, "kinds": kinds}}

    def report(self, ctx, artifacts, out):
        overview = {"layers": [], "classes": []}
        best: dict[int, dict] = {}
        for path, art in artifacts.items():
            layer = ctx.layer(path)
            record = self._layer(ctx, layer, art, out)
            out.layer(path, record)
            overview["layers"].append({
                "name": layer.name, "page": f"layers/{layer.slug}/index.html", "units": len(record["units"]),
                "labelled": record["labelled"], "share": record["share"],
                "classes_with_detectors": sum(bool(c["detectors"]) for c in record["classes"])})
            for c in record["classes"]:
                top = c["selective"][0] if c["selective"] else None
                if top and (c["target"] not in best or top["auc"] > best[c["target"]]["auc"]):
                    unit = top["unit"]
                    best[c["target"]] = {"layer": layer.name, "unit": unit, "auc": top["auc"],
                                         "significant": record["units"][unit]["significant"],
                                         "page": f"layers/{layer.slug}/f{unit}.html" if unit in layer.filters
                                         else None}
        none = {"layer": None, "unit": None, "auc": None, "significant": False, "page": None}
        overview["classes"] = [{"target": c, "name": name} | best.get(c, none)
                               for c, name in enumerate(ctx.dataset.classes)]
        out.site(overview)

    def _layer(self, ctx, layer, art, out) -> dict:
        names, kinds = art["meta"]["names"], art["meta"]["kinds"]
        s = ctx.spec.unit_labels
        units = [self._unit(art, u, names) for u in range(len(art["auc"]))]
        for a, f in enumerate(art["filters"].tolist()):
            means = art["class_means"][f]
            roc = art["roc_tpr"][a]
            out.filter(layer.path, f, units[f] | {
                "roc": {"fpr": [rounded(x, 4) for x in np.linspace(0, 1, ROC_POINTS)],
                        "tpr": [rounded(x, 4) for x in roc]} if np.isfinite(roc).all() else None,
                "class_means": [{"target": c, "name": names[c], "mean": rounded(m)} for c, m in enumerate(means)]})
        classes = []
        for c in range(len(ctx.dataset.classes)):
            aucs = art["target_auc"][:, c]
            order = [u for u in np.argsort(-np.nan_to_num(aucs, nan=-np.inf), kind="stable") if np.isfinite(aucs[u])]
            detectors = [r["unit"] for r in units if r["significant"] and r["label"] and
                         any(t["target"] == c and not t["negated"] for t in r["label"]["terms"])]
            classes.append({"target": c, "name": names[c], "detectors": detectors,
                            "selective": [{"unit": int(u), "auc": rounded(aucs[u], 4)} for u in order[:TOP_UNITS]]})
        labelled = sum(r["significant"] for r in units)
        index = art["pooled_index"]
        data = out.npz(f"data/unit_labels/{layer.slug}.npz", lambda: _npz_arrays(ctx, layer, index, names))
        return {"images": len(index), "alpha": s.alpha, "min_auc": s.min_auc, "permutations": s.permutations,
                "max_terms": s.max_terms, "beam": s.beam, "min_share": MIN_SHARE, "min_gain": MIN_GAIN,
                "targets": [{"name": n, "kind": k, "images": int(i)}
                            for n, k, i in zip(names, kinds, art["target_images"])],
                "units": units, "labelled": labelled, "share": rounded(labelled / max(len(units), 1), 4),
                "classes": classes, "data": data}

    @staticmethod
    def _unit(art, u: int, names: list[str]) -> dict:
        label = _decode(art, u)
        scored = np.isfinite(label.auc)
        formula = {"terms": [{"target": t.target, "name": names[t.target], "negated": t.negated}
                             for t in label.terms], "ops": label.ops, "text": label.text(names)} if scored else None
        return {"unit": u, "label": formula, "auc": rounded(label.auc, 4) if scored else None,
                "p_value": rounded(label.p_value, 4), "significant": label.significant, "positives": label.positives}


def _npz_arrays(ctx, layer, index: np.ndarray, names: list[str]) -> dict:
    """The arrays the labels were computed from: anyone can recompute an AUC (scikit-learn's roc_auc_score)."""
    _, pooled = ctx.evidence.layers[layer.path].pooled_array()
    targets, _ = layer_targets(ctx, index)
    return {"dataset_index": index, "activation": pooled.astype(np.float32), "targets": targets.matrix,
            "target_names": np.array(names)}
