"""The weight-sync group's own timeout: a member that never answers fails the sync within
`cluster.sync_timeout_s`, not after a backend default of 10 to 30 minutes."""

import datetime
import multiprocessing as mp
import socket
import time

import torch
import torch.distributed as dist

from actors.weight_sync import open_group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _silent_member(port: int) -> None:
    """Joins the group, then never takes part in a broadcast (a hung generator)."""
    group = open_group("127.0.0.1", port, 1, 2, "gloo", timeout_s=30)  # noqa: F841 (kept open)
    time.sleep(60)


def test_gloo_broadcast_to_a_silent_member_fails_within_the_timeout():
    port = _free_port()
    member = mp.get_context("spawn").Process(target=_silent_member, args=(port,), daemon=True)
    member.start()
    try:
        group = open_group("127.0.0.1", port, 0, 2, "gloo", timeout_s=3)
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        start = time.monotonic()
        try:
            group.broadcast([torch.zeros(1024)], opts).wait()
        except RuntimeError as err:
            assert "timed out" in str(err).lower() or "timeout" in str(err).lower(), err
        else:
            raise AssertionError("the broadcast finished without its other member")
        assert time.monotonic() - start < 15
    finally:
        member.kill()


def test_nccl_group_gets_the_sync_timeout(monkeypatch):
    """NCCL needs a GPU, so here a stand-in takes the place of `ProcessGroupNCCL` to record
    what the group is built with (benchmarks/gpu_check.py runs the real one on a GPU)."""
    built = {}

    class RecordingNCCL:
        class Options:
            _timeout = None

        def __init__(self, store, rank, size, options=None):
            built.update(rank=rank, size=size, options=options)

    monkeypatch.setattr(dist, "ProcessGroupNCCL", RecordingNCCL, raising=False)
    open_group("127.0.0.1", _free_port(), 0, 1, "nccl", timeout_s=7)
    assert built["options"] is not None, "the NCCL group was built without options"
    assert built["options"]._timeout == datetime.timedelta(seconds=7)
