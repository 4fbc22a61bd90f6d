"""Several checkpoints of one architecture (`model.checkpoints`): loading every one, and one dataset pass each.

The report is built for the last checkpoint (spec.py makes it `model.checkpoint`); `load_models(spec)` loads it and
every earlier one exactly as `model.checkpoint` is loaded (models.load_model: the same factory/torchvision/timm
architecture, `weights_only` rules and key-mismatch errors), each error naming `model.checkpoints[i]`, before any
work. `checkpoint_passes(ctx)` gives each checkpoint's dataset pass (the same layers and images as the main pass),
cached per checkpoint: the pass key holds the weights' sha256 (through `Context.key`), so adding a checkpoint
records only its own pass. Analyses that compare checkpoints (evolution, the explorer's slider) share them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .errors import SpecError
from .evidence import gather_evidence, pass_cost
from .models import LoadedModel, load_model
from .record import Evidence
from .spec import Spec

_MODELS = "_checkpoint_models"      # ctx attribute: the earlier checkpoints' LoadedModels, set by `attach`
_PASSES = "_checkpoint_passes"      # ctx attribute: memoized `checkpoint_passes`


@dataclass
class CheckpointPass:
    """One checkpoint: its name in the spec, the sha256 of its weights, its dataset pass and its model."""
    name: str
    sha256: str
    evidence: Evidence
    loaded: LoadedModel

    def model(self, ctx) -> nn.Module:
        """The checkpoint's module (eval mode, no gradients) on the build's device."""
        return self.loaded.module.to(ctx.device)


@contextlib.contextmanager
def _naming(i: int):
    """A loading error about `model.checkpoint` names the entry of `model.checkpoints` it came from."""
    try:
        yield
    except SpecError as exc:
        if exc.key != "model.checkpoint":
            raise
        raise SpecError(f"model.checkpoints[{i}]", exc.message) from None


def load_models(spec: Spec) -> tuple[LoadedModel, list[LoadedModel]]:
    """(the model, the earlier checkpoints' models oldest first; [] without `model.checkpoints`)."""
    entries = spec.model.checkpoints or []
    if not entries:                      # a single `model.checkpoint`: its errors keep its own key
        return load_model(spec.model, spec.spec_path), []
    with _naming(len(entries) - 1):
        model = load_model(spec.model, spec.spec_path)
    earlier = []
    for i, e in enumerate(entries[:-1]):
        with _naming(i):
            loaded = load_model(spec.model.model_copy(update={"checkpoint": e.path, "checkpoints": None}),
                                spec.spec_path)
        _same_architecture(model, loaded, i)
        earlier.append(loaded)
    return model, earlier


def _same_architecture(model: LoadedModel, other: LoadedModel, i: int) -> None:
    """A checkpoint holding a whole model (TorchScript, pickled) brings its own architecture: it must be the last's."""
    mine = {k: tuple(v.shape) for k, v in model.module.state_dict().items() if torch.is_tensor(v)}
    theirs = {k: tuple(v.shape) for k, v in other.module.state_dict().items() if torch.is_tensor(v)}
    if mine != theirs:
        differ = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != theirs[k]]
        raise SpecError(f"model.checkpoints[{i}]", f"is not the architecture of the last checkpoint "
                                                   f"({len(differ)} weights differ in name or shape: {', '.join(differ[:3])})")


def attach(ctx, earlier: list[LoadedModel]) -> None:
    """Keep the earlier checkpoints' models on the build's context (`prepare` calls it)."""
    setattr(ctx, _MODELS, earlier)


def identities(ctx) -> list[tuple[str, str]]:
    """(name, sha256 of the weights) of every checkpoint, oldest first, known before any pass: what a result
    computed from the checkpoints depends on (its cache key). [] without `model.checkpoints`."""
    entries = ctx.spec.model.checkpoints or []
    shas = [m.sha256 for m in getattr(ctx, _MODELS, [])] + [ctx.model.sha256]
    return [(e.name, sha) for e, sha in zip(entries, shas)] if entries else []


def checkpoint_passes(ctx) -> list[CheckpointPass]:
    """Every checkpoint's dataset pass, oldest first; the last is the build's own (`ctx.evidence`). Each earlier
    pass is loaded from the cache or recorded (named `record:<checkpoint>` in `ctx.computed`); memoized on ctx.
    [] without `model.checkpoints`."""
    if hasattr(ctx, _PASSES):
        return getattr(ctx, _PASSES)
    entries = ctx.spec.model.checkpoints or []
    earlier = getattr(ctx, _MODELS, [])
    passes = []
    for n, (e, loaded) in enumerate(zip(entries[:-1], earlier), 1):
        ctx.log(f"checkpoint {n} of {len(entries)} ({e.name}): dataset pass")
        loaded.module.to(ctx.device)
        # the same build but this checkpoint's weights: its pass keys (ctx.key) hold its sha256
        sub = dataclasses.replace(ctx, model=loaded, evidence=None, evidence_key="", computed=[])
        gather_evidence(sub)
        if "record" in sub.computed:
            ctx.computed.append(f"record:{e.name}")
        passes.append(CheckpointPass(e.name, loaded.sha256, sub.evidence, loaded))
    if entries:
        passes.append(CheckpointPass(entries[-1].name, ctx.model.sha256, ctx.evidence, ctx.model))
    setattr(ctx, _PASSES, passes)
    return passes


def earlier_pass_work(ctx) -> float:
    """Images the earlier checkpoints' passes will run forward (0 where cached), for the up-front estimate."""
    total = 0.0
    for loaded in getattr(ctx, _MODELS, []):
        work = pass_cost(dataclasses.replace(ctx, model=loaded))
        total += work.forward if work else 0.0
    return total
