"""Per-step rollout metrics, including the paper's key diagnostic: the mean length of correct
versus incorrect responses (GRPO's length bias shows up as growing incorrect responses)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


class LogprobAgreement:
    """How far vLLM's log-probs of the sampled tokens are from the learner's first pass over
    the same tokens, |log pi_old - log mu|, over responses sampled by the weights being
    trained. Healthy, it is the two dtypes' and kernels' rounding; weights that did not reach
    vLLM (a dropped sleep-mode weight, a stale prefix cache, a failed sync) make it jump."""

    def __init__(self):
        self.sum, self.tokens, self.max = 0.0, 0, 0.0

    def add(self, learner, vllm, mask) -> None:
        """Tensors of one batch; `mask` 1 at the tokens to count."""
        diff = (learner.float() - vllm.float()).abs() * mask
        self.sum += float(diff.sum())
        self.tokens += int(mask.sum())
        if self.tokens:
            self.max = max(self.max, float(diff.max()))

    def totals(self) -> dict:
        return {"logprob_diff_sum": self.sum, "logprob_diff_tokens": self.tokens,
                "logprob_diff_max": self.max}


def logprob_agreement(per_learner: Sequence[dict]) -> dict:
    """The learners' LogprobAgreement totals as metrics; none when no token was measured."""
    tokens = sum(r["logprob_diff_tokens"] for r in per_learner)
    if not tokens:
        return {}
    return {"logprob/abs_diff_mean": sum(r["logprob_diff_sum"] for r in per_learner) / tokens,
            "logprob/abs_diff_max": max(r["logprob_diff_max"] for r in per_learner)}


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


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (then 1.96).
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% interval (Student's t; 0 for one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    t = T95[len(values) - 2] if len(values) - 1 <= len(T95) else 1.96
    return m, t * statistics.stdev(values) / len(values) ** 0.5
