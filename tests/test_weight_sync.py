"""The weight sync's pieces that need no vLLM engine: the group's own timeout (a member that
never answers fails the sync within `cluster.sync_timeout_s`, not after a backend default of
10 to 30 minutes), the engine each machine gets, the buckets, and whom a failed sync blames.
Syncs into real vLLM engines: tests/test_runtime.py and tests/test_train_e2e.py."""

import datetime
import multiprocessing as mp
import socket
import time

import pytest
import torch
import torch.distributed as dist

from actors.sync_group import open_group


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


def test_each_machine_gets_its_engine():
    """CUDA IPC where a generator shares its learner's GPU (no copy through the host); our
    torch.distributed broadcast otherwise, NCCL between GPUs and gloo on CPUs."""
    from actors.weight_sync import engine_for, group_backend

    assert engine_for("cuda", colocate=True) == "ipc"
    assert engine_for("cuda", colocate=False) == "broadcast"
    assert engine_for("cpu", colocate=True) == "broadcast"
    assert (group_backend("cuda"), group_backend("cpu")) == ("nccl", "gloo")


def test_buckets_keep_model_order_and_the_size_bound():
    from actors.broadcast_engine import BroadcastUpdateInfo

    plan = BroadcastUpdateInfo.plan([("a", (4, 4)), ("b", (3,)), ("c", (2, 2)), ("d", (40,))],
                                    "bfloat16", bucket_bytes=40)
    assert plan.buckets == [[0, 1], [2], [3]]  # 32 + 6 B; 8 B (46 would pass 40); 80 B alone
    assert plan.total_bytes == 2 * (16 + 3 + 4 + 40)
    assert BroadcastUpdateInfo(**plan.to_dict()) == plan  # what travels to the workers


def test_shared_buckets_are_seen_by_another_mapping_and_leave_no_file(tmp_path):
    """Learner 0 packs into a shared file that each worker maps; the file's name is removed
    once every worker has it (nothing left behind by a process that dies), and a folder
    without room for the weights (Docker's 64 MiB /dev/shm) gives no region: the engine then
    broadcasts (writing past a full tmpfs would kill the writer with SIGBUS)."""
    from actors import shared_memory
    from actors.broadcast_engine import BroadcastUpdateInfo, Buckets

    plan = BroadcastUpdateInfo.plan([("a", (4, 4)), ("b", (3,)), ("c", (40,))], "bfloat16",
                                    bucket_bytes=40)
    sender = shared_memory.create(plan.total_bytes, tmp_path)
    worker = shared_memory.attach(sender.path)
    sender.unlink()
    assert list(tmp_path.iterdir()) == []
    cpu = torch.device("cpu")
    sent, received = Buckets(plan, cpu, sender), Buckets(plan, cpu, worker)
    for k, bucket in enumerate(plan.buckets):
        sent[k].copy_(torch.arange(plan.bucket_numel(bucket)) + 100 * k)
    for k, bucket in enumerate(plan.buckets):
        assert received[k].dtype == torch.bfloat16
        expected = torch.arange(plan.bucket_numel(bucket)).bfloat16() + 100 * k
        assert torch.equal(received[k], expected)
    assert shared_memory.create(2**60, tmp_path) is None
    assert shared_memory.create(1, tmp_path / "missing") is None
    with pytest.raises(RuntimeError, match="not on this machine"):
        shared_memory.attach(str(tmp_path / "gone"))


def _outcomes(*failures):
    from actors.failures import Outcome

    return [Outcome(failure=f, reason=f"{f} here") if f else Outcome({}) for f in failures]


def test_a_generator_that_failed_in_a_sync_is_blamed_not_learner_0():
    """Learner 0 drives the generators: its call fails because theirs did, and the driver
    restarts the generator that died or hung, not the learner that reported it."""
    from actors.failures import Outcome
    from actors.weight_sync import GeneratorsFailed
    from launch.recovery import sync_culprits

    failed = GeneratorsFailed("update_weights", _outcomes(None, "died", "raised"))
    learners = [Outcome(failure="raised", reason="GeneratorsFailed: ...", cause=failed),
                Outcome({})]
    assert sync_culprits(learners, ["learner 0", "learner 1"], 3) == [1]
    assert "generator 1: died here" in str(failed)


def test_a_learner_lost_in_a_sync_is_blamed_and_a_generator_error_stops_the_run():
    from actors.failures import ActorFailure, Outcome
    from actors.weight_sync import GeneratorsFailed
    from launch.recovery import sync_culprits

    with pytest.raises(ActorFailure) as lost:
        sync_culprits(_outcomes("died", None), ["learner 0", "learner 1"], 2)
    assert lost.value.actor == "learner 0" and lost.value.lost
    raised = GeneratorsFailed("finish_weight_update", _outcomes(None, "raised"))
    with pytest.raises(ActorFailure) as error:
        sync_culprits([Outcome(failure="raised", cause=raised)], ["learner 0"], 2)
    assert error.value.actor == "generator 1" and not error.value.lost
