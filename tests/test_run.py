"""Run bookkeeping that resume depends on: which prompts a step draws, and what a checkpoint
kept for the steps after it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from actors.generator import Completion
from drgrpo.config_load import load_config
from drgrpo.data import Problem
from launch.pipeline import Rollout, rollouts_to_json
from launch.run import InputError, Run, prepare

ROOT = Path(__file__).resolve().parents[1]


def _run(n_prompts: int, per_step: int, seed: int) -> Run:
    run = Run.__new__(Run)  # only the fields prompts_for_step reads
    run.train_set = list(range(n_prompts))
    run.cfg = SimpleNamespace(rollout=SimpleNamespace(prompts_per_step=per_step),
                              trainer=SimpleNamespace(seed=seed))
    return run


def test_each_epoch_is_a_permutation_and_epochs_differ():
    run = _run(12, 4, seed=0)
    drawn = [p for step in range(1, 7) for p in run.prompts_for_step(step)]  # two epochs
    first, second = drawn[:12], drawn[12:]
    assert sorted(first) == sorted(second) == list(range(12))
    assert first != second


def test_a_step_spanning_two_epochs_and_resume_draw_the_same_prompts():
    # 10 prompts, 4 per step: step 3 takes 2 from epoch 0 and 2 from epoch 1.
    uninterrupted = [_run(10, 4, seed=5).prompts_for_step(s) for s in range(1, 6)]
    resumed = _run(10, 4, seed=5)  # a fresh process after a checkpoint at step 2
    assert [resumed.prompts_for_step(s) for s in range(3, 6)] == uninterrupted[2:]
    assert sorted(uninterrupted[0] + uninterrupted[1] + uninterrupted[2][:2]) == list(range(10))
    assert _run(10, 4, seed=6).prompts_for_step(1) != uninterrupted[0]


def test_output_dir_is_made_absolute_on_the_driver(tmp_path, monkeypatch, capsys):
    """Learners on other nodes (and in other working directories) must write to the very
    folder the driver means, so the driver resolves it and hands on the absolute path."""
    from launch.run import absolute_output_dir

    monkeypatch.chdir(tmp_path)
    flags = ["--model.path", "m", "--data.train_path", "t.jsonl", "--trainer.output_dir", "runs/x"]
    cfg = load_config(None, flags)
    assert absolute_output_dir(cfg) == tmp_path / "runs" / "x"
    assert cfg.trainer.output_dir == str(tmp_path / "runs" / "x")
    assert capsys.readouterr().err == ""

    # Under `ray job submit --working-dir`, a relative folder lands in Ray's temporary copy.
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "x"}}')
    absolute_output_dir(load_config(None, flags))
    assert "temporary copy of its working directory" in capsys.readouterr().err


def _checkpoint(root, logprobs):
    """A checkpoint folder as far as `prepare` reads it before the model: its state and the
    rollout it kept for the step after it (as an asynchronous run saves one)."""
    checkpoint = root / "checkpoints" / "step_000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 1}))
    completions = [Completion([1, 2], [3, 4], "x", "stop", 0, logprobs) for _ in range(2)]
    rollouts = [Rollout(2, [Problem("1+1?", "2")], completions, 0.0, 1.0, 0.0, 0.0)]
    (checkpoint / "rollouts.json").write_text(rollouts_to_json(rollouts))
    return checkpoint, rollouts


def _flags(tmp_path, checkpoint, *extra):
    return ["--model.path", "m", "--data.train_path", str(tmp_path / "t.jsonl"),
            "--trainer.output_dir", str(tmp_path / "out"), "--trainer.loggers", "[jsonl]",
            "--trainer.resume", str(checkpoint), *extra]


def test_resuming_importance_sampling_from_rollouts_without_logprobs_is_refused(tmp_path):
    """The learners would find the log-probs missing only once every actor is up."""
    checkpoint, _ = _checkpoint(tmp_path, logprobs=None)
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", *_flags(tmp_path, checkpoint, "--algorithm.tis_cap", "2")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert error.startswith("error: algorithm.tis_cap: 2 weights each token by vLLM's log-prob")
    assert str(checkpoint / "rollouts.json") in error
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_a_resumed_run_keeps_the_checkpoints_rollouts(tmp_path, tiny_model_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    setting = ["--rollout.prompts_per_step", "1", "--learner.train_batch_size", "8"]
    checkpoint, rollouts = _checkpoint(tmp_path, logprobs=[-0.5, -1.5])
    shutil.copytree(tiny_model_path, checkpoint / "model")
    for tis_cap in ("0", "2"):
        cfg = load_config(None, _flags(tmp_path, checkpoint, *setting, "--algorithm.tis_cap", tis_cap))
        run = prepare(cfg)
        assert run.saved_rollouts() == rollouts and run.state.step == 1

    without, _ = _checkpoint(tmp_path / "old", logprobs=None)
    shutil.copytree(tiny_model_path, without / "model")
    assert prepare(load_config(None, _flags(tmp_path, without, *setting))).saved_rollouts()  # tis_cap 0

    (without / "rollouts.json").write_text('[{"step": 2}')
    with pytest.raises(InputError, match=r"^trainer.resume: cannot read .*rollouts.json: JSONDecodeError"):
        prepare(load_config(None, _flags(tmp_path, without, *setting)))
