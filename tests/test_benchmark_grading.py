"""benchmarks/grading.py end to end in its smallest configuration (--quick), so it cannot rot.

It starts a local Ray of its own, in a child process, as the benchmark suite would run it.
Its figures are not checked against the targets: 104 responses time noise, not throughput.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_reports_flat_figures(shared_data_dir, tmp_path):
    out = tmp_path / "grading.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.grading", "--quick", "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result
    assert result["name"] == "grading"
    assert sorted(result) == ["baseline", "figures", "name", "ratios", "targets"]
    for section in ("figures", "baseline", "ratios", "targets"):
        values = result[section].values()
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), section
    f = result["figures"]
    assert (f["responses"], f["hostile_batch_size"]) == (104, 8)
    # Every configuration graded the same responses alike; nothing hit the limit.
    assert f["pool_verdicts_differ"] == 0 and f["timeouts"] == 0
    assert min(f["loop_responses_per_s"], f["pool1_responses_per_s"],
               f["pool2_responses_per_s"]) > 0
    assert 0 < f["hostile_batch_pool2_s"] < f["timeout_s"]  # the 8 hostile: none took the limit
    assert set(result["ratios"]) == {"pool1_vs_loop", "pool2_vs_loop"}
    assert set(result["targets"]) <= set(result["ratios"]) | set(f)
