"""Where an actor runs and when it came up (summary.json shows it; tests check start-up order
with it), and the processes that must end with it."""

from __future__ import annotations

import os
import signal

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def start_record(started_at: float, ready_at: float) -> dict:
    """What an actor's `ready()` answers: its node, process, and its `__init__`'s span."""
    return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "started": started_at, "ready": ready_at}


def process_tree() -> list[tuple[int, int]]:
    """This process's descendants, as (pid, start time in clock ticks) pairs: what must end
    with it. vLLM 0.32's engine-core process does not notice its parent's death (vLLM #55510):
    left running on a GPU, it keeps the memory the actor that replaces this one needs."""
    parents, started = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat:
                parents[int(entry)], started[int(entry)] = int(stat[1]), int(stat[19])
    tree, frontier = [], [os.getpid()]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        tree += [(pid, started[pid]) for pid in children]
        frontier = children
    return tree


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


@ray.remote(num_cpus=0)
def _end(tree: list[tuple[int, int]]) -> int:
    ended = 0
    for pid, start in tree:
        stat = _stat(pid)
        if stat and int(stat[19]) == start:  # still that process, not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
                ended += 1
            except ProcessLookupError:
                pass
    return ended


def end_process_tree(node: str, tree: list[tuple[int, int]], timeout_s: float = 30) -> None:
    """SIGKILL what is left of a lost actor's `process_tree()` on its node (if that node is
    still there to ask)."""
    if not tree:
        return
    strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    try:
        ray.get(_end.options(scheduling_strategy=strategy).remote(tree), timeout=timeout_s)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
        pass  # the node is gone, and its processes with it
