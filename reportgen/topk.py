"""Streaming per-filter top-k with a total order, so shard results merge exactly.

Candidates are ordered by score (descending), ties broken by dataset index (ascending):
the same k images win whatever the batch or shard boundaries were.
"""

import numpy as np


def merge_topk(scores: np.ndarray, index: np.ndarray, extra: np.ndarray, k: int,
               largest: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the best `k` rows of each column.

    scores, index, extra: (M, C) candidates per filter (index = dataset index, extra = e.g. argmax location).
    Returns (k', C) arrays, k' = min(k, M), best first.
    """
    key = -scores if largest else scores
    order = np.lexsort((index, key), axis=0)[:k]
    take = lambda a: np.take_along_axis(a, order, axis=0)  # noqa: E731
    return take(scores), take(index), take(extra)


class StreamingTopK:
    """Top-k (and optionally bottom-k) images per filter over a stream of batches."""

    def __init__(self, k: int, channels: int, largest: bool = True):
        self.k, self.largest = k, largest
        self.scores = np.empty((0, channels), np.float32)
        self.index = np.empty((0, channels), np.int64)
        self.loc = np.empty((0, channels), np.int64)

    def update(self, scores: np.ndarray, index: np.ndarray, loc: np.ndarray) -> None:
        """scores, loc: (B, C); index: (B,) dataset indices of the batch."""
        index = np.broadcast_to(index[:, None], scores.shape)
        self.scores, self.index, self.loc = merge_topk(
            np.concatenate([self.scores, scores]), np.concatenate([self.index, index]),
            np.concatenate([self.loc, loc]), self.k, self.largest)

    def merge(self, other: "StreamingTopK") -> None:
        self.scores, self.index, self.loc = merge_topk(
            np.concatenate([self.scores, other.scores]), np.concatenate([self.index, other.index]),
            np.concatenate([self.loc, other.loc]), self.k, self.largest)
