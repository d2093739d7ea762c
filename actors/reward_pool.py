"""Reward pool: `num_reward_workers` Ray actors grading responses with the core grader.

Each worker owns a `drgrpo.rewards.Grader`, which grades in a child process with a hard time
limit (killed and replaced on timeout or crash), so one hostile answer costs at most
`timeout_s` of CPU time (and `wall_timeout_s` of wall time) and scores 0 with
`timed_out=True`; it never stalls or kills the batch.

The driver does the linear part (`drgrpo.rewards.plan`: extract the final answers, settle the
unformatted, cut-off and oversized ones, merge duplicates across the whole batch), so only
short distinct answers travel. These go out in small chunks to whichever worker is free, so
a slow answer delays only its own chunk while the other workers take the rest. A chunk takes
every k-th answer rather than k neighbours: the samples of one question sit side by side, so
answers alike (and alike slow) would otherwise share a chunk. (One contiguous chunk per
worker made the step wait for the sum of the limits in the worst chunk.)
"""

from __future__ import annotations

import ray
from ray.util.actor_pool import ActorPool

from drgrpo.rewards import DEFAULT_TIMEOUT_S, Grader, Pair, Verdict, plan


class RewardWorkerActor:
    def __init__(self, timeout_s: float, wall_timeout_s: float | None = None):
        self.grader = Grader(num_workers=1, timeout_s=timeout_s, wall_timeout_s=wall_timeout_s)
        self.grader.wait_ready()  # calls queue behind __init__: none races the start-up

    def judge(self, tag: int, pairs: list[Pair]) -> tuple[int, list[Verdict]]:
        """`Grader.judge`, returned with `tag`: chunks come back in any order."""
        return tag, self.grader.judge(pairs)


RewardWorker = ray.remote(RewardWorkerActor)


class RewardPool:
    """Grades a batch on `num_workers` actors in chunks of at most `chunk_size` distinct
    answers (at least 4 chunks per worker); verdicts come back in the batch's order.

    Small chunks balance the load; each costs one actor call (about 1 ms on 2 busy cores).
    """

    def __init__(self, num_workers: int, timeout_s: float = DEFAULT_TIMEOUT_S,
                 options: dict | None = None, chunk_size: int = 8,
                 wall_timeout_s: float | None = None):
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.chunk_size = chunk_size
        self.workers = [RewardWorker.options(**(options or {})).remote(timeout_s, wall_timeout_s)
                        for _ in range(num_workers)]

    def score(self, responses: list[str], answers: list, template: str,
              truncated: list[bool]) -> list[Verdict]:
        verdicts, jobs = plan(responses, answers, template, truncated)
        pairs = list(jobs)
        size = max(1, min(self.chunk_size, -(-len(pairs) // (4 * len(self.workers)))))
        chunks = -(-len(pairs) // size)  # chunk j holds pairs j, j + chunks, j + 2 chunks, ...

        def submit(actor, j):
            return actor.judge.remote(j, pairs[j::chunks])

        # map_unordered, not map: map hands a free worker its next chunk only once the caller
        # has taken every earlier result, in order, so a slow chunk would idle all workers.
        for j, chunk in ActorPool(self.workers).map_unordered(submit, range(chunks)):
            for pair, verdict in zip(pairs[j::chunks], chunk):
                for i in jobs[pair]:
                    verdicts[i] = verdict
        return verdicts  # type: ignore[return-value]
