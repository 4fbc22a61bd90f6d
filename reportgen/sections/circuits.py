"""The circuit section of conv filter pages: input channels by kernel L2, their kinds, where each comes
from, and their data-driven contribution at the filter's top images; plus the first layer's filters.
"""

import numpy as np
import torch
from torch import nn

from ..analyses import kernels as cx
from ..errors import ModelError
from ..graph import find_conv, trace_source
from ..layers import Layer, keras_aliases, slugify
from ..render import images as im

_SKIP_FOR_DISPLAY = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*[int(v) for v in rgb])


def _cell(v: float, peak: float) -> dict:
    """A kernel cell: diverging colour on one shared scale, text colour by luminance (WCAG contrast ≥ 4.5)."""
    rgb = im.colorize(np.array(0.5 + 0.5 * v / peak), "diverging")
    lin = [(c / 255 / 12.92) if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    luminance = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return {"text": f"{v:.2g}" if abs(v) >= 1e-3 else f"{v:.0e}", "bg": _hex(rgb), "dark": bool(luminance < 0.179)}


def display_path(model: nn.Module, source) -> str | None:
    """The module to show for a traced channel: the nearest on its path that is not pooling/dropout
    (VGG's block3_conv1 reads block2_pool; its channels are block2_conv2's ReLU outputs)."""
    modules = dict(model.named_modules())
    for path in source.path:
        if not isinstance(modules.get(path), _SKIP_FOR_DISPLAY):
            return path
    return source.path[0] if source.path else None


def expand_layers(model: nn.Module, layers: list[Layer], top_n: int, shapes: dict) -> list[Layer]:
    """`circuit.expand`: add the layers (and channels) that feed each spec filter's top-N input channels."""
    extra: dict[str, set] = {}
    for layer in layers:
        try:
            conv_path, conv, bn = find_conv(model, layer.path)
            source = trace_source(model, conv_path)
        except ModelError:
            continue
        weight, _ = cx.effective_weights(conv, bn)
        for f in layer.filters:
            for stat in cx.rank_input_channels(weight, f, conv.groups, top_n):
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
        conv = None
        try:
            conv = find_conv(model, path)[0]
        except ModelError:
            pass
        name = aliases.get(path, path)
        out.insert(0, Layer(name, path, conv, shape[0], shape, sorted(chans), slugify(name) + "-in", "none"))
    return out


class CircuitSection:
    """Computes and lays out circuits for every conv layer of the report."""

    def __init__(self, job, evidence, pages, top_n: int):
        self.job, self.ev, self.pages, self.top_n = job, evidence, pages, top_n
        self.model = job.model.module

    def first_layer_filters(self) -> str | None:
        conv = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is None or conv.in_channels not in (1, 3):
            return None
        tiles = cx.first_layer_filters(conv.weight.detach().cpu())          # (Cout, kh, kw, Cin) in [0, 1]
        tiles = np.round(tiles * 255).astype(np.uint8)
        tiles = np.kron(tiles, np.ones((1, 4, 4, 1), np.uint8)) if tiles.shape[1] < 8 else tiles  # visible size
        cols = int(np.ceil(np.sqrt(len(tiles))))
        return self.pages.w.image("img/first_layer_filters.png", im.grid(tiles, cols, pad=2))

    def attach(self, layers, layer_sections: list[dict]) -> None:
        """Give every filter section its `circuit` (channel records) and `circuit_info`, or `circuit_absent`."""
        for layer, section in zip(layers, layer_sections):
            result = self.for_layer(layer, layer_sections)
            for f in section["filters"]:
                if isinstance(result, str):
                    f["circuit_absent"] = result
                else:
                    f["circuit_info"] = result[f["index"]]
                    f["circuit"] = f["circuit_info"].pop("channels")

    def for_layer(self, layer, report_layers: list[dict]) -> dict[int, dict] | str:
        """{filter: section} or the reason the section is absent."""
        try:
            conv_path, conv, bn = find_conv(self.model, layer.path)
        except ModelError as exc:
            return f"No circuit: {exc}."
        weight, _bias = cx.effective_weights(conv, bn)
        try:
            source = trace_source(self.model, conv_path)
        except ModelError:
            source = None
        e = self.ev.layers[layer.path]
        width = layer.output_shape[2]
        inputs = self._conv_inputs(conv_path, sorted(set(e.top.index[:, layer.filters].ravel().tolist())))
        out = {}
        for f in layer.filters:
            x = torch.stack([inputs[int(i)] for i in e.top.index[:, f]])          # (k, Cin, H, W)
            locs = torch.tensor([divmod(int(l), width) for l in e.top.loc[:, f]])
            contrib = cx.channel_contributions(weight, x, f, locs, conv.stride, conv.padding, conv.dilation,
                                               conv.groups).mean(0)
            stats = cx.rank_input_channels(weight, f, conv.groups, self.top_n, contributions=contrib)
            out[f] = self._layout(layer, f, conv_path, conv, bn, weight, stats, source, contrib, report_layers)
        return out

    def _conv_inputs(self, conv_path: str, indices: list[int], batch: int = 128) -> dict:
        """The conv's input for each dataset image, computed once per layer for all its filters' top images."""
        out = {}
        model = self.model
        device = next(model.parameters()).device
        for s in range(0, len(indices), batch):
            chunk = indices[s:s + batch]
            with torch.no_grad():
                got = cx.capture_inputs(model, conv_path, self.job.batch(chunk).to(device)).cpu()
            out.update(zip(chunk, got))
        return out

    def _layout(self, layer, f, conv_path, conv, bn, weight, stats, source, contrib, report_layers) -> dict:
        peak = max((float(np.abs(s.kernel).max()) for s in stats), default=1.0) or 1.0
        channels = []
        for s in stats:
            rec = {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in s.as_record().items()}
            rows = [[_cell(v, peak) for v in row] for row in s.kernel.tolist()]
            rec["kernel"] = rows
            rec["sources"] = self._source(source, s.channel, report_layers)   # several for a residual sum
            rec["source"] = rec["sources"][0] if rec["sources"] else None
            channels.append(rec)
        ch_ids, tiles = cx.kernel_tiles(weight, f, conv.groups)
        tiles_u8 = np.round(np.clip(tiles, 0, 1) * 255).astype(np.uint8)[..., None]   # (N, kh, kw, 1)
        scale = max(1, 12 // tiles_u8.shape[1])
        tiles_u8 = np.kron(tiles_u8, np.ones((1, scale, scale, 1), np.uint8))
        cols = int(np.ceil(np.sqrt(len(tiles_u8))))
        tiles_img = self.pages.w.image(f"layers/{layer.slug}/img/f{f}_kernels.png", im.grid(tiles_u8, cols, pad=1))
        return {"conv": conv_path, "bn_folded": bn is not None, "peak": float(f"{peak:.4g}"),
                "channels": channels, "totals": cx.kind_totals(stats), "rule_count": cx.RULE_COUNT,
                "rule_sum": cx.RULE_SUM, "agreement": _round(cx.rank_agreement(weight, f, conv.groups, contrib)),
                "source_kind": source.kind if source else "untraceable",
                "source_note": self._source_note(source), "kernel_tiles": tiles_img,
                "kernel_tiles_count": len(ch_ids), "in_channels": conv.in_channels // conv.groups,
                "groups": conv.groups}

    def _source(self, source, channel: int, report_layers) -> list[dict]:
        if source is None:
            return []
        out = []
        for leaf, ch in source.channel_sources(channel):
            if leaf.kind != "layer":
                out.append({"layer": None, "channel": ch, "page": None, "kind": leaf.kind, "image": None,
                            "patches": [], "what": "image channel" if leaf.kind == "input" else leaf.producer_type})
                continue
            entry = {"layer": display_path(self.model, leaf), "channel": ch, "page": None, "kind": "layer",
                     "what": leaf.producer_type, "image": None, "patches": []}
            for rl in report_layers:
                if rl["path"] in leaf.path:
                    f = next((x for x in rl["filters"] if x["index"] == ch), None)
                    if f:
                        entry.update(layer=rl["name"], page=f["page"],
                                     image=(f.get("feature_vis") or {}).get("image"),
                                     patches=[p["patch"] for p in f["top_patches"][:4]])
                        break
            out.append(entry)
        return out

    @staticmethod
    def _source_note(source) -> str:
        if source is None:
            return "The model could not be traced with torch.fx, so input channels are not linked to a producer."
        if source.kind == "layer":
            return f"Input channel c is channel c of {source.path[-1]} (through {', '.join(source.path[:-1]) or 'nothing'})."
        if source.kind == "sum":
            return (f"The input is a sum of {len(source.branches)} branches (a residual connection): each channel "
                    "is listed with every branch it comes from.")
        if source.kind == "input":
            return "The input is the image itself: channels are colour channels."
        if source.kind == "concat":
            return "The input concatenates several layers' channels."
        return f"The input comes from a {source.producer_type} that mixes channels."


def _round(v):
    return None if v is None or not np.isfinite(v) else float(f"{v:.4g}")
