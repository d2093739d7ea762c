"""Figures from metrics.jsonl: the curves a researcher looks at first.

`plot_run`: reward and held-out accuracy per step, and the paper's diagnostic, the mean length
of correct vs incorrect responses. `plot_study`: GRPO vs Dr. GRPO over seeds (launch.study).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.patches  # noqa: E402
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


def _band(ax, runs: list[list[dict]], key: str, color: str, label: str, style: str = "-"):
    """The mean over runs at each step where every run has `key`, and its 95% interval."""
    from drgrpo.metrics import mean_ci

    by_step = [dict(zip(*_series(records, key))) for records in runs]
    steps = sorted(set.intersection(*(set(s) for s in by_step)))
    stats = [mean_ci([s[step] for s in by_step]) for step in steps]
    means = [m for m, _ in stats]
    ax.plot(steps, means, style, color=color, label=label)
    ax.fill_between(steps, [m - h for m, h in stats], [m + h for m, h in stats], color=color,
                    alpha=0.15, linewidth=0)


def plot_study(series: dict[str, list[list[dict]]], out_dir: str | Path) -> list[Path]:
    """`series[method]`: each seed's metrics records. The paper's two pictures, each method's
    mean over seeds with its 95% interval: held-out accuracy and mean response length, and
    the lengths of correct and incorrect responses, against steps."""
    n = len(next(iter(series.values())))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for method, runs in series.items():
        _band(left, runs, "eval/average", COLORS.get(method), method, "o-")
        _band(right, runs, "response_length/mean", COLORS.get(method), method)
    left.set(xlabel="policy step", ylabel="held-out accuracy (greedy)", ylim=(0, 1),
             title=f"Held-out accuracy, mean of {n} seeds (95% interval)")
    right.set(xlabel="policy step", ylabel="tokens",
              title=f"Mean response length, mean of {n} seeds")
    first = Path(out_dir) / "accuracy_length.png"
    _finish(fig, (left, right), first)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True,
                                      sharey=True)
    for ax, (key, title) in zip((left, right), (
            ("response_length/correct_mean", "Correct responses"),
            ("response_length/incorrect_mean", "Incorrect responses"))):
        for method, runs in series.items():
            _band(ax, runs, key, COLORS.get(method), method)
        ax.set(xlabel="policy step", ylabel="mean length (tokens)",
               title=f"{title}, mean of {n} seeds (95% interval)")
    second = Path(out_dir) / "correct_incorrect.png"
    _finish(fig, (left, right), second)
    return [first, second]


def _finish(fig, axes, out: Path) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# Which lane of the timeline each phase of a step runs on, and its colour.
LANES = {"generate": ("generators", "#1f77b4"), "reward": ("graders", "#ff7f0e"),
         "train": ("learners", "#2ca02c"), "weight_sync": ("learners", "#9467bd")}


def plot_timeline(run_dir: str | Path, out: str | Path | None = None,
                  steps: tuple[int, int] | None = None) -> Path:
    """Each step's phases as bars on the run's clock, one lane per role: the gaps in a lane
    are that role waiting for another (generators for the learners and back), and bars of
    different lanes that overlap in time are the pipeline's overlap."""
    records = [r for r in read_metrics(run_dir) if "timeline" in r
               and (steps is None or steps[0] <= r["step"] <= steps[1])]
    if not records:
        raise ValueError(f"{Path(run_dir) / 'metrics.jsonl'}: no step has a timeline")
    lanes = list(dict.fromkeys(lane for lane, _ in LANES.values()))
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.6 * len(lanes)), constrained_layout=True)
    origin = min(start for r in records for start, _ in r["timeline"].values())
    for r in records:
        for phase, (start, end) in r["timeline"].items():
            lane, color = LANES.get(phase, (phase, "#7f7f7f"))
            if lane not in lanes:
                lanes.append(lane)
            ax.broken_barh([(start - origin, end - start)], (lanes.index(lane) - 0.35, 0.7),
                           facecolors=color, edgecolors="white", linewidth=0.5)
        first = min(start for start, _ in r["timeline"].values())
        ax.annotate(str(r["step"]), (first - origin, len(lanes) - 0.45), fontsize=7,
                    color="#555555")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_ylim(-0.6, len(lanes) - 0.2)
    ax.invert_yaxis()
    ax.set(xlabel="seconds since the first step shown", title="Where each step's time goes")
    ax.legend(handles=[matplotlib.patches.Patch(color=c, label=p) for p, (_, c) in LANES.items()],
              loc="upper right", ncol=len(LANES), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    out = Path(out) if out else Path(run_dir) / "timeline.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
