"""Failed actors become one line naming the actor and its own error, never a Ray traceback."""

import time

import pytest

ray = pytest.importorskip("ray")

from actors.failures import ActorFailure, gather  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@ray.remote(num_cpus=0)
class Worker:
    def __init__(self, fail: bool = False):
        if fail:
            raise ValueError("no such model: /models/x")

    def ok(self) -> int:
        return 1

    def raises(self) -> None:
        {}["missing"]

    def sleeps(self, seconds: float) -> None:
        time.sleep(seconds)


def failure(refs, names, **kwargs) -> ActorFailure:
    with pytest.raises(ActorFailure) as info:
        gather(refs, names, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


def test_each_kind_of_failure_is_one_line_naming_the_actor(ray_local):
    good, bad = Worker.remote(), Worker.remote(fail=True)
    err = failure([good.ok.remote(), bad.ok.remote()], ["learner 0", "learner 1"])
    assert str(err) == "learner 1 failed: ValueError: no such model: /models/x"

    err = failure([good.raises.remote()], ["generator 0"])
    assert str(err) == "generator 0 failed: KeyError: 'missing'"

    doomed = Worker.remote()
    ray.get(doomed.ok.remote())
    ref = doomed.sleeps.remote(30)
    ray.kill(doomed)
    err = failure([ref], ["reward worker 0"])
    assert str(err).startswith("reward worker 0 failed: the actor's process died")

    err = failure([good.sleeps.remote(5)], ["generator 1"], timeout_s=0.5)
    assert str(err) == "generator 1 failed: no answer within 0.5 s"
    assert gather([good.ok.remote(), good.ok.remote()], ["a", "b"]) == [1, 1]
