"""Where a build's time goes: phases timed as they run, an estimate of each before it runs, and the table.

    timer = Timer()
    ...load...;            timer.lap("load")                     # the time since the previous lap
    ...feature vis...;     timer.lap("feature_vis", "conv2")     # a per-layer row of the phase
    timer.expected = {("feature_vis", "conv2"): 12.0}            # seconds, from `Probe.price(Work)`
    print(timer.table(verbose=False))                            # phase, seconds, share, estimate

Laps leave no gap, so the phases add up to the whole build. The estimate prices `Work` (counts an analysis
declares in `Analysis.cost`) with a `Probe`: a few calls of the real model on the build's device, forward and
forward+backward, on 1 to 256 copies of a dataset image, plus the time to read an image. Cached work costs nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from . import interrupt
from .errors import DataError
from .hooks import find_module, removing

# openTSNE as `analyses/embedding.py` runs it, fitted to the table in its docstring (this project's 2-core
# machine): Barnes-Hut ~ n log n below FFT_FROM points, the FFT's fixed grid plus a linear term from there
TSNE_BH_PER_NLOGN = 1.3e-4
TSNE_FFT_FIXED, TSNE_FFT_PER_POINT = 5.0, 2.5e-4
TSNE_FFT_FROM = 4000


@dataclass(frozen=True)
class Work:
    """What a phase will do, in units the probe prices. Counts are images, each through the model up to
    `layer` (None: the whole model) at `size` (None: the model's input size), `batch` of them per call."""
    forward: float = 0                     # images through the model without gradients
    backward: float = 0                    # images through the model and back to the input
    batch: int = 1                         # images per model call (a call costs more than its images)
    loads: float = 0                       # dataset images read, decoded and resized
    tsne_points: int = 0                   # points embedded by t-SNE
    size: tuple[float, float] | None = None    # (H, W)
    layer: str | None = None               # module path where the forward stops
    autocast: torch.dtype | None = None    # the backward passes compute in this dtype (None: float32)


def tsne_seconds(n: int) -> float:
    if n < 2:
        return 0.0
    if n < TSNE_FFT_FROM:
        return TSNE_BH_PER_NLOGN * n * math.log2(n)
    return TSNE_FFT_FIXED + TSNE_FFT_PER_POINT * n


@dataclass(frozen=True)
class Rate:
    """Seconds of a model call on n images: `call + n * image` (fitted to a call on 1 image and one on more)."""
    call: float
    image: float


class Probe:
    """What the model costs on the build's device, measured once on a dataset image.

    forward / backward: `Rate`s of the whole model at the input size (backward: forward + gradient to the
    input, weights frozen as feature vis runs them; `backward_in(dtype)` the same under autocast, measured
    when a Work first asks for it); fraction[layer]: the share of a forward spent up to
    `layer`'s output, from a timestamp at each layer during one forward; load: reading one dataset image.
    A call has a cost of its own (on a loaded CPU, threads waiting to be scheduled can cost more than a small
    model's arithmetic), so each rate is fitted to two batch sizes (`_rate`).
    """

    def __init__(self, ctx, layers: set[str], budget: float = 2.0):
        model, device = ctx.model.module, ctx.device
        readable = [i for i in ctx.indices[:16] if _readable(ctx, i)]   # the pass skips (and names) the others
        if not readable:
            raise DataError("none of the first 16 images is readable")
        x = ctx.batch(readable[:1])                        # (1, C, H, W); a dataset's first read may open files
        loads = readable[1:9]
        t0 = time.perf_counter()
        ctx.batch(loads)
        self.load = (time.perf_counter() - t0) / max(1, len(loads))
        self.size = tuple(x.shape[-2:])
        training = model.training
        model.eval()
        try:
            modules = {p: find_module(model, p) for p in layers}
            stamps: dict[str, float] = {}
            self._forward(model, x, device, {}, {})                # warms up the kernels
            one = max(1e-9, self._forward(model, x, device, modules, stamps))
            self.fraction = {p: min(1.0, t / one) for p, t in stamps.items()}
            self.forward = self._rate(lambda xb: self._forward(model, xb, device, {}, {}), x, budget)
            self.backward = self._rate(lambda xb: self._backward(model, xb, device), x, budget)
        finally:
            model.train(training)
        self._low_precision = {}                            # dtype → backward Rate, measured when first priced
        self._measure_low = lambda dtype: self._rate(
            lambda xb: self._backward(model, xb, device, dtype), x, budget)

    def backward_in(self, dtype: torch.dtype | None) -> Rate:
        if dtype is None:
            return self.backward
        if dtype not in self._low_precision:
            self._low_precision[dtype] = self._measure_low(dtype)
        return self._low_precision[dtype]

    @staticmethod
    def _rate(run, x, budget: float) -> Rate:
        """`run(batch)`'s Rate: a call on one image, then on 4, 16, … 256 copies until the images cost three times
        what the call did (so that their cost shows above the call's noise) or the next call would take more than
        `budget` seconds."""
        def best(xb) -> float:   # the least of a few calls: a loaded machine only ever adds time
            times = [run(xb), run(xb)]
            while len(times) < 7 and sum(times) < budget / 8:
                times.append(run(xb))
            return max(1e-9, min(times))
        one = best(x)
        n, many = 1, one
        while n < 256 and many < 4 * one and many * 4 <= budget:
            n *= 4
            many = best(x.expand(n, *x.shape[1:]).contiguous())
        return Probe._fit(one, many, n)

    @staticmethod
    def _fit(one: float, many: float, n: int) -> Rate:
        """Rate(call, image) through (1, one) and (n, many); noise that makes images look free leaves the call."""
        if n == 1:
            return Rate(0.0, one)
        image = max(0.0, (many - one) / (n - 1))
        return Rate(max(0.0, min(one, many) - image), image)

    @staticmethod
    def _sync(device: str) -> None:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    def _forward(self, model, x, device, modules: dict, stamps: dict) -> float:
        def stamp(path):
            def hook(*_):
                self._sync(device)
                stamps.setdefault(path, time.perf_counter() - t0)   # a shared module: its first call
            return hook
        with removing(*(m.register_forward_hook(stamp(p)) for p, m in modules.items())), torch.no_grad():
            self._sync(device)
            t0 = time.perf_counter()
            model(x)
            self._sync(device)
            return time.perf_counter() - t0

    def _backward(self, model, x, device, dtype: torch.dtype | None = None) -> float:
        grads = [(p, p.requires_grad) for p in model.parameters()]
        training = model.training
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        try:
            x = x.clone().requires_grad_(True)
            self._sync(device)
            t0 = time.perf_counter()
            with torch.enable_grad(), torch.autocast(torch.device(device).type, dtype=dtype,
                                                     enabled=dtype is not None):
                model(x).float().sum().backward()
            self._sync(device)
            return time.perf_counter() - t0
        finally:
            model.train(training)
            for p, flag in grads:
                p.requires_grad_(flag)

    def price(self, w: Work | tuple[Work, ...]) -> float:
        """Estimated seconds of `w` (or the sum of several) on this machine: its calls and its images, scaled
        by the share of the model they run through and (the images) by their area."""
        if isinstance(w, tuple):
            return sum(self.price(part) for part in w)
        area = 1.0 if w.size is None else (w.size[0] * w.size[1]) / (self.size[0] * self.size[1])
        depth = 1.0 if w.layer is None else self.fraction.get(w.layer, 1.0)
        model = sum(count / max(1, w.batch) * rate.call + count * rate.image * area
                    for count, rate in ((w.forward, self.forward),
                                        (w.backward, self.backward_in(w.autocast) if w.backward else self.backward)))
        return model * depth + w.loads * self.load + tsne_seconds(w.tsne_points)


def _readable(ctx, index: int) -> bool:
    try:
        ctx.dataset.image(int(index))
        return True
    except DataError:
        return False


@dataclass
class Row:
    phase: str
    layer: str | None
    seconds: float
    cached: bool = False


@dataclass
class Timer:
    """Laps of a build: each `lap` closes a row with the time since the previous one."""
    rows: list[Row] = field(default_factory=list)
    expected: dict[tuple[str, str | None], float] = field(default_factory=dict)   # (phase, layer) → seconds
    last: float = field(default_factory=time.perf_counter)

    def lap(self, phase: str, layer: str | None = None, cached: bool = False) -> float:
        interrupt.check()   # a Ctrl-C swallowed during the phase stops the build here
        now = time.perf_counter()
        self.rows.append(Row(phase, layer, now - self.last, cached))
        self.last = now
        return self.rows[-1].seconds

    def closing(self, phase: str) -> dict:
        """Lap `phase`, then the summary with every layer's row: what the site shows, written last."""
        self.lap(phase)
        return self.summary(verbose=True)

    def summary(self, verbose: bool = False) -> dict:
        """{"total_seconds", "phases": [...]}: a row per phase in order of first appearance (seconds summed over
        its layers, cached only if all were), followed with `verbose` by its per-layer rows; what timings.json holds."""
        total = sum(r.seconds for r in self.rows)
        phases: dict[str, list[Row]] = {}
        for r in self.rows:
            phases.setdefault(r.phase, []).append(r)
        out = []
        for name, rows in phases.items():
            seconds = sum(r.seconds for r in rows)
            out.append(self._row(name, None, seconds, all(r.cached for r in rows), total,
                                 self._expected(name, rows)))
            if verbose:
                out += [self._row(name, r.layer, r.seconds, r.cached, total, self.expected.get((name, r.layer)))
                        for r in rows if r.layer is not None]
        return {"total_seconds": round(total, 3), "phases": out}

    def _expected(self, phase: str, rows: list[Row]) -> float | None:
        parts = [self.expected[k] for k in [(phase, None)] + [(phase, r.layer) for r in rows if r.layer]
                 if k in self.expected]
        return sum(parts) if parts else None

    @staticmethod
    def _row(phase, layer, seconds, cached, total, expected) -> dict:
        return {"phase": phase, "layer": layer, "seconds": round(seconds, 3),
                "share": round(100 * seconds / total, 1) if total else 0.0,
                "estimate": None if expected is None else round(expected, 3), "cached": cached}

    def table(self, verbose: bool = False) -> str:
        """The summary as aligned text lines for the log."""
        s = self.summary(verbose)
        lines = [("phase", "seconds", "share", "estimate", "")]
        for r in s["phases"]:
            name = f"  {r['layer']}" if r["layer"] else r["phase"]
            lines.append((name, f"{r['seconds']:.2f}", f"{r['share']:.1f} %",
                          "-" if r["estimate"] is None else f"{r['estimate']:.2f}", "cached" if r["cached"] else ""))
        lines.append(("total", f"{s['total_seconds']:.2f}", "100 %", "", ""))
        widths = [max(len(l[i]) for l in lines) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(l, widths))).rstrip()
                         for l in lines)


def duration(seconds: float) -> str:
    """'0.4 s', '42 s', '3.5 min', '1.2 h': how the estimate is told."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_text(expected: dict[tuple[str, str | None], float]) -> str:
    """The up-front estimate for the log: one line per phase (its layers summed), then the total."""
    phases: dict[str, list[float]] = {}
    for (phase, _layer), seconds in expected.items():
        phases.setdefault(phase, []).append(seconds)
    width = max((len(p) for p in phases), default=0)
    lines = [f"  {p.ljust(width)}  {duration(sum(v))}" + (f" ({len(v)} layers)" if len(v) > 1 else "")
             for p, v in phases.items()]
    total = sum(expected.values())
    return "\n".join([f"estimated time: {duration(total)} (cached work counts 0)"] + lines)
