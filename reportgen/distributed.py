"""Data-parallel builds under `torchrun`, on torch.distributed (gloo on CPU, nccl on GPUs).

Every rank records its shard of the dataset (whole batches, round-robin, so each batch is computed
exactly as in a single-process build), the partial evidence is all-gathered and merged exactly
(`Evidence.merge`: top-k candidates re-ranked by a total order, sums and histograms added), and work
lists (filters to synthesize, images to attribute) are split the same way. Every rank ends with the same
results; rank 0 alone writes the cache and the site.
"""

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import ReportgenError


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_batches(self, indices: np.ndarray, batch_size: int) -> np.ndarray:
        """This rank's images: batches rank, rank + world, … of the single-process batch order."""
        if self.world == 1:
            return indices
        starts = range(self.rank * batch_size, len(indices), self.world * batch_size)
        parts = [indices[s:s + batch_size] for s in starts]
        return np.concatenate(parts) if parts else indices[:0]

    def shard_list(self, items: list, chunk: int) -> list:
        """This rank's chunks (of `chunk` items, round-robin) of a work list."""
        if self.world == 1:
            return list(items)
        return [x for s in range(self.rank * chunk, len(items), self.world * chunk) for x in items[s:s + chunk]]

    def all_gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (a single-element list when not distributed)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        try:
            dist.all_gather_object(out, obj)
        except (RuntimeError, dist.DistBackendError) as exc:
            raise ReportgenError(f"rank {self.rank}: another rank stopped or failed ({str(exc).splitlines()[0]}); "
                                 "the previous site is unchanged") from None
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


SINGLE = Group()


def init_from_env(device: str) -> Group:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else a single group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Group(dist.get_rank(), dist.get_world_size())


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
