"""Chaos: real processes of a running `python -m launch.train` killed or frozen from outside,
as a fault would. Each run must finish all its steps, log each step once, count the fault,
and log the metrics a fault-free run with the same seed logs (on CPU sampling is
deterministic, so a lost rollout re-run with its own seeds comes out the same).

The runs are the e2e tests' cheapest (one generator, one learner, one grader) on the tiny
model taught to answer, so the weights change every step and a restarted generator that
missed them would sample differently. Each run starts vLLM and Ray afresh (~40 s on 2 cores),
so one synchronous run takes every fault in turn, a step apart, and one asynchronous run a
learner's then an engine's death; each is compared with the session's fault-free reference
run of its mode (conftest.py).
"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import ASYNC
from run_processes import kill_generating_engine, processes, strike_while_generating
from test_train_e2e import ROOT, read_metrics, tensorboard_scalars, untimed

STEPS = 4
FLAGS = ["--trainer.max_steps", str(STEPS), "--trainer.save_every", "0"]


def comparable(record: dict) -> dict:
    return {k: v for k, v in untimed(record).items() if not k.startswith("faults/")}


@pytest.fixture(scope="module")
def fault_free(reference_run):
    records = read_metrics(reference_run)
    assert all(r["faults/generator_restarts"] == r["faults/reward_restarts"] == 0
               for r in records)
    return records


def chaos_run(folder, out, flags, fault, timeout=600):
    """The run as a subprocess, and `fault(run process)` beside it from its start."""
    out.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.stderr", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.train", "--config", str(folder / "cpu.yaml"),
         "--trainer.output_dir", str(out), "--cluster.num_generators", "1",
         "--cluster.num_learners", "1", "--cluster.num_reward_workers", "1",
         "--trainer.eval_every", "0", *flags],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        deadline = time.monotonic() + timeout
        try:
            fault(psutil.Process(proc.pid))
        except AssertionError as missed:  # with what the run said
            log.seek(0)
            raise AssertionError(f"{missed}\nthe run's stderr, last lines:\n"
                                 f"{log.read()[-3000:]}") from None
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    return proc.returncode, log.read()


def wait_for(run: psutil.Process, title: str, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = processes(run, title)
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no process titled {title}")


def logged(out, steps: int) -> bool:
    """Whether the run has logged `steps` steps."""
    try:
        return len((out / "metrics.jsonl").read_text().splitlines()) >= steps
    except OSError:
        return False


def test_each_fault_in_turn_recovers_to_the_fault_free_metrics(workdir, answering_run,
                                                               fault_free):
    """One run, four faults, each while a rollout is being sampled (the generator's engine
    is held while it waits for the rollout, run_processes.strike_while_generating):
    - step 2: the reward worker killed, then the engine-core process. Killed mid-generation,
      vLLM's engine core left the generator waiting forever (and the run with it); now the
      generator says so at once and is replaced on its bundle. The dead reward worker is
      found, and replaced, when step 2's answers are graded (a step whose answers are all
      unformatted or cut off needs no grading: the tiny model reaches that by step 3 on an
      AVX2 CPU, so step 2 it is).
    - step 3: the generator's Ray actor process killed, not its engine. No process of the
      old generator may outlive the recovery (vLLM #55510: an
      engine-core process that does not notice its parent's death keeps, on a GPU, the
      memory its replacement needs, so `restart_generator` ends the lost actor's process
      tree. On this CPU vLLM 0.32's engine exits by itself within 0.4 s of its actor, so
      this passes without that too).
    - step 4: the generator frozen (SIGSTOP): it neither answers nor dies;
      cluster.generate_timeout_s bounds the wait.
    Every step is logged once, with what the fault-free run logged."""
    out = workdir / "faults-sync"
    engines, alive = [], []

    step2 = fault_free[1]
    assert step2["response/formatted_fraction"] > 0 and step2["response/truncated_fraction"] < 1, (
        "the fault-free run graded no answer at step 2: a dead reward worker goes unnoticed")

    def faults(run):
        def reward_worker_and_engine(actor, engine):  # step 2
            wait_for(run, "ray::RewardWorkerActor").send_signal(signal.SIGKILL)
            engine.send_signal(signal.SIGKILL)

        def generator(actor, engine):  # step 3
            engines.extend(actor.children(recursive=True))
            actor.send_signal(signal.SIGKILL)

        def frozen_generator(actor, engine):  # step 4; step 3 replaced the generator
            alive.extend(p.pid for p in engines
                         if p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
            actor.send_signal(signal.SIGSTOP)

        strike_while_generating(run, reward_worker_and_engine, after=lambda: logged(out, 1))
        strike_while_generating(run, generator, after=lambda: logged(out, 2))
        strike_while_generating(run, frozen_generator, after=lambda: logged(out, 3))

    code, stderr = chaos_run(workdir, out, [*answering_run, *FLAGS,
                                            "--cluster.generate_timeout_s", "10"], faults)
    assert code == 0, stderr[-3000:]
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [comparable(r) for r in records] == [comparable(r) for r in fault_free]
    assert records[-1]["faults/generator_restarts"] == 3
    assert records[-1]["faults/reward_restarts"] == 1
    lines = [line for line in stderr.replace("\r", "\n").splitlines()
             if line.startswith("recovered: ")]
    assert len(lines) == 4, stderr[-3000:]
    engine, actor, frozen = [line for line in lines if line.startswith("recovered: generator")]
    assert "engine core process" in engine and "killed by SIGKILL" in engine, engine
    assert "restarted on bundle 0" in engine, engine
    assert "generator 0 failed" in actor, actor
    assert "no answer within 10 s" in frozen, frozen
    assert any(line.startswith("recovered: reward worker 0 failed (the actor's process died")
               for line in lines), lines
    events = json.loads((out / "summary.json").read_text())["faults"]
    assert [e["step"] for e in events] == [2, 2, 3, 4], events
    assert all(e["recovery_s"] > 0 for e in events)
    assert engines, "the generator actor had no engine process to leave behind"
    assert not alive, f"the killed generator's engine processes {alive} outlived it"


# --- asynchronous runs (rollout.max_staleness 1): the generator samples step s+1 while the
# learner trains step s.

ASYNC_STEPS = 3
ASYNC_FLAGS = ["--trainer.max_steps", str(ASYNC_STEPS), "--trainer.save_every", "0"]


@pytest.fixture(scope="module")
def async_fault_free(async_reference_run):
    return read_metrics(async_reference_run)


def test_async_learner_then_engine_killed(workdir, answering_run, async_fault_free):
    """One asynchronous run, two faults:
    - the learner killed while it trains step 2: the run restarts from its step-1
      checkpoint, which keeps the rollout that was being sampled for step 2 (by the weights
      before update 1), so it goes on logging what the fault-free asynchronous run logs;
    - then, in the restarted run, the engine killed while it samples step 3's rollout: that
      rollout is sampled again, with its own seeds, by a generator that starts from the
      weights last sent, fresher than those that sampled it first. So the run may differ
      from a fault-free one from that step on (docs/faults.md): that step's responses are
      less stale, and the staleness bound holds throughout."""
    out = workdir / "faults-async"
    stderr_log = out.parent / f"{out.name}.stderr"  # chaos_run's

    def faults(run):
        while not logged(out, 1):
            assert run.is_running() and run.status() != psutil.STATUS_ZOMBIE, "no step 1"
            time.sleep(0.02)
        os.kill(wait_for(run, "ray::LearnerActor.train").pid, signal.SIGKILL)
        deadline = time.monotonic() + 300
        while "restarting run" not in stderr_log.read_text():  # not the old cluster's engine
            assert time.monotonic() < deadline, "the run did not restart"
            time.sleep(0.05)
        kill_generating_engine(run)

    code, stderr = chaos_run(workdir, out, [*answering_run, *ASYNC_FLAGS, *ASYNC,
                                            "--trainer.save_every", "1"], faults)
    assert code == 0, stderr[-3000:]
    restarts = [line for line in stderr.replace("\r", "\n").splitlines()
                if line.startswith("restarting")]
    checkpoint = out / "checkpoints" / "step_000001"
    assert restarts == [
        "restarting run (1/3): learner 0 failed: the actor's process died (killed, out of "
        f"memory, or its node was lost); resuming from {checkpoint}"], stderr[-3000:]
    assert "recovered: generator 0 failed" in stderr and "killed by SIGKILL" in stderr
    records = read_metrics(out)  # every step logged once, in metrics.jsonl and TensorBoard
    assert [r["step"] for r in records] == list(range(1, ASYNC_STEPS + 1))
    assert [r["faults/run_restarts"] for r in records] == [0, 1, 1]
    assert records[-1]["faults/generator_restarts"] == 1
    reward = tensorboard_scalars(out, "reward/mean")
    assert reward == [(r["step"], pytest.approx(r["reward/mean"])) for r in records]
    assert tensorboard_scalars(out, "faults/run_restarts") == [(1, 0), (2, 1), (3, 1)]
    [restart] = json.loads((out / "summary.json").read_text())["restarts"]
    assert (restart["actor"], restart["failed_at_step"], restart["resumed_from_step"],
            restart["checkpoint"]) == ("learner 0", 2, 1, str(checkpoint))
    assert "process died" in restart["reason"] and restart["at"]
    assert all(r["grad_norm"] > 0 for r in async_fault_free)  # every update changes weights
    assert all(r["staleness/max"] <= 1 for r in records)
    assert [comparable(r) for r in records[:2]] == [comparable(r) for r in async_fault_free[:2]]
    if comparable(records[2]) != comparable(async_fault_free[2]):  # the re-sampled rollout
        assert records[2]["staleness/mean"] < async_fault_free[2]["staleness/mean"]


def test_asynchronous_run_is_bounded_and_overlaps(async_reference_run, async_fault_free):
    """rollout.max_staleness 1: the generator samples step s+1 while the learner trains step
    s, so a trained response comes from weights at most one update old; importance weights
    correct for it. (That a run resumed from a checkpoint keeps the rollout in flight and
    logs the same metrics is test_async_learner_then_engine_killed's restart.)"""
    expected = async_fault_free
    assert [r["staleness/max"] for r in expected] == [0, 1, 1]
    # Generator and learner compute at the same time: the engine takes half the cores.
    summary = json.loads((async_reference_run / "summary.json").read_text())
    threads = summary["actors"]["generator 0"]["engine_threads"]
    assert threads == [max(1, len(os.sched_getaffinity(0)) // 2)]
    assert all(r["grad_norm"] > 0 and 0 < r["tis/mean_weight"] <= 2 for r in expected)
    assert (async_reference_run / "checkpoints" / "step_000001" / "rollouts.json").is_file()
    for before, after in zip(expected, expected[1:]):  # step s+1 sampled while s trains
        assert after["timeline"]["generate"][0] < before["timeline"]["train"][1]
