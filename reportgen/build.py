"""The build, one linear function: spec → model + data → record → analyses → render → site.

Every stage reads the previous stages' results and caches its own (artifacts.Cache), so a
rebuild recomputes only what changed. The site is written to a temporary directory beside
the output and swapped in when complete (`output.write_site`).
"""

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .artifacts import Cache, cache_key
from .data import Dataset, load_dataset, sample_indices, subset_indices
from .distributed import SINGLE, Group
from .errors import ModelError, SpecError
from .graph import receptive_field
from .layers import Layer, LayerInfo, list_layers, resolve_layers
from .models import LoadedModel, load_model
from .output import write_site
from .record import HIST_EDGES, PENULTIMATE, Evidence, layer_from_arrays, layer_to_arrays, record
from .render.pages import Pages, json_only, write_pages
from .render.provenance import provenance
from .sections import attribution as attr
from .sections import featvis
from .sections.circuits import CircuitSection, expand_layers
from .sections.embedding import EmbeddingSection
from .spec import Spec

RECORD_VERSION = "record-1"  # bump when the pass's results change meaning


@dataclass
class Job:
    """Everything a build knows about its inputs, handed to analyses and pages."""
    spec: Spec
    device: str
    model: LoadedModel
    dataset: Dataset
    layers: list[Layer]
    layer_infos: list[LayerInfo]
    indices: np.ndarray      # dataset indices used
    samples: np.ndarray      # dataset indices of the sample images
    cache: Cache
    log: object
    group: Group = SINGLE
    progress: bool = True

    def batch(self, indices) -> torch.Tensor:
        """Dataset images by index → the normalized (B, C, H, W) float batch on the build's device."""
        images = torch.from_numpy(np.stack([self.dataset.image(int(i)) for i in indices]))
        return self.model.normalize(images.to(self.device))

    def key(self, *parts) -> str:
        """Cache key of a result that depends on the model, the images used and `parts`."""
        images = hashlib.sha256(self.indices.astype(np.int64).tobytes()).hexdigest()
        return cache_key(self.model.sha256, self.dataset.fingerprint, images, *parts)


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("device", "'cuda' was asked for but no CUDA GPU is available here; use 'cpu' or 'auto'")
    return name


def prepare(spec: Spec, use_cache: bool = True, log=print, group: Group = SINGLE) -> Job:
    """Load model and data and resolve layers: everything before the first heavy computation."""
    device = pick_device(spec.device)
    torch.manual_seed(spec.seed)
    model = load_model(spec.model, spec.spec_path)
    model.module.to(device)
    dataset = load_dataset(spec.dataset, model.input_size, model.resize_size, model.channels)
    if spec.model.classes is None and model.classes == [f"class {i}" for i in range(len(dataset.classes))]:
        model.classes = list(dataset.classes)  # an unnamed head over the dataset's classes: use their names
    infos = list_layers(model.module, model.input_size, model.channels) if device == "cpu" else \
        list_layers(model.module.cpu(), model.input_size, model.channels)
    model.module.to(device)
    layers = resolve_layers(model.module, spec.layers, model.input_size, model.channels)
    if spec.circuit.enabled and spec.circuit.expand:
        layers = expand_layers(model.module, layers, spec.circuit.top_n, {i.path: i.output_shape for i in infos})
    indices = subset_indices(dataset.size, spec.dataset.limit, spec.seed)
    samples = sample_indices(indices, spec.dataset.samples, spec.seed)
    cache = Cache(spec.spec_path / ".reportgen-cache", enabled=use_cache, writable=group.is_main)
    return Job(spec, device, model, dataset, layers, infos, indices, samples, cache, log, group)


def record_evidence(job: Job, progress: bool = True) -> Evidence:
    """The dataset pass, cached per layer; only layers without a cached result are recorded."""
    r, spec = job.spec.record, job.spec
    params = dict(k=r.top_k, negatives=r.negatives, pooled_limit=r.pooled_limit, samples=job.samples.tolist(),
                  hist=HIST_EDGES.tolist())
    keys = {l.path: job.key(RECORD_VERSION, "layer", l.path, params) for l in job.layers}
    keys["(predictions)"] = job.key(RECORD_VERSION, "predictions", params)
    hits = {p: job.cache.load("record", k) for p, k in keys.items()}
    missing = {l.path: l.channels for l in job.layers if hits[l.path] is None}
    pooled = set(sample_indices(job.indices, r.pooled_limit, spec.seed + 7).tolist())
    if not missing and hits["(predictions)"] is not None:
        job.log(f"dataset pass: reusing cached results for {len(job.layers)} layers")
    if missing or hits["(predictions)"] is None:
        mine = job.group.shard_batches(job.indices, spec.dataset.batch_size)
        ev = record(job.model.module, job.model.normalize, job.dataset, mine, missing,
                    num_classes=len(job.dataset.classes), k=r.top_k, negatives=r.negatives, pooled=pooled,
                    samples=set(job.samples.tolist()), batch_size=spec.dataset.batch_size,
                    workers=spec.dataset.workers, device=job.device,
                    raise_errors=spec.dataset.on_error == "raise", progress=progress and job.group.is_main)
        parts = job.group.all_gather(ev)   # exact merge of every rank's shard (rank order)
        ev = parts[0]
        for part in parts[1:]:
            ev.merge(part)
        for path in missing:
            job.cache.save("record", keys[path], layer_to_arrays(ev.layers[path]))
        pred = {"pred_index": ev.pred_index, "preds": ev.preds,
                "prob_index": np.array(sorted(ev.sample_probs), np.int64),
                "probs": np.stack([ev.sample_probs[i] for i in sorted(ev.sample_probs)]) if ev.sample_probs else np.zeros((0, 1)),
                "meta": {"skipped": [[int(i), m] for i, m in ev.skipped]}}
        if PENULTIMATE in ev.layers:
            pred.update({f"pen_{k}": v for k, v in layer_to_arrays(ev.layers[PENULTIMATE]).items()})
        job.cache.save("record", keys["(predictions)"], pred)
        hits["(predictions)"] = pred
        for path in missing:
            hits[path] = layer_to_arrays(ev.layers[path])
    p = hits["(predictions)"]
    layers = {l.path: layer_from_arrays(hits[l.path]) for l in job.layers}
    pen = {k[4:]: v for k, v in p.items() if k.startswith("pen_")}
    if pen:
        layers[PENULTIMATE] = layer_from_arrays(pen)
    ev = Evidence(layers, p["pred_index"], p["preds"], dict(zip(p["prob_index"].tolist(), p["probs"])),
                  [(int(i), m) for i, m in p["meta"]["skipped"]])
    if ev.skipped:
        names = ", ".join(job.dataset.names[i] for i, _ in ev.skipped[:3])
        job.log(f"warning: {len(ev.skipped)} unreadable images skipped (first: {names})")
    if len(ev.pred_index) == 0:
        raise SpecError("dataset.root", "no readable image in the dataset")
    return ev


def receptive_fields(job: Job) -> dict:
    out = {}
    for l in job.layers:
        if len(l.output_shape) == 3:
            try:
                out[l.path] = receptive_field(job.model.module, l.path, (job.model.input_size, job.model.input_size))
            except ModelError as exc:
                job.log(f"warning: no receptive field for {l.name}: {exc}")
    return out


def build(spec: Spec, out: Path | None = None, use_cache: bool = True, progress: bool = True, log=print,
          group: Group = SINGLE) -> Path:
    """Build the site for `spec` into `out` (default: the spec's `output`). Returns the site path."""
    t0 = time.perf_counter()
    out = Path(out) if out else spec.output
    log = log if group.is_main else (lambda *_: None)
    job = prepare(spec, use_cache, log, group)
    job.progress = progress
    log(f"model {job.model.source}: {len(job.layers)} layers, dataset {job.dataset.format} "
        f"({len(job.indices)} of {job.dataset.size} images), device {job.device}")
    evidence = record_evidence(job, progress)
    rfs = receptive_fields(job)
    synthesized = featvis.compute(job) if spec.feature_vis.enabled else {}
    attribution = attr.compute(job) if spec.attribution.enabled else None

    def render(writer):
        pages = Pages(job, evidence, writer, rfs)
        layer_sections = [pages.layer_section(l) for l in job.layers]
        class_models = featvis.layout(job, synthesized, writer, layer_sections)
        circuits = CircuitSection(job, evidence, pages, spec.circuit.top_n) if spec.circuit.enabled else None
        if circuits:
            circuits.attach(job.layers, layer_sections)
        explorers = EmbeddingSection(job, evidence, pages, writer)
        explorers.attach(job.layers, layer_sections)
        overview_explorer = explorers.section(PENULTIMATE, "penultimate", ["tsne"], 0)
        attribution_page = attr.layout(job, attribution, pages, writer) if attribution else None
        if spec.attribution.enabled:
            attr.attach_guided(job, evidence, writer, layer_sections)
        report = {"title": spec.title, "seed": spec.seed, "reportgen_version": __version__,
                  "model": pages.model_section(), "dataset": pages.dataset_section(),
                  "accuracy": pages.accuracy(), "samples": pages.samples_section(),
                  "layers": layer_sections,
                  "first_layer_filters": circuits.first_layer_filters() if circuits else None,
                  "explorer": overview_explorer,
                  "class_models": class_models,
                  "attribution_page": attribution_page,
                  "attribution": attribution_page["records"] if attribution_page else [],
                  "embedding": json_only(overview_explorer["explorers"]) if overview_explorer else None,
                  "provenance": provenance(spec, out, job.model.sha256, job.dataset.fingerprint),
                  "nav_extra": ([{"title": "Attribution", "page": "attribution.html"}] if attribution_page else [])
                  + [{"title": "How this was built", "page": "build.html"}]}
        write_pages(writer, report, explorers.scripts)

    protected = [spec.spec_file or spec.spec_path, spec.dataset.root] + ([spec.model.checkpoint] if spec.model.checkpoint else [])
    if group.is_main:   # the other ranks write nothing outside the cache
        write_site(out, render, protected)
        log(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    group.barrier()
    return out
