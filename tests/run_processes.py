"""Finding a running run's own processes from outside, to kill or freeze them as a fault
would (the chaos tests: test_faults.py, test_demo.py, test_evaluate.py)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil

GENERATOR = "ray::GeneratorActor"  # Ray's title for the actor's process while it is idle


def processes(run: psutil.Process, title: str) -> list[psutil.Process]:
    """The run's descendants (its local Ray's workers and their children) whose process
    title starts with `title` (Ray titles an actor `ray::<Class>.<method running>`)."""
    found = []
    for p in run.children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(title) or p.name().startswith(title):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def alive(p: psutil.Process) -> bool:
    """Running, and not a zombie that its parent has yet to wait for."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass


def strike_while_generating(run: psutil.Process,
                            strike: Callable[[psutil.Process, psutil.Process], None],
                            after: Callable[[], bool] = lambda: True,
                            timeout: float = 300, log: Path | None = None) -> None:
    """`strike(generator's actor process, its engine-core process)` while the generator is
    in a `generate` call that cannot finish first: the first such call seen once `after()`
    holds (e.g. "step 1 is logged": then it is step 2's rollout, which the driver starts
    a few milliseconds after the log).

    A tiny model's rollout can be over in milliseconds, between two looks of a test process
    on a loaded machine: watching the actor's title alone missed whole runs' rollouts in
    fresh-clone suites (a chaos run's, an evaluation's). So the engine is frozen (SIGSTOP)
    while its generator is idle; the generator's next call then shows in its title. A
    `generate` is held until the strike; any other call (a weight sync) thaws the engine and
    the wait goes on. The engine is thawed after the strike unless the strike ended it.
    Caught nothing: an AssertionError with the titles seen and the tail of the run's `log`."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []  # the titles the generator showed, for the error below
    generate = GENERATOR + ".generate"

    def title(actor: psutil.Process) -> str:
        name = " ".join(actor.cmdline()).rstrip()  # Ray pads it with spaces
        if not seen or seen[-1] != name:
            seen.append(name)
        return name

    while time.monotonic() < deadline and alive(run):
        for actor in processes(run, GENERATOR):
            try:
                passing = False  # a generate seen before `after()` held, let through
                while time.monotonic() < deadline and alive(actor):
                    name = title(actor)
                    passing = passing and name.startswith(generate)
                    # Idle, or sampling what may be the rollout to strike: freeze its engine.
                    freeze = not passing and (name == GENERATOR or name.startswith(generate))
                    engines = [p for p in actor.children(recursive=True)
                               if p.name().startswith("VLLM::EngineCore")] if freeze else []
                    if not engines:
                        time.sleep(0.002)
                        continue
                    engines[0].send_signal(signal.SIGSTOP)
                    try:
                        while time.monotonic() < deadline and alive(actor):
                            name = title(actor)
                            if name.startswith(generate):
                                if not after():
                                    passing = True
                                    break
                                strike(actor, engines[0])
                                return
                            if name != GENERATOR:
                                break  # another call may need the engine
                            time.sleep(0.002)
                    finally:
                        _signal(engines[0], signal.SIGCONT)
            except (psutil.Error, AttributeError):
                pass
        time.sleep(0.01)
    raise AssertionError(
        "no generate call caught" + ("" if alive(run) else " (the run ended)")
        + f"; the generator's titles, in turn: {seen[-20:]}"
        + (f"\nthe run's log, last lines:\n{log.read_text()[-3000:]}" if log else ""))


def kill_generating_engine(run: psutil.Process, after: Callable[[], bool] = lambda: True,
                           timeout: float = 300, log: Path | None = None) -> None:
    """SIGKILL the engine core while its generator waits for what it was sent to sample."""
    strike_while_generating(run, lambda actor, engine: engine.send_signal(signal.SIGKILL),
                            after, timeout, log)
