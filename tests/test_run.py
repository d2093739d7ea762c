"""Run bookkeeping that resume depends on: which prompts a step draws."""

from types import SimpleNamespace

from launch.run import Run


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
    from drgrpo.config import load_config
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
