"""Load the spec's model: torchvision (multi-weight API), timm (timm_models.py), a checkpoint, or a user factory.

Returns a `LoadedModel`: the eval-mode module plus what the report needs to feed it and
name its outputs (classes, input size, channels, mean/std) and the sha256 of its weights.
"""

import copy
import hashlib
import importlib
import math
import os
import re
import sys
import urllib.error
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from .errors import ModelError, SpecError
from .imagenet import imagenet_class_ids
from .spec import ModelSpec

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class LoadedModel:
    module: nn.Module
    classes: list[str]
    input_size: tuple[int, int]    # (H, W) fed to the model, in pixels
    resize_size: tuple[int, int]   # (H, W) images are scaled to cover (aspect kept), then centre-cropped to input_size
    channels: int            # 1 or 3
    mean: list[float]
    std: list[float]
    sha256: str
    source: str              # a human description, for the overview page
    meta: dict = field(default_factory=dict)
    interpolation: str = "bilinear"   # how images are scaled to resize_size: PIL's filter by name (timm: 'bicubic')
    class_ids: list[str] | None = None   # ImageNet-1k's WNIDs in output order when the classes are ImageNet's

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) → the float input the model expects, on the images' device."""
        return standardize(images.float() / 255, self.mean, self.std)


def standardize(x01: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, C, H, W) pixels in [0, 1] → the model's input: (x − mean) / std per channel, on x's device and dtype."""
    m = torch.tensor(mean, device=x01.device, dtype=x01.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x01.device, dtype=x01.dtype).view(1, -1, 1, 1)
    return (x01 - m) / s


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """A size as (H, W): an int is a square's side."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def weights_sha256(module: nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes and bytes, in order): the model's identity."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_model(spec: ModelSpec, spec_dir: Path) -> LoadedModel:
    """Build the module named by the spec, load its weights, put it in eval mode."""
    if spec.torchvision:
        module, info = _from_torchvision(spec)
    elif spec.timm:
        from .timm_models import from_timm   # imported only here: importing timm takes seconds
        module, info = from_timm(spec)
    elif spec.factory or spec.module is not None:
        if spec.module is not None:
            # a copy: eval mode, frozen weights and the device move must not change the caller's model
            module, target = copy.deepcopy(spec.module), f"model.module ({type(spec.module).__name__})"
        else:
            module, target = _from_factory(spec.factory, spec_dir), spec.factory
        info = {"source": f"factory {spec.factory}" if spec.factory else f"in-memory {type(module).__name__}"}
        if spec.checkpoint:
            _load_state_dict(module, spec.checkpoint, spec.trust_checkpoint, target)
            info["source"] += f" + {spec.checkpoint.name}"
    else:
        module = _load_checkpoint_module(spec.checkpoint, spec.trust_checkpoint)
        info = {"source": f"checkpoint {spec.checkpoint.name}"}
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return _describe(module, spec, info)


def _describe(module: nn.Module, spec: ModelSpec, info: dict) -> LoadedModel:
    """Fill input size, channels, normalization and classes: spec overrides > weights' meta > guesses."""
    # the first 4-D weight is the first conv's (works for TorchScript modules too, whose children aren't nn.Conv2d)
    first_conv = next((p for p in module.parameters() if p.dim() == 4), None)
    channels = spec.channels or (first_conv.shape[1] if first_conv is not None else 3)
    if spec.channels and first_conv is not None and first_conv.shape[1] != spec.channels:
        raise SpecError("model.channels", f"is {spec.channels} but the model's first conv takes "
                                          f"{first_conv.shape[1]} channels; remove the key or fix the model")
    if channels not in (1, 3):
        raise ModelError(f"the model's first conv takes {channels} channels; reportgen feeds 1 or 3 (set model.channels)")
    input_size = as_hw(spec.input_size or info.get("input_size") or 224)
    default_mean = IMAGENET_MEAN if channels == 3 else [0.5]
    default_std = IMAGENET_STD if channels == 3 else [0.5]
    mean = spec.mean or info.get("mean") or default_mean
    std = spec.std or info.get("std") or default_std
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise SpecError(f"model.{key}", f"has {len(values)} values but the model takes {channels} input "
                                            f"channel{'s' if channels > 1 else ''}; give one value per channel")
    classes = _classes(spec, info, module, channels, input_size)
    if "crop_pct" in info:   # timm's eval transform: the input is crop_pct of the image, floor(size / crop_pct)
        resize = (math.floor(input_size[0] / info["crop_pct"]), math.floor(input_size[1] / info["crop_pct"]))
    else:   # torchvision's Resize(256) scales the shorter side to 256, i.e. the image covers 256 × 256
        resize = as_hw(info.get("resize_size") or input_size)
    resize = (max(resize[0], input_size[0]), max(resize[1], input_size[1]))
    return LoadedModel(module, classes, input_size, resize, channels, list(mean), list(std),
                       weights_sha256(module), info["source"], {k: v for k, v in info.items() if k == "weights"},
                       class_ids=imagenet_class_ids(classes, len(classes)),
                       interpolation=info.get("interpolation", "bilinear"))


def _classes(spec: ModelSpec, info: dict, module: nn.Module, channels: int, input_size) -> list[str]:
    if isinstance(spec.classes, list):
        return spec.classes
    if isinstance(spec.classes, Path):
        try:
            lines = spec.classes.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SpecError("model.classes", f"cannot read {str(spec.classes)!r}: {exc.strerror}") from None
        return [line.strip() for line in lines if line.strip()]
    if info.get("classes"):
        return list(info["classes"])
    return [f"class {i}" for i in range(_outputs(module, channels, input_size))]


def _outputs(module: nn.Module, channels: int, input_size: tuple[int, int]) -> int:
    """How many outputs the model has, read off one forward of a zero image (a head may be a Linear, a conv
    and a pool as in SqueezeNet, or TorchScript); 0 when the output is not (1, K)."""
    try:
        with torch.inference_mode():
            out = module(torch.zeros(1, channels, *input_size))
    except Exception:   # noqa: BLE001 - a model that cannot run is reported later, with its layer names
        return 0
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else 0


def _from_torchvision(spec: ModelSpec) -> tuple[nn.Module, dict]:
    name = spec.torchvision
    available = torchvision.models.list_models()
    if name not in available:
        import difflib
        close = difflib.get_close_matches(name, available, n=3)
        hint = f"; closest: {', '.join(close)}" if close else "; see torchvision.models.list_models()"
        raise SpecError("model.torchvision", f"no torchvision model {name!r}{hint}")
    info: dict = {"source": f"torchvision {name}"}
    weights = None
    if spec.weights:
        enum = torchvision.models.get_model_weights(name)
        try:
            weights = enum[spec.weights]
        except KeyError:
            choices = ", ".join(w.name for w in enum)
            raise SpecError("model.weights", f"{name} has no weights {spec.weights!r}; choose one of: {choices}, or null") from None
        _ensure_weights_file(weights)
        t = weights.transforms()
        info.update(source=f"torchvision {name} ({enum.__name__}.{weights.name})", weights=weights.name,
                    classes=weights.meta.get("categories"), mean=list(t.mean), std=list(t.std),
                    input_size=t.crop_size[0], resize_size=t.resize_size[0])
    try:
        module = torchvision.models.get_model(name, weights=weights)
    except (RuntimeError, urllib.error.URLError, OSError) as exc:
        raise ModelError(f"cannot build torchvision model {name!r}: {exc}") from None
    return module, info


def weights_cache_path(weights) -> Path:
    """Where torchvision's weights API looks for a weights file: $TORCH_HOME/hub/checkpoints/<name from URL>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _ensure_weights_file(weights) -> None:
    """Download the weights if missing; offline, say which file goes where."""
    path = weights_cache_path(weights)
    if path.is_file():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(path), progress=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise ModelError(f"weights {path.name} are not cached and cannot be downloaded ({exc.__class__.__name__}); "
                         f"put the file in {path.parent} (TORCH_HOME/hub/checkpoints) or set TORCH_HOME") from None


@contextmanager
def _importable_from(directory: Path) -> Iterator[None]:
    """Modules in `directory` are importable (before all others) inside the block; `sys.path` is restored
    exactly after. Imported modules stay in `sys.modules`, so their classes still pickle and unpickle."""
    saved = list(sys.path)
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path[:] = saved


def _from_factory(factory: str, spec_dir: Path) -> nn.Module:
    module_name, _, attr = factory.partition(":")
    try:
        # the user's module is importable from the spec's directory, like a script beside it
        with _importable_from(spec_dir):
            mod = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError("model.factory", f"cannot import {module_name!r} ({exc}); put it beside the spec or on PYTHONPATH") from None
    except Exception as exc:  # the user's module failed while importing
        raise SpecError("model.factory", f"importing {module_name!r} failed: {exc.__class__.__name__}: {exc}") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise SpecError("model.factory", f"{module_name!r} has no callable {attr!r}")
    try:
        module = fn()
    except Exception as exc:
        raise SpecError("model.factory", f"{factory}() failed: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise SpecError("model.factory", f"{factory}() returned {type(module).__name__}, not a torch.nn.Module")
    return module


# --- checkpoints: read the file, find the weights in it, fit them to the factory's module -----------------
# Written here rather than taken from a library: no well-kept package unwraps training-script checkpoints.
# Keys under which training scripts put the weights beside epoch/optimizer/args, in the order they are tried.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Prefixes that wrappers add to every key: DataParallel/DDP (`module.`) and torch.compile (`_orig_mod.`).
PREFIXES = ("module.", "_orig_mod.")


def _checkpoint_error(message: str) -> SpecError:
    return SpecError("model.checkpoint", message)


def _first(items: list, n: int = 3) -> str:
    return ", ".join(map(str, items[:n])) + (", …" if len(items) > n else "")


def read_weights(path: Path, trust: bool) -> tuple[dict | nn.Module, str]:
    """(the state_dict or module a checkpoint file holds, how it held it: "a {'state_dict': …} dict", ...).
    torch.save files are loaded with weights_only=True unless the spec trusts the file."""
    if not path.is_file():
        raise _checkpoint_error(f"no file {str(path)!r}")
    if _is_safetensors(path):
        return _safetensors_load(path), "a safetensors state_dict"
    if _is_torchscript(path):
        return _jit_load(path), "a TorchScript model"
    return _find_weights(_torch_load(path, trust), path)


def _torch_load(path: Path, trust: bool):
    if trust:
        warnings.warn(f"loading {path.name} with weights_only=False (model.trust_checkpoint): "
                      "it can run arbitrary code", stacklevel=3)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # torch.load raises many types (UnpicklingError, RuntimeError, ...)
        if "Weights only load failed" in str(exc):
            found = _unsafe_globals(path, str(exc))
            raise _checkpoint_error(f"{path.name} holds pickled Python objects besides tensors"
                                    f"{f' ({_first(found)})' if found else ''} and was refused (weights_only=True); "
                                    "if you trust this file set model.trust_checkpoint: true, "
                                    "or re-save only its state_dict") from None
        raise _checkpoint_error(f"{path.name} is not a checkpoint saved by torch.save, TorchScript or safetensors "
                                f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
                                ) from None


def _unsafe_globals(path: Path, message: str) -> list[str]:
    """The Python classes/functions that made weights_only loading refuse the file, the user's own first."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the legacy (pre-1.6, non-zip) format: the refusal names the first one
        found = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", message)
    return sorted(set(found), key=lambda name: (name.startswith("torch."), name))


def _is_safetensors(path: Path) -> bool:
    """By suffix, or by content: an 8-byte little-endian header length, then the JSON header's '{'."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _safetensors_load(path: Path) -> dict:
    from safetensors.torch import load_file  # imported only where a safetensors file is read

    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # safetensors' SafetensorError, or OSError
        raise _checkpoint_error(f"{path.name} is not a readable safetensors file "
                                f"({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None


def _is_torchscript(path: Path) -> bool:
    if not (path.is_file() and zipfile.is_zipfile(path)):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())


def _jit_load(path: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice is not the user's concern
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise _checkpoint_error(f"{path.name}: cannot load TorchScript model ({str(exc).splitlines()[0]})") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _find_weights(obj, path: Path) -> tuple[dict | nn.Module, str]:
    """The weights in what torch.save pickled: a state_dict, one under a WRAPPER_KEYS key, or a module."""
    if isinstance(obj, nn.Module):
        return obj, f"a pickled {type(obj).__name__}"
    if _is_state_dict(obj):
        return obj, "a state_dict"
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if _is_state_dict(inner):
                return inner, f"a {{{key!r}: …}} dict"
            if isinstance(inner, nn.Module):
                return inner, f"a pickled {type(inner).__name__} under {key!r}"
        keys = _first([repr(k) for k in obj], 5) or "none"
        raise _checkpoint_error(f"{path.name} holds a dict without weights (keys: {keys}); expected a state_dict, "
                                f"or one under {', '.join(map(repr, WRAPPER_KEYS[:-1]))} or {WRAPPER_KEYS[-1]!r}")
    raise _checkpoint_error(f"{path.name} holds a {type(obj).__name__}, not a state_dict or a model")


def _unwrap_module(module: nn.Module) -> nn.Module:
    """The model inside DataParallel/DDP/torch.compile wrappers, so its layers have their own names."""
    while isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)) or hasattr(module, "_orig_mod"):
        module = module.module if hasattr(module, "module") else module._orig_mod
    return module


def strip_prefixes(state: dict, model_keys: set[str]) -> tuple[dict, str]:
    """Remove the wrappers' prefixes that every key carries and the model's keys do not: (state, removed)."""
    removed = ""
    while state and (prefix := next((p for p in PREFIXES if all(k.startswith(p) for k in state)
                                     and not all(k.startswith(p) for k in model_keys)), None)):
        state = {k[len(prefix):]: v for k, v in state.items()}
        removed += prefix
    return state, removed


def _load_checkpoint_module(path: Path, trust: bool) -> nn.Module:
    """A checkpoint without a factory must hold a model: TorchScript, or a pickled module (trusted)."""
    weights, how = read_weights(path, trust)
    if isinstance(weights, nn.Module):
        return _unwrap_module(weights)
    raise _checkpoint_error(f"{path.name} holds {how}, not a model; add 'factory: module:callable' "
                            "that builds the architecture")


def _load_state_dict(module: nn.Module, path: Path, trust: bool, factory: str) -> None:
    """Load the weights a checkpoint holds into the factory's module, or say exactly how they do not fit."""
    fit_weights(module, *read_weights(path, trust), path, factory)


def fit_weights(module: nn.Module, weights: dict | nn.Module, how: str, path: Path, target: str) -> None:
    """Load `weights` (read from checkpoint `path` as `how`) into `module`, built by `target` (named in errors)."""
    own = module.state_dict()
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    state, removed = strip_prefixes(state, set(own))
    found = how + (f", {removed!r} prefix removed" if removed else "")
    shapes = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()   # (_extra_state: any object)
              if torch.is_tensor(v) and torch.is_tensor(own.get(k)) and v.shape != own[k].shape}
    result = module.load_state_dict({k: v for k, v in state.items() if k not in shapes}, strict=False)
    # checkpoints saved before PyTorch 0.4.1 have no BatchNorm num_batches_tracked (a counter, not a weight)
    missing = [k for k in result.missing_keys if k not in shapes and not k.endswith(".num_batches_tracked")]
    # counters listed last: the weights' names say more (safetensors files keep int64 counters first)
    unexpected = sorted(result.unexpected_keys, key=lambda k: k.endswith(".num_batches_tracked"))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''} ({_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    if shapes:
        listed = "; ".join(f"{k}: checkpoint {a}, model {b}" for k, (a, b) in list(shapes.items())[:2])
        parts.append(f"{len(shapes)} shape mismatch{'es' if len(shapes) > 1 else ''} "
                     f"({listed}{'; …' if len(shapes) > 2 else ''})")
    if parts:
        raise _checkpoint_error(f"checkpoint {path.name!r} ({found}) does not fit {target}: {', '.join(parts)}")
