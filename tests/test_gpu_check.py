"""benchmarks/gpu_check.py end to end on a CPU (--tiny): the script the GPU machine runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_tiny_run_reports_both_checkpointing_modes(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny",
                           "--peak-tflops", "1", "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())

    runs = {r["gradient_checkpointing"]: r for r in report["runs"]}
    assert sorted(runs) == [False, True] and len(report["runs"]) == 2
    for run in runs.values():
        assert run["status"] == "ok", run
        assert run["tokens_per_s"] > 0 and run["model_tflops_per_s"] > 0
        assert len(run["step_seconds"]) == report["warmup"] + report["steps"]
        assert run["grad_norm"] > 0
        assert run["mfu"] == pytest.approx(run["model_tflops_per_s"] / 1.0)  # --peak-tflops 1
    # Each decoder layer runs again in the backward pass only when checkpointing is on.
    assert runs[True]["layer_forwards_per_step"] == 2
    assert runs[False]["layer_forwards_per_step"] == 1
    # Same weights and batch: checkpointing changes what is kept for backward, not the gradient.
    assert runs[True]["grad_norm"] == pytest.approx(runs[False]["grad_norm"], rel=1e-6)
    assert report["model"]["params"] == report["model"]["matmul_params"] > 0  # tied embedding
    assert "| on | 2 x 64 | ok |" in proc.stdout and "| off | 2 x 64 | ok |" in proc.stdout
