"""Data-parallel builds under `torchrun`, on torch.distributed (gloo on CPU, nccl on GPUs).

The dataset pass is cut into fixed shards (`fixed_shards`: SHARD_BATCHES whole batches each, set by the
batch size and never by the world size); each rank records the missing shards assigned to it round-robin,
caches each one as soon as it is done, and the shards are all-gathered and merged in shard order. Work lists
(filters to synthesize, images to attribute) are split in whole chunks the same way (`shard_list`). Every
rank ends with the same results; rank 0 alone writes the site.

Same bytes for any number of processes and threads: every result is computed per fixed unit (a shard of
whole batches, a chunk of filters with per-unit seeds, an image) exactly as a single process computes it, and
partial results are combined in one fixed order (shard order, never rank or arrival order). What made the
demo differ under `torchrun --nproc_per_node=2` (measured: the same spec built by the code before and after,
one process with 2 threads against 2 processes with torchrun's OMP_NUM_THREADS=1, every cache entry compared):
- the t-SNE coordinates (up to 15.6 apart) came from identical pooled features: LAPACK's PCA-50 before t-SNE
  rounds differently with 1 and 2 threads, and t-SNE amplifies the last bits; embedding.py now runs PCA,
  the neighbour search and openTSNE in one thread (the t-SNE helper's change);
- the dataset pass's evidence was already equal (float64 sums of float32 means happen to be exact at 10k
  images), but the shards followed the world size (rank r took batches r, r + world, …) and partial sums
  were added in rank order: equal by luck of magnitudes, not by construction; fixed shards merged in shard
  order make it so for any dataset;
- conv forward/backward (the pass, feature vis, attribution), BLAS matmuls and the attribution/feature-vis
  splits (whole chunks, per-unit seeds) gave the same bits with 1 and 2 threads here.
The test builds a spec with every section both ways and compares every file (tests/test_distributed.py).

A rank that stops (killed, out of memory, an error of its own): torchrun then sends SIGTERM to the others
and gloo raises in the next collective; both surface here as `PeerLost`, and the survivors name the ranks
that stopped by a roll call on torch.distributed's store (`Group.stopped_ranks`).
"""

import datetime
import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import ReportgenError

SHARD_BATCHES = 16   # batches per dataset-pass shard: small enough that a killed build loses little work


class PeerLost(ReportgenError):
    """Another rank stopped (seen by a failed collective or the launcher's SIGTERM); `cause` says how."""

    def __init__(self, cause: str, where: str = "the build", note: str = "the previous site is unchanged"):
        super().__init__(f"another rank stopped during {where} ({cause}); {note}")
        self.cause, self.where, self.note = cause, where, note


def fixed_shards(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`indices` cut into consecutive shards of SHARD_BATCHES whole batches: the same for any world size."""
    size = SHARD_BATCHES * batch_size
    return [indices[s:s + size] for s in range(0, len(indices), size)]


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

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
            raise PeerLost(f"the collective failed: {str(exc).splitlines()[0]}") from None
        return out

    def barrier(self) -> None:
        if self.world > 1:
            try:
                dist.barrier()
            except (RuntimeError, dist.DistBackendError) as exc:
                raise PeerLost(f"the collective failed: {str(exc).splitlines()[0]}") from None

    def stopped_ranks(self, wait: float = 3.0) -> list[int]:
        """After a PeerLost: the other ranks that do not answer a roll call within `wait` s.

        Every surviving rank answers (torchrun has sent each one SIGTERM, or its collective failed too);
        a rank still busy without noticing would be named as well, so this is what the survivors can see.
        """
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set(f"reportgen-alive-{self.rank}", "1")
            others = [f"reportgen-alive-{r}" for r in range(self.world) if r != self.rank]
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not all(store.check([k]) for k in others):
                time.sleep(0.1)
            return [r for r in range(self.world) if r != self.rank and not store.check([f"reportgen-alive-{r}"])]
        except Exception:   # noqa: BLE001 - the store lived in the rank that stopped: nobody can be named
            return []

    def named(self, exc: PeerLost) -> ReportgenError:
        """`exc` as the error to show, naming the ranks that stopped."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # already stopping: a later SIGTERM must not cut the roll call
        ranks = self.stopped_ranks()
        who = (f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}") if ranks \
            else "another rank"
        return ReportgenError(f"{who} stopped during {exc.where} ({exc.cause}); {exc.note}")


SINGLE = Group()


def _stopped_by_launcher(signum, frame):
    raise PeerLost("torchrun then sent SIGTERM to the others")


def init_from_env(device: str) -> Group:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else a single group.

    Under torchrun, SIGTERM (what torchrun sends every rank when one fails) raises PeerLost, so the build
    ends with a message instead of dying silently.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    signal.signal(signal.SIGTERM, _stopped_by_launcher)
    return Group(dist.get_rank(), dist.get_world_size())


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
