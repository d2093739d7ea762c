"""Grade a JSON Lines file of responses from the command line.

    python -m drgrpo.grade --template qwen_math responses.jsonl > verdicts.jsonl

Each input line is `{"response": str, "answer": str | list[str]}`, optionally with
`"truncated": bool` (cut off at the token limit: scores 0). Blank lines are skipped. Each
output line is `{"reward": float, "formatted": bool, "timed_out": bool, "crashed": bool}`, in
input order. `-` reads standard input. The whole input is checked before anything is graded:
a bad file or line gets one line on stderr naming file, line and field, exit status 2 and
no output. A summary line goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from drgrpo.grader import DEFAULT_TIMEOUT_S, Grader
from drgrpo.templates import TEMPLATES


class InputError(Exception):
    """A problem with the input, reported as one line."""


def _is_answer(value: object) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def read_rows(path: str) -> list[dict]:
    """The rows of `path` (`-`: stdin), validated; raises InputError naming file:line."""
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
        text = data.decode("utf-8")
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    rows = []
    # split("\n"), not splitlines(): JSON strings may hold a raw U+2028 and similar
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object")
        if not isinstance(row.get("response"), str):
            raise InputError(f"{where}: field 'response' is missing or not a string")
        if not _is_answer(row.get("answer")):
            raise InputError(
                f"{where}: field 'answer' is missing or not a string / non-empty list of strings"
            )
        if not isinstance(row.get("truncated", False), bool):
            raise InputError(f"{where}: field 'truncated' is not true/false")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drgrpo.grade", description=__doc__.split("\n")[0]
    )
    parser.add_argument("file", help="JSON Lines input, or - for standard input")
    parser.add_argument("--template", required=True, choices=TEMPLATES)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="CPU seconds per answer (hard; 6x that of wall time)")
    parser.add_argument("--workers", type=int, default=1, help="grading processes")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.workers < 1:
        parser.error("--timeout must be > 0 and --workers >= 1")
    try:
        rows = read_rows(args.file)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with Grader(num_workers=args.workers, timeout_s=args.timeout) as grader:
        verdicts = grader.grade(
            [row["response"] for row in rows],
            [row["answer"] for row in rows],
            args.template,
            [row.get("truncated", False) for row in rows],
        )
    out = sys.stdout
    for v in verdicts:
        record = {"reward": v.reward, "formatted": v.formatted, "timed_out": v.timed_out,
                  "crashed": v.crashed}
        out.write(json.dumps(record) + "\n")
    out.flush()
    n = max(len(verdicts), 1)
    print(
        f"graded {len(verdicts)}: accuracy {sum(v.reward for v in verdicts) / n:.4f}, "
        f"formatted {sum(v.formatted for v in verdicts) / n:.4f}, "
        f"timed out {sum(v.timed_out for v in verdicts)}, "
        f"crashed {sum(v.crashed for v in verdicts)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
