"""The build, one linear function: load → one dataset pass → analyses in dependency order → Report → pages.

Each stage reads only the previous stages' results. The dataset pass and every analysis are cached
by content (artifacts.Cache), so a rebuild recomputes only what changed; rendering computes nothing.
The site is written to a temporary directory beside the output and swapped in when complete.
"""

import time
from pathlib import Path

import torch

from .analyses import ANALYSES
from .analysis import Analysis, Context, analysis_costs, check_analyses, run_analyses
from .artifacts import Cache
from .data import load_dataset, sample_indices, subset_indices
from .distributed import SINGLE, Group
from .errors import DataError, SpecError
from .evidence import gather_evidence, pass_cost, pass_keys, receptive_fields
from .labels import match_labels
from .layers import list_layers, resolve_layers
from .checkpoints import attach, load_models
from .output import check_output, write_site
from .render.pages import render_site
from .report import assemble
from .spec import Spec
from .timing import Probe, Timer, estimate_text


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("device", "'cuda' was asked for but no CUDA GPU is available here; use 'cpu' or 'auto'")
    return name


def prepare(spec: Spec, use_cache: bool = True, log=print, group: Group = SINGLE,
            analyses: list[Analysis] = ANALYSES) -> Context:
    """Load model and data, resolve layers, trace receptive fields: everything that can fail before the first
    heavy computation, so that it fails in seconds."""
    timer = Timer()
    device = pick_device(spec.device)
    torch.manual_seed(spec.seed)
    model, earlier = load_models(spec)   # and every other checkpoint of model.checkpoints, checked now
    dataset = load_dataset(spec.dataset, model.input_size, model.resize_size, model.channels,
                           model.interpolation)
    match_labels(dataset, model, spec.dataset, named=spec.model.classes is not None)  # labels → model outputs
    infos = list_layers(model.module.cpu(), model.input_size, model.channels)
    model.module.to(device)
    layers = resolve_layers(model.module, spec.layers, model.input_size, model.channels)
    indices = subset_indices(dataset.size, spec.dataset.limit, spec.seed)
    samples = sample_indices(indices, spec.dataset.samples, spec.seed)
    cache = Cache(spec.spec_path / ".reportgen-cache", enabled=use_cache, writable=group.is_main)
    ctx = Context(spec, device, model, dataset, layers, infos, indices, samples, cache, log, group, timer=timer)
    attach(ctx, earlier)
    for a in analyses:
        if a.enabled(ctx):
            a.prepare(ctx)   # e.g. circuits.expand adds the layers that feed the spec's filters
    timer.lap("load")
    ctx.receptive_fields = receptive_fields(ctx)
    timer.lap("receptive fields")
    return ctx


def estimate(ctx: Context, outcomes: dict) -> dict[tuple[str, str | None], float]:
    """Seconds of the dataset pass and of each analysis (per layer), priced by a probe of the model; cached
    work costs 0, and a build with nothing to compute runs no probe."""
    ctx.evidence_key = pass_keys(ctx)[0]        # the analyses' cache keys include it
    works = {("dataset pass", None): pass_cost(ctx)} | analysis_costs(ctx, outcomes)
    if not any(works.values()):
        return dict.fromkeys(works, 0.0)
    try:
        probe = Probe(ctx, {l.path for l in ctx.layers})
    except DataError:   # unreadable images: the pass skips or raises on them, naming the files
        return {}
    except Exception as exc:  # noqa: BLE001 - no estimate is no reason to stop: the pass says what is wrong
        ctx.log(f"no estimate of the build's time: the probe of the model failed ({exc.__class__.__name__}: {exc})")
        return {}
    return {k: probe.price(w) if w else 0.0 for k, w in works.items()}


def build(spec: Spec, out: Path | None = None, use_cache: bool = True, progress: bool = True, log=print,
          group: Group = SINGLE, analyses: list[Analysis] = ANALYSES, strict: bool = False,
          verbose: bool = False) -> Path:
    """Build the site for `spec` into `out` (default: the spec's `output`). Returns the site path.

    strict: a part of the report that cannot be made (an analysis that does not apply to this model, or
    fails) is an error instead of a note in the report. verbose: the closing time table has a row per layer.
    """
    t0 = time.perf_counter()
    out = Path(out) if out else spec.output
    protected = [spec.spec_file or spec.spec_path] + ([spec.model.checkpoint] if spec.model.checkpoint else [])
    protected += [spec.dataset.root] if spec.dataset.root else []   # none: an in-memory dataset
    protected += [e.path for e in spec.model.checkpoints or []]   # model.checkpoints: every file
    protected += [f for f in (spec.dataset.labels_file, spec.dataset.concepts) if f]   # devkit or CSV; concepts CSV
    check_output(out, protected)                  # before any work: a refused output fails in a second
    log = log if group.is_main else (lambda *_: None)
    ctx = prepare(spec, use_cache, log, group, analyses)
    timer = ctx.timer
    ctx.progress, ctx.strict = progress, strict
    outcomes = check_analyses(ctx, analyses)      # before the pass: what cannot run says so now
    log(f"model {ctx.model.source}: {len(ctx.layers)} layers, dataset {ctx.dataset.format} "
        f"({len(ctx.indices)} of {ctx.dataset.size} images), device {ctx.device}")
    if group.is_main:
        timer.expected = estimate(ctx, outcomes)
        if timer.expected:
            log(estimate_text(timer.expected))
    timer.lap("estimate")
    gather_evidence(ctx)
    timer.lap("dataset pass", cached="record" not in ctx.computed)
    run_analyses(ctx, outcomes)
    report = assemble(ctx, outcomes, out)
    timer.lap("assemble")
    if group.is_main:   # the other ranks write nothing outside the cache
        # the site's table ends with rendering (its pages are written last); the swap shows in the log only
        write_site(out, lambda writer: render_site(writer, report, lambda: timer.closing("render")),
                   protected)
        timer.lap("write")
        log("where the time went:\n" + timer.table(verbose))
        computed = ", ".join(ctx.computed) or "nothing (all cached)"
        log(f"wrote {out} in {time.perf_counter() - t0:.1f} s; computed: {computed}")
    group.barrier()
    return out
