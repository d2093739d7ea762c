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


def test_one_rule_names_whom_to_blame():
    """Died or never answered before raised (in a collective the others' errors follow from
    theirs), generators before learners, actors late together named together; only the
    generators that died or hung are handed back for a restart."""
    from actors.failures import Outcome, blame, culprits, late

    def outcomes(*kinds):
        return [Outcome(failure=k, reason=f"{k} here") if k else Outcome(1) for k in kinds]

    names = ["learner 0", "learner 1", "generator 0", "generator 1"]
    assert culprits(outcomes(None, "raised", "late", "died"), names) == [2, 3]
    assert culprits(outcomes("raised", "late", None, "unfinished"), names) == [1]
    assert culprits(outcomes("late", "died", None, None), names) == [1]
    assert culprits(outcomes(None, "raised", None, "raised"), names) == [1]
    assert blame(outcomes(None, "raised", "late", "died"), names, restart_generators=True) == [2, 3]
    assert blame(outcomes(None, None, None, None), names) == []
    with pytest.raises(ActorFailure) as info:
        blame([late(0.5), late(0.5), Outcome(1), *outcomes("raised")], names)
    assert str(info.value) == "learner 0, learner 1 failed: no answer within 0.5 s"
    assert info.value.lost
    with pytest.raises(ActorFailure) as info:
        blame(outcomes(None, None, "raised", "died"), names[:2] + ["reward worker 0", "x"],
              restart_generators=True)
    assert str(info.value) == "x failed: died here" and info.value.lost
