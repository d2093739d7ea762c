"""Rollouts sampled ahead of the learners, by weights at most `max_staleness` updates old.

The rollout of step s is the G responses to each of its questions. With `max_staleness` 0
it is asked for when the loop reaches step s, after the weights of update s-1 went out: the
synchronous loop. With k > 0, `take(s)` also asks for the rollouts of steps up to s+k, so the
generators sample them while the learners train. A generator runs its calls in order, so a
rollout is sampled with the weights of the last sync asked for before it; the last sync asked
for when step s+k's rollout is requested is update s-1's, and step s+k trains on update s+k-1:
never more than k updates apart.

Checkpoints: a rollout in flight when a checkpoint is written was sampled by weights the
checkpoint does not hold, so `in_flight()` waits for them and the checkpoint keeps them; a
resumed run trains on those very responses (`Rollouts(..., saved=...)`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from actors.generator import Completion, Generated, Sampling
from drgrpo.data import Problem


@dataclass
class Rollout:
    step: int
    problems: list[Problem]
    completions: list[Completion]  # G per problem, problem by problem
    started: float  # wall-clock span of its sampling on the generators
    finished: float
    generator_wait_s: float  # generators idle (or waiting for weights) before sampling it
    learner_wait_s: float  # how long `take` waited for it


class Rollouts:
    """`take(step)`: the rollout of `step`, sampled by weights at most `max_staleness`
    updates older than the ones that will train on it."""

    def __init__(self, cluster, questions: Callable[[int], tuple[list[Problem], list[str]]],
                 group_size: int, sampling: Callable[[int], Sampling], max_staleness: int,
                 last_step: int, saved: list[Rollout] = ()):
        self.cluster, self.questions, self.group_size = cluster, questions, group_size
        self.sampling, self.max_staleness, self.last_step = sampling, max_staleness, last_step
        self.done: dict[int, Rollout] = {r.step: r for r in saved}
        self.pending: dict[int, tuple[list[Problem], object]] = {}

    def take(self, step: int) -> Rollout:
        for ahead in range(step, min(step + self.max_staleness, self.last_step) + 1):
            if ahead not in self.done and ahead not in self.pending:
                problems, prompts = self.questions(ahead)
                self.pending[ahead] = (problems, self.cluster.submit(
                    prompts, self.group_size, self.sampling(ahead)))
        if step in self.done:
            return self.done.pop(step)
        return self._wait(step)

    def in_flight(self) -> list[Rollout]:
        """Every rollout asked for but not yet taken, waited for: what a checkpoint keeps."""
        for step in list(self.pending):
            self.done[step] = self._wait(step)
        return [self.done[s] for s in sorted(self.done)]

    def _wait(self, step: int) -> Rollout:
        problems, pending = self.pending.pop(step)
        start = time.perf_counter()
        generated: Generated = pending.result()
        return Rollout(step, problems, [c for group in generated.groups for c in group],
                       generated.started, generated.finished, generated.wait_s,
                       time.perf_counter() - start)


def rollouts_to_json(rollouts: list[Rollout]) -> str:
    return json.dumps([asdict(r) for r in rollouts])


def rollouts_from_json(text: str) -> list[Rollout]:
    out = []
    for r in json.loads(text):
        problems = [Problem(p["question"], p["answer"] if isinstance(p["answer"], str)
                            else tuple(p["answer"])) for p in r.pop("problems")]
        completions = [Completion(**c) for c in r.pop("completions")]
        out.append(Rollout(problems=problems, completions=completions, **r))
    return out
