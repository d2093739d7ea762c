"""A shortened `make demo`: the whole system must make the model better, not merely run, and
do it the same way every time.

If the learning signal is broken anywhere (advantages, masks, normalisation, weight sync,
template, grader), held-out accuracy does not rise. These are the suite's slowest tests (~2.5
min a run): the demo's own settings for 2 steps (it evaluates every 2), which are also the first
2 steps of the published study's dr_grpo seed-0 run (docs/study/), evaluations included. The
fault-free run is the `ray job submit` rehearsal of docs/cluster.md (conftest.demo_job); the
killed-engine and asynchronous runs are `python -m launch.demo`, as `make demo` runs it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from run_processes import kill_generating_engine

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("--trainer.max_steps", "2")


def demo_command(out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "launch.demo", *FLAGS, "--trainer.output_dir", str(out),
            *flags]


def run_demo(tmp_path: Path, home: Path, *flags: str) -> Path:
    out = tmp_path / "run"
    proc = subprocess.run(demo_command(out, *flags), cwd=ROOT, capture_output=True, text=True,
                          timeout=1500, env={**os.environ, "HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def finished_step(out: Path, step: int) -> bool:
    """Whether `step`'s record is in metrics.jsonl; a line being written is not yet read."""
    try:
        return any(r.get("step") == step and "reward/mean" in r for r in records(out))
    except (OSError, ValueError):
        return False


def untimed(record: dict) -> dict:
    """What two runs of one seed must agree on: all but clock readings and fault counts."""
    return {k: v for k, v in record.items() if not (
        k.startswith(("time/", "faults/")) or k.endswith("_s") or k == "timeline")}


@pytest.fixture(scope="module")
def demo_run(demo_job) -> Path:
    """The fault-free demo run: docs/cluster.md's `ray job submit` rehearsal, which trains
    the demo's config for these 2 steps (conftest.demo_job)."""
    job, out = demo_job
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    return out


def accuracy_gain(out: Path) -> tuple[float, float]:
    summary = json.loads((out / "summary.json").read_text())
    return summary["eval_accuracy_initial"], summary["eval_accuracy_final"]


def test_short_demo_raises_heldout_accuracy(demo_run):
    out = demo_run
    before, after = accuracy_gain(out)
    # Measured with seed 0: 0.19 -> 0.54 on the 100 held-out problems after 2 steps (runs
    # are deterministic). A broken learning signal leaves accuracy flat or falling.
    assert after >= before + 0.15, (before, after)


def test_asynchronous_demo_still_learns(tmp_path, demo_home):
    """rollout.max_staleness 1: each rollout is sampled while the learners train on the one
    before, by weights one update old, and truncated importance sampling corrects for it."""
    out = run_demo(tmp_path, demo_home, "--rollout.max_staleness", "1",
                   "--algorithm.tis_cap", "2.0")
    before, after = accuracy_gain(out)
    # Measured with seed 0: 0.19 -> 0.56 after 5 steps (every trained token's weight within
    # [0.96, 1.0] on average, 1.4% of them capped at most), 0.19 -> 0.58 after 3, 0.19 ->
    # 0.45 after these 2 (step 2 trains on responses sampled before update 1).
    assert after >= before + 0.15, (before, after)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "staleness/max" in r]  # the step-0 evaluation has none
    assert [r["staleness/max"] for r in steps] == [0, 1]
    assert max(r["tis/clipped_fraction"] for r in steps) < 0.2  # mostly on-policy enough
    assert (out / "curves.png").stat().st_size > 10_000  # `make demo`'s picture


def test_a_demo_run_whose_engine_is_killed_logs_what_the_fault_free_one_does(tmp_path,
                                                                           demo_home, demo_run):
    """The real demo model in bfloat16, where timing used to change what vLLM computed (two
    runs of one seed parted at step 3): its engine core killed while step 2's rollout is
    sampled, the run recovers and logs, step by step, exactly what the fault-free run logged
    (without evaluations, which the fault does not touch: step 2's rollout is sampled by the
    replacement generator from the weights the sync gave it)."""
    out = tmp_path / "killed"
    log = tmp_path / "stderr.log"  # a file, not a pipe: a full pipe would stall the run
    with open(log, "w") as stderr_file:
        proc = subprocess.Popen(demo_command(out, "--trainer.eval_every", "0"), cwd=ROOT,
                                stdout=subprocess.DEVNULL,
                                stderr=stderr_file, env={**os.environ, "HOME": str(demo_home)})
    try:
        kill_generating_engine(psutil.Process(proc.pid),  # while step 2's rollout is sampled
                               after=lambda: finished_step(out, 1), timeout=900, log=log)
        proc.wait(timeout=1500)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = log.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    assert "recovered: generator 0 failed" in stderr, stderr[-3000:]
    got = records(out)
    expected = [{k: v for k, v in r.items() if not k.startswith("eval/")}
                for r in records(demo_run) if "reward/mean" in r]  # steps, not evaluations
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [1, 2]
    assert got[-1]["faults/generator_restarts"] == 1
    assert [untimed(r) for r in got] == [untimed(r) for r in expected]


def test_the_demo_reruns_the_published_studys_first_two_steps(demo_run):
    """docs/study.md's runs are the demo's setting for 30 steps (launch/configs/study_cpu.yaml
    differs from demo_cpu.yaml only in the steps, the samples log and the folder), so this
    module's demo run is a rerun of the published dr_grpo seed-0 run's first two steps: its
    records (the step-0 and step-2 evaluations included) must be the published ones, metric
    for metric (CPU runs are deterministic; the published figures come from a machine of
    CI's kind, AVX-512 BF16). On a CPU without bfloat16 arithmetic the demo's `dtype: auto` is
    float32, and the published bfloat16 records cannot be rerun: that comparison is skipped,
    saying so."""
    import yaml

    configs = ROOT / "launch" / "configs"
    study, demo = (yaml.safe_load((configs / name).read_text())
                   for name in ("study_cpu.yaml", "demo_cpu.yaml"))
    assert (study["trainer"].pop("max_steps"), demo["trainer"].pop("max_steps")) == (30, 8)
    assert study["trainer"].pop("samples_every") == 1
    study["trainer"].pop("output_dir"), demo["trainer"].pop("output_dir")
    assert study == demo

    published = [json.loads(line) for line in
                 (ROOT / "docs" / "study" / "dr_grpo-seed0.jsonl").read_text().splitlines()]

    got = records(demo_run)
    assert [r["step"] for r in published[:3]] == [r["step"] for r in got] == [0, 1, 2]
    assert "eval/heldout/accuracy" in got[2]
    ran = yaml.safe_load((demo_run / "config.yaml").read_text())["model"]
    published_cfg = yaml.safe_load((ROOT / "docs" / "study" / "config.yaml").read_text())
    if ran["dtype"] != published_cfg["model"]["dtype"]:
        pytest.skip(f"the demo ran in {ran['dtype']} (model.dtype auto: this CPU has no "
                    f"bfloat16 arithmetic); the study was published in "
                    f"{published_cfg['model']['dtype']}")
    # Every published figure, rerun; figures the records gained since (weight_sync/
    # socket_bytes) are not in the published ones, and a published one missing here is None.
    assert ([untimed({k: r.get(k) for k in p}) for r, p in zip(got, published)]
            == [untimed(p) for p in published[:3]])
