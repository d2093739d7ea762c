"""The log of actors restarted in place: what failed, why, and how long recovery took.

One line on stderr per fault, cumulative `faults/*` metrics, the events in summary.json, and
the limit (`cluster.max_actor_restarts` per actor) past which the run stops with one line.
The generators' restarts are launch/recovery.py's, the reward workers' the pool's own
(actors/reward_pool.py); both count here.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass

from actors.failures import RunError

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
