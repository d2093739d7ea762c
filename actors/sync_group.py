"""The weight-sync group: a standalone torch.distributed group of the sender (rank 0) and
every vLLM worker of every generator (ranks 1..), built from a `TCPStore` rather than
`init_process_group`, which allows one default group per process (the learners' own).
Torch only, so a GPU machine without vLLM can measure it (benchmarks/nccl_timeout.py).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

import torch
import torch.distributed as dist


def open_group(host: str, port: int, rank: int, world_size: int, backend: str,
               timeout_s: float) -> dist.ProcessGroup:
    """Join the transfer group; rank 0 (the sender) hosts the rendezvous store. Every
    collective of the group, the first included, fails after `timeout_s`."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout,
                          wait_for_workers=False)
    store = dist.PrefixStore("drgrpo-weight-sync", store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout  # without it NCCL waits its own default (10 minutes)
        return dist.ProcessGroupNCCL(store, rank, world_size, options)
    raise ValueError(f"weight sync backend must be 'gloo' or 'nccl', got {backend!r}")


def close_group(group: dist.ProcessGroup | None) -> None:
    """Let go of a group before a new one replaces it (a generator was restarted: a
    torch.distributed group cannot take a new member, so every member opens a new one).
    NCCL's communicators are aborted, not waited on: a member may be gone."""
    if group is None:
        return
    for verb in ("abort", "shutdown"):
        if hasattr(group, verb):
            try:
                getattr(group, verb)()
            except Exception:  # a broken group may refuse; it is dropped either way
                pass
            return


def start_broadcast(group: dist.ProcessGroup, buffer: torch.Tensor):
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    return group.broadcast([buffer], opts)


def wait(work, give_up: Callable[[], BaseException | None] | None = None) -> None:
    """Wait for a collective; with `give_up`, stop early with the error it returns (a
    receiver failed: its broadcast would only end at the group's timeout)."""
    if give_up is not None:
        while not work.is_completed():
            error = give_up()
            if error is not None:
                raise error
            time.sleep(0.001)
    work.wait()  # raises the collective's own error, if any
