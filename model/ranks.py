"""The processes of one run as the latent cache pass sees them: who this is, and the two collectives
it needs (a ``torch.distributed`` group under ``accelerate``/``torchrun``, else this process alone)."""

from __future__ import annotations

from typing import Any, Protocol


class Ranks(Protocol):
    """The processes of one run: who this is, and the two collectives the cache pass needs."""

    rank: int
    world: int

    def broadcast(self, value: Any) -> Any:
        """``value`` of rank 0, on every rank."""

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank (a barrier too)."""


class OneProcess:
    rank, world = 0, 1

    def broadcast(self, value: Any) -> Any:
        return value

    def gather(self, value: Any) -> list[Any]:
        return [value]


class TorchRanks:
    """The default process group of ``torch.distributed`` (what ``accelerate`` and ``torchrun`` set up)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def broadcast(self, value: Any) -> Any:
        box = [value]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self._dist.all_gather_object(out, value)
        return out


def current_ranks() -> Ranks:
    """The processes of this run: the ``torch.distributed`` group when there is one, else this one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchRanks()
    return OneProcess()
