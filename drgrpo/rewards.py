"""Rule-based math reward: is the model's final answer equivalent to the reference?

What is graded follows the paper's released grader (sail-sg/understand-r1-zero,
`understand_r1_zero/math_grader.py`), so rewards and accuracies mean what the paper's do:

- `qwen_math` / `no` (`boxed_reward_fn`): the content of the LAST `\\boxed{...}` (or
  `\\fbox{...}`) in the response. No complete box: unformatted.
- `r1` (`answer_tag_reward_fn`, strict): the response must contain `</think> <answer>` and
  `</answer>`; the answer is the text after the last `<answer>` with `</answer>` removed, and
  if it contains `\\boxed` the boxed content is taken. Otherwise: unformatted.
- Reward 1.0 when correct, else 0.0; no format bonus (it invites reward hacking). A response
  cut off at the token limit scores 0, as in the paper's trainer; its format is still reported.
- A reference may be a list of acceptable answers; any match counts.

Equivalence is math-verify's (`parse`/`verify`, the paper's non-"fast" verifier) after a
light normalisation (`\\dfrac`, `\\left(`, `1,000`, `\\$`, `^\\circ`, trailing `\\text{ units}`,
`1e11`, `x = 5` vs `5`, ...). Cheap checks decide first where math-verify is slow or wrong:
equal normalised strings (text answers such as `\\text{even}`); numbers in a base, `52_8`
(math-verify drops the base); plain decimal literals, integers exactly and decimals to a
relative 1e-6 (math-verify rounds to 6 decimal places and chops tiny differences, which makes
`0.0000041` equal `0.0000042` and `8.2 \\times 10^{-19}` equal `9.2 \\times 10^{-19}`).
math-verify's own unit stripping is off: it also strips a trailing variable (`\\frac{1}{m}t`).

Model output is hostile input. Grading never evaluates text as code: only math-verify's
LaTeX extraction is used, whose ANTLR grammar builds sympy objects node by node (its one
`sympify` of a string, `sympy.Number(token)`, only ever sees NUMBER tokens, i.e. digits).
math-verify's `ExprExtractionConfig` is NOT used: it calls sympy's `parse_expr`, i.e. Python
`eval`. Answers longer than `MAX_ANSWER_CHARS` or nested deeper than `MAX_NESTING` score 0
without being parsed; parsed answers whose exact evaluation would be astronomical (`9^{9^{9}}`,
`(10!)!`, `(x+1)^{10000}`) score 0 without being evaluated (`drgrpo.answer_cost`).

Hard time limit (`DEFAULT_TIMEOUT_S`, chosen below): sympy can still hang or eat memory on
answers the cost guard lets through (`(a+b+c+d)^{100}` expands into 176,851 terms), and
math-verify's own signal-based timeouts only work in a main thread (and would turn a timeout
into "wrong"). `Grader` therefore extracts answers in the caller (linear string work, `plan`)
and sends only the short extracted answer to worker processes: fresh interpreters (spawned
with `subprocess`, inheriting nothing; they import only this module) under a memory cap,
speaking JSON lines over pipes. A worker that spends the limit (CPU time; see `Grader`) is
killed and replaced (by a spare started in advance) and the answer gets
`Verdict(0.0, formatted, timed_out=True)`; a worker that dies or raises (segfault,
MemoryError, RecursionError) gets `crashed=True`. Both are counted, never silently "wrong".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Self

from drgrpo.templates import check_template

# Hard limit per answer, in CPU seconds of the grading process (see `Grader`). Measured on
# the 286 real references rewritten as `(a)/(b)`, `(x)^{1/2}` (correct, and math-verify has to
# work) and 1,560 perturbed (wrong) ones: as CPU time, at niceness 15 with the load average at
# 12 to 21 on 2 cores, a 1 s limit lost none of the 260 correct ones; only a wrong Minerva ODE
# needs more (13 s). As wall time (how it was counted before), at niceness 0 and a load of 11
# to 26, 1 s lost 14 correct answers and 2 s one. 5 s leaves room for slower cores and for a new
# worker, whose parser caches are empty; what it costs is at most 5 s of one worker per slow
# answer while the pool's other workers go on, and expression bombs no longer reach it.
DEFAULT_TIMEOUT_S = 5.0

MAX_ANSWER_CHARS = 1000  # longer final answers score 0 unparsed: real ones are far shorter
MAX_NESTING = 8  # likewise deeper {}/() nesting (references reach 4): the LaTeX parser's
# time grows fast with it. CPU seconds in a fresh worker, `{`, `(`, `\sin(` chains:
# depth 8: 0.41-0.71 s, 10: 0.64-1.26 s, 12: 0.72-3.39 s (30 nested \frac: minutes)


@dataclass(frozen=True)
class Verdict:
    reward: float  # 1.0 correct, 0.0 otherwise
    formatted: bool  # the response had the template's answer format
    timed_out: bool = False  # no verdict within the hard time limit (reward 0)
    crashed: bool = False  # the grading worker died or raised (reward 0)


# ---------------------------------------------------------------- answer extraction


def _last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}`/`\\fbox{...}` (the paper's rule)."""
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    start = text.find("{", idx)
    if start < 0 or text[idx:start].strip() not in ("\\boxed", "\\fbox"):
        return None
    depth = 0
    for i in range(start, len(text)):  # linear, whatever the nesting
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def extract_answer(response: str, template: str) -> str | None:
    """The final answer text, or None when the response lacks the template's format.

    For `r1` a formatted answer whose `\\boxed` is broken gives "" (formatted, never correct),
    as the paper's grader scores it.
    """
    check_template(template)
    if template != "r1":
        return _last_boxed(response)
    if "</think> <answer>" not in response or "</answer>" not in response:
        return None
    answer = response.split("<answer>")[-1].replace("</answer>", "")
    if "\\boxed" in answer:
        return _last_boxed(answer) or ""
    return answer.strip()


# ---------------------------------------------------------------- normalisation

_SPACING = re.compile(r"\\[,;:! ]|\\q?quad(?![a-zA-Z])|~|\n|\t")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])\.?")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree(?![a-zA-Z])|°")
_WRAPPED_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_EXPONENT = r"(?:\^\s*(?:\{\s*-?\d+\s*\}|-?\d))?"
# Units: a trailing `\text{...}` after something, or a common unit word after a number.
_TRAILING_UNIT = re.compile(
    r"^(.*?\S)\s*(?:\\(?:text|textrm|mathrm|mbox)\s*\{[^{}]*\}" + _EXPONENT + r"|"
    r"(?<=[\d}])\s+(?:[kKMGm]?(?:Hz|eV)|[kcmn]m|kg|kcal|sec|mph|hours?|minutes?|seconds?"
    r"|days?|years?|feet|foot|ft|inch(?:es)?|miles?|meters?|degrees?|dollars?|cents?"
    r"|units?)" + _EXPONENT + r")$"
)
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SCI_E = re.compile(r"(?<![\w\\.])(\d+(?:\.\d+)?)[eE]([-+]?\d+)(?![\w.])")
_CHOICE = re.compile(r"\(([A-Z])\)")
# `x = 5`, `f(x) = ...`, `m_{\max} = ...`: the answer is the right-hand side.
_ASSIGNMENT = re.compile(r"(\\?[A-Za-z]+(?:_\{[^{}=]*\}|_\w)?(?:\([^()=]*\))?)\s*=([^=<>]+)")
_BASE_N = re.compile(r"([0-9A-Z]*\d[0-9A-Z]*)_\{?(\d+)\}?")
_LITERAL = re.compile(
    r"([-+]?(?:\d+\.?\d*|\.\d+))(?:(?:\\times|\\cdot)10\^(?:\{([-+]?\d+)\}|(\d)))?"
)


def _normalize(answer: str) -> str:
    """Presentation-only rewrites, so math-verify (and string equality) see the maths."""
    s = _SPACING.sub(" ", answer)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\displaystyle", "").replace("{,}", ",")
    s = _LEFT_RIGHT.sub("", s)
    s = _DEGREES.sub("", s).strip()
    for _ in range(2):  # e.g. `15000 \text{ kcal m}^{-2} \text{yr}^{-1}`
        s = _TRAILING_UNIT.sub(r"\1", s).strip()
    whole = _WRAPPED_TEXT.fullmatch(s)
    if whole:
        s = whole.group(1).strip()
    s = s.rstrip(".").strip()
    choice = _CHOICE.fullmatch(s)
    if choice:
        s = choice.group(1)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return _SCI_E.sub(r"\1\\times 10^{\2}", s)


def _split_assignment(s: str) -> tuple[str, str] | None:
    m = _ASSIGNMENT.fullmatch(s)
    return (re.sub(r"\s+", "", m.group(1)), m.group(2).strip()) if m else None


def _literal(s: str) -> tuple[Decimal, bool] | None:
    """A plain decimal literal (maybe `\\times 10^{k}`) as (value, is_integer), else None."""
    m = _LITERAL.fullmatch(s)
    if not m:
        return None
    exponent = m.group(2) or m.group(3)
    try:
        value = Decimal(m.group(1))
        if exponent is not None:
            value = value.scaleb(int(exponent))
    except ArithmeticError:  # e.g. 10^{99999999}: overflow; leave it to math-verify
        return None
    return value, exponent is None and "." not in m.group(1)


def _cheap_match(p: str, g: str) -> bool | None:
    """Decide by string rules where they are conclusive; None: ask math-verify."""
    ps, gs = re.sub(r"\s+", "", p), re.sub(r"\s+", "", g)
    if ps == gs or (re.fullmatch(r"[A-Za-z ]+", g) and ps.lower() == gs.lower()):
        return True
    gb = _BASE_N.fullmatch(gs)
    if gb:  # math-verify drops the subscript, so 52_8 would equal 52_9
        pb = _BASE_N.fullmatch(ps)
        return (pb is not None and pb.groups() == gb.groups()) or ps == gb.group(1)
    pl, gl = _literal(ps), _literal(gs)
    if pl is None or gl is None:
        return None
    if pl[1] and gl[1]:
        return pl[0] == gl[0]
    # Decimals: relative; math-verify's absolute 6 places would equate all tiny quantities.
    try:
        return abs(pl[0] - gl[0]) <= Decimal("1e-6") * max(abs(pl[0]), abs(gl[0]))
    except ArithmeticError:
        return None


def _parse(normalized: str) -> list:
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse  # heavy; only workers need it

    config = LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all"
        ),
    )
    return parse(
        "\\boxed{" + normalized + "}",
        extraction_config=[config],
        fallback_mode="no_fallback",
        extraction_mode="first_match",
        parsing_timeout=None,  # signal-based; the hard limit is the Grader's
    )


def _parseable_size(pred: str) -> bool:
    if len(pred) > MAX_ANSWER_CHARS:
        return False
    depth = 0
    for char in pred:
        depth += (char in "{(") - (char in "})")
        if depth > MAX_NESTING:
            return False
    return True


def _prepare(pred: str, gold: str) -> tuple[str, str]:
    if "\\boxed" in gold:
        gold = _last_boxed(gold) or gold
    p, g = _normalize(pred), _normalize(gold)
    # Compare right-hand sides when both assign the same name or only one side assigns:
    # math-verify would too, but slowly (`f(x)=2x` vs `2x`), and it lowercases `N=n` to `n=n`.
    pa, ga = _split_assignment(p), _split_assignment(g)
    if ga is not None and ((pa is None and "=" not in p) or (pa is not None and pa[0] == ga[0])):
        p, g = (p if pa is None else pa[1]), ga[1]
    elif pa is not None and "=" not in g:
        p = pa[1]
    return p, g


def answers_match(pred: str, golds: list[str]) -> bool:
    """Whether the extracted answer `pred` equals any of `golds` (no time limit)."""
    if not _parseable_size(pred):
        return False
    pairs = [_prepare(pred, gold) for gold in golds]
    pairs = [(p, g) for p, g in pairs if p and g]
    undecided = []
    for p, g in pairs:  # all cheap checks first: math-verify can take seconds
        verdict = _cheap_match(p, g)
        if verdict:
            return True
        if verdict is None:
            undecided.append((p, g))
    from math_verify import verify

    from drgrpo.answer_cost import affordable  # imports sympy: workers only

    for p, g in undecided:
        gold_parsed = _parse(g)
        if not gold_parsed:
            continue
        pred_parsed = _parse(p)
        if affordable(pred_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=None):
            return True
    return False


def _golds(answer: str | list[str] | tuple[str, ...]) -> list[str]:
    # drgrpo.data.Problem keeps several acceptable answers as a tuple.
    answers = list(answer) if isinstance(answer, (list, tuple)) else [answer]
    return [str(a) for a in answers]  # the paper's grader also accepts bare numbers


def grade_response(
    response: str, answer: str | list[str], template: str, truncated: bool = False
) -> Verdict:
    """Grade in-process with no hard time limit (hostile input may be slow): for workers."""
    pred = extract_answer(response, template)
    if pred is None or truncated:
        return Verdict(0.0, pred is not None)
    return Verdict(1.0 if answers_match(pred, _golds(answer)) else 0.0, True)


# ---------------------------------------------------------------- hard time limit

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
        code = f"from drgrpo.rewards import _worker_main; _worker_main({int(memory_limit_mb)})"
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


Pair = tuple[str, tuple[str, ...]]  # an extracted answer and its acceptable references


def plan(
    responses: list[str],
    answers: list[str | list[str]],
    template: str,
    truncated: list[bool] | None = None,
) -> tuple[list[Verdict | None], dict[Pair, list[int]]]:
    """Linear string work, safe in any process: the verdicts that need no worker (no answer
    format, cut off, oversized answer) and, for the rest (None), each distinct (answer,
    references) pair with the positions it decides."""
    check_template(template)
    truncated = [False] * len(responses) if truncated is None else truncated
    if not len(responses) == len(answers) == len(truncated):
        raise ValueError("responses, answers and truncated must have the same length")
    verdicts: list[Verdict | None] = [None] * len(responses)
    jobs: dict[Pair, list[int]] = {}
    for i, (response, answer) in enumerate(zip(responses, answers)):
        pred = extract_answer(response, template)
        if pred is None or truncated[i] or not _parseable_size(pred):
            verdicts[i] = Verdict(0.0, pred is not None)
        else:
            jobs.setdefault((pred, tuple(_golds(answer))), []).append(i)
    return verdicts, jobs


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
