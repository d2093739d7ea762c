"""The root cause of a vLLM engine failure, read from the log files its processes share.

vLLM runs its engine core (and, with tensor parallelism, its workers) in child processes. When
one fails, the actor only gets "Engine core initialization failed. See root cause above." or
"EngineCore encountered an issue. See stack trace (above)"; the cause itself went to the
stdout/stderr the children inherited, which in a Ray worker are files the driver never shows.
`explain_engine_errors` reads what those files received during the call and puts the first
exception it finds into the error the actor raises, so the driver can print it in one line.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

# vLLM's log prefix, e.g. "(Worker pid=12) ERROR 11-28 01:29:01 [core.py:1512] ".
_PREFIX = re.compile(r"^(?:\([^)]*\)\s*)?(?:ERROR\s+\S+\s+\S+\s+\[[^\]]*\]\s*)?")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception|Exit): .*")
# Wrappers that only point at the real error.
_POINTERS = ("above", "stack trace")


class EngineError(RuntimeError):
    """The vLLM engine failed; the message names the error its own processes raised."""


class _LogTail:
    """What the file behind file descriptor `fd` received since construction (if it is a
    regular file, as stdout and stderr are in a Ray worker)."""

    def __init__(self, fd: int):
        try:
            self.path = os.readlink(f"/proc/self/fd/{fd}")
            self.start = os.path.getsize(self.path)
        except OSError:
            self.path = None

    def lines(self) -> list[str]:
        if not self.path:
            return []
        try:
            with open(self.path, errors="replace") as f:
                f.seek(self.start)
                return f.read().splitlines()
        except OSError:
            return []


def first_exception(lines: list[str]) -> str | None:
    for line in lines:
        text = _PREFIX.sub("", line.strip(), count=1).strip()
        if _EXCEPTION.match(text) and not any(p in text for p in _POINTERS):
            return text
    return None


@contextmanager
def explain_engine_errors():
    """Re-raise any error of the block as `EngineError` naming the engine's own error."""
    tails = [_LogTail(2), _LogTail(1)]  # raw tracebacks go to stderr, vLLM's logger to stdout
    try:
        yield
    except Exception as err:
        cause = next((c for t in tails if (c := first_exception(t.lines()))), None)
        raise EngineError(f"the vLLM engine raised {cause or f'{type(err).__name__}: {err}'}"
                          ) from err
