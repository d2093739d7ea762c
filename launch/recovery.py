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
from the latest checkpoint takes over (`launch.failures.ActorFailure` is raised as before).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError

from launch.failures import ActorFailure, RunError, gather, lost, root_cause

KINDS = {"generator": "faults/generator_restarts", "reward worker": "faults/reward_restarts"}


@dataclass
class Outcome:
    """How one call ended: `value`, or `failure` ("died": the actor or its engine is gone;
    "late": no answer by the deadline; "raised": it raised) with a one-line `reason`."""
    value: Any = None
    failure: str | None = None
    reason: str = ""


def settle(refs: Sequence[ray.ObjectRef], timeout_s: float | None) -> list[Outcome]:
    if not refs:
        return []
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    done = set(ready)
    out = []
    for ref in refs:
        if ref not in done:
            out.append(Outcome(failure="late", reason=f"no answer within {timeout_s:g} s"))
            continue
        try:
            out.append(Outcome(ray.get(ref)))
        except RayError as err:
            out.append(Outcome(failure=_failure(err), reason=root_cause(err)))
    return out


def _failure(err: RayError) -> str:
    if lost(err):
        return "died"
    if isinstance(err, RayTaskError) and type(err.cause).__name__ == "EngineError" \
            and "engine core process" in str(err.cause):
        return "died"  # its vLLM engine is gone (actors.engine_watch)
    return "raised"


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
    ray.kill(cluster.generators[i])
    cluster.generators[i] = cluster.new_generator(i)
    cluster.actors[name] = gather([cluster.generators[i].ready.remote()], [name],
                                  cluster.cfg.cluster.placement_timeout_s)[0]
    cluster.sync_group_stale = True  # every member opens a new group before the next sync
    if send_weights:
        cluster.sync_weights(cluster.weights_version)
    cluster.faults.record(name, reason, f"restarted on bundle {i}{then}", started)
