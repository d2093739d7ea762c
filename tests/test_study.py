"""launch.study's arithmetic and report, on made-up runs (the real study is docs/study.md;
tests/test_demo.py reruns its first two steps)."""

import subprocess
import sys
from pathlib import Path

import pytest

from drgrpo.metrics import mean_ci
from launch.study import conclusions, paired, report, run_name, summaries

ROOT = Path(__file__).resolve().parents[1]


def records(accuracy: list[float], incorrect: float, steps: int = 12) -> list[dict]:
    """A run evaluated every 2 steps (accuracy[k] at step 2k), with flat lengths."""
    out = [{"step": 0, "eval/average": accuracy[0]}]
    for step in range(1, steps + 1):
        r = {"step": step, "reward/mean": 0.5, "response_length/mean": incorrect - 5,
             "response_length/incorrect_mean": incorrect, "response_length/correct_mean": 20.0}
        if step % 2 == 0:
            r["eval/average"] = accuracy[step // 2]
        out.append(r)
    return out


def test_mean_ci_is_students_t():
    assert mean_ci([1.0]) == (1.0, 0.0)
    m, h = mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3: t(2) = 4.303
    assert m == 2.0 and h == pytest.approx(4.303 / 3 ** 0.5)


def test_summaries_read_first_last_best_and_the_late_window():
    s = summaries(records([0.2, 0.4, 0.6, 0.5, 0.5, 0.5, 0.55], incorrect=40.0), 12)
    assert (s["heldout_first"], s["heldout_last"], s["heldout_best"]) == (0.2, 0.55, 0.6)
    assert s["incorrect_length_late"] == 40.0 and s["correct_length_early"] == 20.0


def study(seeds: list[int], gap: float) -> dict:
    runs = {}
    for seed in seeds:
        for method, incorrect in (("grpo", 40.0 + seed), ("dr_grpo", 40.0 + seed - gap)):
            runs[run_name(method, seed)] = {"summary": summaries(
                records([0.2, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6], incorrect), 12)}
    out = {"methods": ["grpo", "dr_grpo"], "seeds": seeds, "max_steps": 12, "runs": runs,
           "command": "python -m launch.study ...", "date": "2026-12-07", "commit": "abc",
           "machine": "test", "wall_time_s": 60.0}
    out["differences"] = {f: paired(runs, out["methods"], seeds, f)
                          for f in next(iter(runs.values()))["summary"]}
    return out


def test_a_paired_difference_is_shown_only_when_its_interval_leaves_zero():
    shorter = study([0, 1, 2], gap=5.0)  # dr_grpo's incorrect responses 5 tokens shorter
    d = shorter["differences"]["incorrect_length_late"]
    assert d["per_seed"] == [-5.0, -5.0, -5.0] and d["low"] == d["high"] == -5.0
    lines = conclusions(shorter)
    assert any("Incorrect responses' length" in line and "dr_grpo is lower than grpo by -5"
               in line for line in lines), lines
    assert any("Held-out accuracy at the last step" in line and "holds 0" in line
               for line in lines), lines
    text = report(shorter)
    assert "| incorrect_length_late | -5.000 | [-5.000, -5.000] |" in text


def test_one_seed_claims_nothing():
    lines = conclusions(study([0], gap=5.0))
    assert any("from one seed: no interval" in line for line in lines), lines
    assert not any(" is lower than " in line for line in lines), lines


@pytest.mark.parametrize("flags,line", [
    (["--seeds", "0,x"], "error: --seeds: expected integers like 0,1,2, got '0,x'"),
    (["--methods", "grpo,ppo"], "error: --methods: expected grpo,dr_grpo (in either order), "
                                "got 'grpo,ppo'"),
])
def test_bad_flags_are_one_line(flags, line, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launch.study", "--config",
                           str(ROOT / "launch" / "configs" / "study_cpu.yaml"), *flags,
                           "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "out").exists()
