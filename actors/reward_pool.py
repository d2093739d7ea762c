"""Reward pool: `num_reward_workers` Ray actors grading responses with the core grader.

Each worker owns a `drgrpo.grader.Grader`, which grades in a child process with a hard time
limit (killed and replaced on timeout or crash), so one hostile answer costs at most
`timeout_s` of CPU time (and `wall_timeout_s` of wall time) and scores 0 with
`timed_out=True`; it never stalls or kills the batch.

The driver does the linear part (`drgrpo.answers.plan`: extract the final answers, settle the
unformatted, cut-off and oversized ones, merge duplicates across the whole batch), so only
short distinct answers travel. These go out in small chunks to whichever worker is free, so
a slow answer delays only its own chunk while the other workers take the rest. A chunk takes
every k-th answer rather than k neighbours: the samples of one question sit side by side, so
answers alike (and alike slow) would otherwise share a chunk. (One contiguous chunk per
worker made the step wait for the sum of the limits in the worst chunk.)

A worker that dies (its process killed, out of memory) or does not answer a chunk within the
chunk's own bound (each answer's wall-clock limit, one after another, plus a margin for a
worker's start) is killed and replaced, and the chunk is graded again, by whichever worker is
free; each restart goes to `faults` (actors/fault_log.py: the log line, the counts, the limit).
A worker whose own code raises is not replaced (the one policy of actors.failures.blame): the
run stops with `ActorFailure`, one line naming the worker and its error.
"""

from __future__ import annotations

import time
from collections import deque

import ray

from actors.failures import actor_failure, outcome_of
from actors.fault_log import FaultLog
from drgrpo.answers import Pair, Verdict, plan
from drgrpo.grader import DEFAULT_TIMEOUT_S, Grader

# Beyond its answers' own limits, a chunk may wait this long: for a replaced worker to start
# (its grading process included: Grader's start-up limit is 120 s) and for Ray's calls.
CHUNK_MARGIN_S = 150.0


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
                 wall_timeout_s: float | None = None, faults=None,
                 margin_s: float = CHUNK_MARGIN_S):
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if faults is None:
            faults = FaultLog(max_restarts=3)
        self.chunk_size, self.faults, self.margin_s = chunk_size, faults, margin_s
        self._args = (timeout_s, wall_timeout_s)
        self._options = options or {}
        # A chunk's answers are graded one after another, each within this wall-clock limit.
        self.answer_wall_s = 6 * timeout_s if wall_timeout_s is None else wall_timeout_s
        self.workers = [self._new_worker() for _ in range(num_workers)]

    def _new_worker(self):
        return RewardWorker.options(**self._options).remote(*self._args)

    def score(self, responses: list[str], answers: list, template: str,
              truncated: list[bool]) -> list[Verdict]:
        verdicts, jobs = plan(responses, answers, template, truncated)
        pairs = list(jobs)
        size = max(1, min(self.chunk_size, -(-len(pairs) // (4 * len(self.workers)))))
        chunks = -(-len(pairs) // size)  # chunk j holds pairs j, j + chunks, j + 2 chunks, ...

        # Each free worker takes the next chunk as soon as it is free, so a slow chunk idles
        # only its own worker.
        todo, free = deque(range(chunks)), deque(range(len(self.workers)))
        running: dict = {}  # ref -> (worker, chunk, deadline)
        regraded: dict[int, tuple] = {}  # chunk -> the restart it waits on
        while todo or running:
            while todo and free:
                k, j = free.popleft(), todo.popleft()
                size = len(pairs[j::chunks])
                running[self.workers[k].judge.remote(j, pairs[j::chunks])] = (
                    k, j, time.monotonic() + self.answer_wall_s * size + self.margin_s)
            first = min(deadline for _, _, deadline in running.values())
            ready, _ = ray.wait(list(running), num_returns=1,
                                timeout=max(0.0, first - time.monotonic()))
            failed = []
            if ready:
                k, j, _ = running.pop(ready[0])
                outcome = outcome_of(ready[0])
                if outcome.failure == "raised":  # a new worker would raise the same again
                    raise actor_failure([outcome], [f"reward worker {k}"], 0)
                if outcome.failure:
                    failed.append((k, j, outcome.reason))
                else:
                    _, chunk = outcome.value
                    free.append(k)
                    for pair, verdict in zip(pairs[j::chunks], chunk):
                        for i in jobs[pair]:
                            verdicts[i] = verdict
                    if j in regraded:
                        self.faults.record(*regraded.pop(j))
            for ref, (k, j, deadline) in list(running.items()):
                if deadline <= time.monotonic():
                    del running[ref]
                    bound = self.answer_wall_s * len(pairs[j::chunks]) + self.margin_s
                    failed.append((k, j, f"no answer within {bound:g} s"))
            for k, j, reason in failed:
                name = f"reward worker {k}"
                started = self.faults.begin(name, reason)
                ray.kill(self.workers[k])
                self.workers[k] = self._new_worker()
                regraded[j] = (name, reason,
                               f"restarted, {len(pairs[j::chunks])} answers graded again",
                               started)
                todo.appendleft(j)
                free.append(k)
        return verdicts  # type: ignore[return-value]
