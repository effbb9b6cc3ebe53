"""Worker groups (the DESIGN's `stream_mtl.distributed`): the few collective calls that
workers learning one model need (their loop: `connectors/distributed_loop.py`; their
merge: `stream_mtl.averaging`).

`TorchGroup` is a torch.distributed process group (gloo on CPU, NCCL when the model is
on CUDA), joined from the environment that `torchrun` sets (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT). `SoloGroup` is a group of one that makes no call at all:
one worker runs the same loop through it, and a benchmark measures against it what
synchronisation itself costs.

Every call is collective: each member must make the same calls in the same order.
"""

from __future__ import annotations

import datetime
import os
import typing


class WorkerGroup(typing.Protocol):
    """What a distributed loop asks of its group."""

    rank: int
    size: int

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the members (a small all-reduce)."""

    def gather(self, item: object) -> list:
        """Every member's `item` (any picklable object), in rank order, on every member."""

    def barrier(self) -> None:
        """Wait until every member has called it."""

    def close(self) -> None:
        """Leave the group."""


class SoloGroup:
    """A group of one: every collective call returns at once.

    >>> group = SoloGroup()
    >>> group.sum([1.0, 2.0]), group.gather("state"), group.rank, group.size
    ([1.0, 2.0], ['state'], 0, 1)
    """

    rank = 0
    size = 1

    def sum(self, values: list[float]) -> list[float]:
        return list(values)

    def gather(self, item: object) -> list:
        return [item]

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


class TorchGroup:
    """A torch.distributed process group of the workers `torchrun` started.

    Parameters
    ----------
    device
        The model's device: NCCL for CUDA, gloo otherwise.
    timeout
        Seconds a collective call waits for the slowest member before it fails (and
        torchrun restarts the group).

    Examples
    --------
    Outside `torchrun`, the environment lacks what the group needs:

    >>> import os
    >>> "WORLD_SIZE" in os.environ
    False
    >>> TorchGroup()
    Traceback (most recent call last):
    ...
    ValueError: a worker group needs RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: use torchrun
    """

    def __init__(self, device: str = "cpu", timeout: float = 60.0) -> None:
        needed = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        if not all(name in os.environ for name in needed):
            raise ValueError(
                "a worker group needs RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: use torchrun"
            )
        import torch
        import torch.distributed as dist

        self._torch, self._dist = torch, dist
        self.device = torch.device(device)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        store, rank, size = next(
            dist.rendezvous("env://", timeout=datetime.timedelta(seconds=timeout))
        )
        # A restarted group must not read the addresses its dead predecessor left in
        # torchrun's store: each start keeps its keys under a prefix of its own.
        round_ = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend,
            store=dist.PrefixStore(f"stream-mtl/{round_}", store),
            rank=rank,
            world_size=size,
            timeout=datetime.timedelta(seconds=timeout),
        )
        self.backend = backend
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()

    def __repr__(self) -> str:
        return f"TorchGroup(rank={self.rank}, size={self.size}, backend={self.backend!r})"

    def sum(self, values: list[float]) -> list[float]:
        tensor = self._torch.tensor(values, dtype=self._torch.float64, device=self.device)
        self._dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, item: object) -> list:
        items: list = [None] * self.size
        self._dist.all_gather_object(items, item)
        return items

    def barrier(self) -> None:
        self._dist.barrier()

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()
