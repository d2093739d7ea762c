"""The benchmark suite's machinery (benchmarks/run.py), end to end on its cheapest part.

The figures themselves are not checked here (performance belongs in benchmarks/ and
docs/performance.md, not in tests): what is checked is that a suite run writes results.json
and performance.md with the contract's keys, and that a missing part stops it loudly.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is run from the checkout, not installed

KEYS = {"name", "figures", "baseline", "ratios", "targets", "notes", "machine"}


def suite(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_quick_run_of_the_smallest_parts_writes_results_and_table(tmp_path):
    """The two cheapest parts (seconds each): padding (no target, a tiny model) and
    logprobs_memory (one target), asked for out of order: the suite runs them in PARTS order."""
    out = tmp_path / "bench"
    proc = suite("--quick", "--only", "padding,logprobs_memory", "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result, padding = json.loads((out / "results.json").read_text())
    assert padding["name"] == "padding" and padding["error"] is None and KEYS <= padding.keys()
    assert padding["figures"]["padding_fraction"] < padding["baseline"]["padding_fraction"]
    assert padding["ratios"]["tokens_per_s"] == pytest.approx(
        padding["figures"]["tokens_per_s"] / padding["baseline"]["tokens_per_s"])
    assert KEYS <= result.keys() and result["name"] == "logprobs_memory"
    assert result["error"] is None
    naive, chunked = (result["baseline"]["naive_peak_extra_gib"],
                      result["figures"]["chunked_peak_extra_gib"])
    assert naive > 0 and chunked > 0
    assert result["ratios"]["chunked_vs_naive_peak"] == pytest.approx(chunked / naive)
    target = result["targets"]["chunked_vs_naive_peak"]
    assert target == {"value": pytest.approx(chunked / naive), "target": "<= 0.25",
                      "met": chunked / naive <= 0.25}
    machine = result["machine"]
    assert machine["cores"] == os.cpu_count() and machine["versions"]["torch"]
    assert len(machine["load_avg_before"]) == 3 and len(machine["load_avg_after"]) == 3

    table = (out / "performance.md").read_text()
    assert "## logprobs_memory" in table and "| chunked_vs_naive_peak |" in table
    assert table.index("## logprobs_memory") < table.index("## padding")
    assert "| padding_fraction |" in table
    assert f"{int(target['met'])} of 1 targets met" in table


def test_a_registered_part_without_its_module_stops_the_suite(tmp_path):
    code = ("import sys, benchmarks.run as r; r.PARTS.append('no_such_part'); "
            f"sys.exit(r.main(['--only', 'no_such_part', '--output', {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "missing: benchmarks/no_such_part.py" in proc.stderr
    assert not (tmp_path / "results.json").exists()
    proc = suite("--only", "nonsense", "--output", str(tmp_path))
    assert proc.returncode != 0 and "unknown part(s) nonsense" in proc.stderr


def test_table_shows_a_bare_bound_as_not_evaluated():
    from benchmarks.report import performance_md
    from benchmarks.run import normalise

    machine = {"load_avg_before": [1.0, 1.0, 1.0], "load_avg_after": [2.0, 1.0, 1.0]}
    parts = [normalise("a", {"targets": {"x": {"value": 0.5, "target": "<= 0.25", "met": False}},
                             "figures": {"dtype": {"tokens_per_s": 10.0}}, "error": None}),
             normalise("b", {"targets": {"y": 1.6}, "error": None})]
    for part in parts:
        part.update(seconds=1.0, machine=machine)
    table = performance_md(parts, quick=True)
    assert "0 of 1 targets met; 1 not evaluated" in table
    assert "| a | x | 0.5 | <= 0.25 | **no** |" in table
    assert "| b | y | - | 1.6 | not evaluated |" in table
    assert "| figure | dtype |\n|---|---:|\n| tokens_per_s | 10 |" in table


def test_bare_bounds_are_checked_where_the_part_says_which_way():
    """benchmarks/grading.py keeps its targets as bare bounds (its own output is flat numbers);
    the suite checks them against the ratio or figure of the same name, by its TARGET_OPS."""
    from benchmarks.grading import TARGET_OPS, TARGETS
    from benchmarks.run import evaluate

    part = {"figures": {"hostile_batch_pool2_s": 12.5}, "ratios": {"pool2_vs_loop": 1.7},
            "targets": {**TARGETS, "unknown_way": 3.0}}
    targets = evaluate(part, TARGET_OPS)["targets"]
    assert targets["pool2_vs_loop"] == {"value": 1.7, "target": ">= 1.6", "met": True}
    assert targets["hostile_batch_pool2_s"] == {"value": 12.5, "target": "<= 10", "met": False}
    assert targets["unknown_way"] == 3.0  # no direction given: left for the table to flag
