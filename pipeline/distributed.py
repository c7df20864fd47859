"""Several processes, one run: torchrun's group, joined with torch.distributed.

    torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT ...] \\
        -m nhle_pipeline.pipeline run CONFIG

Every rank loads and validates the same inputs; rank 0 alone unlearns,
exports, writes the staging folder and releases. The onnxruntime passes over
the data (the original's and the unlearned model's) are sharded: rank r runs
every world-th batch, the per-batch outputs are gathered on rank 0 and merged
in batch order, so the numbers are the ones a single process computes. The
exported files travel to the other ranks as bytes (no shared file system is
needed across machines); the verdict travels back, so every rank exits with
the same code. The collectives use gloo: they carry small host arrays, and
gloo runs on CPU-only and GPU machines alike (each rank's onnxruntime uses
its local GPU, ``LOCAL_RANK``). A rank that dies fails the collective on the
others: the run ends with nothing released.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from nhle_pipeline.pipeline.errors import InputError, PipelineError

# Long enough for rank 0's NHLE, export and (optionally) a retrained reference
# while the other ranks wait at the next collective; also how long joining may take.
GROUP_TIMEOUT = timedelta(hours=2)
TIMEOUT_ENV = "PIPELINE_DIST_TIMEOUT_S"  # overrides GROUP_TIMEOUT (seconds)


class DistributedError(PipelineError):
    """A collective failed mid-run (a rank died or timed out): nothing is released."""


class GroupError(InputError):
    """The launch cannot form its process group (bad environment, unreachable rendezvous)."""


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    @property
    def gpu(self) -> int:
        """This rank's GPU: LOCAL_RANK over the GPUs the process sees (more ranks than GPUs share
        them; a launcher that shows each process one GPU gives every rank GPU 0)."""
        import torch

        count = torch.cuda.device_count()
        return self.local_rank % count if count else 0

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.sharded:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        try:
            dist.broadcast_object_list(box, src=0)
        except RuntimeError as e:
            raise DistributedError(f"torch.distributed: broadcast failed ({_first_line(e)}); nothing was released") from e
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` in rank order on rank 0 (None elsewhere)."""
        if not self.sharded:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.is_main else None
        try:
            dist.gather_object(obj, out, dst=0)
        except RuntimeError as e:
            raise DistributedError(f"torch.distributed: gather failed ({_first_line(e)}); nothing was released") from e
        return out


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def join_group() -> Group:
    """The torchrun group this process belongs to (a group of one without torchrun)."""
    world = os.environ.get("WORLD_SIZE")
    if world is None:
        return Group()
    try:
        world_n, rank, local = int(world), int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as e:
        raise GroupError(f"torchrun environment: WORLD_SIZE={world!r} needs integer RANK and LOCAL_RANK ({e})") from e
    if world_n <= 1:
        return Group()
    # c10d logs every failed connection attempt with a C++ backtrace; the one line below says it
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    import torch.distributed as dist

    try:
        timeout = timedelta(seconds=float(os.environ[TIMEOUT_ENV])) if os.environ.get(TIMEOUT_ENV) else GROUP_TIMEOUT
        dist.init_process_group("gloo", timeout=timeout)
        dist.barrier()  # every rank is there, or this fails now, before any work
    except (RuntimeError, ValueError) as e:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise GroupError(f"torch.distributed: rank {rank} of {world_n} cannot form the group at {where} "
                         f"({_first_line(e)})") from e
    group = Group(rank, world_n, local)
    import torch

    if torch.cuda.is_available():  # "cuda" then means this rank's GPU, not every rank's GPU 0
        torch.cuda.set_device(group.gpu)
    return group


def leave_group(group: Group) -> None:
    if group.sharded:
        import torch.distributed as dist

        if dist.is_initialized():
            try:  # every rank is past its last collective before any tears the group down
                dist.barrier()  # (gloo can abort a rank whose peer disconnects first)
            except RuntimeError:
                pass  # a peer is gone: tearing down is all that is left
            dist.destroy_process_group()


def verdict_of(exc: BaseException | None) -> tuple[int, str]:
    """The exit code and message rank 0 ends with, to be shared with every rank: the code from the
    CLI's own table (pipeline/errors.py ``exit_code_of``), so every rank exits as rank 0 does."""
    from nhle_pipeline.pipeline.errors import (
        EXIT_CRASH,
        EXIT_INTERRUPTED,
        EXIT_NO_SPACE,
        EXIT_TERMINATED,
        KNOWN_FAILURES,
        disk_full,
        exit_code_of,
    )

    code = exit_code_of(exc)
    if exc is None:
        return code, ""
    if code == EXIT_NO_SPACE:
        return code, disk_full(exc).filename or ""
    if code == EXIT_TERMINATED:
        return code, "terminated"
    if code == EXIT_INTERRUPTED:
        return code, "interrupted"
    if code == EXIT_CRASH and not isinstance(exc, KNOWN_FAILURES):
        return code, f"rank 0 failed ({type(exc).__name__}: {_first_line(exc)})"
    return code, str(exc)


def raise_verdict(code: int, message: str) -> None:
    """On a rank other than 0: end as rank 0 did (the CLI maps the error to the same exit code)."""
    import errno

    from nhle_pipeline.pipeline.errors import (
        EXIT_BAD_INPUT,
        EXIT_GATE_FAILED,
        EXIT_INTERRUPTED,
        EXIT_NO_SPACE,
        EXIT_OK,
        EXIT_TERMINATED,
        GateFailure,
        Terminated,
    )

    if code == EXIT_OK:
        return
    if code == EXIT_GATE_FAILED:
        raise GateFailure(message)
    if code == EXIT_BAD_INPUT:
        raise InputError(message)
    if code == EXIT_NO_SPACE:  # the CLI's disk-full line and exit code, as on rank 0
        raise OSError(errno.ENOSPC, "No space left on device (on rank 0)", message or None)
    if code == EXIT_TERMINATED:
        raise Terminated
    if code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    raise DistributedError(message)
