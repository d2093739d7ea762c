"""Turn a failed actor into one line that names the actor and its own error.

Ray reports an actor that raised in `__init__` as `ActorDiedError` wrapping the whole remote
traceback, and a method that raised as `RayTaskError`; a user needs neither traceback, only
which actor failed and the exception it raised ("generator 0 failed: ValueError: ...").

Every wait on actors goes through here, with one policy: `settle` waits for calls together
up to a deadline and says how each ended (`Outcome`); `blame` picks whom a failure is on (who
died or hung before who raised, generators before learners); `restartable` says whether
that is worth a restart (died or hung: yes; raised: no, it would raise again). `gather` is
the three in one for callers that only stop; launch/recovery.py restarts generators by them,
and actors/reward_pool.py its workers.
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


def lost(err: RayError) -> bool:
    """Whether a failed call's actor was lost (its process died, was killed for memory, or
    its node went), as opposed to raising an exception of its own."""
    if isinstance(err, ray.exceptions.OutOfMemoryError):
        return True
    if isinstance(err, RayActorError):  # raised in __init__ (its message holds the error)?
        lines = [_ANSI.sub("", line).strip() for line in str(err).splitlines()]
        return not any(_EXCEPTION_LINE.match(line) for line in lines)
    return False


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
    "late": no answer by the deadline; "raised": it raised; "unsettled": still running when
    the wait ended early, not to blame) with a one-line `reason`."""
    value: Any = None
    failure: str | None = None
    reason: str = ""
    cause: BaseException | None = None  # the exception the actor raised, when it raised


def outcome_of(ref: ray.ObjectRef) -> Outcome:
    """The outcome of a call that has finished."""
    try:
        return Outcome(ray.get(ref))
    except RayError as err:
        cause = err.cause if isinstance(err, RayTaskError) else None
        return Outcome(failure=_kind(err), reason=root_cause(err), cause=cause)


def settle(refs: Sequence[ray.ObjectRef], timeout_s: float | None,
           grace_s: float | None = None) -> list[Outcome]:
    """Every call's outcome, waited for together up to `timeout_s` (the one way this package
    waits on actors). With `grace_s` the wait ends early, at the first call that died, or
    `grace_s` after the first that raised: a collective's survivors raise because a member
    was lost, and that member gets `grace_s` to show it; the calls still running then are
    "unsettled"."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending, done = list(refs), {}
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1 if grace_s is not None else
                                  len(pending), timeout=left)
        if not ready:
            break
        for ref in ready:
            done[ref] = outcome_of(ref)
        failures = {o.failure for o in done.values()} - {None}
        if grace_s is not None and failures:
            if "died" not in failures and pending:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=grace_s)
                done.update((ref, outcome_of(ref)) for ref in ready)
            return [done.get(ref) or Outcome(failure="unsettled") for ref in refs]
    return [done.get(ref) or Outcome(failure="late", reason=f"no answer within {timeout_s:g} s")
            for ref in refs]


def restartable(outcome: Outcome) -> bool:
    """A failed call worth a restart: its actor died or hung. One that raised would raise
    again on the same work."""
    return outcome.failure in ("died", "late")


def blame(outcomes: Sequence[Outcome], names: Sequence[str]) -> list[int]:
    """The one policy: of calls waited on together, the members to blame (indices into
    `names`), most to blame first. Those that died or never answered come first (the others'
    errors follow from theirs), generators before learners (a learner blocked in a broadcast
    is late because a generator is gone); failing that, the first that raised. Empty when
    none failed."""
    gone = [k for k, o in enumerate(outcomes) if restartable(o)]
    gone.sort(key=lambda k: not names[k].startswith("generator"))
    return gone or [k for k, o in enumerate(outcomes) if o.failure == "raised"][:1]


def actor_failure(outcomes: Sequence[Outcome], names: Sequence[str], k: int) -> ActorFailure:
    """`ActorFailure` for member k; members that hung with it are named beside it."""
    if outcomes[k].failure == "late":
        late = [j for j in blame(outcomes, names) if outcomes[j].failure == "late"]
        return ActorFailure(", ".join(names[j] for j in late), outcomes[k].reason, lost=True)
    return ActorFailure(names[k], outcomes[k].reason, lost=restartable(outcomes[k]))


def gather(refs: Sequence[ray.ObjectRef], names: Sequence[str],
           timeout_s: float | None = None, grace_s: float = 5.0) -> list:
    """`ray.get(refs)`, but a failure raises `ActorFailure` naming the actor to blame (names[i]
    for refs[i]; `blame`), and a wait past `timeout_s` names the actors still busy."""
    outcomes = settle(refs, timeout_s, grace_s)
    blamed = blame(outcomes, names)
    if blamed:
        raise actor_failure(outcomes, names, blamed[0])
    return [o.value for o in outcomes]


def _kind(err: RayError) -> str:
    if lost(err):
        return "died"
    if isinstance(err, RayTaskError) and type(err.cause).__name__ == "EngineError" \
            and "engine core process" in str(err.cause):
        return "died"  # its vLLM engine is gone (actors.engine_watch)
    return "raised"
