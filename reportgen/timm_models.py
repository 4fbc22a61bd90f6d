"""timm models (`model.timm: NAME`): timm's weights, a local copy of them, a checkpoint, or random weights.

`from_timm(spec)` returns `(module, info)` like the other sources in models.py. `info` holds what timm's data
config says about feeding the model — input size, mean/std, interpolation and crop_pct (its eval transform
resizes the shorter side to floor(size / crop_pct), then centre-crops) — and the classes timm knows for its head.

Which weights (spec keys, checked in spec.py):
- `pretrained: true` (the default without `checkpoint`): timm's own weights for NAME (and its tag), from the
  Hugging Face cache or downloaded; offline and not cached is an error saying what to do.
- `pretrained_file: PATH`: the same weights from a local file, read by timm's loader (`pretrained_cfg_overlay`
  `file`), so timm's per-model conversion of original checkpoints applies.
- `checkpoint: PATH`: your own training's weights (state_dict, wrappers and prefixes, safetensors), fitted
  strictly by models.py's checkpoint loader; a head of another size (fine-tuned) is read off the checkpoint.
- `pretrained: false`: random weights (tests, architecture exploration).

Imported only when a spec names a timm model: importing timm takes seconds.
"""

import difflib
import warnings

import timm
import timm.data
from timm.models import get_pretrained_cfg
from torch import nn

from . import imagenet
from .errors import ModelError, SpecError
from .models import fit_weights, read_weights, strip_prefixes
from .spec import ModelSpec


def from_timm(spec: ModelSpec) -> tuple[nn.Module, dict]:
    """Build `spec.timm` with the weights the spec asks for; (module, info) as models.load_model expects."""
    name = _check_name(spec.timm)
    kwargs = {"in_chans": spec.channels or 3}
    if spec.checkpoint:
        weights, how = read_weights(spec.checkpoint, spec.trust_checkpoint)
        head = _head_size(name, weights)
        if head:
            kwargs["num_classes"] = head
    module = _create(name, spec, kwargs)
    if spec.checkpoint:
        fit_weights(module, weights, how, spec.checkpoint, f"timm {name}")
        source = f"timm {name} + {spec.checkpoint.name}"
    elif spec.pretrained_file:
        source = f"timm {name} ({spec.pretrained_file.name})"
    else:
        source = f"timm {name}" + ("" if spec.pretrained else " (random weights)")
    return module, {"source": source, **data_info(module, name, kwargs["in_chans"])} | _classes(module)


def _check_name(name: str) -> str:
    """`arch` or `arch.tag` as timm registers them, or a SpecError with the closest names."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return name  # timm resolves these itself, from the hub or a folder
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; closest: {', '.join(close)}" if close else "; see timm.list_models()"
        raise SpecError("model.timm", f"no timm model {name!r}{hint}")
    tags = timm.list_pretrained(f"{arch}.*")
    if tag and name not in tags:
        choices = ", ".join(tags) if tags else f"none: {arch} has no pretrained weights in timm"
        raise SpecError("model.timm", f"{arch} has no pretrained tag {tag!r}; choose one of: {choices}")
    return name


def _head_size(name: str, weights: dict | nn.Module) -> int | None:
    """The number of classes of the checkpoint's classifier (timm's cfg names its key), None if not found."""
    cfg = get_pretrained_cfg(name)
    key = cfg.classifier if cfg else None
    key = key[0] if isinstance(key, (tuple, list)) else key   # distilled models have two heads, the first is the head
    if not key:
        return None
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    weight = strip_prefixes(state, {f"{key}.weight"})[0].get(f"{key}.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 2 else None


def _create(name: str, spec: ModelSpec, kwargs: dict) -> nn.Module:
    """timm.create_model with the weights the spec names, its failures as one-line errors on the spec's key."""
    overlay = None
    if spec.pretrained_file:
        if not spec.pretrained_file.is_file():
            raise SpecError("model.pretrained_file", f"no file {str(spec.pretrained_file)!r}")
        overlay = {"file": str(spec.pretrained_file)}   # timm's override of where its pretrained weights are read
    try:
        return timm.create_model(name, pretrained=bool(spec.pretrained), pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as exc:  # noqa: BLE001 - timm and the hub raise many types (OSError, RuntimeError, HTTP errors)
        detail = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if spec.pretrained_file:
            raise SpecError("model.pretrained_file", f"{spec.pretrained_file.name} is not timm's weights for "
                                                     f"{name} ({detail[:300]})") from None
        if spec.pretrained:
            from huggingface_hub.constants import HF_HUB_CACHE
            raise ModelError(f"timm's weights for {name!r} are not cached and cannot be downloaded ({detail[:200]}); "
                             f"download them once online (cached in {HF_HUB_CACHE}; HF_HUB_OFFLINE=1 skips the "
                             "retries), give a local copy as model.pretrained_file, or set model.pretrained: false "
                             "for random weights") from None
        raise ModelError(f"cannot build timm model {name!r} ({detail[:300]})") from None


def data_info(module: nn.Module, name: str, channels: int) -> dict:
    """How timm's eval transform feeds the model: input_size (H, W), mean, std, interpolation, crop_pct."""
    cfg = timm.data.resolve_model_data_config(module)
    mean, std = list(cfg["mean"]), list(cfg["std"])
    if channels == 1 and len(mean) == 3:
        # in_chans=1 sums the first conv's RGB weights: a gray pixel stands for equal R, G and B
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    if cfg.get("crop_mode", "center") != "center":
        warnings.warn(f"timm's data config for {name} crops in {cfg['crop_mode']!r} mode; reportgen scales images "
                      "to cover the input and centre-crops them ('center' mode)", stacklevel=3)
    return {"input_size": tuple(cfg["input_size"][1:]), "mean": mean, "std": std,
            "interpolation": cfg["interpolation"], "crop_pct": cfg["crop_pct"]}


def _classes(module: nn.Module) -> dict:
    """The names timm knows for the head's outputs: the cfg's label names, or ImageNet's when the head is."""
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    n = getattr(module, "num_classes", 0)
    if cfg.get("label_names") and len(cfg["label_names"]) == n:
        names = list(cfg["label_names"])
        return {"classes": [cfg.get("label_descriptions", {}).get(c, c) for c in names]}
    subset = timm.data.infer_imagenet_subset(module)
    if subset == "imagenet-1k":
        return {"classes": list(imagenet.names())}   # the torchvision path's names; imagenet.py finds their WNIDs
    if not subset:
        return {}
    # the larger ImageNets (12k, 22k): each synset's first lemma ('tench' of 'tench, Tinca tinca')
    return {"classes": [d.split(",")[0].strip() for d in timm.data.ImageNetInfo(subset).label_descriptions()]}
