"""Where an actor runs and when it came up: shown in summary.json, used to check start-up order."""

from __future__ import annotations

import os

import ray


def start_record(started_at: float, ready_at: float) -> dict:
    """What an actor's `ready()` answers: its node, process, and its `__init__`'s span."""
    return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "started": started_at, "ready": ready_at}
