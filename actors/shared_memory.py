"""One shared-memory file that learner 0 packs the weights into and every vLLM worker on the
same machine loads them from (actors/broadcast_engine.py): no socket, no second copy.

The file lives in /dev/shm (tmpfs: RAM). It is unlinked as soon as every worker has mapped
it, so a process that dies leaves nothing behind; the mappings keep the memory alive. A
tmpfs too small for the weights (Docker's default /dev/shm is 64 MiB) would kill a writer
with SIGBUS on the first page past its end, so `create` checks the room first and returns
None when there is not enough: the engine then broadcasts over its group instead.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

SHM_DIR = Path("/dev/shm")
HEADROOM = 1.25  # leave room for whatever else uses the tmpfs (Ray's object store, ...)


@dataclass
class Region:
    path: str
    flat: torch.Tensor  # the whole file, mapped: uint8

    def unlink(self) -> None:
        """Remove the file's name; the memory stays while any process maps it."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def create(nbytes: int, folder: Path = SHM_DIR) -> Region | None:
    """A new shared file of `nbytes`, mapped, or None where `folder` is missing or has less
    than HEADROOM x nbytes free."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    if stat.f_bavail * stat.f_frsize < HEADROOM * nbytes:
        return None
    path = folder / f"drgrpo-weights-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return Region(str(path), torch.from_file(str(path), shared=True, size=nbytes,
                                             dtype=torch.uint8))


def attach(path: str) -> Region:
    """Map the file another process created (a clear error if it is not on this machine)."""
    if not os.path.exists(path):
        raise RuntimeError(f"weight transfer: shared-memory file {path} is not on this machine "
                           "(the sender and this worker must share one)")
    return Region(path, torch.from_file(path, shared=True, size=os.path.getsize(path),
                                        dtype=torch.uint8))
