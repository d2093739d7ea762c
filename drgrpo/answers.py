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

Nothing here has a time limit: on hostile input `answers_match` can take minutes or exhaust
memory, so training and evaluation grade through `drgrpo.grader.Grader`, which runs it in
worker processes under a hard limit. `plan` is the part of grading that needs no worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from drgrpo.templates import check_template

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
