"""GRPO vs Dr. GRPO over several seeds: one command, every run kept, the paper's two pictures.

    python -m launch.study --config launch/configs/study_cpu.yaml --methods grpo,dr_grpo \\
        --seeds 0,1,2 --output runs/study [--section.key value ...]

Trains each method with each seed, one `python -m launch.train` after another (each in a
process of its own, as a user runs it, so any run can be reproduced alone from
`<output>/config.yaml`). For a given seed both methods draw the same prompts in the same order:
the data order and the sampling seeds come from `trainer.seed`. A run already complete in
`<output>/runs/` is kept, not redone, so a stopped study continues where it stopped.

Writes into `<output>`: `study.json` (every run's per-step metrics and evaluations, the
settings, the command, the commit and the machine), `study.md` (what the data show and do not
show: paired differences between the methods with 95% intervals over seeds), and the paper's
two pictures: `accuracy_length.png` (held-out accuracy and mean response length against steps)
and `correct_incorrect.png` (mean length of correct and of incorrect responses), each method's
mean over seeds with its 95% interval.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from drgrpo.metrics import mean_ci

ROOT = Path(__file__).resolve().parents[1]
LAST = 10  # "late in training": the last this many steps
FIRST = 5  # "early in training": the first this many steps


def run_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


def complete(run_dir: Path, steps: int) -> bool:
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("steps") == steps


def train_one(config: Path, method: str, seed: int, out: Path, overrides: list[str]) -> None:
    command = [sys.executable, "-m", "launch.train", "--config", str(config), *overrides,
               "--algorithm.method", method, "--trainer.seed", str(seed),
               "--trainer.output_dir", str(out)]
    print(f"study: {run_name(method, seed)} ...", flush=True)
    proc = subprocess.run(command, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"error: {run_name(method, seed)} failed (exit {proc.returncode}); "
                         f"its log is above, its output in {out}")


# --- what the runs show ---------------------------------------------------------------------

def per_step(records: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records if r.get(key) is not None}


def window_mean(records: list[dict], key: str, steps: range) -> float | None:
    values = [v for s, v in per_step(records, key).items() if s in steps]
    return statistics.fmean(values) if values else None


def summaries(records: list[dict], max_steps: int) -> dict[str, float | None]:
    """One run's figures: held-out accuracy (first, last, best) and response lengths early
    and late in training."""
    evals = per_step(records, "eval/average")
    late, early = range(max_steps - LAST + 1, max_steps + 1), range(1, FIRST + 1)
    out = {"heldout_first": evals.get(0), "heldout_last": evals.get(max_steps),
           "heldout_best": max(evals.values()) if evals else None}
    for key, name in (("response_length/mean", "length"),
                      ("response_length/incorrect_mean", "incorrect_length"),
                      ("response_length/correct_mean", "correct_length"),
                      ("reward/mean", "reward")):
        out[f"{name}_early"] = window_mean(records, key, early)
        out[f"{name}_late"] = window_mean(records, key, late)
    return out


def paired(runs: dict, methods: list[str], seeds: list[int], figure: str) -> dict | None:
    """methods[1] - methods[0] of one figure, seed by seed (same prompts), with its 95%
    interval; None when a run lacks the figure."""
    diffs = []
    for seed in seeds:
        a, b = (runs[run_name(m, seed)]["summary"][figure] for m in methods)
        if a is None or b is None:
            return None
        diffs.append(b - a)
    m, h = mean_ci(diffs)
    return {"mean": m, "low": m - h, "high": m + h, "per_seed": diffs}


def report(study: dict) -> str:
    """study.md: the runs' figures by method, the paired differences, and what they say."""
    methods, seeds, runs = study["methods"], study["seeds"], study["runs"]
    lines = [f"# {methods[0]} vs {methods[1]}: {len(seeds)} seeds x {study['max_steps']} steps",
             "", f"Command: `{study['command']}`  ", f"Date: {study['date']}; commit "
             f"{study['commit']}; machine: {study['machine']}; wall time "
             f"{study['wall_time_s'] / 60:.0f} min.", "",
             "## Each method, mean over seeds (95% interval)", "",
             "| figure | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    figures = list(next(iter(runs.values()))["summary"])
    for figure in figures:
        cells = []
        for m in methods:
            values = [runs[run_name(m, s)]["summary"][figure] for s in seeds]
            if any(v is None for v in values):
                cells.append("-")
                continue
            mean, half = mean_ci(values)
            cells.append(f"{mean:.3f} ± {half:.3f}")
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    lines += ["", f"## {methods[1]} minus {methods[0]}, paired by seed (95% interval)", "",
              "| figure | difference | interval | per seed | shown |",
              "|---|---:|---|---|---|"]
    for figure, d in study["differences"].items():
        if d is None:
            continue
        shown = "one seed: no interval" if len(study["seeds"]) < 2 else (
            "no: the interval holds 0" if d["low"] <= 0 <= d["high"] else (
                "yes, higher" if d["low"] > 0 else "yes, lower"))
        lines.append(f"| {figure} | {d['mean']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] | "
                     + ", ".join(f"{x:+.3f}" for x in d["per_seed"]) + f" | {shown} |")
    lines += ["", "## What this shows, and does not", "", *conclusions(study), ""]
    return "\n".join(lines)


def conclusions(study: dict) -> list[str]:
    """Plain sentences from the paired differences; nothing beyond what their intervals say."""
    a, b = study["methods"]
    d, out = study["differences"], []

    def say(figure: str, what: str, unit: str) -> None:
        x = d.get(figure)
        if x is None:
            return
        interval = (f"{x['mean']:+.3g}{unit} (95% interval {x['low']:+.3g} to "
                    f"{x['high']:+.3g})")
        if len(study["seeds"]) < 2:
            out.append(f"- {what}: {b} minus {a} is {x['mean']:+.3g}{unit}, from one seed: "
                       "no interval, nothing shown either way.")
        elif x["low"] <= 0 <= x["high"]:
            out.append(f"- {what}: {b} minus {a} is {interval}; the interval holds 0, so these "
                       f"{len(study['seeds'])} seeds show no difference either way.")
        else:
            side = "higher" if x["low"] > 0 else "lower"
            out.append(f"- {what}: {b} is {side} than {a} by {interval}.")

    say("heldout_last", "Held-out accuracy at the last step", "")
    say("heldout_best", "Best held-out accuracy", "")
    say("incorrect_length_late", f"Incorrect responses' length, last {LAST} steps", " tokens")
    say("correct_length_late", f"Correct responses' length, last {LAST} steps", " tokens")
    say("length_late", f"Mean response length, last {LAST} steps", " tokens")
    out.append(f"- With {len(study['seeds'])} seeds an interval is wide: a difference smaller "
               "than its half-width is not ruled out; this is a miniature (a 135M model, "
               f"{study['max_steps']} steps), not the paper's runs of hundreds of steps.")
    return out


def plots(study: dict, output: Path) -> list[Path]:
    from launch.plots import plot_study

    series = {m: [read_records(Path(study["runs"][run_name(m, s)]["dir"]))
                  for s in study["seeds"]] for m in study["methods"]}
    return plot_study(series, output)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else "")


# --- the command ----------------------------------------------------------------------------

def _take(argv: list[str], flag: str) -> str | None:
    if flag in argv:
        i = argv.index(flag)
        if i + 1 >= len(argv):
            raise SystemExit(f"error: {flag}: missing its value")
        value = argv[i + 1]
        del argv[i:i + 2]
        return value
    return None


def main(argv: list[str] | None = None) -> int:
    from drgrpo.config_cli import parse_args
    from launch.demo import prepare_assets

    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m launch.study " + " ".join(argv)
    methods = (_take(argv, "--methods") or "grpo,dr_grpo").split(",")
    seeds_text = _take(argv, "--seeds") or "0,1,2"
    output = Path(_take(argv, "--output") or "runs/study").absolute()
    try:
        seeds = [int(s) for s in seeds_text.split(",")]
    except ValueError:
        raise SystemExit(f"error: --seeds: expected integers like 0,1,2, got {seeds_text!r}") \
            from None
    if sorted(methods) != ["dr_grpo", "grpo"]:
        raise SystemExit(f"error: --methods: expected grpo,dr_grpo (in either order), got "
                         f"{','.join(methods)!r}")
    cfg = parse_args(argv, prog="python -m launch.study")  # bad settings: lines, exit 2
    prepare_assets(cfg)
    output.mkdir(parents=True, exist_ok=True)
    config = cfg.save(output)  # every run's settings, but for method, seed and folder
    runs = {}
    for seed in seeds:
        for method in methods:
            out = output / "runs" / run_name(method, seed)
            if not complete(out, cfg.trainer.max_steps):
                train_one(config, method, seed, out, [])
            records = read_records(out)
            runs[run_name(method, seed)] = {"method": method, "seed": seed, "dir": str(out),
                                            "summary": summaries(records, cfg.trainer.max_steps),
                                            "metrics": records}
    study = {"methods": methods, "seeds": seeds, "max_steps": cfg.trainer.max_steps,
             "command": command, "commit": commit(), "machine": machine(),
             "date": datetime.date.today().isoformat(),
             # the runs' own, whichever invocation of the study made them
             "wall_time_s": sum(json.loads((Path(r["dir"]) / "summary.json").read_text())
                                ["wall_time_s"] for r in runs.values()),
             "settings": cfg.to_dict(), "runs": runs}
    study["differences"] = {figure: paired(runs, methods, seeds, figure)
                            for figure in next(iter(runs.values()))["summary"]}
    (output / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    (output / "study.md").write_text(report(study))
    pictures = plots(study, output)
    print(report(study))
    print("wrote " + ", ".join(str(p) for p in [output / "study.json", output / "study.md",
                                                *pictures]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
