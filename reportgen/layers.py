"""The model's layers: list them, give Keras-style aliases, resolve spec names to modules.

Aliases (`block3_conv1`, `block2_pool`) follow Keras' VGG naming for any model whose
convolutions sit in one flat `nn.Sequential` (VGG, AlexNet, the demo CNN): blocks are
separated by pooling layers, and `blockB_convI` means the conv together with the
BatchNorm/ReLU right after it, as in Keras — so the recorded output is the activation.
"""

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ModelError, SpecError
from .graph import find_conv
from .graph.ops import module_op
from .hooks import removing
from .models import as_hw
from .spec import LayerSpec, parse_filter_selection


def _kind(module: nn.Module) -> str | None:
    """The op kind of `module` in `graph.ops` ("conv", "norm", "activation", "pool", ...), None if unknown."""
    op = module_op(module)
    return op.kind if op else None


@dataclass
class LayerInfo:
    path: str                 # module path in named_modules()
    alias: str | None         # Keras-style name, if any
    type: str
    output_shape: tuple       # without batch, e.g. (256, 56, 56)
    params: int


@dataclass
class Layer:
    """A spec layer resolved against the model."""
    name: str                 # as written in the spec
    path: str                 # module whose output is recorded
    conv_path: str | None     # the conv producing it (for circuits), if any
    channels: int
    output_shape: tuple
    filters: list[int]
    slug: str                 # safe file-name stem
    embedding: str
    expanded: bool = False    # added by circuit.expand (feeds the spec's filters), not named in the spec


def keras_aliases(model: nn.Module) -> dict[str, tuple[str, str]]:
    """alias → (recorded module path, conv path or ''), for the flattest Sequential holding convs."""
    seq_name, seq = _conv_sequential(model)
    if seq is None:
        return {}
    aliases: dict[str, tuple[str, str]] = {}
    children = list(seq.named_children())
    block, conv_i = 1, 0
    prefix = f"{seq_name}." if seq_name else ""
    for i, (name, child) in enumerate(children):
        if isinstance(child, nn.Conv2d):
            conv_i += 1
            end = i
            # Keras counts a conv's activation as part of it; the BatchNorm between them is taken along
            while end + 1 < len(children) and _kind(children[end + 1][1]) in ("norm", "activation"):
                end += 1
            aliases[f"block{block}_conv{conv_i}"] = (prefix + children[end][0], prefix + name)
        elif _kind(child) == "pool":
            aliases[f"block{block}_pool"] = (prefix + name, "")
            block, conv_i = block + 1, 0
    return aliases


def _conv_sequential(model: nn.Module) -> tuple[str, nn.Sequential | None]:
    best = ("", None, 0)
    for name, m in model.named_modules():
        if isinstance(m, nn.Sequential):
            n_conv = sum(isinstance(c, nn.Conv2d) for c in m.children())
            if n_conv > best[2]:
                best = (name, m, n_conv)
    return (best[0], best[1]) if best[2] >= 2 else ("", None)


def list_layers(model: nn.Module, input_size: int | tuple[int, int], channels: int) -> list[LayerInfo]:
    """Every named module with its output shape, from one forward of a zero image of `input_size` (H, W; an
    int: a square)."""
    shapes: dict[str, tuple] = {}

    def make_hook(name):
        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor):
                shapes.setdefault(name, tuple(out.shape[1:]))
        return hook

    with removing(*(m.register_forward_hook(make_hook(name)) for name, m in model.named_modules() if name)), \
            torch.inference_mode():
        model(torch.zeros(1, channels, *as_hw(input_size)))
    by_path = {path: alias for alias, (path, _conv) in keras_aliases(model).items()}
    out = []
    for name, m in model.named_modules():
        if name and name in shapes:
            out.append(LayerInfo(name, by_path.get(name), type(m).__name__, shapes[name],
                                 sum(p.numel() for p in m.parameters(recurse=False))))
    return out


def _producing_conv(model: nn.Module, path: str) -> str | None:
    """The conv whose output `path` is (through BN/activations), from the model graph; None if there is none."""
    try:
        return find_conv(model, path)[0]
    except ModelError:
        return None


def slugify(text: str) -> str:
    """A safe, readable file-name stem (ASCII letters, digits, '-', '_')."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in text)
    return out.strip("-") or "layer"


def resolve_layers(model: nn.Module, specs: list[LayerSpec], input_size: int | tuple[int, int],
                   channels: int) -> list[Layer]:
    """Resolve each spec layer (module path or alias) and its filter selection, or raise SpecError."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError("layer outputs of a TorchScript model cannot be recorded (PyTorch runs no Python hooks "
                         "inside TorchScript); give the architecture as 'factory:' and keep the TorchScript file "
                         "as 'checkpoint:' (its weights are loaded into the factory's model)")
    infos = {i.path: i for i in list_layers(model, input_size, channels)}
    aliases = keras_aliases(model)
    layers, slugs = [], set()
    for n, ls in enumerate(specs):
        if ls.name in aliases:
            path, conv = aliases[ls.name]
        elif ls.name in infos:
            path, conv = ls.name, _producing_conv(model, ls.name)
        else:
            names = list(aliases) + list(infos)
            close = difflib.get_close_matches(ls.name, names, n=3, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise SpecError(f"layers[{n}].name", f"no layer {ls.name!r}{hint} (run 'reportgen layers SPEC' to list them)")
        shape = infos[path].output_shape
        if len(shape) not in (1, 3):
            raise SpecError(f"layers[{n}].name", f"layer {ls.name!r} outputs shape {shape}; "
                                                 "pick a conv/pool layer (C, H, W) or a linear layer (C,)")
        n_ch = shape[0]
        if ls.filters is None:
            filters = list(range(min(16, n_ch)))
        else:
            wanted = parse_filter_selection(ls.filters)
            filters = list(range(n_ch)) if wanted is None else wanted
        bad = [f for f in filters if f >= n_ch]
        if bad:
            raise SpecError(f"layers[{n}].filters", f"filter {bad[0]} is out of range: {ls.name!r} has "
                                                    f"{n_ch} channels (0-{n_ch - 1})")
        slug = slugify(ls.name)
        while slug in slugs:
            slug += "_"
        slugs.add(slug)
        layers.append(Layer(ls.name, path, conv or None, n_ch, shape, filters, slug,
                            ls.embedding or ("tsne" if n == len(specs) - 1 else "none")))
    return layers
