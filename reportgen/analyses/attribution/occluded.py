"""Model outputs for many occluded copies of a few images, by incremental inference (exact).

An occluder changes only the units whose receptive field it touches (Nakandala et al., "Incremental
and approximate inference for faster occlusion-based deep CNN explanations", SIGMOD 2019). Along
the model's leading chain of local layers (`incremental.py`), each layer is recomputed only on
the box of its output that the occluder reaches, from a crop of its input in which the clean
image's activations fill in everything the occluder did not change. The rest of the model runs
on the clean activation with the last box pasted in. Without a chain this is plain forwards.
Written here because no library we know implements it for arbitrary PyTorch models.

Layout: activations are kept channels-last (N, h, w, C), so a crop is one `index_select` of whole
channel rows and convolutions take their fast NHWC path.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse

from .incremental import Prefix, Step, fold_batchnorm, local_prefix

# A layer whose box covers more of its output than this runs on the whole output instead:
# cutting and pasting crops would then cost more than the computation it saves.
MAX_BOX_FRACTION = 0.8


@dataclass
class _Box:
    """Along one spatial dim, per window position: the changed span [lo, hi) of an activation,
    and the recomputed span [start, start + size) ⊇ it (one size for all positions, so crops batch)."""
    lo: np.ndarray
    hi: np.ndarray
    start: np.ndarray
    size: int


def _through(box: _Box, step: Step, dim: int, n_out: int) -> tuple[_Box, np.ndarray, int]:
    """The box of a local layer's output reached by `box` of its input, and the input crop that
    computes it: (box, crop start per position in unpadded input coordinates, crop size)."""
    k, s, p, d = step.kernel[dim], step.stride[dim], step.padding[dim], step.dilation[dim]
    ext = d * (k - 1)
    lo = np.maximum(-((ext - p - box.lo) // s), 0)          # first output whose window reaches lo
    hi = np.minimum((box.hi - 1 + p) // s + 1, n_out)       # one past the last one reaching hi - 1
    size = int(min(max((hi - lo).max(), 1), n_out))
    start = np.clip(lo, 0, n_out - size)
    return _Box(lo, hi, start, size), start * s - p, (size - 1) * s + ext + 1


def _nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


class _Canvas:
    """A clean activation (B, C, Hc, Wc), padded as its layer pads, from which crops are cut with a box
    of recomputed values pasted in. A crop is one `index_select` of whole channel rows from a buffer
    holding the rows of the chunk's images followed by the box's rows; the index depends only on the
    window positions, so it is built once per chunk of positions and reused for every image."""

    def __init__(self, t: torch.Tensor, top_left: tuple[int, int] = (0, 0)):
        self.shape, self.top_left = t.shape, top_left              # (B, C, Hc, Wc), padding before (0, 0)
        self.rows = _nhwc(t).reshape(-1, t.shape[1]).contiguous()  # (B·Hc·Wc, C)
        self.buffer = self.rows.new_empty(0, t.shape[1])

    def index(self, k: int, r0: torch.Tensor, c0: torch.Tensor, size: tuple[int, int],
              box: tuple[int, int] | None = None, a_r: torch.Tensor | None = None,
              a_c: torch.Tensor | None = None) -> torch.Tensor:
        """Buffer rows (k·n·h·w,) of the crops of size (h, w) at (r0[p], c0[p]) of k images, n positions,
        showing the rows of a box of size (R, S) at (a_r[p], a_c[p]); unpadded coordinates."""
        (h, w), (hc, wc), (top, left) = size, self.shape[2:], self.top_left
        y = r0[:, None] + torch.arange(h, device=r0.device)                                 # (n, h)
        xx = c0[:, None] + torch.arange(w, device=r0.device)                                # (n, w)
        at = ((y + top) * wc)[:, :, None] + (xx + left)[:, None, :]                         # (n, h, w)
        index = at + (torch.arange(k, device=r0.device) * (hc * wc)).view(k, 1, 1, 1)       # (k, n, h, w)
        if box is not None:
            (rr, ss), n = box, len(r0)
            br, bc = y - a_r[:, None], xx - a_c[:, None]                                    # rows, cols of box
            inside = ((br >= 0) & (br < rr))[:, :, None] & ((bc >= 0) & (bc < ss))[:, None, :]
            in_box = (br.clamp(0, rr - 1) * ss)[:, :, None] + bc.clamp(0, ss - 1)[:, None, :]
            first = k * hc * wc + torch.arange(k * n, device=r0.device).view(k, n, 1, 1) * (rr * ss)
            index = torch.where(inside, first + in_box, index)
        return index.flatten()

    def crop(self, b0: int, k: int, index: torch.Tensor, size: tuple[int, int],
             box: torch.Tensor | None = None) -> torch.Tensor:
        """(k·n, h, w, C) crops of images b0 .. b0+k-1 at the rows `index` from `self.index`, with `box`
        (k·n, R, S, C)."""
        c, per_image = self.shape[1], self.shape[2] * self.shape[3]
        images = self.rows[b0 * per_image:(b0 + k) * per_image]
        if box is None:
            source = images
        else:
            need = len(images) + box[..., 0].numel()
            if len(self.buffer) < need:
                self.buffer = self.rows.new_empty(need, c)
            self.buffer[:len(images)] = images
            self.buffer[len(images):need] = box.reshape(-1, c)
            source = self.buffer
        return source.index_select(0, index).view(-1, *size, c)


def _fused_channels_last(rest: nn.Module) -> nn.Module:
    """A copy of `rest` with each eval BatchNorm folded into the conv before it (torch.fx's `fuse`) and its
    weights channels-last, as the occluded activations are: about 25 % less time on the many occluded copies
    at 224 px (ResNet-18), equal up to float rounding. `rest` itself where fx cannot trace or fold it."""
    try:
        fused = fuse(rest)
    except Exception:  # untraceable forward, a BatchNorm in training mode or without running statistics
        return rest
    return fused.to(memory_format=torch.channels_last)


@dataclass
class _Stage:
    """A local layer and the pointwise layers after it, as run on crops and on the clean batch."""
    local: Step | None                        # None: pointwise layers before the first local one
    pointwise: list[Step]
    crops: tuple = ()                         # per dim: (crop start (P,), crop size)
    boxes: tuple = ()                         # per dim: (box start (P,), box size)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    canvas: _Canvas | None = None


class OccludedForward:
    """Model outputs for x with one window filled with a baseline, for batches of (image, window).

    x: (B, C, H, W); windows along rows span [rows[0][i], rows[1][i]), along columns likewise,
    all of one `size` (clipped at the border); baseline: (C,). `clean` holds the model's output
    on x (B, K); `target_probabilities` the class probabilities with each window occluded,
    equal to those of plain forwards of occluded images up to float rounding.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, rows: tuple[np.ndarray, np.ndarray],
                 cols: tuple[np.ndarray, np.ndarray], size: tuple[int, int], baseline: torch.Tensor):
        self.baseline = baseline.to(x)
        self.window = [torch.as_tensor(np.stack(w), device=x.device) for w in (rows, cols)]   # (2, P) per dim
        with torch.inference_mode():
            prefix, plain = local_prefix(model), Prefix([], model)
            if not self._plan(Prefix(fold_batchnorm(prefix.steps), prefix.rest), x, rows, cols, size):
                self._plan(plain, x, rows, cols, size)
            self.clean = self._clean_logits(x)                                                # (B, K)
            if not torch.allclose(self.clean, model(x), rtol=1e-4, atol=1e-5):
                # a trace (the chain's or the fused rest's) computes something else than the model (state
                # outside the graph): the model itself, as it is
                self._plan(plain, x, rows, cols, size, fold=False)
                self.clean = self._clean_logits(x)

    def _plan(self, prefix: Prefix, x: torch.Tensor, rows, cols, size, fold: bool = True) -> bool:
        """Boxes and crops of every local layer for every window; the chain is cut where boxes
        stop saving work, and the layers from there on run on whole activations (`fold`: BatchNorm folded, see
        `_fused_channels_last`). Returns whether any local layer runs on crops."""
        dev = x.device
        boxes = [_Box(lo, hi, np.minimum(lo, n - w), w) for (lo, hi), n, w in zip((rows, cols), x.shape[-2:], size)]
        self.first = tuple((torch.as_tensor(bx.start, device=dev), bx.size) for bx in boxes)
        self.stages, t, cut = [_Stage(None, [])], x[:1].clone(), len(prefix.steps)
        for i, step in enumerate(prefix.steps):
            n_in, t = t.shape[-2:], step.full_fn(t)
            if not step.local:
                self.stages[-1].pointwise.append(step)
                continue
            moved = [_through(bx, step, d, n) for d, (bx, n) in enumerate(zip(boxes, t.shape[-2:]))]
            if moved[0][0].size * moved[1][0].size > MAX_BOX_FRACTION * t.shape[-2] * t.shape[-1]:
                cut = i
                break
            boxes = [bx for bx, _, _ in moved]
            (_, g_r, l_r), (_, g_c, l_c) = moved
            (p_r, p_c), right = step.padding, [max(0, int(g.max()) + li - n) for g, li, n in ((g_r, l_r, n_in[0]),
                                                                                          (g_c, l_c, n_in[1]))]
            self.stages.append(_Stage(step, [], tuple((torch.as_tensor(g, device=dev), li)
                                                      for g, li in ((g_r, l_r), (g_c, l_c))),
                                      tuple((torch.as_tensor(bx.start, device=dev), bx.size) for bx in boxes),
                                      (p_c, right[1], p_r, right[0])))
        self.tail, self.rest = prefix.steps[cut:], _fused_channels_last(prefix.rest) if fold else prefix.rest
        return len(self.stages) > 1

    def _clean_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Run the chain on the clean batch, keeping each local layer's padded input as its canvas."""
        self.image = _Canvas(x)
        t = x.clone()                      # the chain may start with an in-place layer
        for stage in self.stages:
            if stage.local is not None:
                stage.canvas = _Canvas(F.pad(t, stage.pads, value=stage.local.pad_value), stage.local.padding)
                t = stage.local.full_fn(t)
            for step in stage.pointwise:
                t = step.full_fn(t)
        self.z = _Canvas(t)
        return self._finish(t.clone())

    def _finish(self, z: torch.Tensor) -> torch.Tensor:
        for step in self.tail:
            z = step.full_fn(z)
        if z.dim() == 4:   # a no-op for the crops' NHWC views
            z = z.contiguous(memory_format=torch.channels_last)
        return self.rest(z)

    @torch.inference_mode()
    def target_probabilities(self, target: torch.Tensor, batch_size: int) -> torch.Tensor:
        """softmax(model(x occluded))[target] for every image and window: (B, I, J).

        Chunks hold one image and up to `batch_size` windows, or, when there are fewer windows,
        as many images with all their windows as fit; crop indices are built once per chunk of
        windows and reused for every image."""
        (_, n_i), (_, n_j), n_b = self.window[0].shape, self.window[1].shape, self.z.shape[0]
        pos = torch.arange(n_i * n_j, device=target.device)
        if len(pos) > batch_size:          # equal chunks of windows, one image at a time
            per, k = -(-len(pos) // -(-len(pos) // batch_size)), 1
        else:
            per, k = len(pos), batch_size // len(pos)
        out = torch.empty(n_b, len(pos), device=target.device)
        for start in range(0, len(pos), per):
            p = pos[start:start + per]
            plan = None
            for b0 in range(0, n_b, k):
                kk = min(k, n_b - b0)
                if plan is None or plan[0] != kk:
                    plan = (kk, self._indices(kk, p // n_j, p % n_j))
                logits = self._logits(b0, kk, p // n_j, p % n_j, plan[1]).float()       # (kk·n, K)
                chosen = target[b0:b0 + kk].repeat_interleave(len(p))
                out[b0:b0 + kk, start:start + per] = logits.softmax(1).gather(1, chosen[:, None]).view(kk, -1)
        return out.view(n_b, n_i, n_j)

    def _indices(self, k: int, i: torch.Tensor, j: torch.Tensor) -> list[torch.Tensor]:
        """Crop indices of every canvas for k images at windows (i, j): the image, each local layer, z."""
        (a_r, h), (a_c, w) = self.first
        a_r, a_c = a_r[i], a_c[j]
        out = [self.image.index(k, a_r, a_c, (h, w))]
        for stage in self.stages[1:]:
            (g_r, l_r), (g_c, l_c) = stage.crops
            out.append(stage.canvas.index(k, g_r[i], g_c[j], (l_r, l_c), (h, w), a_r, a_c))
            ((a_r, h), (a_c, w)) = stage.boxes
            a_r, a_c = a_r[i], a_c[j]
        zeros = torch.zeros_like(a_r)
        out.append(self.z.index(k, zeros, zeros, tuple(self.z.shape[2:]), (h, w), a_r, a_c))
        return out

    def _logits(self, b0: int, k: int, i: torch.Tensor, j: torch.Tensor, index: list[torch.Tensor]) -> torch.Tensor:
        """(k·n, K) model outputs for images b0 .. b0+k-1, each occluded by windows (i[p], j[p])."""
        (a_r, h), (a_c, w) = self.first
        box = self.image.crop(b0, k, index[0], (h, w))                                    # (k·n, h, w, C)
        (lo_r, hi_r), (lo_c, hi_c) = self.window[0][:, i], self.window[1][:, j]
        y, xx = a_r[i][:, None] + torch.arange(h, device=i.device), a_c[j][:, None] + torch.arange(w, device=i.device)
        occluded = (((y >= lo_r[:, None]) & (y < hi_r[:, None]))[:, :, None]
                    & ((xx >= lo_c[:, None]) & (xx < hi_c[:, None]))[:, None, :])          # (n, h, w)
        box = torch.where(occluded.repeat(k, 1, 1)[..., None], self.baseline, box)
        for stage, idx in zip(self.stages, [None] + index[1:-1]):
            if stage.local is not None:
                region = stage.canvas.crop(b0, k, idx, (stage.crops[0][1], stage.crops[1][1]), box)
                box = _nhwc(stage.local.crop_fn(_nchw(region)))
            for step in stage.pointwise:
                box = _nhwc(step.crop_fn(_nchw(box)))
        return self._finish(_nchw(self.z.crop(b0, k, index[-1], tuple(self.z.shape[2:]), box)))
