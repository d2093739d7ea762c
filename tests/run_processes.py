"""Finding a running run's own processes from outside, to kill or freeze them as a fault
would (the chaos tests: test_faults.py, test_demo.py, test_evaluate.py)."""

from __future__ import annotations

import time

import psutil


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


def generating_engine(run: psutil.Process, timeout: float = 60) -> psutil.Process:
    """The engine-core process of the generator, caught while the generator samples. The
    generator's actor process is found once, then only its own title is watched: a walk of
    the run's whole process tree per poll could miss a tiny model's rollout entirely (it
    did, in a fresh-clone suite: a chaos run's step-2 rollout, an evaluation's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(run):
        for actor in processes(run, "ray::GeneratorActor"):
            try:
                while time.monotonic() < deadline and alive(actor):
                    if " ".join(actor.cmdline()).startswith("ray::GeneratorActor.generate"):
                        engines = [p for p in actor.children(recursive=True)
                                   if p.name().startswith("VLLM::EngineCore")]
                        if engines:
                            return engines[0]
                    time.sleep(0.002)
            except (psutil.Error, AttributeError):
                pass
        time.sleep(0.01)
    raise AssertionError("no engine caught while its generator samples"
                         + ("" if alive(run) else " (the run ended)"))
