"""Train GRPO and Dr. GRPO from the same base model and seed, and put them side by side.

    python -m launch.compare --config launch/configs/demo_cpu.yaml [--section.key value ...]

Runs the two methods one after the other into `<output_dir>/grpo` and `<output_dir>/dr_grpo`,
then writes `comparison.png` (accuracy, and mean length of incorrect responses, per step) and
`comparison.md` (a table) into `<output_dir>`.
"""

from __future__ import annotations

import sys
from pathlib import Path

METHODS = ("grpo", "dr_grpo")


def comparison_table(runs: dict[str, Path]) -> str:
    from drgrpo.plots import read_metrics

    rows = ["| method | held-out acc. before | after | mean reward, last 5 steps | "
            "incorrect length, first 5 steps | last 5 steps |", "|---|---|---|---|---|---|"]
    for method, run_dir in runs.items():
        records = read_metrics(run_dir)
        evals = [r["eval/average"] for r in records if "eval/average" in r]
        steps = [r for r in records if "reward/mean" in r]

        def mean(key, part):
            values = [r[key] for r in part if r.get(key) is not None]
            return f"{sum(values) / len(values):.3f}" if values else "-"

        rows.append(f"| {method} | {evals[0]:.3f} | {evals[-1]:.3f} | "
                    f"{mean('reward/mean', steps[-5:])} | "
                    f"{mean('response_length/incorrect_mean', steps[:5])} | "
                    f"{mean('response_length/incorrect_mean', steps[-5:])} |"
                    if evals else f"| {method} | - | - | {mean('reward/mean', steps[-5:])} | - | - |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    from drgrpo.config import parse_args
    from drgrpo.plots import plot_comparison
    from launch.demo import prepare_assets
    from launch.run import InputError
    from launch.train import train

    argv = sys.argv[1:] if argv is None else argv
    base = parse_args(argv, prog="python -m launch.compare")
    root = Path(base.trainer.output_dir)
    prepare_assets(base)
    runs = {}
    for method in METHODS:
        cfg = parse_args([*argv, "--algorithm.method", method,
                          "--trainer.output_dir", str(root / method)])
        try:
            train(cfg)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        runs[method] = root / method
    figure = plot_comparison(runs, root / "comparison.png")
    table = comparison_table(runs)
    (root / "comparison.md").write_text(table)
    print(table)
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":  # vLLM's CPU engine spawns processes that re-import __main__
    sys.exit(main())
