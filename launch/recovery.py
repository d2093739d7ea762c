"""Actor-level recovery: a generator or reward worker that dies or hangs is replaced, and the
step goes on with exactly the work that was lost.

The verbs (used by launch/cluster.py; the training loop never sees them):

- `settle(refs, timeout_s)`: every call's outcome, waited for together up to a deadline,
  without stopping at the first failure (a broadcast's other members fail *because* one
  died: the one to blame is the one that died or never answered).
- `restart_generator(cluster, i, reason)`: kill what is left of generator i, start a new
  one on the same placement-group bundle with the same seed, rebuild the weight-sync group
  with every member (a torch.distributed group cannot replace one member), and send the
  current weights. The caller then re-runs the lost prompts with their own seeds.
- `FaultLog`: what failed, why, and how long recovery took: one line on stderr per fault,
  cumulative `faults/*` metrics, the events in summary.json, and the limit
  (`cluster.max_actor_restarts` per actor) past which the run stops with one line.

A learner that fails is not recovered here: its state is gone, and the run-level restart
from the latest checkpoint takes over (`actors.failures.ActorFailure` is raised as before).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from actors.failures import ActorFailure, Outcome, RunError
from actors.weight_sync import GeneratorsFailed

KINDS = {"generator": "faults/generator_restarts", "reward worker": "faults/reward_restarts"}


@dataclass
class FaultEvent:
    step: int  # the step being worked on when it failed
    actor: str
    reason: str
    recovery_s: float


class FaultLog:
    def __init__(self, max_restarts: int):
        self.max_restarts = max_restarts
        self.step = 0  # set by the run: the step in progress
        self.events: list[FaultEvent] = []
        self.restarts: Counter[str] = Counter()  # per actor name

    def begin(self, actor: str, reason: str) -> float:
        """A restart of `actor` starts: its clock, or `RunError` naming `actor` when it has
        used up its restarts."""
        if self.restarts[actor] >= self.max_restarts:
            raise RunError(f"{actor} kept failing: restarted {self.restarts[actor]} times "
                           f"(cluster.max_actor_restarts {self.max_restarts}); last: {reason}")
        self.restarts[actor] += 1
        return time.monotonic()

    def record(self, actor: str, reason: str, done: str, started: float) -> None:
        seconds = time.monotonic() - started
        self.events.append(FaultEvent(self.step, actor, reason, round(seconds, 3)))
        _say(f"recovered: {actor} failed ({reason}); {done} in {seconds:.1f} s")

    def metrics(self) -> dict:
        counts = Counter(KINDS[e.actor.rsplit(" ", 1)[0]] for e in self.events)
        return {key: counts[key] for key in KINDS.values()}


def _say(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)  # above the progress bar, which stays whole


def culprits(outcomes: Sequence[Outcome], names: Sequence[str]) -> list[int]:
    """Of one collective's members, the generators to restart (indices into `names`), or
    `ActorFailure` for a learner to blame. Blamed first: members that died or never answered
    (the others' errors follow from theirs), generators before learners (a learner blocked in
    a broadcast is late because a generator is gone); failing that, the first member that
    raised, which is not restarted: the same work would raise the same error again."""
    def failed(kinds):
        return [k for k, o in enumerate(outcomes) if o.failure in kinds]

    generators = [k for k in failed(("died", "late")) if names[k].startswith("generator")]
    if generators:
        return generators
    for k in failed(("died", "late")) + failed(("raised",)):
        raise ActorFailure(names[k], outcomes[k].reason, lost=outcomes[k].failure != "raised")
    return []


def sync_culprits(outcomes: Sequence[Outcome], learner_names: Sequence[str],
                  generators: int) -> list[int]:
    """Of a weight-sync call made on every learner, the generators to restart (their
    indices), or `ActorFailure` for the one to blame, by `culprits`' rule. Learner rank 0
    drives the generators (actors/weight_sync.py): when its call failed because theirs did
    (`GeneratorsFailed`), their outcomes stand in for its own."""
    learners, members = list(outcomes), [Outcome() for _ in range(generators)]
    for k, outcome in enumerate(outcomes):
        if isinstance(outcome.cause, GeneratorsFailed):
            learners[k], members = Outcome(), outcome.cause.outcomes
    names = [*learner_names, *(f"generator {i}" for i in range(generators))]
    return [k - len(learners) for k in culprits(learners + members, names)]


def restartable(outcome: Outcome) -> bool:
    """A failed call worth a restart: its actor died or hung. One that raised would raise
    again on the same prompts with the same seeds."""
    return outcome.failure in ("died", "late")


def restart_generator(cluster, i: int, reason: str, then: str = "",
                      send_weights: bool = True) -> None:
    """Replace generator i (see the module's docstring). `send_weights`: give it the last
    weights sent now (else the caller's weight sync, redone, does); `then` says what the
    caller does next, for the log line."""
    name = f"generator {i}"
    started = cluster.faults.begin(name, reason)
    cluster.replace(i)
    if send_weights:
        cluster.resend_weights()
    cluster.faults.record(name, reason, f"restarted on bundle {i}{then}", started)
