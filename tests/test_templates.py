"""Templates must be the paper's, character for character (sail-sg/understand-r1-zero)."""

import pytest

from drgrpo.answers import extract_answer, grade_response
from drgrpo.templates import TEMPLATES, apply_template, reference_response, stop_strings

QUESTION = "What is $1+1$?"

# Written out independently of drgrpo/templates.py, from train_zero_math.py in the paper's repo.
EXPECTED = {
    "r1": (
        "A conversation between User and Assistant. The User asks a question, and the "
        "Assistant solves it. The Assistant first thinks about the reasoning process in the "
        "mind and then provides the User with the answer. The reasoning process is enclosed "
        "within <think> </think> and answer is enclosed within <answer> </answer> tags, "
        "respectively, i.e., <think> reasoning process here </think> <answer> answer here "
        "</answer>.\nUser: What is $1+1$?\nAssistant: <think>"
    ),
    "qwen_math": (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is $1+1$?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "no": "What is $1+1$?",
}


def test_template_names():
    assert TEMPLATES == ("r1", "qwen_math", "no")


@pytest.mark.parametrize("template", TEMPLATES)
def test_exact_prompt(template):
    assert apply_template(template, QUESTION) == EXPECTED[template]


def test_question_is_inserted_verbatim():
    tricky = "Let {x} = \\frac{1}{2}; find $x$.\n(Braces, backslashes and {} stay.)"
    assert tricky in apply_template("r1", tricky)
    assert tricky in apply_template("qwen_math", tricky)
    assert apply_template("no", tricky) == tricky


def test_stop_strings():
    assert stop_strings("r1") == ["</answer>"]
    assert stop_strings("qwen_math") == []
    assert stop_strings("no") == []
    stop_strings("r1").append("x")  # a fresh list each call: callers may mutate it
    assert stop_strings("r1") == ["</answer>"]


@pytest.mark.parametrize(
    "call",
    [
        lambda: apply_template("R1", QUESTION),
        lambda: stop_strings("chatml"),
        lambda: reference_response("", "1"),
        lambda: extract_answer("\\boxed{1}", "boxed"),
        lambda: grade_response("\\boxed{1}", "1", "qwen"),
    ],
)
def test_unknown_template_names_the_valid_ones(call):
    with pytest.raises(ValueError) as info:
        call()
    for name in TEMPLATES:
        assert repr(name) in str(info.value) or name in str(info.value)


def test_reference_response_formats():
    r1 = reference_response("r1", "\\frac{1}{2}")
    assert "</think> <answer> \\boxed{\\frac{1}{2}} </answer>" in r1
    assert r1.endswith("</answer>")  # generation stops at, and keeps, </answer>
    for template in ("qwen_math", "no"):
        response = reference_response(template, "\\frac{1}{2}")
        assert "\\boxed{\\frac{1}{2}}" in response
        assert "<answer>" not in response


@pytest.mark.parametrize("template", TEMPLATES)
def test_reference_response_round_trips(template):
    response = reference_response(template, "(1, \\{2\\})")
    assert extract_answer(response, template) == "(1, \\{2\\})"
    assert grade_response(response, "(1,\\{2\\})", template).reward == 1.0
