"""The contract every analysis follows, and the runner that orders, caches and runs them.

An analysis is one computation of the report, in one module of `reportgen/analyses/`:

    class GuidedBackprop(Analysis):
        name = "guided_backprop"          # its key in report.json, in the cache and in page templates
        spec_key = "attribution"          # the spec section it reads (spec.py holds its defaults)
        version = 1                       # bump when the result changes meaning: the cache key changes
        requires = ()                     # analyses it reads (`ctx.artifact(name, layer)`): run first, keyed in
        per_layer = True                  # compute() once per spec layer, each result cached on its own
        templates = {"filter": "analyses/guided_backprop.html"}
        FilterResult = GuidedRecord       # pydantic model of its part of report.json (the JSON Schema)

        def applies(self, ctx, layer=None):  # None, or the reason it cannot run (shown in the report)
        def compute(self, ctx, layer):       # → Artifact: numpy arrays (+ JSON-able `meta`); cached by content
        def report(self, ctx, artifact, out):  # artifact → numbers and names in the report, plus figures
        def cost(self, ctx, layer=None):     # → timing.Work: what compute() will do, for the up-front estimate

Only `compute` is expensive, and it runs only on a cache miss: the key hashes the model, the dataset,
the images used, the dataset pass's settings, the analysis' name, version and spec section, and the layer.
`report` lays a result out as data and runs every build; rendering reads only the resulting Report.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from .artifacts import Cache, cache_key
from .data import Dataset
from .distributed import SINGLE, Group, PeerLost
from .errors import ReportgenError
from .layers import Layer, LayerInfo
from .models import LoadedModel, standardize
from .spec import Spec
from .timing import Timer, Work

Artifact = dict   # {name: np.ndarray, ..., "meta": JSON-able dict}: what the cache stores


@dataclass
class Context:
    """Everything a build knows about its inputs, handed to every analysis."""
    spec: Spec
    device: str
    model: LoadedModel
    dataset: Dataset
    layers: list[Layer]
    layer_infos: list[LayerInfo]
    indices: np.ndarray      # dataset indices used
    samples: np.ndarray      # dataset indices of the sample images
    cache: Cache
    log: object = print
    group: Group = SINGLE
    progress: bool = True
    evidence: object = None            # record.Evidence, set by the dataset pass
    receptive_fields: dict = field(default_factory=dict)   # layer path → graph.ReceptiveField
    evidence_key: str = ""             # the dataset pass's cache key: results that read evidence depend on it
    computed: list[str] = field(default_factory=list)     # "name" or "name:layer" computed (not cached) this build
    strict: bool = False               # a part of the report that cannot be made is an error, not a note
    timer: Timer = field(default_factory=Timer)   # where the build's time goes (timing.py)
    outcomes: dict = field(default_factory=dict)   # analysis name → Outcome, once `check_analyses` ran

    def pixels(self, indices) -> torch.Tensor:
        """Dataset images by index → (B, C, H, W) float in [0, 1] on the build's device (the model's pixel space)."""
        return torch.from_numpy(np.stack([self.dataset.image(int(i)) for i in indices])).to(self.device).float() / 255

    def batch(self, indices) -> torch.Tensor:
        """Dataset images by index → the normalized (B, C, H, W) float batch on the build's device."""
        return standardize(self.pixels(indices), self.model.mean, self.model.std)

    def key(self, *parts) -> str:
        """Cache key of a result that depends on the model, the images used and `parts`."""
        images = hashlib.sha256(self.indices.astype(np.int64).tobytes()).hexdigest()
        m = self.model   # what the model is fed depends on these as much as on the weights
        fed = (list(m.input_size), list(m.resize_size), m.channels, m.mean, m.std, m.interpolation)
        return cache_key(m.sha256, fed, self.dataset.fingerprint, images, *parts)

    def sharded(self, items: list, chunk: int, work) -> dict:
        """`work(my_items) -> {key: value}` on this rank's chunks of `items`, merged over every rank.

        Each item's result must depend only on the item (and the seed), so a split run equals a
        single-process one.
        """
        mine = self.group.shard_list(list(items), chunk)
        merged: dict = {}
        for part in self.group.all_gather(work(mine) if mine else {}):
            merged.update(part)
        return merged

    def cached_parts(self, kind: str, key: str, items: list, chunk: int, work) -> list[Artifact]:
        """`work(part) -> Artifact` on each run of `chunk` consecutive `items`, every part cached on its own
        (under `key` and its items), split across ranks round-robin; every part's artifact, in order.

        A long computation stopped midway (killed, interrupted) and run again recomputes only the parts it
        had not finished. A part's result must depend only on its items, as for `sharded`.
        """
        parts = [list(items[s:s + chunk]) for s in range(0, len(items), chunk)]
        cache = Cache(self.cache.root, self.cache.enabled)   # every rank stores its own parts
        mine = {i: cache.get_or_compute(kind, cache_key(key, parts[i]), lambda p=parts[i]: work(p))
                for i in range(self.group.rank, len(parts), self.group.world)}
        merged: dict = {}
        for got in self.group.all_gather(mine):
            merged.update(got)
        return [merged[i] for i in range(len(parts))]

    @property
    def predictions(self) -> dict[int, int]:
        """dataset index → predicted class, for every image the pass saw."""
        if not hasattr(self, "_predictions"):
            self._predictions = dict(zip(self.evidence.pred_index.tolist(), self.evidence.preds.tolist()))
        return self._predictions

    def layer(self, path: str) -> Layer:
        return next(l for l in self.layers if l.path == path)

    def artifact(self, name: str, layer: Layer | None = None) -> Artifact | None:
        """The artifact of analysis `name` (on `layer`, for a per-layer one) from this build's run, or None where
        it did not run: what an analysis that `requires` (or `uses`) another reads in its `compute`."""
        o = self.outcomes.get(name)
        if o is None or o.artifact is None:
            return None
        return o.artifact.get(layer.path) if o.analysis.per_layer else o.artifact


class Analysis:
    """Base class of every analysis; see the module docstring for the contract."""
    name: ClassVar[str]
    spec_key: ClassVar[str | None] = None      # None: the analysis has no options
    version: ClassVar[int] = 1
    requires: ClassVar[tuple[str, ...]] = ()    # must run first; skipped if one of them is skipped
    uses: ClassVar[tuple[str, ...]] = ()        # run first when registered; their data is shown when present
    key_excludes: ClassVar[tuple[str, ...]] = ()   # fields of its spec section its result does not depend on
    per_layer: ClassVar[bool] = False
    # place → template: "overview", "layer", "filter_top" (above the filter's top images), "filter", or "grid"
    # (a line under each filter of the layer page's grid; `part` is the filter's result), "attribution" (the
    # attribution page, under the maps)
    templates: ClassVar[dict[str, str]] = {}
    template_folder: ClassVar[str | None] = None   # where `templates` are, for an analysis outside the package
    SiteResult: ClassVar[type[BaseModel] | None] = None
    LayerResult: ClassVar[type[BaseModel] | None] = None
    FilterResult: ClassVar[type[BaseModel] | None] = None

    def settings(self, ctx: Context):
        """This analysis' spec section (or None)."""
        return getattr(ctx.spec, self.spec_key) if self.spec_key else None

    def enabled(self, ctx: Context, layer: Layer | None = None) -> bool:
        """Whether the spec asks for this analysis (on `layer`); one not asked for is not "absent"."""
        return bool(getattr(self.settings(ctx), "enabled", True))

    def turned_off(self, ctx: Context) -> str:
        """Why the report lacks this analysis when `enabled` is false: the spec key that turned it off."""
        return f"turned off in the spec ({self.spec_key}.enabled: false)"

    def prepare(self, ctx: Context) -> None:
        """Before the dataset pass: may add to `ctx.layers` what the analysis needs recorded."""

    def applies(self, ctx: Context, layer: Layer | None = None) -> str | None:
        """None if the analysis can run (on `layer`, for a per-layer one), else the reason it cannot."""
        return None

    def key_parts(self, ctx: Context) -> tuple:
        """Inputs besides the model, data, settings and layer that the result depends on."""
        return ()

    def compute(self, ctx: Context, layer: Layer | None) -> Artifact:
        raise NotImplementedError

    def report(self, ctx: Context, artifact, out) -> None:
        """Lay `artifact` out (a dict {layer path: artifact} for a per-layer analysis) through `out`."""
        raise NotImplementedError

    def cost(self, ctx: Context, layer: Layer | None = None) -> Work | tuple[Work, ...] | None:
        """What `compute` will do (on `layer`), counted for the up-front estimate (several Works where parts run
        in different batches); None: too little to price."""
        return None


@dataclass
class Outcome:
    """What the runner did with one analysis: its artifact, or why it is absent from the report."""
    analysis: Analysis
    artifact: object = None                     # Artifact, or {layer path: Artifact} when per_layer
    absent: str | None = None                   # why the analysis did not run at all
    layers_absent: dict[str, str] = field(default_factory=dict)   # layer path → why not on that layer
    wanted: list[Layer] = field(default_factory=list)             # per-layer: the layers the spec asks it for


def ordered(analyses: list[Analysis]) -> list[Analysis]:
    """Dependency order (`requires` first), otherwise the given order. Unknown names and cycles are errors."""
    by_name = {a.name: a for a in analyses}
    if len(by_name) != len(analyses):
        raise ReportgenError("two analyses share a name: " + ", ".join(a.name for a in analyses))
    out: list[Analysis] = []
    visiting: set[str] = set()

    def visit(a: Analysis) -> None:
        if a in out:
            return
        if a.name in visiting:
            raise ReportgenError(f"analysis {a.name!r} depends on itself through {sorted(visiting)}")
        visiting.add(a.name)
        for r in a.requires:
            if r not in by_name:
                raise ReportgenError(f"analysis {a.name!r} requires {r!r}, which is not registered")
            visit(by_name[r])
        for r in a.uses:
            if r in by_name:
                visit(by_name[r])
        visiting.discard(a.name)
        out.append(a)
    for a in analyses:
        visit(a)
    return out


def check_analyses(ctx: Context, analyses: list[Analysis]) -> dict[str, Outcome]:
    """Before the dataset pass: which analyses (and layers) can run, and why the others cannot.

    With `ctx.strict`, any analysis that cannot run (other than one turned off in the spec) is an error,
    all of them listed in one message.
    """
    outcomes: dict[str, Outcome] = {}
    ctx.outcomes = outcomes
    for a in ordered(analyses):
        o = outcomes[a.name] = Outcome(a)
        o.absent = (None if a.enabled(ctx) else a.turned_off(ctx)) \
            or next((f"needs {r}, which cannot run" for r in a.requires if outcomes[r].absent), None) \
            or a.applies(ctx)
        if o.absent is None and a.per_layer:
            o.wanted = [l for l in ctx.layers if a.enabled(ctx, l)]
            o.layers_absent = {l.path: why for l in o.wanted if (why := a.applies(ctx, l))}
    if ctx.strict:
        problems = [f"{o.analysis.name}: {o.absent}" for o in outcomes.values()
                    if o.absent and o.analysis.enabled(ctx)]
        problems += [f"{o.analysis.name} on {ctx.layer(p).name}: {why}"
                     for o in outcomes.values() for p, why in o.layers_absent.items()]
        if problems:
            raise ReportgenError(f"--strict: {len(problems)} part(s) of the report cannot be made: " + "; ".join(problems))
    for o in outcomes.values():
        if o.absent and o.analysis.enabled(ctx):
            ctx.log(f"{o.analysis.name}: not in this report, {o.absent}")
    return outcomes


def run_analyses(ctx: Context, outcomes: dict[str, Outcome]) -> dict[str, Outcome]:
    """Each analysis that can run, in dependency order, loaded from the cache or computed and cached.

    An analysis that fails is absent from the report with the error as its reason (an error with
    `ctx.strict`); what was computed before it stays in the cache.
    """
    for o in outcomes.values():
        a = o.analysis
        o.absent = o.absent or next((f"needs {r}, which did not run" for r in a.requires if outcomes[r].absent), None)
        if o.absent:
            continue
        if not a.per_layer:
            o.artifact, o.absent = _timed(ctx, a, None)
            continue
        o.artifact = {}
        for layer in o.wanted:
            if layer.path not in o.layers_absent:
                art, why = _timed(ctx, a, layer)
                if why:
                    o.layers_absent[layer.path] = why
                else:
                    o.artifact[layer.path] = art
    return outcomes


def _timed(ctx: Context, a: Analysis, layer: Layer | None) -> tuple[Artifact | None, str | None]:
    """`_guarded`, then a lap of the build's timer: the row says whether the result came from the cache."""
    art, why = _guarded(ctx, a, layer)
    computed = f"{a.name}:{layer.name}" if layer else a.name
    ctx.timer.lap(a.name, layer.name if layer else None, cached=why is None and computed not in ctx.computed)
    return art, why


def _guarded(ctx: Context, a: Analysis, layer: Layer | None) -> tuple[Artifact | None, str | None]:
    """(artifact, None), or (None, why) when the computation raised: a report without this part beats no report."""
    try:
        return _cached(ctx, a, layer), None
    except (KeyboardInterrupt, SystemExit, PeerLost):   # a stopped rank ends the build on every rank
        raise
    except Exception as exc:   # noqa: BLE001 - any failure of one analysis must not lose the others' work
        where = f"{a.name} on {layer.name}" if layer else a.name
        message = str(exc).splitlines()[0] if str(exc) else ""
        for folder in (ctx.spec.dataset.root, ctx.spec.spec_path):   # the report names no path of this machine
            message = message.replace(f"{folder}/", "") if folder else message
        why = f"failed: {exc.__class__.__name__}: {message}".rstrip(": ")
        if ctx.strict:
            raise ReportgenError(f"--strict: {where} {why}") from exc
        ctx.log(f"warning: {where} {why}; the report is built without it")
        return None, why


def analysis_costs(ctx: Context, outcomes: dict[str, Outcome]) -> dict[tuple[str, str | None], object]:
    """{(analysis, layer name or None): its Work} for what `run_analyses` will compute; None where the result
    is cached (or too small to price). Needs `ctx.evidence_key`, known before the pass (evidence.pass_keys)."""
    out = {}
    for o in outcomes.values():
        a = o.analysis
        if o.absent:
            continue
        for layer in [l for l in o.wanted if l.path not in o.layers_absent] if a.per_layer else [None]:
            cached = ctx.cache.has(a.name, result_key(ctx, a, layer))
            out[(a.name, layer.name if layer else None)] = None if cached else a.cost(ctx, layer)
    return out


def result_key(ctx: Context, a: Analysis, layer: Layer | None) -> str:
    """The cache key of `a`'s result (on `layer`)."""
    settings = a.settings(ctx)
    dumped = settings.model_dump(mode="json", exclude=set(a.key_excludes)) if settings is not None else None
    return ctx.key(a.name, a.version, dumped,
                   ctx.evidence_key, ctx.spec.seed, a.key_parts(ctx), (layer.path, layer.filters) if layer else None,
                   _upstream_keys(ctx, a, layer))


def _upstream_keys(ctx: Context, a: Analysis, layer: Layer | None) -> list[str]:
    """The result keys of the analyses `a` requires (on the same layer; every layer of a per-layer one that a
    site-level `a` requires): a result read in `compute` changes the reader's key when it changes."""
    keys = []
    for name in a.requires:
        o = ctx.outcomes.get(name)
        if o is None:
            keys.append(name)
        elif not o.analysis.per_layer:
            keys.append(result_key(ctx, o.analysis, None))
        else:
            keys += [result_key(ctx, o.analysis, l) for l in ([layer] if layer else o.wanted)]
    return keys


def _cached(ctx: Context, a: Analysis, layer: Layer | None) -> Artifact:
    key = result_key(ctx, a, layer)
    hit = ctx.cache.load(a.name, key)
    if hit is not None:
        return hit
    label = f"{a.name}:{layer.name}" if layer else a.name
    t0 = time.perf_counter()
    artifact = ctx.cache.save(a.name, key, a.compute(ctx, layer))   # as stored: cold and warm builds agree
    ctx.computed.append(label)
    ctx.log(f"{label}: computed in {time.perf_counter() - t0:.1f} s")
    return artifact
