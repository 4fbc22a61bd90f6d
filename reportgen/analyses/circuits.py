"""Circuits: which input channels feed each spec filter (kernel L2, excitatory/inhibitory, their data-driven
contribution at the filter's top images, where each channel comes from); and the first layer's filters.
"""

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from ..analysis import Analysis
from ..errors import ModelError
from ..graph import effective_weights, find_conv, layer_node, trace_source
from ..graph.expand import ExpansionStop, expanded_weights
from ..graph.terms import Measured, activation_of, capture, conv_input_node, decompose, measure, shaped_trace
from ..graph.trace import module_paths
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


class RankedKernel(BaseModel):
    """One input channel's kernel and its statistics (`kernels.ChannelStat`)."""
    rank: int
    channel: int
    l2: float | None
    sum: float | None
    n_pos: int
    n_neg: int
    kind_count: str              # excitatory / inhibitory / balanced by the count rule
    kind_sum: str                # ... by the sum rule
    kernel: list[list[float]]    # (kh, kw) effective weights


class Channel(RankedKernel):
    contribution: float | None
    contribution_rank: int | None
    sources: list[Source]        # several for a residual sum


class Branch(BaseModel):
    """One input of the concatenation a conv reads."""
    layer: str                   # the module that makes the branch's channels
    first: int                   # its first channel in the conv's input
    channels: int
    shown: int                   # of the channels listed (the top N by L2)
    l2_share: float | None       # its share of the filter's total kernel L2


class ConvCircuit(BaseModel):
    """Which input channels feed filter `filter` of conv `conv` (BN folded when `bn_folded`)."""
    conv: str
    filter: int
    bn_folded: bool
    in_channels: int             # input channels per group
    groups: int
    group: int | None            # the filter's group (grouped convs): it reads only that group's channels
    group_channels: list[int] | None   # [first, last] input channel of that group
    peak: float | None           # the largest |weight| among the kernels shown (one colour scale)
    source_kind: str             # "layer", "sum" (residual), "concat", "input", another producer, or "untraceable"
    branches: list[Branch]       # the inputs of a concatenation the conv reads
    source_path: list[str]       # modules between the conv and the producing layer
    totals: dict[str, dict[str, int]]   # rule → kind → channels among those shown
    agreement: float | None      # Spearman(L2, |contribution|) over all channels
    channels: list[Channel]
    kernel_tiles: str            # every kernel as a grey tile, sorted by L2
    kernel_tiles_count: int


class Hop(BaseModel):
    """A depthwise filter reads one channel: the unit that makes it, and that unit's own conv circuit."""
    label: str                   # e.g. "features.2.conv.0.0 → features.2.conv.0.1 (folded) → relu6"
    layer: str
    channel: int
    conv: ConvCircuit | None     # its input channels by L2 (contributions are not measured a hop away)


class Term(BaseModel):
    """One addend of the unit's pre-activation, read at the unit's position."""
    kind: str                    # "conv" (a conv's output, BN folded), "layer" (a layer's output as is), "input"
    label: str                   # e.g. "layer2.0.conv2 → bn2 (folded)", "skip from layer1"
    skip: bool                   # the shortcut of a residual block
    channel: int                 # of the term's own output
    scale: float                 # the constant it is multiplied by (BN of a sum, layer scale), 1 if none
    share: float | None          # Σ term ÷ Σ pre-activation over the unit's top images (the shares and the
                                 # bias's add up to 1)
    mean: float | None           # mean value at the top images' positions, scale included
    source: Source               # the unit it reads: its page, image and patches when the report shows it
    conv: ConvCircuit | None     # conv terms: their input channels
    through: Hop | None          # depthwise conv terms: the unit making their one input channel


class ExpandedChannel(RankedKernel):      # `kernel`: the expanded weights on this source channel
    source: Source


class Expanded(BaseModel):
    """The filter's expanded weights on one earlier layer (`circuit.expand_through`)."""
    source: str                  # the module whose output the kernel reads ("input": the image)
    kernel_size: list[int]       # [kh, kw] of the expanded kernel (cropped to where it is not zero)
    offset: list[int]            # [y, x] of the kernel's top-left in the source's output, for the centre unit
    crossed: list[str]           # non-linear ops crossed as linear ones (approximation); empty: exact
    activation: str | None       # the layer's activation: the kernel is its input's (the pre-activation's)
    peak: float | None
    channels: list[ExpandedChannel]


class Circuit(BaseModel):
    kind: str                    # "conv" (one conv term), "sum" (a residual), "layer" (a layer's output as is)
    label: str                   # the whole route: "layer2.0.conv2 → bn2 (folded) + skip from layer1 → relu"
    activation: str | None       # the non-linearity after the sum
    selected: list[str]          # how the unit's channel is followed through concatenations
    bias: float
    bias_share: float | None
    check: float | None          # max |activation(Σ terms + bias) − the unit's value| over its top images
    terms: list[Term]
    expanded: list[Expanded] | None   # circuit.expand_through: the effective kernels on earlier layers
    expansion_stop: str | None   # why there are none: where the expansion stopped


class Circuits(Analysis):
    name = "circuits"
    spec_key = "circuit"
    version = 6
    per_layer = True
    uses = ("feature_vis",)      # links each input channel to its synthesized image when that ran
    templates = {"filter": "analyses/circuits.html"}
    FilterResult = Circuit

    def prepare(self, ctx):
        if not ctx.spec.circuit.expand:
            return
        try:
            gm = _graph(ctx)
        except ModelError:          # untraceable: no circuits to expand (applies() says why on each layer)
            return
        ctx.layers = expand_layers(ctx.model.module, gm, ctx.layers, ctx.spec.circuit.top_n,
                                   {i.path: i.output_shape for i in ctx.layer_infos})

    def applies(self, ctx, layer=None):
        if layer is None:
            return None
        try:
            decompose(ctx.model.module, layer.path, layer.filters[0] if layer.filters else 0, _graph(ctx))
        except ModelError as exc:
            return f"no circuit: {exc}"
        return None

    def cost(self, ctx, layer):   # the model up to the layer on each filter's top images (at most)
        n = min(len(ctx.indices), ctx.spec.record.top_k * len(layer.filters))
        return Work(forward=n, batch=128, loads=n, layer=layer.path)

    def compute(self, ctx, layer):
        model = ctx.model.module
        gm = _graph(ctx)
        top_n = ctx.spec.circuit.top_n
        e = ctx.evidence.layers[layer.path]
        width = layer.output_shape[2]
        decomps = {f: decompose(model, layer.path, f, gm) for f in layer.filters}
        top = {f: [(int(i), divmod(int(l), width)) for i, l in zip(e.top.index[:, f], e.top.loc[:, f])]
               for f in layer.filters}
        got = _read_terms(ctx, gm, layer.path, decomps, top)
        paths = {node.name: p for node, p in module_paths(gm).items()}
        convs: dict[str, tuple] = {}          # conv path → (conv, effective weight, source)
        out, filters = {}, []
        for f, d in decomps.items():
            measured = got.measured[f]
            shares, bias_share = measured.shares(d.bias)
            act = activation_of(gm, d, measured.pre)
            terms = []
            for t, (term, share) in enumerate(zip(d.terms, shares)):
                rec = {"kind": term.kind, "label": term.label, "skip": term.skip, "channel": term.channel,
                       "scale": rounded(term.scale, 6), "share": _finite(share),
                       "mean": _finite(float(measured.values[t].mean())),
                       "source": _term_source(term, paths), "conv": None, "through": None}
                if term.kind == "conv":
                    x = torch.stack([got.conv_inputs[term.conv][i] for i, _ in top[f]])
                    locs = torch.tensor([p for _, p in top[f]])
                    rec["conv"], tiles = _conv_circuit(gm, term, top_n, convs, x, locs)
                    out[f"tiles_{f}_{t}"] = tiles
                    rec["through"], hop_tiles = _hop(model, gm, term, top_n, convs)
                    if hop_tiles is not None:
                        out[f"hop_tiles_{f}_{t}"] = hop_tiles
                terms.append(rec)
            expanded, stop = _expanded(ctx, layer.path, f)
            filters.append({"index": f, "kind": d.kind, "label": d.label, "activation": d.activation,
                            "selected": list(d.selected), "bias": rounded(d.bias, 6),
                            "bias_share": _finite(bias_share),
                            "check": _finite(float(np.abs(act - measured.unit).max())) if len(act) else None,
                            "terms": terms, "expanded": expanded, "expansion_stop": stop})
        out["meta"] = {"filters": filters}
        return out

    def report(self, ctx, artifacts, out):
        for path, art in artifacts.items():
            slug = ctx.layer(path).slug
            for rec in art["meta"]["filters"]:
                rec = dict(rec)
                f = rec.pop("index")
                terms = []
                for t, term in enumerate(rec["terms"]):
                    term = dict(term)
                    if term["source"]:
                        term["source"] = _link(out, dict(term["source"]))
                    if term["conv"]:
                        term["conv"] = _report_conv(out, term["conv"], art[f"tiles_{f}_{t}"],
                                                    f"layers/{slug}/img/f{f}_t{t}_kernels.png")
                    if term["through"] and term["through"]["conv"]:
                        term["through"] = term["through"] | {"conv": _report_conv(
                            out, term["through"]["conv"], art[f"hop_tiles_{f}_{t}"],
                            f"layers/{slug}/img/f{f}_t{t}_hop_kernels.png")}
                    terms.append(term)
                expanded = [e | {"channels": [dict(ch, source=_link(out, dict(ch["source"]))) for ch in e["channels"]]}
                            for e in rec["expanded"]] if rec["expanded"] is not None else None
                out.filter(path, f, rec | {"terms": terms, "expanded": expanded})


def _expanded(ctx, layer_path: str, f: int) -> tuple[list[dict] | None, str | None]:
    """`circuit.expand_through`: the filter's expanded weights on each source, its channels ranked by the L2
    of their expanded kernels → (records, None), or (None, why the expansion stopped); (None, None) when off."""
    s = ctx.spec.circuit
    if s.expand_through == "off":
        return None, None
    source = s.expand_from
    if source and source != "input":
        source = keras_aliases(ctx.model.module).get(source, (source, ""))[0]
    try:
        expansions = expanded_weights(ctx.model.module, layer_path, f, ctx.model.input_size, source, s.expand_through)
    except ExpansionStop as stop:
        return None, str(stop)
    out = []
    for e in expansions:
        weight = torch.from_numpy(e.kernel)[None]                         # (1, C_source, kh, kw)
        stats = kx.rank_input_channels(weight, 0, 1, s.top_n) if e.kernel.size else []
        channels = []
        for st in stats:
            rec = _kernel_record(st)
            del rec["contribution"], rec["contribution_rank"]
            rec["source"] = {"kind": "input" if e.source == "input" else "layer", "producer": None,
                             "channel": st.channel, "layer": e.source if e.source != "input" else None,
                             "path": list(e.layers)}
            channels.append(rec)
        out.append({"source": e.source, "kernel_size": list(e.kernel.shape[1:]), "offset": list(e.offset),
                    "crossed": list(e.crossed), "activation": e.activation,
                    "peak": rounded(max((float(np.abs(st.kernel).max()) for st in stats), default=1.0) or 1.0, 4),
                    "channels": channels})
    return out, None


def _graph(ctx):
    """The traced model with its nodes' shapes at the model's input size (cached per model)."""
    return shaped_trace(ctx.model.module, (1, ctx.model.channels, *ctx.model.input_size))


def _report_conv(out, conv: dict, tiles: np.ndarray, image: str) -> dict:
    conv = dict(conv)
    conv["channels"] = [dict(ch, sources=[_link(out, dict(s)) for s in ch["sources"]]) for ch in conv["channels"]]
    return conv | {"kernel_tiles": out.image(image, lambda t=tiles: _tile_grid(t)), "kernel_tiles_count": len(tiles)}


@dataclass
class _Read:
    measured: dict                # filter → terms.Measured at its top images
    conv_inputs: dict             # conv path → {dataset index: (Cin, H, W) input}


def _read_terms(ctx, gm, layer_path: str, decomps: dict, top: dict, batch: int = 64) -> _Read:
    """One pass of the traced model over the filters' top images: every term's value at the unit's position,
    the unit's own value, and each conv term's input (for the contributions of its input channels)."""
    unit_node = layer_node(gm, layer_path).name
    conv_input = {t.conv: conv_input_node(gm, t.conv) for d in decomps.values() for t in d.terms if t.kind == "conv"}
    needs_input = {c: {i for f, d in decomps.items() if any(t.conv == c for t in d.terms) for i, _ in top[f]}
                   for c in conv_input}
    wanted = {t.node for d in decomps.values() for t in d.terms} | set(conv_input.values()) | {unit_node}
    indices = sorted({i for f in top for i, _ in top[f]})
    rows: dict = {f: [None] * len(top[f]) for f in top}
    inputs: dict = {c: {} for c in conv_input}
    for s in range(0, len(indices), batch):
        chunk = indices[s:s + batch]
        values = {k: v.cpu() for k, v in capture(gm, ctx.batch(chunk), wanted).items()}
        where = {i: j for j, i in enumerate(chunk)}
        for f, d in decomps.items():
            for k, (i, pos) in enumerate(top[f]):
                if i in where:
                    one = {n: values[n][where[i]:where[i] + 1] for n in {t.node for t in d.terms} | {unit_node}}
                    rows[f][k] = measure(d, one, unit_node, [pos])
        for c, node in conv_input.items():
            inputs[c].update({i: values[node][where[i]] for i in chunk if i in needs_input[c]})
    measured = {f: Measured(np.concatenate([r.values for r in rs], axis=1), np.concatenate([r.pre for r in rs]),
                            np.concatenate([r.unit for r in rs])) for f, rs in rows.items()}
    return _Read(measured, inputs)


def _conv_circuit(gm, term, top_n: int, convs: dict, x: torch.Tensor | None, locs: torch.Tensor | None
                  ) -> tuple[dict, np.ndarray]:
    """The input channels of filter `term.channel` of `term.conv` (BN folded): ranked by L2, with their
    contributions at `locs` of inputs `x` when given. → (record without the tiles image, kernel tiles)."""
    key = (term.conv, term.bn)
    if key not in convs:
        conv = gm.get_submodule(term.conv)
        bn = gm.get_submodule(term.bn) if term.bn else None
        try:
            source = trace_source(gm, term.conv)
        except ModelError:
            source = None
        convs[key] = (conv, effective_weights(conv, bn)[0], source)
    conv, weight, source = convs[key]
    f = term.channel
    contrib = None
    if x is not None:
        contrib = kx.channel_contributions(weight, x, f, locs, conv.stride, conv.padding, conv.dilation,
                                           conv.groups).mean(0)
    stats = kx.rank_input_channels(weight, f, conv.groups, top_n, contributions=contrib)
    channels = []
    for s in stats:
        channels.append(_kernel_record(s) | {"sources": _sources(gm, source, s.channel)})
    _ids, tiles = kx.kernel_tiles(weight, f, conv.groups)
    per_group = conv.in_channels // conv.groups
    group = f // (conv.out_channels // conv.groups) if conv.groups > 1 else None
    return {"conv": term.conv, "filter": f, "bn_folded": term.bn is not None, "in_channels": per_group,
            "groups": conv.groups, "group": group,
            "group_channels": [group * per_group, (group + 1) * per_group - 1] if group is not None else None,
            "peak": rounded(max((float(np.abs(s.kernel).max()) for s in stats), default=1.0) or 1.0, 4),
            "source_kind": source.kind if source else "untraceable",
            "branches": _branches(gm, source, weight, f, conv.groups, stats),
            "source_path": list(source.path) if source else [], "totals": kx.kind_totals(stats),
            "agreement": _finite(kx.rank_agreement(weight, f, conv.groups, contrib)) if contrib is not None else None,
            "channels": channels}, np.round(np.clip(tiles, 0, 1) * 255).astype(np.uint8)


def _kernel_record(stat) -> dict:
    """A ranked input channel (`kernels.ChannelStat`) as report data."""
    rec = {k: (rounded(v) if isinstance(v, float) else v) for k, v in stat.as_record().items()}
    # 9 digits keep float32 weights exact: pages round them once, for the cell (never twice)
    return rec | {"kernel": [[rounded(v, 9) for v in row] for row in stat.kernel.tolist()]}


def _branches(gm, source, weight, f: int, groups: int, stats) -> list[dict]:
    """The branches of a concatenation the conv reads: where each starts, how many of its channels are listed,
    and its share of the filter's kernel L2 (a filter of a grouped conv sees only its group)."""
    if source is None or source.kind != "concat":
        return []
    kernels = weight[f].detach().double()
    l2 = kernels.reshape(len(kernels), -1).norm(dim=1).numpy()
    first_seen = f // (weight.shape[0] // groups) * weight.shape[1]
    total = float(l2.sum())
    out = []
    ends = list(source.offsets[1:]) + [None]
    for branch, start, end in zip(source.branches, source.offsets, ends):
        end = end if end is not None else start + (_branch_channels(gm, branch) or 0)
        lo, hi = max(start, first_seen), min(end, first_seen + len(l2))
        share = float(l2[lo - first_seen:hi - first_seen].sum()) / total if total > 0 and hi > lo else None
        name = min(branch.path, key=lambda p: p.count("."), default=None)    # the branch as a whole: `cat.a`
        out.append({"layer": name or branch.producer_type or branch.kind, "first": int(start),
                    "channels": int(end - start), "shown": sum(start <= s.channel < end for s in stats),
                    "l2_share": _finite(share)})
    return out


def _branch_channels(gm, branch) -> int | None:
    if branch.producer:
        module = gm.get_submodule(branch.producer)
        return getattr(module, "out_channels", getattr(module, "num_features", None))
    return None


def _hop(model, gm, term, top_n: int, convs: dict) -> tuple[dict | None, np.ndarray | None]:
    """For a depthwise conv term (one input channel per filter): the unit that makes that channel, with its
    own conv circuit (by L2 only) when that unit is a conv's output (through BN and an activation).
    → (record, its kernel tiles), (None, None) for any other conv."""
    conv = gm.get_submodule(term.conv)
    source = convs[(term.conv, term.bn)][2]
    if conv.groups == 1 or conv.in_channels != conv.groups or source is None:
        return None, None
    sources = source.channel_sources(term.channel // (conv.out_channels // conv.groups))
    leaf, channel = sources[0] if len(sources) == 1 else (None, 0)
    if leaf is None or leaf.kind != "layer" or not leaf.path:
        return None, None
    try:
        d = decompose(model, leaf.path[0], channel, gm)     # the module whose output the conv reads
    except ModelError:
        return None, None
    record = {"label": d.label, "layer": display_path(gm, leaf), "channel": channel, "conv": None}
    if d.kind != "conv":
        return record, None
    record["conv"], tiles = _conv_circuit(gm, d.terms[0], top_n, convs, None, None)
    return record, tiles


def _term_source(term, paths: dict) -> dict:
    """The unit a term reads, to link to its page when the report shows it (a skip from another block)."""
    return {"kind": term.kind, "producer": None, "channel": term.channel,
            "layer": term.module, "path": paths.get(term.node, [])}


def _finite(v):
    return None if v is None or not np.isfinite(v) else rounded(v, 4)


def _tile_grid(tiles: np.ndarray) -> np.ndarray:
    """(N, kh, kw) uint8 kernels → one grey grid image, tiles scaled up to about 12 px."""
    t = tiles[..., None]
    scale = max(1, 12 // t.shape[1])
    t = np.kron(t, np.ones((1, scale, scale, 1), np.uint8))
    return im.grid(t, int(np.ceil(np.sqrt(len(t)))), pad=1)


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


def expand_layers(model: nn.Module, gm, layers: list[Layer], top_n: int, shapes: dict) -> list[Layer]:
    """`circuit.expand`: add the layers (and channels) that feed each spec filter's top-N input channels.
    `gm`: the traced model (`shaped_trace`)."""
    extra: dict[str, set] = {}
    convs: dict = {}
    for layer in layers:
        for f in layer.filters:
            try:
                terms = decompose(model, layer.path, f, gm).terms
            except ModelError:
                break
            for term in terms:
                if term.kind == "layer" and term.module in shapes:    # a skip: the same channel of another layer
                    extra.setdefault(term.module, set()).add(term.channel)
                if term.kind != "conv":
                    continue
                if term.conv not in convs:
                    conv = gm.get_submodule(term.conv)
                    weight = effective_weights(conv, gm.get_submodule(term.bn) if term.bn else None)[0]
                    try:
                        convs[term.conv] = (conv, weight, trace_source(gm, term.conv))
                    except ModelError:
                        convs[term.conv] = None
                if convs[term.conv] is None:
                    continue
                conv, weight, source = convs[term.conv]
                for stat in kx.rank_input_channels(weight, term.channel, conv.groups, top_n):
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
        out.insert(0, Layer(name, path, conv, shape[0], shape, sorted(chans), slugify(name) + "-in", "none",
                                expanded=True))
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
