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
    holds (e.g. "step 1 is logged": then it is step 2's rollout).

    A tiny model's rollout is over in milliseconds, and so is the gap between the weight
    sync that precedes it and its start: a test that polls the generator's process title
    missed whole runs' rollouts in fresh-clone suites. So nothing is raced. The run's driver
    (`run`) makes the generate calls and learner 0 the weight sync's, and the two are never
    let run at once: while the generator is idle its engine is frozen (SIGSTOP), so whatever
    call comes waits, in view; a `generate` is struck there, or let through if `after()`
    does not hold yet; any other call gets the engine back while the driver is frozen
    instead, until the generator is idle again and its engine frozen first. Everything is
    thawed on the way out. Nothing caught: an AssertionError with the titles seen and the
    tail of the run's `log`."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []  # the titles the generator showed, for the error below

    def title(actor: psutil.Process) -> str:
        name = " ".join(actor.cmdline()).rstrip()  # Ray pads it with spaces
        if not seen or seen[-1] != name:
            seen.append(name)
        return name

    while time.monotonic() < deadline and alive(run):
        for actor in processes(run, GENERATOR):
            engine = None
            try:
                while engine is None and time.monotonic() < deadline and alive(actor):
                    if not title(actor).startswith(GENERATOR + ".__init__"):  # started
                        engine = _engine_of(actor)
                    time.sleep(0.002)
                if engine is not None and _hold(run, actor, engine, strike, after, deadline,
                                                title):
                    return
            except (psutil.Error, AttributeError):
                pass
            finally:
                _signal(run, signal.SIGCONT)
                if engine is not None:
                    _signal(engine, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(
        "no generate call caught" + ("" if alive(run) else " (the run ended)")
        + f"; the generator's titles, in turn: {seen[-20:]}"
        + (f"\nthe run's log, last lines:\n{log.read_text()[-3000:]}" if log else ""))


def _engine_of(actor: psutil.Process) -> psutil.Process | None:
    """The actor's vLLM engine-core process (its other children may come and go)."""
    for p in actor.children(recursive=True):
        try:
            if p.name().startswith("VLLM::EngineCore"):
                return p
        except psutil.Error:
            pass
    return None


def _hold(run, actor, engine, strike, after, deadline, title) -> bool:
    """strike_while_generating's watch over one generator: True once it struck."""
    generate = GENERATOR + ".generate"
    engine_frozen = driver_frozen = passing = False
    while time.monotonic() < deadline and alive(actor) and alive(engine):
        name = title(actor)
        if name == GENERATOR:  # idle: freeze the engine, then let the driver go on
            passing = False
            if not engine_frozen:
                engine.send_signal(signal.SIGSTOP)
                engine_frozen = True
            if driver_frozen:
                run.send_signal(signal.SIGCONT)
                driver_frozen = False
        elif name.startswith(generate):
            if not passing and after():
                strike(actor, engine)
                return True
            if not passing:  # not the one: let it through
                engine.send_signal(signal.SIGCONT)
                engine_frozen, passing = False, True
        else:  # another call (the weight sync's): the engine serves it, the driver waits
            passing = False
            if not driver_frozen:
                run.send_signal(signal.SIGSTOP)
                driver_frozen = True
            if engine_frozen:
                engine.send_signal(signal.SIGCONT)
                engine_frozen = False
        time.sleep(0.002)
    return False


def kill_generating_engine(run: psutil.Process, after: Callable[[], bool] = lambda: True,
                           timeout: float = 300, log: Path | None = None) -> None:
    """SIGKILL the engine core while its generator waits for what it was sent to sample."""
    strike_while_generating(run, lambda actor, engine: engine.send_signal(signal.SIGKILL),
                            after, timeout, log)
