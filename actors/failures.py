"""Waiting for actors with a deadline, and naming the one to blame in one line.

One mechanism, one policy, for the driver (`gather`), the recovery of generators
(launch/cluster.py, launch/recovery.py) and the reward pool (actors/reward_pool.py):

- `outcome_of(ref)`: how a finished call ended, an `Outcome`: its value, or "died" (the
  actor or its engine is gone), or "raised" (its own code raised), with a one-line reason;
  `late`: the outcome of a call with no answer by its deadline.
- `settle(refs, timeout_s)`: every call's outcome, waited for together up to one deadline.
- `culprits(outcomes, names)`: whom to blame. Members that died or never answered come
  before those that raised (in a collective the others' errors follow from theirs), and
  generators before learners (a learner blocked in a broadcast is late because a generator
  is gone). `restartable`: only a call that died or hung is worth a restart; one that
  raised would raise again on the same work.
- `blame(outcomes, names)`: the generators to restart, or `ActorFailure` naming the one to
  blame; `gather`: settle, then blame, for calls that are never restarted.

Ray reports an actor that raised in `__init__` as `ActorDiedError` wrapping the whole remote
traceback, and a method that raised as `RayTaskError`; a user needs neither traceback, only
which actor failed and the exception it raised ("generator 0 failed: ValueError: ...").
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

# The last line of a Python traceback: `ValueError: ...`, `torch.OutOfMemoryError: ...`.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception|Exit)(?::.*)?$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MODULE = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?=\w+:)")  # `actors.engine_log.EngineError:`


class RunError(Exception):
    """A run cannot go on; `str()` is the one line the user sees."""


class ActorFailure(RunError):
    """An actor died or raised; `str()` is one line naming it and its own error. `lost`: its
    process is gone or it stopped answering (a fault worth a restart), rather than an error it
    raised, which the same work would raise again."""

    def __init__(self, actor: str, reason: str, lost: bool = False):
        self.actor, self.reason, self.lost = actor, reason, lost
        super().__init__(f"{actor} failed: {reason}")

    def __reduce__(self):
        return type(self), (self.actor, self.reason, self.lost)


def root_cause(err: BaseException) -> str:
    """The innermost error an actor raised, as `Type: message` on one line."""
    if isinstance(err, RayTaskError) and err.cause is not None and err.cause is not err:
        return root_cause(err.cause)
    if isinstance(err, RayActorError):
        lines = [_ANSI.sub("", line).strip() for line in str(err).splitlines()]
        raised = [line for line in lines if _EXCEPTION_LINE.match(line)]
        if raised:  # an error in __init__: its traceback is in the message, last line last
            return _MODULE.sub("", raised[-1])
        return "the actor's process died (killed, out of memory, or its node was lost)"
    inner = err.__cause__ or err.__context__
    if isinstance(inner, RayTaskError | RayActorError):
        return root_cause(inner)
    text = str(err).strip().splitlines()
    if isinstance(err, RayError):  # e.g. OutOfMemoryError: its first line says what happened
        return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return f"{type(err).__name__}: {text[-1]}" if text else type(err).__name__


@dataclass
class Outcome:
    """How one call ended: `value`, or `failure` ("died": the actor or its engine is gone;
    "late": no answer by the deadline; "raised": it raised; "unfinished": still running when
    the wait stopped early, see `settle`) with a one-line `reason`."""
    value: Any = None
    failure: str | None = None
    reason: str = ""
    cause: BaseException | None = None  # the exception the actor raised, when it raised


def outcome_of(ref: ray.ObjectRef) -> Outcome:
    """How a finished call ended: its value, or why it failed ("died" or "raised")."""
    try:
        return Outcome(ray.get(ref))
    except RayError as err:  # the actor raised or died, or Ray killed it (memory)
        cause = err.cause if isinstance(err, RayTaskError) else None
        return Outcome(failure=_failure(err), reason=root_cause(err), cause=cause)


def late(timeout_s: float) -> Outcome:
    """The outcome of a call with no answer within `timeout_s`."""
    return Outcome(failure="late", reason=f"no answer within {timeout_s:g} s")


def restartable(outcome: Outcome) -> bool:
    """A failed call worth a restart: its actor died or hung. One that raised would raise
    again on the same work (the same prompts with the same seeds)."""
    return outcome.failure in ("died", "late")


def settle(refs: Sequence[ray.ObjectRef], timeout_s: float | None,
           grace_s: float | None = None) -> list[Outcome]:
    """Every call's outcome, waited for together up to `timeout_s` (None: for as long as
    they take); those not done by then are `late`. It does not stop at the first failure: a
    collective's other members fail *because* one died, and `culprits` needs to see it.
    `grace_s`: stop early instead, once a call failed: at once when it died, else after the
    others had `grace_s` more to show whether one of them died; those still running then
    are "unfinished"."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    done: dict[ray.ObjectRef, Outcome] = {}
    pending = list(refs)
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:  # the deadline passed
            return [done.get(ref) or late(timeout_s) for ref in refs]
        done[ready[0]] = outcome_of(ready[0])
        failure = done[ready[0]].failure
        if failure and grace_s is not None:
            if failure == "raised" and pending:
                ready, _ = ray.wait(pending, num_returns=len(pending), timeout=grace_s)
                done.update((ref, outcome_of(ref)) for ref in ready)
            return [done.get(ref) or Outcome(failure="unfinished") for ref in refs]
    return [done[ref] for ref in refs]


def culprits(outcomes: Sequence[Outcome], names: Sequence[str]) -> list[int]:
    """Whom to blame for a call made on several actors (indices into `names`), most likely
    first; [] when none failed. Every generator that died or never answered (each one needs
    a restart); failing that, the members that died, then those that never answered (the
    others' errors follow from theirs: a learner blocked in a broadcast is late because a
    generator or another learner is gone); failing that, the first member that raised."""
    def failed(kind: str) -> list[int]:
        return [k for k, o in enumerate(outcomes) if o.failure == kind]

    lost = sorted(failed("died") + failed("late"))
    generators = [k for k in lost if names[k].startswith("generator")]
    return generators or failed("died") or failed("late") or failed("raised")[:1]


def blame(outcomes: Sequence[Outcome], names: Sequence[str],
          restart_generators: bool = False) -> list[int]:
    """`ActorFailure` naming the actor to blame (see `culprits`) when a call failed, else [].
    With `restart_generators`, the generators that died or never answered are returned
    instead, for the caller to restart and redo the work. Actors that failed alike (late
    together, say) are named together: "generator 0, generator 1 failed: no answer ..."."""
    blamed = culprits(outcomes, names)
    if not blamed:
        return []
    first = outcomes[blamed[0]]
    if restart_generators and restartable(first) and names[blamed[0]].startswith("generator"):
        return blamed
    alike = [names[k] for k in blamed if outcomes[k].reason == first.reason]
    raise ActorFailure(", ".join(alike), first.reason, lost=restartable(first))


def gather(refs: Sequence[ray.ObjectRef], names: Sequence[str],
           timeout_s: float | None = None, grace_s: float = 5.0) -> list:
    """`ray.get(refs)`, but a failure raises `ActorFailure` naming the actor to blame (names[i]
    for refs[i]; see `blame`), and a wait past `timeout_s` names the actors still busy. It
    does not wait out the deadline once a call failed: the others get `grace_s` to show
    whether one of them died (a collective's survivors raise because a member was lost)."""
    outcomes = settle(refs, timeout_s, grace_s)
    blame(outcomes, names)
    return [o.value for o in outcomes]


def _failure(err: RayError) -> str:
    if _lost(err):
        return "died"
    if isinstance(err, RayTaskError) and type(err.cause).__name__ == "EngineError" \
            and "engine core process" in str(err.cause):
        return "died"  # its vLLM engine is gone (actors.engine_watch)
    return "raised"


def _lost(err: RayError) -> bool:
    """Whether a failed call's actor was lost (its process died, was killed for memory, or
    its node went), as opposed to raising an exception of its own."""
    if isinstance(err, ray.exceptions.OutOfMemoryError):
        return True
    if isinstance(err, RayActorError):  # raised in __init__ (its message holds the error)?
        lines = [_ANSI.sub("", line).strip() for line in str(err).splitlines()]
        return not any(_EXCEPTION_LINE.match(line) for line in lines)
    return False
