"""Load the spec's model: torchvision (multi-weight API), a checkpoint, or a user factory.

Returns a `LoadedModel`: the eval-mode module plus what the report needs to feed it and
name its outputs (classes, input size, channels, mean/std) and the sha256 of its weights.
"""

import hashlib
import importlib
import os
import sys
import urllib.error
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from .errors import ModelError, SpecError
from .spec import ModelSpec

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class LoadedModel:
    module: nn.Module
    classes: list[str]
    input_size: int          # square side fed to the model, in pixels
    resize_size: int         # images are resized to this, then centre-cropped to input_size
    channels: int            # 1 or 3
    mean: list[float]
    std: list[float]
    sha256: str
    source: str              # a human description, for the overview page
    meta: dict = field(default_factory=dict)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) → the float input the model expects, on the images' device."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255 - mean) / std


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
    elif spec.factory:
        module = _from_factory(spec.factory, spec_dir)
        info = {"source": f"factory {spec.factory}"}
        if spec.checkpoint:
            _load_state_dict(module, spec.checkpoint, spec.trust_checkpoint)
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
    input_size = spec.input_size or info.get("input_size") or 224
    default_mean = IMAGENET_MEAN if channels == 3 else [0.5]
    default_std = IMAGENET_STD if channels == 3 else [0.5]
    mean = spec.mean or info.get("mean") or default_mean
    std = spec.std or info.get("std") or default_std
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise SpecError(f"model.{key}", f"has {len(values)} values but the model takes {channels} input "
                                            f"channel{'s' if channels > 1 else ''}; give one value per channel")
    classes = _classes(spec, info, module)
    resize = info.get("resize_size") or input_size
    return LoadedModel(module, classes, input_size, max(resize, input_size), channels, list(mean), list(std),
                       weights_sha256(module), info["source"], {k: v for k, v in info.items() if k == "weights"})


def _classes(spec: ModelSpec, info: dict, module: nn.Module) -> list[str]:
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
    last_linear = [m for m in module.modules() if isinstance(m, nn.Linear)]
    n = last_linear[-1].out_features if last_linear else 0
    return [f"class {i}" for i in range(n)]


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


def _torch_load(path: Path, trust: bool):
    if not path.is_file():
        raise SpecError("model.checkpoint", f"no file {str(path)!r}")
    if trust:
        warnings.warn(f"loading {path.name} with weights_only=False (model.trust_checkpoint): "
                      "it can run arbitrary code", stacklevel=2)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # torch.load raises many types (UnpicklingError, RuntimeError, ...)
        if "Weights only load failed" in str(exc):
            raise ModelError(f"{path.name} holds pickled Python objects besides tensors and was refused "
                             "(weights_only=True); if you trust this file set model.trust_checkpoint: true") from None
        raise ModelError(f"{path.name}: not a checkpoint saved by torch.save "
                         f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None


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
        raise ModelError(f"{path.name}: cannot load TorchScript model ({str(exc).splitlines()[0]})") from None


def _load_checkpoint_module(path: Path, trust: bool) -> nn.Module:
    """A checkpoint without a factory must be TorchScript (it carries its own code)."""
    if _is_torchscript(path):
        return _jit_load(path)
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        return obj
    raise SpecError("model.checkpoint", f"{path.name} holds a state_dict, not a model; add 'factory: module:callable' "
                                        "that builds the architecture")


def _load_state_dict(module: nn.Module, path: Path, trust: bool) -> None:
    """Load a state_dict file, or the weights of a TorchScript file, into the factory's module."""
    state = _jit_load(path).state_dict() if _is_torchscript(path) else _torch_load(path, trust)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # the common {'state_dict': ..., 'epoch': ...} wrapper
    if not isinstance(state, dict):
        raise ModelError(f"{path.name}: expected a state_dict, found {type(state).__name__}")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ
        detail = [l.strip() for l in str(exc).splitlines() if "size mismatch" in l][:3]
        raise ModelError(f"{path.name} does not match the factory's model: {'; '.join(detail) or exc}") from None
    shape_err = None
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append("missing " + ", ".join(result.missing_keys[:5]))
        if result.unexpected_keys:
            parts.append("unexpected " + ", ".join(result.unexpected_keys[:5]))
        shape_err = "; ".join(parts)
    if shape_err:
        raise ModelError(f"{path.name} does not match the factory's model: {shape_err}")
