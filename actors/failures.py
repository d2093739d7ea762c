"""Turn a failed actor into one line that names the actor and its own error.

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


def gather(refs: Sequence[ray.ObjectRef], names: Sequence[str],
           timeout_s: float | None = None) -> list:
    """`ray.get(refs)`, but a failure raises `ActorFailure` naming the actor behind the ref
    (names[i] for refs[i]), and a wait past `timeout_s` names the actors still busy."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending, done = list(refs), {}
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            late = ", ".join(names[refs.index(r)] for r in pending)
            raise ActorFailure(late, f"no answer within {timeout_s:g} s", lost=True)
        ref = ready[0]
        try:
            done[ref] = ray.get(ref)
        except RayError as err:  # the actor raised or died, or Ray killed it (memory)
            if not lost(err):  # a collective's survivors raise because a member was lost:
                ref, err = _lost_instead(ref, err, pending)  # blame that member
            raise ActorFailure(names[refs.index(ref)], root_cause(err), lost(err)) from None
    return [done[r] for r in refs]


def _lost_instead(ref, err: RayError, pending: list, grace_s: float = 5.0):
    """(ref, err), or a pending call whose actor was lost within `grace_s` seconds."""
    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=grace_s) if pending else ([], [])
    for other in ready:
        try:
            ray.get(other)
        except RayError as other_err:
            if lost(other_err):
                return other, other_err
    return ref, err


@dataclass
class Outcome:
    """How one call ended: `value`, or `failure` ("died": the actor or its engine is gone;
    "late": no answer by the deadline; "raised": it raised) with a one-line `reason`."""
    value: Any = None
    failure: str | None = None
    reason: str = ""
    cause: BaseException | None = None  # the exception the actor raised, when it raised


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
            cause = err.cause if isinstance(err, RayTaskError) else None
            out.append(Outcome(failure=_failure(err), reason=root_cause(err), cause=cause))
    return out


def _failure(err: RayError) -> str:
    if lost(err):
        return "died"
    if isinstance(err, RayTaskError) and type(err.cause).__name__ == "EngineError" \
            and "engine core process" in str(err.cause):
        return "died"  # its vLLM engine is gone (actors.engine_watch)
    return "raised"
