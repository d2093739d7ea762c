"""The metrics fan-out without Ray: what TensorBoard's own reader sees, resume, missing wandb."""

import json
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from drgrpo.config import Config
from launch.loggers import Loggers
from launch.run import InputError, prepare


def config(tmp_path, loggers=("jsonl", "tensorboard")) -> Config:
    return Config(model={"path": str(tmp_path / "no-model")}, data={"train_path": "t.jsonl"},
                  trainer={"output_dir": str(tmp_path / "run"), "loggers": list(loggers)})


def scalars(tmp_path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return []
    return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]


def steps_in_jsonl(tmp_path) -> list[tuple[int, float | None]]:
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r.get("reward/mean")) for r in map(json.loads, lines)]


def log_steps(loggers: Loggers, steps, scale=1.0) -> None:
    for step in steps:
        loggers.log({"step": step, "reward/mean": step * scale, "reward/timeouts": 0})


def test_every_number_goes_to_tensorboard_at_its_step_and_none_is_skipped(tmp_path):
    with Loggers(config(tmp_path), resume_step=None) as loggers:
        loggers.log({"step": 0, "eval/arith/accuracy": 0.25, "eval/average": 0.25})
        for step in (1, 2, 3):
            loggers.log({"step": step, "reward/mean": step / 10, "reward/timeouts": step - 1,
                         "response_length/correct_mean": None if step == 2 else 7.5})
    assert scalars(tmp_path, "reward/mean") == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert scalars(tmp_path, "reward/timeouts") == [(1, 0), (2, 1), (3, 2)]
    assert scalars(tmp_path, "eval/average") == [(0, 0.25)]
    # No correct response at step 2: a gap in the curve, not a zero.
    assert scalars(tmp_path, "response_length/correct_mean") == [(1, 7.5), (3, 7.5)]
    assert scalars(tmp_path, "step") == []
    records = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert records[2]["response_length/correct_mean"] is None  # jsonl keeps the null


def test_resume_rewrites_the_steps_after_the_checkpoint_once(tmp_path):
    # A run logged steps 1-5 and crashed; its checkpoint is at step 3.
    with Loggers(config(tmp_path), resume_step=None) as loggers:
        log_steps(loggers, range(1, 6))
    with Loggers(config(tmp_path), resume_step=3) as loggers:
        log_steps(loggers, (4, 5), scale=10)
    assert scalars(tmp_path, "reward/mean") == [(1, 1), (2, 2), (3, 3), (4, 40), (5, 50)]
    assert steps_in_jsonl(tmp_path) == [(1, 1), (2, 2), (3, 3), (4, 40), (5, 50)]


def test_resume_at_the_last_step_still_hides_the_lost_steps(tmp_path):
    with Loggers(config(tmp_path), resume_step=None) as loggers:
        log_steps(loggers, range(1, 6))
    Loggers(config(tmp_path), resume_step=3).close()  # nothing left to run
    assert scalars(tmp_path, "reward/mean") == [(1, 1), (2, 2), (3, 3)]
    assert steps_in_jsonl(tmp_path) == [(1, 1), (2, 2), (3, 3)]


def test_a_fresh_run_starts_the_logs_over(tmp_path):
    with Loggers(config(tmp_path), resume_step=None) as loggers:
        log_steps(loggers, range(1, 4))
    with Loggers(config(tmp_path), resume_step=None) as loggers:
        log_steps(loggers, (1,), scale=9)
    assert scalars(tmp_path, "reward/mean") == [(1, 9)]
    assert steps_in_jsonl(tmp_path) == [(1, 9)]


def test_jsonl_only_writes_no_event_files(tmp_path):
    with Loggers(config(tmp_path, loggers=["jsonl"]), resume_step=None) as loggers:
        log_steps(loggers, (1,))
    assert steps_in_jsonl(tmp_path) == [(1, 1)]
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_missing_wandb_stops_with_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import fails
    cfg = config(tmp_path, loggers=["jsonl", "tensorboard", "wandb"])
    with pytest.raises(InputError) as info:
        prepare(cfg)
    assert str(info.value) == "trainer.loggers: wandb needs the wandb package: pip install wandb"

    from launch.train import main

    code = main(["--model.path", str(tmp_path / "no-model"), "--data.train_path", "t.jsonl",
                 "--trainer.output_dir", str(tmp_path / "run"),
                 "--trainer.loggers", "[jsonl, tensorboard, wandb]"])
    assert code == 2
    assert capsys.readouterr().err == ("error: trainer.loggers: wandb needs the wandb package: "
                                       "pip install wandb\n")
    assert not (tmp_path / "run").exists()  # checked before the model, data or output folder


def test_wandb_offline_gets_the_same_numbers(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # wandb's own switch: no network, no login
    with Loggers(config(tmp_path, loggers=["jsonl", "wandb"]), resume_step=None) as loggers:
        loggers.log({"step": 0, "eval/average": 0.25})
        for step, correct in ((1, 7.5), (2, None), (3, 8.0)):
            loggers.log({"step": step, "reward/mean": step / 10,
                         "response_length/correct_mean": correct})
        # W&B commits a step when the next one starts: the summary now holds step 2's values.
        summary = wandb.run.summary
        assert (summary["eval/average"], summary["reward/mean"]) == (0.25, 0.2)
        assert summary["response_length/correct_mean"] == 7.5  # step 2's None was not logged
        assert (wandb.run.name, wandb.run.project) == ("run", "drgrpo")
    assert wandb.run is None  # finished on close
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
