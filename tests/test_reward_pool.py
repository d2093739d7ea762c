"""The reward pool on a real local Ray: verdicts in order, and slow answers spread over workers."""

import time

import pytest

ray = pytest.importorskip("ray")

from actors.failures import ActorFailure  # noqa: E402
from actors.reward_pool import RewardPool  # noqa: E402
from drgrpo.answers import Verdict, grade_response  # noqa: E402

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


def test_dead_and_hung_workers_are_replaced_and_their_chunks_graded_again(ray_local):
    """One worker's process killed (-9), the other's frozen (SIGSTOP, so it neither answers
    nor dies): both are replaced, every chunk is graded, the verdicts are the same."""
    import os
    import signal

    pool = RewardPool(2, timeout_s=1.0, wall_timeout_s=1.0, options={"num_cpus": 0},
                      margin_s=20.0)
    rows = [(f"so \\boxed{{{n}}}", str(n if n % 3 else n + 1)) for n in range(16)]
    responses, answers = map(list, zip(*rows))
    pids = [ray.get(w.__ray_call__.remote(lambda self: os.getpid())) for w in pool.workers]
    os.kill(pids[0], signal.SIGKILL)
    os.kill(pids[1], signal.SIGSTOP)
    try:
        verdicts = pool.score(responses, answers, "qwen_math", [False] * 16)
    finally:
        for actor in pool.workers:
            ray.kill(actor)
    assert verdicts == [grade_response(r, a, "qwen_math", False) for r, a in rows]
    reasons = {e.actor: e.reason for e in pool.faults.events}
    assert reasons.keys() == {"reward worker 0", "reward worker 1"}, reasons
    assert "process died" in reasons["reward worker 0"], reasons
    assert reasons["reward worker 1"].startswith("no answer within 2"), reasons


def test_a_worker_whose_grader_raises_stops_the_batch_in_one_line(ray_local):
    """Not a lost worker but its own code raising (here: a Grader closed, as one closes itself
    when a grading process cannot start): a new worker would raise again, so the run stops
    with one line naming the worker and its error, not Ray's traceback."""
    pool = RewardPool(2, timeout_s=1.0, wall_timeout_s=1.0, options={"num_cpus": 0})
    ray.get(pool.workers[1].__ray_call__.remote(lambda self: self.grader.close()))
    rows = [(f"so \\boxed{{{n}}}", str(n)) for n in range(16)]  # chunks for both workers
    responses, answers = map(list, zip(*rows))
    try:
        with pytest.raises(ActorFailure) as info:
            pool.score(responses, answers, "qwen_math", [False] * 16)
    finally:
        for actor in pool.workers:
            ray.kill(actor)
    assert str(info.value) == "reward worker 1 failed: RuntimeError: the Grader is closed"
    assert not info.value.lost and pool.faults.events == []
