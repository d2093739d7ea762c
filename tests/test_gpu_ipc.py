"""benchmarks/gpu_ipc.py end to end on a CPU (--tiny): the script the GPU machine runs."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_ipc.py"


def test_tiny_run_skips_cuda_ipc_and_sets_the_step_beside_the_plan(tmp_path):
    out = tmp_path / "gpu_ipc.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny",
                           "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())

    # No CUDA here: the IPC figures are skipped, saying so; the same producer/consumer
    # protocol ran over CPU shared memory, and every value arrived.
    ipc = report["ipc"]
    assert ipc["status"] == "skipped" and "CUDA" in ipc["reason"]
    check = ipc["protocol_check"]
    assert check["status"] == "ok" and check["received_correctly"] is True
    assert check["buckets"] == 3 and check["bytes"] == 3 * 2**20
    assert check["first_pass"]["gb_per_s"] > 0 and check["second_pass"]["gb_per_s"] > 0

    step = report["step"]
    assert step["status"] == "ok", step
    assert step["passes_per_step"] == 2 and step["tokens_per_pass"] == 64
    assert step["grad_norm"] > 0
    # The plan's learner for these settings: FSDP at one learner, gradients held between the
    # two passes, so its model states are 16 bytes a parameter.
    items = step["predicted_items_gib"]
    assert step["predicted_peak_gib"] > items["model states"] > 0
    assert "peak_allocated_gib" not in step  # no CUDA counters on a CPU
    assert "CUDA IPC: skipped (CUDA IPC needs a CUDA device)" in proc.stdout
    assert "| peak allocated GiB |" in proc.stdout
