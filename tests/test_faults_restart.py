"""Run restarts (launch/restarts.py): a learner's process killed from outside, as the kernel or
a lost node would kill it, mid-run. The driver must restart the run from its latest
checkpoint, and the restarted run must log what a run without the fault logs: that is
tests/test_faults.py::test_async_learner_then_engine_killed (one run takes both faults); here,
a learner killed inside a weight sync with no restart left."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
from test_train_e2e import ROOT, read_metrics


def start_run(workdir, out, *flags) -> subprocess.Popen:
    """tests/test_train_e2e.py's small_run (one generator, learner and grader), started in
    the background; its Ray cluster is its own (started by the run), so its processes are
    its descendants."""
    return subprocess.Popen(
        [sys.executable, "-m", "launch.train", "--config", str(workdir / "cpu.yaml"),
         "--trainer.output_dir", str(out), "--cluster.num_generators", "1",
         "--cluster.num_learners", "1", "--cluster.num_reward_workers", "1",
         "--trainer.eval_every", "0", *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_learner(proc: subprocess.Popen, checkpoint, method: str | None, timeout=600,
                 freeze_generator: bool = False) -> str:
    """SIGKILL this run's learner once `checkpoint` is complete and the learner runs `method`
    (any, if None); returns the process title it had when killed. `freeze_generator`: instead
    of the learner, SIGSTOP the run's generator actor at that moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if (checkpoint / "trainer_state.json").is_file():
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    title = " ".join(child.cmdline()).strip()
                    if title.startswith("ray::LearnerActor") and (
                            method is None or title.startswith(f"ray::LearnerActor.{method}")):
                        if freeze_generator:
                            for other in psutil.Process(proc.pid).children(recursive=True):
                                if " ".join(other.cmdline()).startswith("ray::GeneratorActor"):
                                    os.kill(other.pid, signal.SIGSTOP)
                                    return title
                            continue
                        child.kill()
                        return title
                except psutil.NoSuchProcess:
                    continue
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no learner to kill within {timeout} s")


def test_learner_0_killed_in_a_weight_sync_is_blamed_and_no_restart_left_is_one_line(
        workdir, answering_run):
    """Learner rank 0 drives the generators in a sync: killed there, it is the one to blame,
    not the generators left waiting on it (no generator restart is tried). The generator is
    frozen (SIGSTOP) once step 2 trains, so the learner is still in its sync when it is
    killed. With trainer.max_restarts 0 the learner's death ends the run, with exit code 1
    and one error line that names the learner and the last checkpoint, which stays
    complete."""
    out = workdir / "restart-in-sync"
    flags = [*answering_run, "--trainer.max_steps", "3", "--trainer.save_every", "1",
             "--trainer.max_restarts", "0"]
    proc = start_run(workdir, out, *flags)
    checkpoint = out / "checkpoints" / "step_000001"
    kill_learner(proc, checkpoint, "train", freeze_generator=True)
    title = kill_learner(proc, checkpoint, "send_weights")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]
    assert title.startswith("ray::LearnerActor.send_weights")
    assert "Traceback" not in err and "restarting" not in err and "recovered" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error")]
    assert lines == [
        "error: learner 0 failed: the actor's process died (killed, out of memory, or its node "
        f"was lost); not restarted (trainer.max_restarts 0); its last checkpoint, {checkpoint}, "
        "is intact: --trainer.resume auto continues from it"], err[-3000:]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 1
    assert [r["step"] for r in read_metrics(out)] == [1]
