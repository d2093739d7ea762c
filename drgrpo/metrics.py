"""Per-step rollout metrics, including the paper's key diagnostic: the mean length of correct
versus incorrect responses (GRPO's length bias shows up as growing incorrect responses)."""

from __future__ import annotations

from collections.abc import Sequence


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def rollout_metrics(lengths: Sequence[int], rewards: Sequence[float], truncated: Sequence[bool],
                    timed_out: Sequence[bool], formatted: Sequence[bool]) -> dict:
    correct = [n for n, r in zip(lengths, rewards) if r >= 1.0]
    incorrect = [n for n, r in zip(lengths, rewards) if r < 1.0]
    count = max(len(lengths), 1)
    return {
        "reward/mean": _mean(rewards) or 0.0,
        "accuracy": len(correct) / count,
        "response_length/mean": _mean(lengths) or 0.0,
        # None (JSON null) when a step has no correct (or no incorrect) response at all.
        "response_length/correct_mean": _mean(correct),
        "response_length/incorrect_mean": _mean(incorrect),
        "response/truncated_fraction": sum(truncated) / count,
        "response/formatted_fraction": sum(formatted) / count,
        "reward/timeouts": int(sum(timed_out)),
    }
