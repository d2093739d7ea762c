"""Grading with a hard time limit per answer, in a pool of worker processes (`Grader`).

Why (`DEFAULT_TIMEOUT_S`, chosen below): sympy can still hang or eat memory on answers the
cost guard (`drgrpo.answer_cost`) lets through (`(a+b+c+d)^{100}` expands into 176,851
terms), and math-verify's own signal-based timeouts only work in a main thread (and would
turn a timeout into "wrong"). `Grader` therefore extracts answers in the caller (linear
string work, `drgrpo.answers.plan`) and sends only the short extracted answer to worker
processes: fresh interpreters (spawned with `subprocess`, inheriting nothing; they import
only this module and `drgrpo.answers`) under a memory cap, speaking JSON lines over pipes.
A worker that spends the limit (CPU time; see `Grader`) is killed and replaced (by a spare
started in advance) and the answer gets `Verdict(0.0, formatted, timed_out=True)`; a worker
that dies or raises (segfault, MemoryError, RecursionError) gets `crashed=True`. Both are
counted, never silently "wrong". What is graded, and how: drgrpo/answers.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Self

from drgrpo.answers import Pair, Verdict, answers_match, plan

# Hard limit per answer, in CPU seconds of the grading process (see `Grader`). Measured on
# the 286 real references rewritten as `(a)/(b)`, `(x)^{1/2}` (correct, and math-verify has to
# work) and 1,560 perturbed (wrong) ones: as CPU time, at niceness 15 with the load average at
# 12 to 21 on 2 cores, a 1 s limit lost none of the 260 correct ones; only a wrong Minerva ODE
# needs more (13 s). As wall time (how it was counted before), at niceness 0 and a load of 11
# to 26, 1 s lost 14 correct answers and 2 s one. 5 s leaves room for slower cores and for a new
# worker, whose parser caches are empty; what it costs is at most 5 s of one worker per slow
# answer while the pool's other workers go on, and expression bombs no longer reach it.
DEFAULT_TIMEOUT_S = 5.0

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _worker_main(memory_limit_mb: int) -> None:
    """Worker loop: one JSON request per stdin line, one JSON reply per stdout line."""
    import logging
    import resource
    import signal

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a stray print() from a library must not corrupt the protocol
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" notices
    if memory_limit_mb > 0:
        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    answers_match("0.5", ["\\frac{1}{2}"])  # import and warm up sympy before the clock runs
    proto.write('{"ready": true}\n')
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"id": request["id"], "ok": answers_match(request["pred"], request["golds"])}
        except Exception as exc:  # noqa: BLE001  RecursionError, MemoryError, sympy bugs: report
            proto.write(json.dumps({"id": request["id"], "error": type(exc).__name__}) + "\n")
            return
        proto.write(json.dumps(reply) + "\n")


class _Worker:
    """One grading process and the request it is working on."""

    def __init__(self, memory_limit_mb: int, startup_timeout_s: float) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        code = f"from drgrpo.grader import _worker_main; _worker_main({int(memory_limit_mb)})"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.ready = False
        self.task: int | None = None
        self.deadline = time.monotonic() + startup_timeout_s  # wall clock
        self.sent_at, self.cpu_at_send = 0.0, None

    def send(self, task: int, pred: str, golds: list[str], wall_timeout_s: float) -> bool:
        message = json.dumps({"id": task, "pred": pred, "golds": golds}) + "\n"
        try:
            self.proc.stdin.write(message.encode())
            self.proc.stdin.flush()
        except OSError:  # died while idle; the caller retries the task elsewhere
            return False
        self.task, self.sent_at = task, time.monotonic()
        self.deadline, self.cpu_at_send = self.sent_at + wall_timeout_s, self._cpu_s()
        return True

    def _cpu_s(self) -> float | None:
        """CPU seconds (user + system) the process has used; None where /proc is missing."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "(comm)": field 3 on
            return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
        except (OSError, IndexError, ValueError):
            return None

    def used_s(self) -> float:
        """CPU seconds spent on the current task (wall seconds where CPU time is unknown)."""
        now = self._cpu_s()
        if now is None or self.cpu_at_send is None:
            return time.monotonic() - self.sent_at
        return now - self.cpu_at_send

    def read(self) -> list[dict] | None:
        """Complete messages now available, or None at end of file (the process died)."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def stop(self) -> None:
        try:
            self.proc.stdin.close()  # end of input: the worker exits on its own
            self.proc.wait(timeout=1)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


_OUTCOMES = {
    "right": Verdict(1.0, True),
    "wrong": Verdict(0.0, True),
    "timeout": Verdict(0.0, True, timed_out=True),
    "crash": Verdict(0.0, True, crashed=True),
}


class Grader:
    """Grades batches with a hard per-answer time limit, in `num_workers` worker processes
    (fresh spawned interpreters), killed and replaced on timeout or crash.

    The limit counts the worker's CPU time (`timeout_s`), so that a verdict does not depend
    on what else runs on the machine: Ray starts its workers, and so the reward pool's graders,
    at niceness 15, and on 2 cores kept busy by other processes a 5 s wall-clock limit timed
    out ordinary answers (2-3 of 827; none at niceness 0). `wall_timeout_s` (6 x `timeout_s`
    unless given) still bounds the wall time of a worker that gets no CPU at all.

    Workers are started at construction and kept across `grade()` calls, with one spare:
    a killed worker's place goes to the spare, already started (an interpreter importing
    sympy takes 0.3 s on an idle core, seconds on a busy one), and a new spare starts in the
    background. Identical (answer, reference) pairs in a batch are graded once. Not
    thread-safe: one caller.
    """

    def __init__(
        self,
        num_workers: int = 1,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        wall_timeout_s: float | None = None,
        memory_limit_mb: int = 2048,
        startup_timeout_s: float = 120.0,
    ) -> None:
        wall_timeout_s = 6 * timeout_s if wall_timeout_s is None else wall_timeout_s
        if num_workers < 1 or timeout_s <= 0 or wall_timeout_s < timeout_s:
            raise ValueError("num_workers must be >= 1 and 0 < timeout_s <= wall_timeout_s")
        self.timeout_s, self.wall_timeout_s = timeout_s, wall_timeout_s
        self._spawn_args = (memory_limit_mb, startup_timeout_s)
        self._workers = [_Worker(*self._spawn_args) for _ in range(num_workers)]
        self._spare: _Worker | None = _Worker(*self._spawn_args)

    def wait_ready(self) -> None:
        """Return once every worker and the spare has started (grade() waits only for the
        workers it needs): so that no start-up competes for the CPU with what follows."""
        while any(not w.ready for w in self._live()):
            self._step([], deque(), [])

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def grade(
        self,
        responses: list[str],
        answers: list[str | list[str]],
        template: str,
        truncated: list[bool] | None = None,
    ) -> list[Verdict]:
        """One verdict per response, in order."""
        verdicts, jobs = plan(responses, answers, template, truncated)
        keys = list(jobs)
        for key, verdict in zip(keys, self.judge(keys)):
            for i in jobs[key]:
                verdicts[i] = verdict
        return verdicts  # type: ignore[return-value]

    def judge(self, pairs: list[Pair]) -> list[Verdict]:
        """The verdict on each (extracted answer, references) pair from `plan`, in order."""
        return [_OUTCOMES[outcome] for outcome in self._run(pairs)]

    def _run(self, tasks: list[Pair]) -> list[str]:
        if tasks and not self._workers:
            raise RuntimeError("the Grader is closed")
        outcomes: list[str | None] = [None] * len(tasks)
        queue = deque(range(len(tasks)))
        try:
            while queue or any(w.task is not None for w in self._workers):
                self._step(tasks, queue, outcomes)
        except BaseException:  # e.g. KeyboardInterrupt: drop half-done work, stay usable
            for w in list(self._workers):
                if w.task is not None:
                    self._replace(w)
            raise
        return outcomes  # type: ignore[return-value]

    def _step(self, tasks: list, queue: deque, outcomes: list[str | None]) -> None:
        """Hand out tasks, wait for a reply or the nearest deadline, settle what is due."""
        for w in list(self._workers):
            if w.ready and w.task is None and queue:
                task = queue.popleft()
                if not w.send(task, tasks[task][0], list(tasks[task][1]), self.wall_timeout_s):
                    queue.appendleft(task)
                    self._replace(w)
        now = time.monotonic()
        waits = [w.deadline - now for w in self._live() if not w.ready or w.task is not None]
        # CPU time grows no faster than the wall clock: sleeping through what is left of the
        # budget cannot overshoot it.
        waits += [self.timeout_s - w.used_s() for w in self._workers if w.task is not None]
        for w in self._readable(max(0.0, min(waits, default=0.0))):
            self._collect(w, outcomes)
        now = time.monotonic()
        for w in self._live():  # the spare too: it must start in time
            if w.ready and w.task is None:
                continue
            if not w.ready:
                if w.deadline <= now:
                    self.close()
                    raise RuntimeError("a grading worker did not start in time")
            elif w.deadline <= now or w.used_s() >= self.timeout_s:
                outcomes[w.task] = "timeout"
                self._replace(w)

    def _readable(self, timeout_s: float) -> list[_Worker]:
        # poll, not select: a big process (a Ray actor) can have fds above select's 1024
        poller = select.poll()
        by_fd = {w.fd: w for w in self._live()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        return [by_fd[fd] for fd, _ in poller.poll(timeout_s * 1000)]

    def _collect(self, w: _Worker, outcomes: list[str | None]) -> None:
        messages = w.read()
        if messages is None:  # the process is gone
            if not w.ready:
                code = w.proc.wait()
                self.close()
                raise RuntimeError(f"a grading worker exited at startup (code {code})")
            if w.task is not None:
                outcomes[w.task] = "crash"
            self._replace(w)
            return
        for message in messages:
            if message.get("ready"):
                w.ready = True
            elif message.get("id") == w.task:
                ok = message.get("ok")
                outcomes[w.task] = "crash" if ok is None else "right" if ok else "wrong"
                w.task = None
                if ok is None:  # it raised: its state is suspect, start afresh
                    self._replace(w)
                    return

    def _live(self) -> list[_Worker]:
        return self._workers + ([self._spare] if self._spare is not None else [])

    def _replace(self, w: _Worker) -> None:
        """Kill `w`; the spare takes its place (unless `w` was the spare) and a new one starts."""
        w.kill()
        if w is not self._spare:
            self._workers[self._workers.index(w)] = self._spare
        self._spare = _Worker(*self._spawn_args)

    def close(self) -> None:
        """Stop the workers and the spare; idempotent."""
        spare = getattr(self, "_spare", None)  # attributes may be missing: __init__ failed
        workers = getattr(self, "_workers", []) + ([spare] if spare is not None else [])
        self._workers, self._spare = [], None
        for w in workers:
            w.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit, modules may be gone
            self.close()
