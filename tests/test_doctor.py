"""`python -m launch.doctor`: the checks before a long run, and the learners' trial step."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from test_runtime import random_samples, ray_local, tiny_config  # noqa: E402,F401 (fixture)

from drgrpo.batching import plan_steps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def doctor(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "launch.doctor", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cpu_config(tmp_path_factory, tiny_model_path):
    """The demo's shape (one generator, learner and grader on CPUs) on the tiny model."""
    root = tmp_path_factory.mktemp("doctor")
    config = {
        "model": {"path": str(tiny_model_path), "dtype": "float32"},
        "data": {"train_path": str(root / "never-read.jsonl"), "template": "qwen_math",
                 "max_prompt_tokens": 256},
        "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 24},
        "learner": {"lr": 1e-4, "train_batch_size": 8, "micro_batch_size": 2,
                    "gradient_checkpointing": False},
        "cluster": {"num_generators": 1, "num_learners": 1, "num_reward_workers": 1,
                    "device": "cpu"},
        "trainer": {"output_dir": str(root / "runs" / "first")},
    }
    (root / "cpu.yaml").write_text(yaml.safe_dump(config))
    return root


def local_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def test_doctor_passes_and_changes_nothing(cpu_config):
    """Every check passes or is skipped (the GPU-only ones, saying so), in one run of the real
    actors; the learner trained one step and put its weights back, which the row proves; the
    run's output folder is as it was (it did not exist: it still does not)."""
    report, out = cpu_config / "report.json", cpu_config / "runs"
    start = time.monotonic()
    proc = doctor("--config", str(cpu_config / "cpu.yaml"), "--json", str(report),
                  env=local_env())
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(report.read_text())["rows"]}
    assert list(rows) == ["versions", "resources", "placement", "transfer group", "generators",
                          "graders", "sleep and wake", "learner step", "weight sync",
                          "output folder"]
    assert {r["status"] for r in rows.values()} <= {"pass", "skip"}, rows
    assert [n for n, r in rows.items() if r["status"] == "skip"] == ["resources",
                                                                     "sleep and wake"]
    assert "only on GPUs" in rows["sleep and wake"]["reason"]
    # One machine: the weights go through shared memory (actors/shared_memory.py).
    assert rows["transfer group"]["reason"].startswith("shared memory: learner 0 and 1 vLLM")
    step = rows["learner step"]["figures"]
    assert step["restored"] and step["checksum_before"] == step["checksum_after"]
    assert step["moved"] > 0 and step["grad_norm"] > 0
    sync = rows["weight sync"]["figures"]
    assert sync["tolerance"] == {"max": 1e-3, "mean": 1e-3}  # float32 on both sides
    assert sync["generator 0"]["max_abs_diff"] <= 1e-3
    assert sync["bytes"] > 0
    assert not out.exists()  # the probe and the folders it needed are gone
    for name in rows:  # the table, one row per check
        assert name in proc.stdout
    assert "ready: 8 checks passed, 2 skipped" in proc.stdout
    print(f"doctor on the tiny model: {elapsed:.0f} s")


def test_failed_check_skips_what_needs_it(cpu_config):
    """16 learners of a quarter CPU each cannot be placed on this machine's 2 CPUs: placement
    fails in one line within cluster.placement_timeout_s, every check that needs the actors is
    skipped saying why, the rest still run, and the doctor exits 1."""
    report = cpu_config / "failed.json"
    proc = doctor("--config", str(cpu_config / "cpu.yaml"), "--json", str(report),
                  "--cluster.num_learners", "16", "--learner.train_batch_size", "16",
                  "--rollout.prompts_per_step", "4",
                  "--cluster.placement_timeout_s", "3", env=local_env(), timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(report.read_text())["rows"]}
    assert rows["placement"]["status"] == "fail"
    assert "16 learners x {CPU: 0.25}" in rows["placement"]["reason"]
    for name in ("transfer group", "generators", "graders", "sleep and wake", "learner step",
                 "weight sync"):
        assert rows[name]["status"] == "skip", rows[name]
        assert rows[name]["reason"] == "needs placement, which did not pass"
    assert rows["versions"]["status"] == rows["output folder"]["status"] == "pass"
    assert "failed: placement" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_unreachable_ray_is_one_line_within_a_minute(cpu_config):
    """ray.init retries an address that does not answer for minutes; the doctor says so in
    one line, at once."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    proc = doctor("--config", str(cpu_config / "cpu.yaml"),
                  env={**local_env(), "RAY_ADDRESS": f"127.0.0.1:{port}"}, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert elapsed < 60
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port} "
                               "(RAY_ADDRESS)"), lines


def test_bad_model_folder_is_one_line(cpu_config, tmp_path):
    proc = doctor("--config", str(cpu_config / "cpu.yaml"), "--model.path",
                  str(tmp_path / "no-model"), env=local_env(), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: model.path: {tmp_path / 'no-model'} "
                                                "does not exist"]


@pytest.mark.parametrize("strategy,stage", [("fsdp", 2), ("deepspeed", 2), ("deepspeed", 3)],
                         ids=["fsdp", "zero2", "zero3"])
def test_trial_step_trains_then_leaves_the_learners_as_they_were(ray_local, tiny_model_path,  # noqa: F811
                                                                 tmp_path, strategy, stage):
    """Two learners that have trained already (so AdamW holds moments and a step count) take a
    trial step: it really steps (the weights move), then every weight, master weight and
    optimizer tensor is bit for bit what it was: the full model is unchanged, and a second
    trial step moves the weights exactly as the first did, which it would not if the first
    had left its moments or step count behind."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from launch.cluster import create_learners

    cfg = tiny_config(tiny_model_path, tmp_path, **{
        "learner.strategy": strategy, "learner.zero_stage": stage, "cluster.num_learners": 2,
        "model.dtype": "bfloat16" if strategy == "deepspeed" else "float32"})
    pg = placement_group([{"CPU": 0.25}] * 2)
    ray.get(pg.ready())
    learners = create_learners(cfg, "cpu", pg, 0, 0.25)
    try:
        ray.get([l.train.remote(p) for l, p in
                 zip(learners, plan_steps(random_samples(), 8, 2, seed=0))])
        trial = plan_steps(random_samples(n=4, seed=1), 4, 2, seed=0)

        def trial_step():
            return ray.get([l.trial_step.remote(p[0]) for l, p in zip(learners, trial)])

        before = ray.get([l.full_state.remote() for l in learners])[0]
        first = trial_step()
        after = ray.get([l.full_state.remote() for l in learners])[0]
        assert before.keys() == after.keys()
        assert all(torch_equal(before[k], after[k]) for k in before)
        for rank in first:
            assert rank["restored"] and rank["moved"] > 0 and rank["grad_norm"] > 0, rank
            assert rank["checksum_before"] == rank["checksum_after"]
        assert trial_step() == first
    finally:
        for l in learners:
            ray.kill(l)
        remove_placement_group(pg)


def torch_equal(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and torch.equal(a, b)
