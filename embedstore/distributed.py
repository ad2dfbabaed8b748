"""Data-parallel runs on PyTorch's own engine: one process per rank, launched by `torchrun`.

`torchrun --nproc_per_node N -m embedstore extract …` sets RANK, WORLD_SIZE and LOCAL_RANK (and
the rendezvous) in each process's environment; `Ranks.from_environment` reads them and `joined`
opens the process group (gloo on CPU, nccl on CUDA) for the duration of a command. Without torchrun
(or with one process) everything here is a no-op: world size 1, rank 0.

Every rank takes the same decisions from the same inputs (the shard plan, the global batch order);
rank 0 alone holds the store's writer lock and writes the database; what rank 0 decides is
broadcast (`share`), and what every rank must agree on is checked before any work (`agree`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from embedstore.errors import InputError

#: How long a rank waits for the others at a barrier or a collective (a rank still encoding its
#: shards keeps the others waiting at the final barrier): generous, as shards can be large.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Ranks:
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or a single process when they are not set."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise InputError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them)") from None
        if world < 1 or not 0 <= rank < world:
            raise InputError(f"RANK {rank} / WORLD_SIZE {world}: not a valid place in a job")
        return cls(rank, world, local)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the one that holds the writer lock, writes the database and prints progress."""
        return self.rank == 0

    def shards(self, n_shards: int) -> list[int]:
        """The shards this rank works on: round-robin, shard k to rank k mod world size."""
        return list(range(self.rank, n_shards, self.world_size))


@contextlib.contextmanager
def joined(ranks: Ranks, device_type: str) -> Iterator[Ranks]:
    """The process group for one command (gloo on CPU, nccl on CUDA); nothing without torchrun."""
    if not ranks.distributed:
        yield ranks
        return
    import torch.distributed as dist

    if device_type == "cuda":
        import torch

        torch.cuda.set_device(ranks.local_rank)  # nccl's collectives run on this rank's GPU
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield ranks
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def share(ranks: Ranks, value: Any) -> Any:
    """Rank 0's `value` on every rank (a picklable Python object: plain values only)."""
    if not ranks.distributed:
        return value
    import torch.distributed as dist

    box = [value if ranks.leader else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(ranks: Ranks, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def agree(ranks: Ranks, facts: dict[str, str]) -> None:
    """Refuse, on every rank, a job whose ranks differ in any of `facts` (dataset manifest, model
    sha256, code version, store, …): one line naming the first fact and the ranks that differ."""
    every = gather(ranks, facts)
    for key, value in facts.items():
        differing = [rank for rank, theirs in enumerate(every) if theirs.get(key) != value]
        if differing:
            raise InputError(f"the ranks of this job disagree on {key} (rank {ranks.rank}: {value}; ranks "
                             f"{', '.join(map(str, differing))} differ): start every rank with the same command, code, "
                             "data and model")


def reduce_sum(ranks: Ranks, values: list[float]) -> list[float]:
    """The element-wise sum of `values` over every rank (float64)."""
    if not ranks.distributed:
        return values
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]
