"""Reward pool: `num_reward_workers` Ray actors grading responses with the core grader.

Each worker owns a `drgrpo.rewards.Grader`, which grades in a child process with a hard time
limit (killed and replaced on timeout or crash), so one hostile answer costs at most
`timeout_s` and scores 0 with `timed_out=True`; it never stalls or kills the batch.
"""

from __future__ import annotations

import ray

from drgrpo.rewards import Grader, Verdict


class RewardWorkerActor:
    def __init__(self, timeout_s: float):
        self.grader = Grader(num_workers=1, timeout_s=timeout_s)

    def grade(self, responses: list[str], answers: list, template: str,
              truncated: list[bool]) -> list[Verdict]:
        return self.grader.grade(responses, answers, template, truncated)


RewardWorker = ray.remote(RewardWorkerActor)


class RewardPool:
    """Splits a batch into contiguous chunks, one per worker, and keeps the order."""

    def __init__(self, num_workers: int, timeout_s: float = 10.0, options: dict | None = None):
        self.workers = [RewardWorker.options(**(options or {})).remote(timeout_s)
                        for _ in range(num_workers)]

    def score(self, responses: list[str], answers: list, template: str,
              truncated: list[bool]) -> list[Verdict]:
        n = len(self.workers)
        size = -(-len(responses) // n) if responses else 0
        refs = [
            w.grade.remote(responses[i:i + size], answers[i:i + size], template,
                           truncated[i:i + size])
            for w, i in zip(self.workers, range(0, len(responses), size or 1))
        ]
        return [v for chunk in ray.get(refs) for v in chunk]
