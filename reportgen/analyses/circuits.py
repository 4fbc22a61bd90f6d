"""Circuits: which input channels feed each spec filter (kernel L2, excitatory/inhibitory, their data-driven
contribution at the filter's top images, where each channel comes from); and the first layer's filters.
"""

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from ..analysis import Analysis
from ..errors import ModelError
from ..graph import effective_weights, find_conv, trace_source
from ..layers import Layer, keras_aliases, slugify
from ..render import images as im
from ..report import rounded
from ..timing import Work
from . import kernels as kx

_SKIP_FOR_DISPLAY = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)


def display_path(model: nn.Module, source) -> str | None:
    """The module to show for a traced channel: the nearest on its path that is not pooling/dropout
    (VGG's block3_conv1 reads block2_pool; its channels are block2_conv2's ReLU outputs)."""
    modules = dict(model.named_modules())
    for path in source.path:
        if not isinstance(modules.get(path), _SKIP_FOR_DISPLAY):
            return path
    return source.path[0] if source.path else None


class Source(BaseModel):
    kind: str                    # "layer", "input" (an image channel), or the producer that mixes channels
    producer: str | None         # module type of the producer (e.g. "ReLU")
    layer: str | None            # module path of the producing layer
    channel: int
    page: str | None             # its filter page, when the report has one
    image: str | None            # its synthesized image, when the report has one
    patches: list[str]           # its top patches, when the report has them


class Channel(BaseModel):
    rank: int
    channel: int
    l2: float | None
    sum: float | None
    n_pos: int
    n_neg: int
    kind_count: str              # excitatory / inhibitory / balanced by the count rule
    kind_sum: str                # ... by the sum rule
    contribution: float | None
    contribution_rank: int
    kernel: list[list[float]]    # (kh, kw) effective weights
    sources: list[Source]        # several for a residual sum


class Circuit(BaseModel):
    conv: str
    bn_folded: bool
    in_channels: int             # input channels per group
    groups: int
    peak: float | None           # the largest |weight| among the kernels shown (one colour scale)
    source_kind: str             # "layer", "sum" (residual), "concat", "input", another producer, or "untraceable"
    branches: int                # inputs of a sum or concatenation
    source_path: list[str]       # modules between the conv and the producing layer
    totals: dict[str, dict[str, int]]   # rule → kind → channels among those shown
    agreement: float | None      # Spearman(L2, |contribution|) over all channels
    channels: list[Channel]
    kernel_tiles: str            # every kernel as a grey tile, sorted by L2
    kernel_tiles_count: int


class Circuits(Analysis):
    name = "circuits"
    spec_key = "circuit"
    version = 4
    per_layer = True
    uses = ("feature_vis",)      # links each input channel to its synthesized image when that ran
    templates = {"filter": "analyses/circuits.html"}
    FilterResult = Circuit

    def prepare(self, ctx):
        if ctx.spec.circuit.expand:
            ctx.layers = expand_layers(ctx.model.module, ctx.layers, ctx.spec.circuit.top_n,
                                       {i.path: i.output_shape for i in ctx.layer_infos})

    def applies(self, ctx, layer=None):
        if layer is None:
            return None
        try:
            find_conv(ctx.model.module, layer.path)
        except ModelError as exc:
            return f"no circuit: {exc}"
        return None

    def cost(self, ctx, layer):   # the conv's input on each filter's top images (at most)
        n = min(len(ctx.indices), ctx.spec.record.top_k * len(layer.filters))
        return Work(forward=n, batch=128, loads=n, layer=layer.path)

    def compute(self, ctx, layer):
        model = ctx.model.module
        conv_path, conv, bn = find_conv(model, layer.path)
        weight, _bias = effective_weights(conv, bn)
        try:
            source = trace_source(model, conv_path)
        except ModelError:
            source = None
        e = ctx.evidence.layers[layer.path]
        width = layer.output_shape[2]
        inputs = _conv_inputs(ctx, conv_path, sorted(set(e.top.index[:, layer.filters].ravel().tolist())))
        top_n = ctx.spec.circuit.top_n
        filters, out = [], {}
        for f in layer.filters:
            x = torch.stack([inputs[int(i)] for i in e.top.index[:, f]])           # (k, Cin, H, W)
            locs = torch.tensor([divmod(int(l), width) for l in e.top.loc[:, f]])
            contrib = kx.channel_contributions(weight, x, f, locs, conv.stride, conv.padding, conv.dilation,
                                               conv.groups).mean(0)
            stats = kx.rank_input_channels(weight, f, conv.groups, top_n, contributions=contrib)
            channels = []
            for s in stats:
                rec = {k: (rounded(v) if isinstance(v, float) else v) for k, v in s.as_record().items()}
                # 9 digits keep float32 weights exact: pages round them once, for the cell (never twice)
                rec["kernel"] = [[rounded(v, 9) for v in row] for row in s.kernel.tolist()]
                rec["sources"] = _sources(model, source, s.channel)
                channels.append(rec)
            _ids, tiles = kx.kernel_tiles(weight, f, conv.groups)
            out[f"tiles_{f}"] = np.round(np.clip(tiles, 0, 1) * 255).astype(np.uint8)      # (N, kh, kw)
            filters.append({"index": f, "channels": channels, "totals": kx.kind_totals(stats),
                            "agreement": _finite(kx.rank_agreement(weight, f, conv.groups, contrib)),
                            "peak": rounded(max((float(np.abs(s.kernel).max()) for s in stats), default=1.0) or 1.0, 4)})
        out["meta"] = {"conv": conv_path, "bn_folded": bn is not None, "in_channels": conv.in_channels // conv.groups,
                       "groups": conv.groups, "source_kind": source.kind if source else "untraceable",
                       "branches": len(source.branches) if source and source.branches else 0,
                       "source_path": list(source.path) if source else [], "filters": filters}
        return out

    def report(self, ctx, artifacts, out):
        for path, art in artifacts.items():
            meta = dict(art["meta"])
            slug = ctx.layer(path).slug
            for rec in meta.pop("filters"):
                f = rec.pop("index")
                tiles = art[f"tiles_{f}"]
                for ch in rec["channels"]:
                    ch["sources"] = [_link(out, s) for s in ch["sources"]]
                out.filter(path, f, meta | rec | {
                    "kernel_tiles": out.image(f"layers/{slug}/img/f{f}_kernels.png", lambda t=tiles: _tile_grid(t)),
                    "kernel_tiles_count": len(tiles)})


def _finite(v):
    return None if v is None or not np.isfinite(v) else rounded(v, 4)


def _tile_grid(tiles: np.ndarray) -> np.ndarray:
    """(N, kh, kw) uint8 kernels → one grey grid image, tiles scaled up to about 12 px."""
    t = tiles[..., None]
    scale = max(1, 12 // t.shape[1])
    t = np.kron(t, np.ones((1, scale, scale, 1), np.uint8))
    return im.grid(t, int(np.ceil(np.sqrt(len(t)))), pad=1)


def _conv_inputs(ctx, conv_path: str, indices: list[int], batch: int = 128) -> dict:
    """The conv's input for each dataset image, computed once per layer for all its filters' top images."""
    out = {}
    for s in range(0, len(indices), batch):
        chunk = indices[s:s + batch]
        with torch.no_grad():
            got = kx.capture_inputs(ctx.model.module, conv_path, ctx.batch(chunk)).cpu()
        out.update(zip(chunk, got))
    return out


def _sources(model, source, channel: int) -> list[dict]:
    if source is None:
        return []
    return [{"kind": leaf.kind, "producer": leaf.producer_type, "channel": ch,
             "layer": display_path(model, leaf) if leaf.kind == "layer" else None,
             "path": list(leaf.path) if leaf.kind == "layer" else []}
            for leaf, ch in source.channel_sources(channel)]


def _link(out, s: dict) -> dict:
    """A traced source with the report's page, synthesized image and patches of that channel, if any."""
    path = s.pop("path")
    s = s | {"page": None, "image": None, "patches": []}
    for layer in out.report["layers"]:
        if layer["path"] in path:    # the report shows this channel's layer (maybe under another module name)
            s["layer"] = layer["name"]
            f = next((x for x in layer["filters"] if x["index"] == s["channel"]), None)
            if f:
                vis = f.get("feature_vis")
                s.update(page=f["page"], image=vis["image"] if vis else None,
                         patches=[p["patch"] for p in f["top_patches"][:4]])
            break
    return s


def expand_layers(model: nn.Module, layers: list[Layer], top_n: int, shapes: dict) -> list[Layer]:
    """`circuit.expand`: add the layers (and channels) that feed each spec filter's top-N input channels."""
    extra: dict[str, set] = {}
    for layer in layers:
        try:
            conv_path, conv, bn = find_conv(model, layer.path)
            source = trace_source(model, conv_path)
        except ModelError:
            continue
        weight, _ = effective_weights(conv, bn)
        for f in layer.filters:
            for stat in kx.rank_input_channels(weight, f, conv.groups, top_n):
                for leaf, ch in source.channel_sources(stat.channel):
                    path = display_path(model, leaf) if leaf.kind == "layer" else None
                    if path:
                        extra.setdefault(path, set()).add(ch)
    by_path = {l.path: l for l in layers}
    aliases = {p: a for a, (p, _c) in keras_aliases(model).items()}
    out = list(layers)
    for path, chans in sorted(extra.items()):
        if path in by_path:
            by_path[path].filters = sorted(set(by_path[path].filters) | chans)
            continue
        shape = shapes[path]
        try:
            conv = find_conv(model, path)[0]
        except ModelError:
            conv = None
        name = aliases.get(path, path)
        out.insert(0, Layer(name, path, conv, shape[0], shape, sorted(chans), slugify(name) + "-in", "none"))
    return out


class FirstLayerFilters(Analysis):
    """Every filter of the first conv layer as an image (its kernel over the input's colour channels)."""
    name = "first_layer_filters"
    spec_key = "circuit"
    templates = {"overview": "analyses/first_layer_filters.html"}

    class SiteResult(BaseModel):
        image: str
        count: int

    def _conv(self, ctx):
        return next((m for m in ctx.model.module.modules() if isinstance(m, nn.Conv2d)), None)

    def applies(self, ctx, layer=None):
        conv = self._conv(ctx)
        if conv is None:
            return "the model has no Conv2d layer"
        return None if conv.in_channels in (1, 3) else f"the first conv reads {conv.in_channels} channels, not an image"

    def compute(self, ctx, layer):
        tiles = kx.first_layer_filters(self._conv(ctx).weight.detach().cpu())   # (Cout, kh, kw, Cin) in [0, 1]
        return {"tiles": np.round(tiles * 255).astype(np.uint8)}

    def report(self, ctx, art, out):
        def draw(tiles=art["tiles"]):
            tiles = np.kron(tiles, np.ones((1, 4, 4, 1), np.uint8)) if tiles.shape[1] < 8 else tiles  # visible size
            return im.grid(tiles, int(np.ceil(np.sqrt(len(tiles)))), pad=2)
        out.site({"image": out.image("img/first_layer_filters.png", draw), "count": int(len(art["tiles"]))})
