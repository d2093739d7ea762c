"""Figures from metrics.jsonl: the curves a researcher looks at first.

`plot_run`: reward and held-out accuracy per step, and the paper's diagnostic, the mean length
of correct vs incorrect responses. `plot_comparison`: GRPO vs Dr. GRPO side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"dr_grpo": "#1f77b4", "grpo": "#d62728"}


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(run_dir: str | Path, title: str = "") -> Path:
    records = read_metrics(run_dir)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    left.plot(*_series(records, "reward/mean"), label="training reward (mean of group samples)",
              color="#7f7f7f", alpha=0.8)
    left.plot(*_series(records, "eval/average"), "o-", label="held-out accuracy (greedy)",
              color="#2ca02c", linewidth=2)
    left.set(xlabel="policy step", ylabel="accuracy / reward", ylim=(0, 1),
             title="Reward and held-out accuracy")
    left.legend(loc="upper left")
    left.grid(alpha=0.3)

    right.plot(*_series(records, "response_length/correct_mean"), label="correct responses",
               color="#2ca02c")
    right.plot(*_series(records, "response_length/incorrect_mean"), label="incorrect responses",
               color="#d62728")
    right.set(xlabel="policy step", ylabel="mean response length (tokens)",
              title="Response length: correct vs incorrect")
    right.legend()
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    out = Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_comparison(runs: dict[str, str | Path], out: str | Path) -> Path:
    """`runs` maps a method name ("grpo", "dr_grpo") to its run folder."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for method, run_dir in runs.items():
        records = read_metrics(run_dir)
        color = COLORS.get(method)
        left.plot(*_series(records, "eval/average"), "o-", color=color, label=f"{method} held-out")
        left.plot(*_series(records, "accuracy"), color=color, alpha=0.35,
                  label=f"{method} training")
        right.plot(*_series(records, "response_length/incorrect_mean"), color=color,
                   label=method)
    left.set(xlabel="policy step", ylabel="accuracy", ylim=(0, 1), title="Accuracy")
    right.set(xlabel="policy step", ylabel="tokens",
              title="Mean length of incorrect responses")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
