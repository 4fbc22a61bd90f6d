"""Circuits: how a conv filter is built from its input channels.

For one filter of a conv layer: its input channels ranked by the L2 norm of their kernels and
classified as excitatory / inhibitory (by the count of positive vs negative weights, as the lab did,
and by the sign of the weight sum); the data-driven contribution of each input channel to the filter's
pre-activation at its top images' argmax; the rank agreement of the two; and the weight pictures
(first-layer filters as images, kernels as tiles). The conv and its BatchNorm come from
`reportgen.graph.find_conv`, where its input channels come from `reportgen.graph.trace_source`.

Weights are the effective ones (BatchNorm right after the conv folded in, `effective_weights`), so
everything here is about the layer's pre-activation. Pure computation: tensors and arrays in, out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from reportgen.graph import conv_windows
from reportgen.hooks import run_until

__all__ = [
    "ChannelStat", "capture_inputs", "channel_contributions", "first_layer_filters",
    "kernel_tiles", "kind_totals", "rank_agreement", "rank_input_channels", "spearman",
]

KINDS = ("excitatory", "inhibitory", "balanced")
RULE_COUNT = "more positive than negative weights: excitatory; more negative: inhibitory; as many: balanced"
RULE_SUM = "weight sum > 0: excitatory; < 0: inhibitory; |sum| < 1e-5: balanced"


@dataclass(frozen=True, eq=False)  # eq would compare the kernel arrays
class ChannelStat:
    """One input channel of a filter: `channel` in the conv's full input numbering, `kernel` (kh, kw)."""

    rank: int  # 1-based, by L2
    channel: int
    l2: float
    sum: float
    n_pos: int
    n_neg: int
    kind_count: str  # one of KINDS, by RULE_COUNT
    kind_sum: str  # one of KINDS, by RULE_SUM
    kernel: np.ndarray
    contribution: float | None = None  # mean contribution over the top images, when given
    contribution_rank: int | None = None  # 1-based, by |contribution| among the filter's channels

    def as_record(self) -> dict:
        """The JSON-ready fields of report.json's `circuit[]` entry (the caller adds `source`)."""
        keys = ("rank", "channel", "l2", "sum", "n_pos", "n_neg", "kind_count", "kind_sum",
                "contribution", "contribution_rank")
        return {key: getattr(self, key) for key in keys}


def _group(weight: torch.Tensor, filter: int, groups: int) -> tuple[np.ndarray, int]:
    """(kernels (Cin/groups, kh, kw) float64, first input channel of the filter's group)."""
    cout, cin_group = weight.shape[:2]
    if not 0 <= filter < cout:
        raise IndexError(f"filter {filter} is outside the {cout} filters of the conv")
    return weight[filter].detach().cpu().double().numpy(), filter // (cout // groups) * cin_group


def _numpy(values) -> np.ndarray:
    return torch.as_tensor(values).detach().cpu().double().numpy()


def _kind(positive: float, negative: float) -> str:
    return KINDS[0] if positive > negative else KINDS[1] if negative > positive else KINDS[2]


def rank_input_channels(weight: torch.Tensor, filter: int, groups: int = 1, top_n: int | None = 10,
                        eps: float = 1e-5, contributions=None) -> list[ChannelStat]:
    """The filter's input channels by decreasing L2 norm of their kernels, the `top_n` first (all when
    None), leaving out near-zero kernels (L2 < eps) as the lab did.

    weight: (Cout, Cin/groups, kh, kw) effective weights; a filter sees only its group's channels.
    contributions: optional (Cin/groups,) mean contributions (`channel_contributions(...).mean(0)`).
    """
    kernels, first = _group(weight, filter, groups)
    flat = kernels.reshape(len(kernels), -1)
    l2, sums = np.sqrt((flat ** 2).sum(1)), flat.sum(1)
    order = [int(j) for j in np.argsort(-l2, kind="stable") if l2[j] >= eps][:top_n]
    by_contribution = {}
    if contributions is not None:
        contributions = _numpy(contributions)
        magnitude = np.abs(contributions)
        by_contribution = {int(j): rank for rank, j in enumerate(np.argsort(-magnitude, kind="stable"), 1)}
    stats = []
    for rank, j in enumerate(order, 1):
        n_pos, n_neg = int((flat[j] > 0).sum()), int((flat[j] < 0).sum())
        kind_sum = KINDS[2] if abs(sums[j]) < eps else KINDS[0] if sums[j] > 0 else KINDS[1]
        stats.append(ChannelStat(
            rank, first + j, float(l2[j]), float(sums[j]), n_pos, n_neg, _kind(n_pos, n_neg), kind_sum,
            kernels[j], None if contributions is None else float(contributions[j]), by_contribution.get(j)))
    return stats


def kind_totals(stats: list[ChannelStat]) -> dict[str, dict[str, int]]:
    """{"count": {kind: n}, "sum": {kind: n}}: how many of `stats` each rule puts in each kind."""
    return {rule: {kind: sum(getattr(s, f"kind_{rule}") == kind for s in stats) for kind in KINDS}
            for rule in ("count", "sum")}


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (average ranks for ties); nan when
    either is constant or shorter than 2."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    import scipy.stats   # here, not at import: 0.5 s a rebuild that computes nothing does not need

    return float(scipy.stats.spearmanr(a, b).statistic)


def rank_agreement(weight: torch.Tensor, filter: int, groups: int, contributions, eps: float = 1e-5) -> float:
    """Spearman correlation between the L2 norm and the |mean contribution| of the filter's input
    channels (near-zero kernels left out): how well the weights alone predict what the data uses."""
    kernels, _ = _group(weight, filter, groups)
    l2 = np.sqrt((kernels.reshape(len(kernels), -1) ** 2).sum(1))
    keep = l2 >= eps
    return spearman(l2[keep], np.abs(_numpy(contributions))[keep])


def channel_contributions(weight: torch.Tensor, inputs: torch.Tensor, filter: int, locations: torch.Tensor,
                          stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """(B, Cin/groups) float64: contribution of each of the filter's input channels to its
    pre-activation at `locations`, i.e. the channel's kernel times its input window, summed.

    weight: (Cout, Cin/groups, kh, kw); inputs: (B, Cin, H, W), the conv's input; locations: (B, 2)
    output (y, x) per image; stride/padding/dilation/groups as nn.Conv2d takes them ('same' too).
    Then contributions.sum(1) + bias[filter] == conv2d(inputs, weight, bias)[b, filter, y, x].
    """
    kernels, first = _group(weight, filter, groups)
    windows = conv_windows(kernels.shape[1:], stride, padding, dilation)
    x = inputs[:, first:first + len(kernels)].detach().double()  # (B, Cg, H, W)
    locations = torch.as_tensor(locations, dtype=torch.long, device=x.device).reshape(-1, 2)
    taps, inside = [], []
    for axis, win in enumerate(windows):
        n, reach = x.shape[2 + axis], win.dilation * (win.kernel - 1)
        end_pad = reach - win.pad if padding == "same" else win.pad  # 'same' may pad one more at the end
        size = (n + win.pad + end_pad - reach - 1) // win.stride + 1
        if not ((0 <= locations[:, axis]) & (locations[:, axis] < size)).all():
            raise IndexError(f"locations {locations.tolist()} fall outside the conv output of size {size}")
        t = locations[:, axis, None] * win.stride - win.pad + torch.arange(win.kernel, device=x.device) * win.dilation
        taps.append(t.clamp(0, n - 1))  # (B, k) input index per tap
        inside.append((t >= 0) & (t < n))  # taps on the zero padding count nothing
    rows, cols = taps[0][:, None, :, None], taps[1][:, None, None, :]
    batch = torch.arange(len(x), device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    window = x[batch, channel, rows, cols] * (inside[0][:, None, :, None] & inside[1][:, None, None, :])
    return (window * torch.from_numpy(kernels).to(x.device)).sum((2, 3))  # (B, Cg)


def capture_inputs(model: nn.Module, conv_path: str, x: torch.Tensor) -> torch.Tensor:
    """The input (B, Cin, H, W) of module `conv_path` (its first call) when `model` runs on `x` (B, C, H, W).
    The forward stops there; no hook is left on the model, even when the forward raises."""
    with torch.no_grad():
        return run_until(model, conv_path, x, before=True)


def first_layer_filters(weight: torch.Tensor) -> np.ndarray:
    """(Cout, kh, kw, Cin) images of the filters of (Cout, Cin, kh, kw) `weight`, each min-max scaled
    to [0, 1] on its own (a constant filter is 0.5 grey)."""
    w = weight.detach().cpu().double().numpy().transpose(0, 2, 3, 1)
    low = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - low
    return np.where(span > 0, (w - low) / np.where(span > 0, span, 1), 0.5)


def kernel_tiles(weight: torch.Tensor, filter: int, groups: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(channels (Cg,), tiles (Cg, kh, kw) in [0, 1]) of the filter's kernels by decreasing L2 norm,
    all on one scale so tiles compare: 0.5 is a zero weight, 0 and 1 the filter's largest |weight|."""
    kernels, first = _group(weight, filter, groups)
    order = np.argsort(-np.sqrt((kernels.reshape(len(kernels), -1) ** 2).sum(1)), kind="stable")
    top = np.abs(kernels).max()
    return first + order, 0.5 + kernels[order] / (2 * top if top > 0 else 1)
