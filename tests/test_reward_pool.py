"""The reward pool on a real local Ray: verdicts in order, and slow answers spread over workers."""

import time

import pytest

ray = pytest.importorskip("ray")

from actors.reward_pool import RewardPool  # noqa: E402
from drgrpo.rewards import Verdict, grade_response  # noqa: E402

# Distinct (the grader grades identical answers once), each one passes the cost guard and
# then takes sympy minutes to expand: only the hard time limit stops them.
SLOW = [f"\\boxed{{(a+b+c+d)^{{{100 - i}}}}}" for i in range(6)]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_local):
    # Wall-clock limits (wall_timeout_s = timeout_s), so that the time these tests measure
    # does not depend on how much CPU a busy machine leaves Ray's niceness-15 workers.
    pool = RewardPool(2, timeout_s=2.0, wall_timeout_s=2.0, options={"num_cpus": 0})
    pool.score(["\\boxed{1}"] * 8, ["1"] * 8, "no", [False] * 8)  # both workers started
    yield pool
    for actor in pool.workers:
        ray.kill(actor)


def test_verdicts_come_back_in_order(pool):
    rows = [(f"so \\boxed{{{n}}}", str(n if n % 3 else n + 1), n % 7 == 0) for n in range(45)]
    rows += [("no box", "1", False), ("\\boxed{\\frac{1}{2}}", "0.5", False)]
    responses, answers, truncated = map(list, zip(*rows))
    verdicts = pool.score(responses, answers, "qwen_math", truncated)
    assert verdicts == [grade_response(*row[:2], "qwen_math", row[2]) for row in rows]
    assert pool.score([], [], "no", []) == []
    assert pool.score(["no box"], ["1"], "no", [False]) == [Verdict(0.0, False)]


def test_slow_answers_are_spread_over_the_workers(pool):
    # Six slow answers side by side: one worker taking them all needs 6 limits (12 s) plus
    # restarts, always; spread over two workers the batch takes about 3 limits (6 s), and
    # what a busy machine adds (worker restarts, Ray calls) stays below the other 6 s.
    responses = SLOW + [f"\\boxed{{{n}}}" for n in range(6)]
    start = time.monotonic()
    verdicts = pool.score(responses, ["5"] * 6 + [str(n) for n in range(6)], "qwen_math",
                          [False] * 12)
    elapsed = time.monotonic() - start
    assert verdicts == [Verdict(0.0, True, timed_out=True)] * 6 + [Verdict(1.0, True)] * 6
    assert elapsed < 6 * 2.0, elapsed


def test_bad_arguments(pool):
    with pytest.raises(ValueError):
        pool.score(["\\boxed{1}"], [], "no", [False])
    with pytest.raises(ValueError):
        RewardPool(1, chunk_size=0)
