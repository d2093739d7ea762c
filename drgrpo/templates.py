"""Prompt templates of "Understanding R1-Zero-Like Training: A Critical Perspective".

The three templates are copied character for character from the paper's release
(sail-sg/understand-r1-zero, `train_zero_math.py`: `apply_r1_template`,
`apply_qwen_math_template`, `apply_no_template`), because the template changes what a
base model does and the reported numbers depend on it.

- `r1`: the DeepSeek-R1-Zero prompt. The prompt ends inside `<think>`; the model is expected
  to write `... </think> <answer> ... </answer>`. Generation stops at `</answer>` and the
  stop string is kept in the output (vLLM `include_stop_str_in_output=True`), because the
  grader requires the closing tag.
- `qwen_math`: the Qwen2.5-Math chat format asking for a `\\boxed{}` answer. No stop string;
  the model ends with its own EOS (`<|im_end|>` / `<|endoftext|>`).
- `no`: the bare question, also ending at the model's EOS.
"""

from __future__ import annotations

TEMPLATES: tuple[str, ...] = ("r1", "qwen_math", "no")

_R1_PREFIX = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the User with the answer. The reasoning process is enclosed within <think> "
    "</think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>.\nUser: "
)
_R1_SUFFIX = "\nAssistant: <think>"

_QWEN_MATH_PREFIX = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer within "
    "\\boxed{}.<|im_end|>\n<|im_start|>user\n"
)
_QWEN_MATH_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


def check_template(template: str) -> str:
    """Return `template` if it is a known template name, else raise `ValueError`."""
    if template not in TEMPLATES:
        raise ValueError(
            f"unknown template {template!r}; valid templates are: {', '.join(TEMPLATES)}"
        )
    return template


def apply_template(template: str, question: str) -> str:
    """The prompt given to the model for `question` under `template`."""
    check_template(template)
    if template == "r1":
        return _R1_PREFIX + question + _R1_SUFFIX
    if template == "qwen_math":
        return _QWEN_MATH_PREFIX + question + _QWEN_MATH_SUFFIX
    return question


def stop_strings(template: str) -> list[str]:
    """Generation stop strings; for `r1` they must be kept in the output."""
    check_template(template)
    return ["</answer>"] if template == "r1" else []


def reference_response(template: str, answer: str) -> str:
    """A well-formed response whose final answer is `answer`, in `template`'s format.

    The r1 form continues the prompt's open `<think>`, so it starts with the reasoning and
    closes it with exactly `</think> <answer>` as the paper's strict grader requires.
    """
    check_template(template)
    if template == "r1":
        return f" The reference answer. </think> <answer> \\boxed{{{answer}}} </answer>"
    return f"The reference answer.\nThe final answer is \\boxed{{{answer}}}."
