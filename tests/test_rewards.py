"""Rewards: the paper's answer extraction, math-verify equivalence, and hard time limits."""

import json
import os
import re
import signal
import threading
import time

import pytest

from drgrpo import answers
from drgrpo.answer_cost import affordable
from drgrpo.answers import Verdict, answers_match, extract_answer, grade_response
from drgrpo.grader import Grader
from drgrpo.templates import TEMPLATES, reference_response

# Passes the cost guard (an exponent of 100 is allowed) but sympy expands it into 176,851
# terms: minutes of CPU at a few MB/s, so only the hard time limit stops it.
SLOW = "\\boxed{(a+b+c+d)^{100}}"

# ---------------------------------------------------------------- extraction and format


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("so \\boxed{1} and finally \\boxed{2}.", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, {2}\\}}", "\\{1, {2}\\}"),
        ("\\fbox{3}", "3"),
        ("\\boxed {4}", "4"),
        ("the answer is 5", None),
        ("\\boxed{5", None),  # cut off inside the box
        ("\\boxed 5", None),
    ],
)
def test_extract_boxed(response, expected):
    assert extract_answer(response, "qwen_math") == expected
    assert extract_answer(response, "no") == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("reasoning </think> <answer> 5 </answer>", "5"),
        ("a </think> <answer> so \\boxed{6} </answer>", "6"),
        ("a </think> <answer> x <answer> 7 </answer>", "7"),  # after the last <answer>
        ("a </think> <answer> \\boxed{8 </answer>", ""),  # formatted, broken box: never right
        ("a </think><answer> 5 </answer>", None),  # the paper is strict about the space
        ("a <answer> 5 </answer>", None),
        ("a </think> <answer> 5", None),
        ("\\boxed{5}", None),
    ],
)
def test_extract_r1_is_strict(response, expected):
    assert extract_answer(response, "r1") == expected


@pytest.mark.parametrize(
    ("response", "template", "expected"),
    [
        ("r </think> <answer> 5 </answer>", "r1", Verdict(1.0, True)),
        ("r </think> <answer> \\boxed{5} </answer>", "r1", Verdict(1.0, True)),
        ("r </think> <answer> 6 </answer>", "r1", Verdict(0.0, True)),  # no format bonus
        ("r </think><answer> 5 </answer>", "r1", Verdict(0.0, False)),
        ("r </think> <answer> 5", "r1", Verdict(0.0, False)),
        ("\\boxed{5}", "r1", Verdict(0.0, False)),
        ("so \\boxed{5}.", "qwen_math", Verdict(1.0, True)),
        ("so \\boxed{6}.", "qwen_math", Verdict(0.0, True)),
        ("<answer> 5 </answer>", "qwen_math", Verdict(0.0, False)),
        ("5", "no", Verdict(0.0, False)),
        ("\\boxed{5}", "no", Verdict(1.0, True)),
    ],
)
def test_grade_response_per_template(response, template, expected):
    assert grade_response(response, "5", template) == expected


def test_truncated_scores_zero_but_reports_format():
    assert grade_response("\\boxed{5}", "5", "qwen_math", truncated=True) == Verdict(0.0, True)
    assert grade_response("so 5", "5", "qwen_math", truncated=True) == Verdict(0.0, False)
    r1 = "r </think> <answer> 5 </answer>"
    assert grade_response(r1, "5", "r1", truncated=True) == Verdict(0.0, True)


def test_list_of_acceptable_answers():
    assert grade_response("\\boxed{0.02}", ["0.01", "0.02"], "no").reward == 1.0
    assert grade_response("\\boxed{0.01}", ["0.01", "0.02"], "no").reward == 1.0
    assert grade_response("\\boxed{0.03}", ["0.01", "0.02"], "no").reward == 0.0
    # drgrpo.data.Problem holds several answers as a tuple: the same rule applies.
    assert grade_response("\\boxed{0.02}", ("0.01", "0.02"), "no").reward == 1.0
    with Grader(timeout_s=10) as grader:
        assert grader.grade(["\\boxed{0.02}"], [("0.01", "0.02")], "no")[0].reward == 1.0


# ---------------------------------------------------------------- equivalence

EQUIVALENT = [
    ("\\dfrac{1}{2}", "1/2"),
    ("\\tfrac12", "\\frac{1}{2}"),
    ("0.5", "\\frac{1}{2}"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("1,000", "1000"),
    ("1{,}000", "1000"),
    ("\\$5", "5"),
    ("$5$", "5"),
    ("5.0", "5"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90"),
    ("5 \\text{ cm}", "5"),
    ("864 \\mbox{ inches}^2", "864"),
    ("4.4677 \\times 10^{14} Hz", "4.4677e14"),
    ("10\\%", "10"),
    ("\\text{(C)}", "C"),
    ("Even", "\\text{even}"),
    ("x = 5", "5"),
    ("5", "x=5"),
    ("n", "N=n"),
    ("f(x) = 2x", "2x"),
    ("52", "52_8"),
    ("52_{8}", "52_8"),
    ("4.5e-9", "4.5 \\times 10^{-9}"),
    ("\\frac{1}{m}t", "\\frac{t}{m}"),
    ("\\frac{c}{\\sqrt{2}}", "\\frac{1}{\\sqrt{2}}c"),
    ("(x+1)^2", "x^2+2x+1"),
    ("\\{2, 1\\}", "1,2"),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"),
    ("[1, 2)", "[1,2)"),
]

DIFFERENT = [
    ("6", "5"),
    ("\\frac{1}{3}", "\\frac{1}{2}"),
    ("(2,1)", "(1,2)"),
    ("(1,2]", "[1,2)"),
    ("1000000", "1,000"),
    ("-\\infty", "\\infty"),
    ("x^2-2x+1", "x^2+2x+1"),
    ("4.5e-10", "4.5 \\times 10^{-9}"),
    ("0.0000041", "0.0000042"),  # math-verify alone: equal to 6 decimal places
    ("9.224 \\times 10^{-19}", "8.224 \\times 10^{-19}"),  # math-verify alone chops these
    ("1e12", "1e11"),
    ("52_9", "52_8"),  # math-verify alone drops the base
    ("N=n+1", "N=n"),  # math-verify alone lowercases N to n: n = n + 1 "equals" n = n
    ("0.3", "\\frac{1}{3}"),
    ("\\text{odd}", "\\text{even}"),
    ("", "5"),
    ("5", ""),
]


@pytest.mark.parametrize(("pred", "gold"), EQUIVALENT)
def test_equivalent_answers(pred, gold):
    assert answers_match(pred, [gold])


@pytest.mark.parametrize(("pred", "gold"), DIFFERENT)
def test_different_answers(pred, gold):
    assert not answers_match(pred, [gold])


def test_oversized_answers_are_not_parsed():
    assert not answers_match("1" + " " * answers.MAX_ANSWER_CHARS, ["1"])
    deep = "{" * (answers.MAX_NESTING + 1) + "1" + "}" * (answers.MAX_NESTING + 1)
    assert not answers_match(deep, ["1"])
    # Twice the deepest reference (4): even an answer equal to its reference is refused.
    assert not answers_match("\\sin(" * 9 + "x" + ")" * 9, ["\\sin(" * 9 + "x" + ")" * 9])


# ---------------------------------------------------------------- hostile input


@pytest.fixture(scope="module")
def grader():
    with Grader(num_workers=2, timeout_s=2.0) as g:
        g.grade(["\\boxed{1}", "\\boxed{2}"], ["1", "2"], "no")  # wait for start-up
        yield g


def _timed(grader, responses, answers, template="qwen_math"):
    start = time.monotonic()
    verdicts = grader.grade(responses, answers, template)
    return verdicts, time.monotonic() - start


def test_grader_agrees_with_in_process_grading(grader):
    cases = [(f"so \\boxed{{{p}}}", g) for p, g in EQUIVALENT[:12] + DIFFERENT[:8]]
    cases += [("unformatted", "1"), ("\\boxed{5}", ["4", "5"])] * 2  # duplicates: graded once
    responses, answers = zip(*cases)
    truncated = [False] * (len(cases) - 1) + [True]
    verdicts = grader.grade(list(responses), list(answers), "qwen_math", truncated)
    expected = [grade_response(r, a, "qwen_math", t) for r, a, t in zip(responses, answers, truncated)]
    assert verdicts == expected
    assert sum(v.reward for v in verdicts) == 12 + 1  # the truncated copy scores 0


def test_slow_answer_times_out_and_is_counted(grader):
    verdicts, elapsed = _timed(grader, [SLOW, "\\boxed{2}", SLOW], ["5", "2", "5"])
    assert verdicts[0] == Verdict(0.0, True, timed_out=True)
    assert verdicts[1] == Verdict(1.0, True)  # the batch goes on
    assert verdicts[2] == verdicts[0]
    assert elapsed < 2.0 + 20  # the limit, plus a generous margin for a worker restart
    assert grader.grade(["\\boxed{3}"], ["3"], "no") == [Verdict(1.0, True)]  # still usable


# Each takes sympy minutes (or a MemoryError) to evaluate exactly; none can be a reference.
BOMBS = [
    "9^{9^{9^{9^{9}}}}", "7^{1000000000}", "-10^{10^{8}}", "(10!)!", "(10^{10})!",
    "\\binom{10^{10}}{10^{5}}", "1 \\times 10^{99999999}", "1e99999999", "\\log(10^{10^{10}})",
    "\\sqrt{2}^{10^{10^{10}}}", "2^{\\frac{10^{9}}{3}}", "(x+1)^{10000}",
    "\\int_0^{1} x^{1000000} dx", "\\prod_{i=1}^{10^{9}} i",
    "\\begin{pmatrix}1&1\\\\1&0\\end{pmatrix}^{10^{9}}",
]


def test_expression_bombs_are_refused_not_timed_out():
    # A limit far above the guard's cost, so that a busy machine cannot turn a refusal into
    # a timeout: without the guard every one of them runs into it.
    with Grader(num_workers=2, timeout_s=10.0) as g:
        verdicts, elapsed = _timed(g, [f"\\boxed{{{b}}}" for b in BOMBS], ["5"] * len(BOMBS))
    assert verdicts == [Verdict(0.0, True)] * len(BOMBS)  # wrong, and never reached the limit
    assert elapsed < 30


@pytest.mark.parametrize(
    ("answer", "cheap"),
    [
        ("2^{1009}", True),  # the largest exact number among the references
        ("\\frac{100!}{2^{50}}", True),
        ("10^{100}", True),
        ("\\binom{10^{10}}{5}", True),
        ("2^{2^{2^{2}}}", True),  # 2^16
        ("2^{2^{2^{2^{2}}}}", False),  # 2^65536: 65,537 bits
        ("2.5^{10^{6}}", True),  # a float power is one mpmath operation
        ("\\sqrt[10^{10}]{2}", True),
        ("x^{100}", True),
        ("x^{101}", False),
        ("x^{n}", True),
        ("\\sum_{i=1}^{n} i^2", True),
        ("\\sum_{i=1}^{10^{6}} \\sin(i)", False),
        ("1000!", True),
        ("3000!", True),  # 30,400 bits
        ("4000!", False),
        ("\\Gamma(10^{10})", False),
        ("e^{e^{e^{e^{10}}}}", True),  # symbolic: sympy never expands it
    ],
)
def test_cost_guard_bounds(answer, cheap):
    assert affordable(answers._parse(answer)) is cheap


def test_megabyte_responses_are_fast(grader):
    mb = 1 << 20
    responses = [
        "x" * mb + "\\boxed{5}",
        "\\boxed{" + "1" * mb + "}",
        "\\boxed{" * (mb // 7),
        "}" * mb,
        "<think> " * (mb // 8) + "</think> <answer> 5 </answer>",
    ]
    templates = ["qwen_math"] * 4 + ["r1"]
    start = time.monotonic()
    verdicts = [grader.grade([r], ["5"], t)[0] for r, t in zip(responses, templates)]
    assert time.monotonic() - start < 10
    assert [v.reward for v in verdicts] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert not any(v.timed_out for v in verdicts)


def test_deeply_nested_braces_are_fast(grader):
    responses = [
        "\\boxed{" + "{" * 400 + "1" + "}" * 400 + "}",  # fits MAX_ANSWER_CHARS
        "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
        "\\boxed{" + "(" * 450 + "1" + ")" * 450 + "}",
        "\\boxed{" + "\\frac{1}{" * 30 + "2" + "}" * 30 + "}",
    ]
    verdicts, elapsed = _timed(grader, responses, ["1"] * 4)
    assert elapsed < 2.0 + 20
    assert all(v.reward == 0.0 and v.formatted for v in verdicts)


PAYLOADS = [
    "__import__('os').system('touch {marker}')",
    "__import__(\"os\").system(\"touch {marker}\")",
    "1+__import__('os').system('touch {marker}')",
    "eval(\"__import__('os').system('touch {marker}')\")",
    "exec('import os; os.system(\"touch {marker}\")')",
    "(lambda: __import__('os').system('touch {marker}'))()",
    "$__import__('os').system('touch {marker}')$",
    "Answer: __import__('os').system('touch {marker}')",
    "\\text{__import__('os').system('touch {marker}')}",
    "x = __import__('os').system('touch {marker}')",
]


def _payload_responses(marker):
    for payload in PAYLOADS:
        text = payload.replace("{marker}", str(marker))
        yield f"so \\boxed{{{text}}}", "qwen_math"
        yield f"r </think> <answer> {text} </answer>", "r1"


def test_python_payloads_never_run_in_workers(grader, tmp_path):
    marker = tmp_path / "pwned"
    for response, template in _payload_responses(marker):
        verdicts = grader.grade([response], ["0"], template)
        assert verdicts[0].reward == 0.0
    assert not marker.exists()


def test_python_payloads_never_reach_eval(tmp_path, monkeypatch):
    """In-process, every call into sympy's parse_expr (Python eval) is recorded: only
    digit tokens from the LaTeX grammar may get there, never text from the response."""
    import math_verify.parser
    import sympy.parsing.sympy_parser as sympy_parser

    answers_match("\\frac{1}{2} + x^2 + 0.5 + \\sqrt{3}", ["1", "(1,2)", "x=1"])  # warm-up
    seen = []
    real_parse_expr = sympy_parser.parse_expr

    def recording_parse_expr(text, *args, **kwargs):
        seen.append(text)
        return real_parse_expr(text, *args, **kwargs)

    monkeypatch.setattr(sympy_parser, "parse_expr", recording_parse_expr)
    monkeypatch.setattr(math_verify.parser, "parse_expr", recording_parse_expr)
    marker = tmp_path / "pwned"
    for response, template in _payload_responses(marker):
        assert grade_response(response, ["0", "x+1"], template).reward == 0.0
    assert not marker.exists()
    assert all(re.fullmatch(r"[0-9.]+", text) for text in seen), seen


def test_worker_crash_gives_a_counted_zero_and_a_new_worker():
    with Grader(num_workers=1, timeout_s=60.0) as g:
        g.grade(["\\boxed{1}"], ["1"], "no")  # started
        (pid,) = g.worker_pids()
        killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
        killer.start()
        start = time.monotonic()
        verdicts = g.grade([SLOW, "\\boxed{3}"], ["5", "3"], "qwen_math")
        killer.join()
        assert time.monotonic() - start < 30  # not the 60 s limit
        assert verdicts == [Verdict(0.0, True, crashed=True), Verdict(1.0, True)]
        assert g.worker_pids() != [pid]


def test_a_killed_worker_is_replaced_by_the_spare_started_in_advance():
    with Grader(num_workers=1, timeout_s=1.0) as g:
        g.grade(["\\boxed{1}"], ["1"], "no")
        (old,) = g.worker_pids()
        spare = g._spare.proc.pid
        verdicts = g.grade([SLOW, "\\boxed{3}"], ["5", "3"], "qwen_math")
        assert verdicts == [Verdict(0.0, True, timed_out=True), Verdict(1.0, True)]
        assert g.worker_pids() == [spare]  # no interpreter start between the kill and "3"
        assert g._spare.proc.pid not in (old, spare)  # the next spare is on its way
        with pytest.raises(ProcessLookupError):
            os.kill(old, 0)  # killed and reaped
        pids = g.worker_pids() + [g._spare.proc.pid]
    for pid in pids:  # close() stops the spare too
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_limit_counts_cpu_time_not_a_busy_machine():
    # A stopped worker gets no CPU, like one starved by busier or higher-priority processes:
    # 3 s of waiting is not 1 s of grading, and the answer still gets its verdict.
    with Grader(num_workers=1, timeout_s=1.0, wall_timeout_s=60.0) as g:
        g.wait_ready()
        (pid,) = g.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        resume = threading.Timer(3.0, os.kill, (pid, signal.SIGCONT))
        resume.start()
        verdicts, elapsed = _timed(g, ["\\boxed{\\frac{2}{4}}"], ["0.5"])
        resume.join()
        assert verdicts == [Verdict(1.0, True)]
        assert elapsed >= 3.0 and g.worker_pids() == [pid]


def test_the_wall_clock_still_bounds_a_worker_that_gets_no_cpu():
    with Grader(num_workers=1, timeout_s=1.0, wall_timeout_s=2.0) as g:
        g.wait_ready()
        (pid,) = g.worker_pids()
        os.kill(pid, signal.SIGSTOP)  # never resumed: killed at the wall limit
        verdicts, elapsed = _timed(g, ["\\boxed{\\frac{2}{4}}", "\\boxed{3}"], ["0.5", "3"])
        assert verdicts == [Verdict(0.0, True, timed_out=True), Verdict(1.0, True)]
        assert 2.0 <= elapsed < 2.0 + 20
    with pytest.raises(ValueError):
        Grader(timeout_s=2.0, wall_timeout_s=1.0)


def test_wait_ready_waits_for_the_spare_too():
    with Grader(num_workers=2, timeout_s=5.0) as g:
        g.wait_ready()
        assert all(w.ready for w in g._workers + [g._spare])


def test_grader_lifecycle():
    g = Grader(num_workers=1, timeout_s=5.0)
    with pytest.raises(ValueError):
        g.grade(["\\boxed{1}"], [], "no")
    with pytest.raises(ValueError):
        g.grade([], [], "boxed")
    assert g.grade([], [], "no") == []
    pids = g.worker_pids()
    g.close()
    g.close()  # idempotent
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped
    with pytest.raises(RuntimeError):
        g.grade(["\\boxed{1}"], ["1"], "no")
    with pytest.raises(ValueError):
        Grader(num_workers=0)


# ---------------------------------------------------------------- real benchmark answers

BENCHMARKS = ["aime24", "amc23", "math500", "minerva", "olympiad_bench"]

# Gold answers latex2sympy (math-verify's parser) cannot parse, so only string equality
# (after normalisation) can match them: `E`/`e` with a subscript reads as Euler's number,
# `\odot` is unknown, one is prose, one is `t(0,4]`. Checked below so the list stays true.
UNPARSEABLE = {
    ("minerva", 28),  # \frac{dM}{dt}=... L_{\odot} ... M_{\odot}
    ("minerva", 265),  # \hbar\omega(v+1/2)-\frac{E_{0}^{2} e^{2}}{2 m \omega^{2}}
    ("minerva", 267),  # E_{1},E_{2}
    ("minerva", 271),  # E_1, E_2
    ("olympiad_bench", 74),  # f(x)=ax+b, where b is an arbitrary integer, and ...
    ("olympiad_bench", 97),  # t(0,4]
}


@pytest.fixture(scope="module")
def data_grader():
    # Generous: a few equations with unknown functions take sympy 10 s on a busy machine.
    with Grader(num_workers=2, timeout_s=20.0) as g:
        yield g


def _answers(shared_data_dir, benchmark):
    path = shared_data_dir / "eval" / f"{benchmark}.jsonl"
    return [json.loads(line)["answer"] for line in path.read_text().splitlines() if line]


def _alternatives(answer):
    return answer if isinstance(answer, list) else [answer]


def _perturb(answer):
    m = re.search(r"\d+", answer)
    if m is None:
        return answer + " + 1"
    return answer[: m.start()] + str(int(m.group()) + 1) + answer[m.end() :]


def _failures(answers, verdicts, expected):
    return [(n, a, v) for n, (a, v) in enumerate(zip(answers, verdicts), 1) if v != expected]


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_reference_answers_grade_correct(benchmark, shared_data_dir, data_grader):
    answers = _answers(shared_data_dir, benchmark)
    for template in TEMPLATES:
        # Every acceptable form of every answer, as a response in the template's format.
        pairs = [(alt, a) for a in answers for alt in _alternatives(a)]
        responses = [reference_response(template, alt) for alt, _ in pairs]
        verdicts = data_grader.grade(responses, [a for _, a in pairs], template)
        assert not _failures(pairs, verdicts, Verdict(1.0, True)), template


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_perturbed_answers_grade_wrong(benchmark, shared_data_dir, data_grader):
    # The first acceptable form with its first number + 1 (or `+ 1` appended when it has no
    # digits), graded against all forms; rows alternate between the two answer formats.
    answers = _answers(shared_data_dir, benchmark)
    for parity, template in enumerate(["qwen_math", "r1"]):
        rows = [(n, _perturb(_alternatives(a)[0]), a)
                for n, a in enumerate(answers, 1) if n % 2 == parity]
        responses = [reference_response(template, wrong) for _, wrong, _ in rows]
        verdicts = data_grader.grade(responses, [a for *_, a in rows], template)
        bad = [(n, wrong, v) for (n, wrong, _), v in zip(rows, verdicts)
               if v.reward != 0.0 or not v.formatted or v.crashed]
        assert not bad, template
        # A timeout also scores 0, but only a rare slow sympy case may need one.
        assert sum(v.timed_out for v in verdicts) <= 1, template


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_reference_parse_failures_are_known_and_none_is_too_costly(benchmark, shared_data_dir):
    unparseable, costly = set(), []
    for n, answer in enumerate(_answers(shared_data_dir, benchmark), 1):
        for alt in _alternatives(answer):
            parsed = answers._parse(answers._prepare(alt, alt)[1])
            if not parsed:
                unparseable.add((benchmark, n))
            elif not affordable(parsed):
                costly.append(alt)
    assert unparseable <= UNPARSEABLE
    assert not costly  # the cost guard refuses no real reference
