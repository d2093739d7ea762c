"""Chaos: real processes of a running `python -m launch.train` killed or frozen from outside,
as a fault would. Each run must finish all its steps, log each step once, count the fault,
and log the metrics a fault-free run with the same seed logs (on CPU sampling is
deterministic, so a lost rollout re-run with its own seeds comes out the same).

The runs are the e2e tests' cheapest (one generator, one learner, one grader) on the tiny
model taught to answer, so the weights change every step and a restarted generator that
missed them would sample differently.
"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from test_train_e2e import ROOT, answering_run, read_metrics, small_run, untimed, workdir  # noqa: F401

STEPS = 3
FLAGS = ["--trainer.max_steps", str(STEPS), "--trainer.save_every", "0"]


def comparable(record: dict) -> dict:
    return {k: v for k, v in untimed(record).items() if not k.startswith("faults/")}


@pytest.fixture(scope="module")
def fault_free(workdir, answering_run):  # noqa: F811
    out = workdir / "faults-none"
    proc = small_run(workdir, out, *answering_run, *FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_metrics(out)
    assert all(r["faults/generator_restarts"] == r["faults/reward_restarts"] == 0
               for r in records)
    return records


def processes(run: psutil.Process, title: str) -> list[psutil.Process]:
    """The run's descendants (its local Ray's workers and their children) whose process
    title starts with `title` (Ray titles an actor `ray::<Class>.<method running>`)."""
    found = []
    for p in run.children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(title) or p.name().startswith(title):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def chaos_run(folder, out, flags, fault, timeout=600):
    """The run as a subprocess; once step 1 is logged, `fault(run process)` strikes."""
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
        metrics = out / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "no step 1"
            time.sleep(0.02)
        fault(psutil.Process(proc.pid))
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


def check(out, code, stderr, fault_free, generator_restarts, reward_restarts, reason):
    assert code == 0, stderr[-3000:]
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [comparable(r) for r in records] == [comparable(r) for r in fault_free]
    assert records[-1]["faults/generator_restarts"] == generator_restarts
    assert records[-1]["faults/reward_restarts"] == reward_restarts
    lines = [line for line in stderr.replace("\r", "\n").splitlines()
             if line.startswith("recovered: ")]
    assert len(lines) == generator_restarts + reward_restarts, stderr[-3000:]
    assert reason in lines[0], lines
    events = json.loads((out / "summary.json").read_text())["faults"]
    assert len(events) == len(lines) and events[0]["step"] >= 2, events
    assert events[0]["recovery_s"] > 0
    return lines[0]


def test_engine_core_killed_while_generating(workdir, answering_run, fault_free):  # noqa: F811
    """Killed mid-generation, vLLM's engine core left the generator waiting forever (and the
    run with it); now the generator says so at once and is replaced on its bundle."""
    def kill_engine(run):
        wait_for(run, "ray::GeneratorActor.generate")  # step 2's rollout is being sampled
        wait_for(run, "VLLM::EngineCore").send_signal(signal.SIGKILL)

    out = workdir / "faults-engine"
    code, stderr = chaos_run(workdir, out, [*answering_run, *FLAGS], kill_engine)
    line = check(out, code, stderr, fault_free, 1, 0, "engine core process")
    assert "killed by SIGKILL" in line and "restarted on bundle 0" in line, line


def test_generator_actor_killed_and_its_engine_with_it(workdir, answering_run,  # noqa: F811
                                                       fault_free):  # noqa: F811
    """The generator's Ray actor process killed mid-rollout, not its engine: the run recovers
    as from a dead engine, and no process of the old generator outlives the recovery. (vLLM
    #55510: an engine-core process that does not notice its parent's death keeps, on a GPU,
    the memory its replacement needs, so `restart_generator` ends the lost actor's process
    tree. On this CPU vLLM 0.32's engine exits by itself within 0.4 s of its actor, Ray's own
    clean-up of a dead worker's children off or on, so this test passes without that too.)"""
    out = workdir / "faults-actor"
    engines, alive = [], []

    def kill_actor(run):
        actor = wait_for(run, "ray::GeneratorActor.generate")  # step 2's rollout
        engines.extend(actor.children(recursive=True))
        actor.send_signal(signal.SIGKILL)
        # Once step 2 is logged, the generator has been replaced: its engine must be gone.
        while len(read_metrics(out)) < 2 and run.is_running():
            time.sleep(0.05)
        alive.extend(p.pid for p in engines
                     if p.is_running() and p.status() != psutil.STATUS_ZOMBIE)

    code, stderr = chaos_run(workdir, out, [*answering_run, *FLAGS], kill_actor)
    check(out, code, stderr, fault_free, 1, 0, "generator 0 failed")
    assert engines, "the generator actor had no engine process to leave behind"
    assert not alive, f"the killed generator's engine processes {alive} outlived it"


def test_reward_worker_killed(workdir, answering_run, fault_free):  # noqa: F811
    def kill_grader(run):
        wait_for(run, "ray::RewardWorkerActor").send_signal(signal.SIGKILL)

    out = workdir / "faults-grader"
    code, stderr = chaos_run(workdir, out, [*answering_run, *FLAGS], kill_grader)
    check(out, code, stderr, fault_free, 0, 1, "reward worker 0 failed (its process died")


def test_frozen_generator(workdir, answering_run, fault_free):  # noqa: F811
    """SIGSTOP: the generator neither answers nor dies; cluster.generate_timeout_s (and, if it
    froze between rollouts, cluster.sync_timeout_s) bounds the wait."""
    def freeze(run):
        os.kill(wait_for(run, "ray::GeneratorActor.generate").pid, signal.SIGSTOP)

    out = workdir / "faults-frozen"
    code, stderr = chaos_run(workdir, out, [*answering_run, *FLAGS,
                                            "--cluster.generate_timeout_s", "15",
                                            "--cluster.sync_timeout_s", "15"], freeze)
    check(out, code, stderr, fault_free, 1, 0, "no answer within 15 s")


# --- asynchronous runs (rollout.max_staleness 1): the generator samples step s+1 while the
# learner trains step s.

ASYNC = ["--rollout.max_staleness", "1", "--algorithm.tis_cap", "2"]


@pytest.fixture(scope="module")
def async_fault_free(workdir, answering_run):  # noqa: F811
    out = workdir / "faults-async-none"
    proc = small_run(workdir, out, *answering_run, *FLAGS, *ASYNC)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_metrics(out)


def test_async_engine_killed(workdir, answering_run, async_fault_free):  # noqa: F811
    """The lost rollout is sampled again, with its own seeds, by a generator that starts from
    the weights last sent: fresher than those that sampled it first. So the run differs from
    a fault-free one from that step on (README, "When things fail"): that step's responses
    are less stale, and the staleness bound holds throughout."""
    def kill_engine(run):
        wait_for(run, "ray::GeneratorActor.generate")
        wait_for(run, "VLLM::EngineCore").send_signal(signal.SIGKILL)

    out = workdir / "faults-async-engine"
    code, stderr = chaos_run(workdir, out, [*answering_run, *FLAGS, *ASYNC], kill_engine)
    assert code == 0, stderr[-3000:]
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert records[-1]["faults/generator_restarts"] == 1
    assert all(r["staleness/max"] <= 1 for r in records)
    differ = [k for k, (a, b) in enumerate(zip(records, async_fault_free))
              if comparable(a) != comparable(b)]
    if differ:  # the re-sampled rollout, and what it trained, from its step on
        k = differ[0]
        assert differ == list(range(k, STEPS)), differ
        assert records[k]["staleness/mean"] < async_fault_free[k]["staleness/mean"]


def test_async_learner_killed(workdir, answering_run, async_fault_free):  # noqa: F811
    """The run restarts from its step-1 checkpoint, which keeps the rollout that was being
    sampled for step 2 (by the weights before update 1), so it logs what the fault-free
    asynchronous run logs."""
    def kill_learner(run):
        os.kill(wait_for(run, "ray::LearnerActor.train").pid, signal.SIGKILL)

    out = workdir / "faults-async-learner"
    code, stderr = chaos_run(workdir, out, [*answering_run, *FLAGS, *ASYNC,
                                            "--trainer.save_every", "1"], kill_learner)
    assert code == 0, stderr[-3000:]
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert records[-1]["faults/run_restarts"] == 1
    assert [comparable(r) for r in records] == [comparable(r) for r in async_fault_free]
