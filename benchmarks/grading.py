"""Grading throughput, and what hostile answers cost (issue 10).

    python -m benchmarks.grading [--quick] [--by-kind] [--output grading.json]

On one set of responses built from the real benchmark answers in ../shared/data (correct as
written, correct but rewritten so math-verify has to work, wrong, malformed) with the hostile
set below mixed in, it measures responses/s of one `Grader` driven from this process (the
baseline: no Ray) and of the reward pool with 1 and 2 Ray workers; then the wall time of the
hostile batch alone on the pool with 2 workers (and on the baseline). `run()` returns a flat,
JSON-able dict; `--by-kind` also grades each hostile answer alone and sums the time per kind.

Every figure depends on the machine and on what else runs on it: `os.getloadavg()` is
recorded before and after, and the niceness of the baseline and of Ray's workers. The
per-answer limit is the pool's own default unless given.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, load_avg

DATA = ROOT.parent / "shared" / "data"
BENCHMARKS = ["aime24", "amc23", "math500", "minerva", "olympiad_bench"]
TARGETS = {"pool2_vs_loop": 1.6, "hostile_batch_pool2_s": 10.0}
# Which way each bound goes: the suite (benchmarks/run.py) checks TARGETS with these.
TARGET_OPS = {"pool2_vs_loop": ">=", "hostile_batch_pool2_s": "<="}
MB = 1 << 20

# ---------------------------------------------------------------- the responses


def _boxed(answer: str) -> str:
    return f"Some reasoning.\nThe final answer is \\boxed{{{answer}}}."


def _nest(open_: str, close: str, depth: int, core: str = "1") -> str:
    return open_ * depth + core + close * depth


PAYLOAD = "__import__('os').system('touch /tmp/drgrpo-pwned')"


def hostile() -> list[tuple[str, str]]:
    """48 (kind, qwen_math response) a policy can produce to hurt a grader."""
    bomb = [
        "9^{9^{9^{9}}}", "9^{9^{9}}", "10^{10^{10^{10}}}", "2^{2^{2^{2^{2^{2}}}}}",
        "7^{1000000000}", "-10^{10^{8}}", "(10!)!", "(10^{10})!",
        "\\binom{10^{10}}{10^{5}}", "1 \\times 10^{99999999}", "\\log(10^{10^{10}})",
        "\\frac{9^{9^{9}}}{9^{9^{9}}}",
    ]
    nested = [
        _nest("{", "}", 12), _nest("(", ")", 12), _nest("\\sin(", ")", 12, "x"),
        _nest("\\frac{1}{", "}", 12, "2"), _nest("1+\\frac{1}{", "}", 11, "2"),
        _nest("\\sqrt{", "}", 12, "2"), _nest("{", "}", 400), _nest("(", ")", 100_000),
    ]
    long = [
        "+".join(["1"] * 450), "(" + ",".join(map(str, range(250))) + ")",
        "\\{" + ",".join(map(str, range(250))) + "\\}", "(x+1)^{10000}", "(x+y+z)^{200}",
        "\\int_0^{1} x^{1000000} dx", "\\prod_{i=1}^{10^{9}} i",
        "\\begin{pmatrix}" + "\\\\".join(
            "&".join(str(i * j) for j in range(12)) for i in range(12)) + "\\end{pmatrix}",
    ]
    garbage = [
        "\\" * 900, "\\frac{\\frac{}{}}{\\frac{}{}}" * 20, "^" * 900, "x_{" * 12 + "}" * 12,
        "\u202e\u0000\ud7ff" * 300, "\\left(" * 100 + "1" + "\\right)" * 100,
    ]
    payloads = [
        PAYLOAD, f"1+{PAYLOAD}", f"eval(\"{PAYLOAD}\")", f"exec('{PAYLOAD}')",
        f"(lambda: {PAYLOAD})()", f"${PAYLOAD}$", f"\\text{{{PAYLOAD}}}", f"x = {PAYLOAD}",
    ]
    huge = [  # whole responses
        "x" * MB + "\\boxed{5}", _boxed("1" * MB), "\\boxed{" * (MB // 7), "}" * MB,
        "{" * MB + "\\boxed{1}", "\\boxed{1}" * (MB // 9),
    ]
    out = [(kind, _boxed(a)) for kind, group in
           [("bomb", bomb), ("nested", nested), ("long", long), ("garbage", garbage),
            ("payload", payloads)] for a in group]
    out += [("huge", r) for r in huge]
    assert len(out) == 48, len(out)
    return out


def _eval_answers() -> list:
    if not DATA.is_dir():
        raise SystemExit(f"benchmarks/grading.py needs the real data folder {DATA}")
    rows = []
    for name in BENCHMARKS:
        text = (DATA / "eval" / f"{name}.jsonl").read_text()
        rows += [json.loads(line)["answer"] for line in text.splitlines() if line]
    return rows


_FRAC = re.compile(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_SQRT = re.compile(r"\\sqrt\{([^{}]+)\}")


def _rewrite(answer: str) -> str:
    """The same value written differently, so string rules cannot decide: math-verify must."""
    return _SQRT.sub(r"(\1)^{1/2}", _FRAC.sub(r"(\1)/(\2)", answer))


def _perturb(answer: str) -> str:  # as tests/test_rewards.py: first number + 1
    m = re.search(r"\d+", answer)
    if m is None:
        return answer + " + 1"
    return answer[: m.start()] + str(int(m.group()) + 1) + answer[m.end():]


def responses(quick: bool, offset: int = 0) -> list[tuple[str, object, bool]]:
    """(response, reference, truncated): every `step`-th real answer from `offset` as correct,
    rewritten (where that changes it), wrong, and every third one malformed; the hostile set
    mixed in, all in a fixed shuffled order (qwen_math format)."""
    answers = _eval_answers()
    step = 40 if quick else 5
    out = []
    for n, answer in enumerate(answers[offset::step]):
        first = answer[0] if isinstance(answer, list) else answer
        out.append((_boxed(first), answer, False))
        if _rewrite(first) != first:
            out.append((_boxed(_rewrite(first)), answer, False))
        out.append((_boxed(_perturb(first)), answer, False))
        if n % 3 == 0:
            out.append([(f"The answer is {first}.", answer, False),
                        (_boxed(first)[:-3], answer, False),  # cut inside the box
                        (_boxed(first), answer, True)][n // 3 % 3])  # cut at the token limit
    if offset == 0:
        out += _hostile_rows(answers, quick)
    random.Random(0).shuffle(out)
    return out


def warm_up(quick: bool) -> list[tuple[str, object, bool]]:
    """Other real answers (no hostile ones), graded before the clock runs. A worker keeps what
    it parsed: math-verify caches parses of identical strings, the LaTeX parser builds its
    decision tables as it meets new shapes. Graders in training run for hours, so each one
    is measured warm, but on answers it has not seen (a fresh one took 20% longer here)."""
    return responses(quick, offset=2)


def _hostile_rows(answers: list, quick: bool) -> list[tuple[str, object, bool]]:
    rows = [(r, answers[i], False) for i, (_, r) in enumerate(hostile())]
    return rows[::6] if quick else rows  # quick: 2 bombs, 2 nested, 1 of each other kind


# ---------------------------------------------------------------- measuring


def _pool_default_timeout() -> float:
    from actors.reward_pool import RewardPool

    return inspect.signature(RewardPool).parameters["timeout_s"].default


def _timed(fn, rows) -> tuple[float, list]:
    start = time.perf_counter()
    verdicts = fn([r for r, _, _ in rows], [a for _, a, _ in rows], "qwen_math",
                  [t for _, _, t in rows])
    return time.perf_counter() - start, verdicts


def _niceness() -> int:
    return os.nice(0)


_SPIN = ("import time; t, c = time.time(), time.process_time()\n"
         "while time.time() - t < {s}: pass\n"
         "print((time.process_time() - c) / (time.time() - t))")


def _cores_free(processes: int = 2, seconds: float = 2.0) -> float:
    """CPU cores that `processes` busy processes get together: what 2 workers can scale to.
    On this project's shared 2-core machine it was 0.4 to 0.7 at times, and no pool of 2
    can then beat a loop of 1, whatever the code."""
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN.format(s=seconds)],
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return round(sum(float(p.communicate()[0]) for p in procs), 2)


def _started(grader, warm) -> None:
    if hasattr(grader, "wait_ready"):
        grader.wait_ready()  # the spare too: its start-up must not overlap the measurement
    _timed(grader.grade, warm)


def _loop(rows, timeout_s: float, warm) -> tuple[float, list]:
    from drgrpo.grader import Grader

    with Grader(num_workers=1, timeout_s=timeout_s) as grader:
        _started(grader, warm)
        return _timed(grader.grade, rows)


def run(quick: bool = False, timeout_s: float | None = None) -> dict:
    """Every measurement gets graders of its own, warmed on other answers (`warm_up`): a
    worker that had graded these very answers would answer from math-verify's cache."""
    import ray

    from actors.reward_pool import RewardPool

    begin = time.perf_counter()
    timeout_s = _pool_default_timeout() if timeout_s is None else timeout_s
    rows, bad = responses(quick), _hostile_rows(_eval_answers(), quick)
    # Ray runs its workers, so the pool's graders, at niceness 15 (RAY_worker_niceness): on a
    # machine that other processes keep busy they get less CPU than the baseline here.
    figures = {"responses": len(rows), "hostile_batch_size": len(bad), "timeout_s": timeout_s,
               "load_1m_start": load_avg()[0], "baseline_niceness": _niceness(),
               "cores_free_start": _cores_free()}
    warm = warm_up(quick)
    loop_s, loop_verdicts = _loop(rows, timeout_s, warm)
    loop_bad_s, _ = _loop(bad, timeout_s, warm)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:  # all pools start at once; each is warmed before it is timed
        figures["pool_niceness"] = ray.get(ray.remote(num_cpus=0)(_niceness).remote())
        pools = [RewardPool(n, timeout_s, options={"num_cpus": 0}) for n in (1, 2, 2)]
        for pool in pools:
            _timed(pool.score, warm)  # each worker sees its share (actors start before calls)
        pool_s, pool_verdicts = zip(*[_timed(pool.score, rows) for pool in pools[:2]])
        figures["hostile_batch_pool2_s"] = round(_timed(pools[2].score, bad)[0], 3)
        for actor in [a for pool in pools for a in pool.workers]:
            ray.kill(actor)
    finally:
        if started:
            ray.shutdown()
    rate = {k: len(rows) / s for k, s in [("loop", loop_s), ("pool1", pool_s[0]),
                                           ("pool2", pool_s[1])]}
    figures.update({f"{k}_responses_per_s": round(v, 2) for k, v in rate.items()})
    figures.update({
        "timeouts": sum(v.timed_out for v in loop_verdicts),
        "pool_verdicts_differ": sum(a != b for verdicts in pool_verdicts
                                    for a, b in zip(loop_verdicts, verdicts)),
        "load_1m_end": load_avg()[0],
        "cores_free_end": _cores_free(),
        "wall_s": round(time.perf_counter() - begin, 1),
    })
    return {
        "name": "grading",
        "figures": figures,
        "baseline": {"loop_responses_per_s": figures["loop_responses_per_s"],
                     "hostile_batch_loop_s": round(loop_bad_s, 3)},
        "ratios": {"pool1_vs_loop": round(rate["pool1"] / rate["loop"], 3),
                   "pool2_vs_loop": round(rate["pool2"] / rate["loop"], 3)},
        "targets": TARGETS,
    }


def by_kind(timeout_s: float | None = None) -> dict:
    """Seconds per hostile kind, each answer graded alone (limit included, start-up not)."""
    from drgrpo.grader import Grader

    timeout_s = _pool_default_timeout() if timeout_s is None else timeout_s
    answers, out = _eval_answers(), {}
    with Grader(num_workers=1, timeout_s=timeout_s) as grader:
        _started(grader, warm_up(False))
        for i, (kind, response) in enumerate(hostile()):
            start = time.perf_counter()
            (verdict,) = grader.grade([response], [answers[i]], "qwen_math")
            seconds = time.perf_counter() - start
            out[f"{kind}_s"] = round(out.get(f"{kind}_s", 0.0) + seconds, 3)
            out[f"{kind}_timeouts"] = out.get(f"{kind}_timeouts", 0) + verdict.timed_out
            print(f"{kind:8s} {seconds:6.2f} s  {verdict}  {response[:50]!r}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.grading", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the small set the test suite runs")
    p.add_argument("--by-kind", action="store_true", help="also time each hostile answer alone")
    p.add_argument("--timeout", type=float, default=None, help="seconds per answer")
    p.add_argument("--output", type=Path, help="also write the result here as JSON")
    args = p.parse_args(argv)
    result = run(args.quick, args.timeout)
    if args.by_kind:
        result["figures"].update(by_kind(args.timeout))
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
