"""benchmarks/padding.py in its quick configuration, so the benchmark cannot rot."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("ray")  # the benchmark runs actors.learner, which imports ray

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "padding.py"


def test_quick_run_reports_both_layouts():
    spec = importlib.util.spec_from_file_location("padding_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    result = bench.run(quick=True)
    assert result["name"] == "padding"
    figures, baseline = result["figures"], result["baseline"]
    for layout in (figures, baseline):
        assert layout["tokens_per_s"] > 0 and 0 <= layout["padding_fraction"] < 1
    # Learner-reported padding: sorted and packed under one longest sequence, a small part
    # of what the count layout pads (the same rollout; drgrpo.batching decides the layouts).
    assert figures["padding_fraction"] < baseline["padding_fraction"] / 3
    assert figures["wide_budget_padding_fraction"] < baseline["padding_fraction"]
    assert result["ratios"]["tokens_per_s"] == pytest.approx(
        figures["tokens_per_s"] / baseline["tokens_per_s"])
    assert figures["load_avg_1m_start"] >= 0 and figures["quick"] is True
