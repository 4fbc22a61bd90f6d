"""The one pass over the dataset: forward hooks on every spec layer record each filter's evidence.

For every layer and filter, streamed batch by batch in bounded memory:
top-k (and bottom-k) images by the spatial max of the filter's map, with the argmax location;
per-class sums of the spatial mean; a histogram of spatial maxima on fixed log-spaced bins;
pooled (global-average) features of a seeded subset; all channel maps of the sample images.
Plus the model's predictions. Results from disjoint shards merge exactly (`Evidence.merge`).
"""

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .topk import StreamingTopK
from .data import Dataset, TorchView, collate
from .hooks import removing

# Histogram bin edges shared by every layer, so shards and layers merge without a first pass:
# 0, ±10^-3 … ±10^4 at 16 bins per decade (ReLU outputs fill the zero bin and the positive side).
_POS = np.logspace(-3, 4, 7 * 16 + 1)
HIST_EDGES = np.concatenate([-_POS[::-1], [0.0], _POS]).astype(np.float64)
PENULTIMATE = "(penultimate)"   # key of the final Linear layer's input features


@dataclass
class LayerEvidence:
    top: StreamingTopK
    bottom: StreamingTopK | None
    class_sum: np.ndarray        # (num_classes, C) float64: sums of per-image spatial means
    class_count: np.ndarray      # (num_classes,) int64
    hist: np.ndarray             # (C, len(HIST_EDGES) + 1) int64
    pooled_index: list = field(default_factory=list)   # dataset indices of pooled rows
    pooled: list = field(default_factory=list)         # (C,) float32 rows
    sample_maps: dict = field(default_factory=dict)    # dataset index -> (C, H, W) float16

    @classmethod
    def empty(cls, channels: int, num_classes: int, k: int, negatives: bool) -> "LayerEvidence":
        return cls(StreamingTopK(k, channels), StreamingTopK(k, channels, largest=False) if negatives else None,
                   np.zeros((num_classes, channels)), np.zeros(num_classes, np.int64),
                   np.zeros((channels, len(HIST_EDGES) + 1), np.int64))

    def merge(self, other: "LayerEvidence") -> None:
        self.top.merge(other.top)
        if self.bottom is not None:
            self.bottom.merge(other.bottom)
        self.class_sum += other.class_sum
        self.class_count += other.class_count
        self.hist += other.hist
        self.pooled_index += other.pooled_index
        self.pooled += other.pooled
        self.sample_maps.update(other.sample_maps)

    def class_means(self) -> np.ndarray:
        """(num_classes, C) mean over each class's images of the spatial-mean activation (NaN if no image)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.class_sum / self.class_count[:, None]

    def pooled_array(self) -> tuple[np.ndarray, np.ndarray]:
        """(P,) dataset indices sorted, (P, C) pooled features."""
        order = np.argsort(self.pooled_index)
        idx = np.asarray(self.pooled_index, np.int64)[order]
        feats = np.stack(self.pooled)[order] if self.pooled else np.zeros((0, self.hist.shape[0]), np.float32)
        return idx, feats


@dataclass
class Evidence:
    layers: dict[str, LayerEvidence]
    pred_index: np.ndarray       # (N,) dataset indices seen
    preds: np.ndarray            # (N,) predicted class
    top5: np.ndarray             # (N, min(5, outputs)) the most probable classes, most probable first
    sample_probs: dict           # dataset index -> (num_outputs,) float32 softmax
    skipped: list                # [(dataset index, message)] unreadable images

    def merge(self, other: "Evidence") -> None:
        for name, ev in self.layers.items():
            ev.merge(other.layers[name])
        idx = np.concatenate([self.pred_index, other.pred_index])
        order = np.argsort(idx, kind="stable")
        self.pred_index, self.preds = idx[order], np.concatenate([self.preds, other.preds])[order]
        self.top5 = np.concatenate([self.top5, other.top5])[order]
        self.sample_probs.update(other.sample_probs)
        self.skipped = sorted(self.skipped + other.skipped)


@contextlib.contextmanager
def recording_hooks(model: nn.Module, paths: list[str], on_output):
    """Forward hooks calling `on_output(path, tensor)` (and the final Linear's input as PENULTIMATE).

    The callback runs inside the hook, before any in-place op after the layer can change the tensor.
    Hooks are removed on exit, also on error.
    """
    modules = dict(model.named_modules())
    with removing() as stack:
        for p in paths:
            stack.callback(modules[p].register_forward_hook(lambda _m, _i, out, p=p: on_output(p, out)).remove)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if linears:
            last = linears[-1].register_forward_pre_hook(lambda _m, inp: on_output(PENULTIMATE, inp[0]))
            stack.callback(last.remove)
        yield


@dataclass
class RecordPlan:
    """What one pass records: the layers {path: channels} and, per filter, top-k (and bottom-k) images,
    the pooled features of the `pooled` images and every map of the `samples` images."""
    layers: dict[str, int]
    num_classes: int
    k: int = 9
    negatives: bool = False
    pooled: set = field(default_factory=set)     # dataset indices whose pooled features are kept
    samples: set = field(default_factory=set)    # dataset indices whose maps are kept
    batch_size: int = 64
    workers: int = 0
    device: str = "cpu"
    raise_errors: bool = False                   # an unreadable image stops the pass instead of being skipped


def record(model: nn.Module, normalize, dataset: Dataset, indices: np.ndarray, plan: RecordPlan,
           progress=True) -> Evidence:
    """One forward pass over `indices` (dataset indices), recording `plan`'s evidence.

    progress: show a bar (True/False), or a tqdm bar to advance (one bar across a pass recorded in shards)."""
    layers, num_classes, k, negatives = plan.layers, plan.num_classes, plan.k, plan.negatives
    pooled, samples, device = plan.pooled, plan.samples, plan.device
    pooled_arr, samples_arr = np.array(sorted(pooled), np.int64), np.array(sorted(samples), np.int64)
    ev = {p: LayerEvidence.empty(c, num_classes, k, negatives) for p, c in layers.items()}
    pen_dims = [m.in_features for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    if pen_dims:
        ev[PENULTIMATE] = LayerEvidence.empty(pen_dims[0], num_classes, 1, False)
    labels_all = torch.from_numpy(dataset.labels)
    state: dict = {}

    def on_output(path, out):
        if not isinstance(out, torch.Tensor) or path not in ev:
            return
        e, idx, lab = ev[path], state["idx"], state["labels"]
        flat = out.detach().float().flatten(2) if out.dim() == 4 else out.detach().float().unsqueeze(2)  # (B, C, HW)
        mx, loc = flat.max(2)
        mean = flat.mean(2)
        mx_np, loc_np = mx.cpu().numpy(), loc.cpu().numpy()
        if path != PENULTIMATE:
            e.top.update(mx_np, idx, loc_np)
            if e.bottom is not None:
                e.bottom.update(mx_np, idx, loc_np)
            sums = torch.zeros(e.class_sum.shape, dtype=torch.float64)
            e.class_sum += sums.index_add_(0, lab, mean.cpu().double()).numpy()
            bins = torch.bucketize(mx, torch.as_tensor(HIST_EDGES, dtype=mx.dtype, device=mx.device))  # (B, C)
            counts = torch.zeros(e.hist.shape, dtype=torch.int64, device=mx.device)
            counts.scatter_add_(1, bins.T.contiguous(), torch.ones_like(bins.T, dtype=torch.int64))
            e.hist += counts.cpu().numpy()
        keep = np.isin(idx, pooled_arr)
        if keep.any():
            e.pooled_index += idx[keep].tolist()
            e.pooled += list(mean[torch.from_numpy(keep).to(mean.device)].cpu().numpy().astype(np.float32))
        if out.dim() == 4 and path != PENULTIMATE:
            for row in np.nonzero(np.isin(idx, samples_arr))[0]:
                e.sample_maps[int(idx[row])] = out[row].detach().float().cpu().numpy().astype(np.float16)

    for e in ev.values():
        e.class_count = np.bincount(dataset.labels[indices], minlength=num_classes)[:num_classes].astype(np.int64)
    loader = torch.utils.data.DataLoader(TorchView(dataset, indices, plan.raise_errors), batch_size=plan.batch_size,
                                         num_workers=plan.workers, collate_fn=collate,
                                         pin_memory=device.startswith("cuda"))
    pred_index, preds, top5, probs, skipped = [], [], [], {}, []
    bar_of_caller = hasattr(progress, "update")
    with (contextlib.nullcontext(progress) if bar_of_caller else
          tqdm(total=len(indices), unit="img", desc="dataset pass", disable=not progress, leave=False)) as bar, \
            recording_hooks(model, list(layers), on_output), torch.inference_mode():
        for idx_t, imgs, bad in loader:
            skipped += bad
            if bad:  # unreadable images are not counted in class means
                for e in ev.values():
                    for i, _msg in bad:
                        e.class_count[dataset.labels[i]] -= 1
            if len(idx_t):
                state["idx"], state["labels"] = idx_t.numpy(), labels_all[idx_t]
                logits = model(normalize(imgs.to(device, non_blocking=True)))
                p = logits.float().softmax(1).cpu()
                pred_index.append(idx_t.numpy())
                preds.append(p.argmax(1).numpy())
                top5.append(p.topk(min(5, p.shape[1]), 1).indices.numpy())   # for top-5 accuracy
                for row, i in enumerate(idx_t.tolist()):
                    if i in samples:
                        probs[i] = p[row].numpy()
            bar.update(len(idx_t) + len(bad))
    pen = ev.pop(PENULTIMATE, None)
    evidence = Evidence(ev, np.concatenate(pred_index) if pred_index else np.zeros(0, np.int64),
                        np.concatenate(preds) if preds else np.zeros(0, np.int64),
                        np.concatenate(top5) if top5 else np.zeros((0, 5), np.int64), probs, sorted(skipped))
    if pen is not None:
        evidence.layers[PENULTIMATE] = pen
    return evidence


def layer_to_arrays(e: LayerEvidence) -> dict:
    """Plain arrays for the cache (see `layer_from_arrays`)."""
    idx, feats = e.pooled_array()
    sample_idx = np.array(sorted(e.sample_maps), np.int64)
    out = {"top_scores": e.top.scores, "top_index": e.top.index, "top_loc": e.top.loc,
           "class_sum": e.class_sum, "class_count": e.class_count, "hist": e.hist,
           "pooled_index": idx, "pooled": feats, "sample_index": sample_idx,
           "sample_maps": np.stack([e.sample_maps[i] for i in sample_idx]) if len(sample_idx) else np.zeros(0)}
    if e.bottom is not None:
        out.update(bottom_scores=e.bottom.scores, bottom_index=e.bottom.index, bottom_loc=e.bottom.loc)
    return out


def layer_from_arrays(d: dict) -> LayerEvidence:
    channels = d["hist"].shape[0]
    top = StreamingTopK(len(d["top_scores"]), channels)
    top.scores, top.index, top.loc = d["top_scores"], d["top_index"], d["top_loc"]
    bottom = None
    if "bottom_scores" in d:
        bottom = StreamingTopK(len(d["bottom_scores"]), channels, largest=False)
        bottom.scores, bottom.index, bottom.loc = d["bottom_scores"], d["bottom_index"], d["bottom_loc"]
    return LayerEvidence(top, bottom, d["class_sum"], d["class_count"], d["hist"],
                         list(d["pooled_index"]), list(d["pooled"]),
                         {int(i): m for i, m in zip(d["sample_index"], d["sample_maps"])})
