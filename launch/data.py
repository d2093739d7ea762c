"""Training data in the format drgrpo.data reads: JSON Lines of {"problem": ..., "answer": ...}.

    python -m launch.data --input SRC --output OUT.jsonl [--problem-key K] [--answer-key K]
        [--filter FIELD=V1,V2,...] [--limit N] [--split NAME]

SRC is a local .jsonl or .parquet file, a `datasets` save_to_disk folder (read by drgrpo.data's
own readers), or else a datasets hub name such as DigitalLearningGmbH/MATH-lighteval, loaded with
`datasets.load_dataset(SRC, split=NAME)` where the machine is online and `datasets` is installed.
MATH levels 3 to 5, the paper's training problems:

    python -m launch.data --input DigitalLearningGmbH/MATH-lighteval --split train \\
        --filter "level=Level 3,Level 4,Level 5" --output data/math_lvl3to5.jsonl

A row without the answer field but with a `solution` (MATH's rows) gets the content of the
solution's last \\boxed{} as its answer, the rule the grader applies to responses; an answer that
itself holds a \\boxed{} is reduced the same way. `--filter` keeps the rows whose FIELD, as text,
is one of the comma-separated values; several filters must all hold. `--limit` keeps the first N
rows left. Every row is checked as training will check it (drgrpo.data) before anything is
written; the output appears complete or not at all. Bad input is one `error:` line naming the
file and line (JSON Lines, 1-based) or row (0-based), exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The readers and the row check are the training loader's own, so what this writes loads; the
# answer is taken from a solution by the grader's own rule for a response's final answer.
from drgrpo.answers import extract_answer
from drgrpo.data import DataError, _jsonl_rows, _read_dataset_folder, _read_parquet, _to_problem

SOLUTION_KEY = "solution"  # MATH's field: a worked solution ending in \boxed{answer}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other input error
        self.exit(2, f"error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m launch.data", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help=".jsonl, .parquet, a save_to_disk folder, "
                   "or a datasets hub name")
    p.add_argument("--output", required=True, type=Path, help="the JSON Lines file to write")
    p.add_argument("--problem-key", default="problem", help="field holding the question")
    p.add_argument("--answer-key", default="answer",
                   help=f"field holding the answer (else the last \\boxed{{}} of {SOLUTION_KEY!r})")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="keep rows whose FIELD is one of the values (repeatable: all must hold)")
    p.add_argument("--limit", type=int, default=None, help="keep the first N rows")
    p.add_argument("--split", default="train", help="split of a hub dataset (default: train)")
    return p


def _filters(specs: list[str]) -> dict[str, set[str]]:
    filters = {}
    for spec in specs:
        field, sep, values = spec.partition("=")
        if not sep or not field.strip() or not values:
            raise DataError(f"--filter: expected FIELD=V1,V2,..., got {spec!r}")
        # `level="Level 3","Level 4"` reaches us unquoted from a shell; strip quotes left inside.
        filters[field.strip()] = {v.strip().strip("\"'") for v in values.split(",")}
    return filters


def read_rows(source: str, split: str) -> Iterator[tuple[str, Any]]:
    """(where, row) for every row of `source`: a local file or folder, else a hub dataset."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        # owner/name, nothing more, is a hub name (AI-MO/NuminaMath-1.5 too); the rest, a path.
        if suffix in (".jsonl", ".parquet") or not re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", source):
            raise DataError(f"{path}: no such file or folder")
        yield from _hub_rows(source, split)
    elif path.is_dir():
        where, table = _read_dataset_folder(path)
        yield from ((f"{where}: row {i}", row) for i, row in enumerate(table.to_pylist()))
    elif suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix == ".parquet":
        yield from ((f"{path}: row {i}", row) for i, row in enumerate(_read_parquet(path).to_pylist()))
    else:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected .jsonl, "
                        ".parquet, a datasets save_to_disk folder or a datasets hub name")


def _hub_rows(name: str, split: str) -> Iterator[tuple[str, Any]]:
    try:
        import datasets  # only here: the training stack does not need it
    except ImportError:
        raise DataError(f"{name}: not a local file or folder, and loading it from the datasets "
                        "hub needs the `datasets` package (pip install datasets)") from None
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, unknown split: all one line to the user
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        raise DataError(f"{name}: not a local file or folder, and the datasets hub did not give "
                        f"its {split!r} split ({type(e).__name__}: {reason})") from None
    yield from ((f"{name} ({split}): row {i}", row) for i, row in enumerate(rows))


def convert(source: str, problem_key: str = "problem", answer_key: str = "answer",
            filters: dict[str, set[str]] | None = None, limit: int | None = None,
            split: str = "train") -> list[dict]:
    """The kept rows as {"problem", "answer"} dicts, each checked as training checks it."""
    out, filters = [], filters or {}
    for where, row in read_rows(source, split):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = next((field for field in filters if field not in row), None)
        if missing is not None:
            raise DataError(f"{where}: field {missing!r} (of --filter) is missing")
        if all(str(row[field]) in values for field, values in filters.items()):
            problem = _to_problem(where, _with_answer(where, row, answer_key), problem_key, answer_key)
            answer = problem.answer if isinstance(problem.answer, str) else list(problem.answer)
            out.append({"problem": problem.question, "answer": answer})
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise DataError(f"{source}: no rows" + (" pass the filters" if filters else ""))
    return out


def _with_answer(where: str, row: dict, key: str) -> dict:
    """The row, its answer taken from the last \\boxed{} of the solution or of itself."""
    if key not in row and isinstance(row.get(SOLUTION_KEY), str):
        answer = extract_answer(row[SOLUTION_KEY], "qwen_math")
        if answer is None:
            raise DataError(f"{where}: field {key!r} is missing and field {SOLUTION_KEY!r} has "
                            "no complete \\boxed{...}")
        return {**row, key: answer}
    if isinstance(row.get(key), str) and "\\boxed" in row[key]:
        return {**row, key: extract_answer(row[key], "qwen_math") or row[key]}
    return row


def write_jsonl(rows: list[dict], output: Path) -> None:
    """All of it or nothing: a temporary file beside `output`, renamed when complete."""
    tmp = None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(tmp, output)
    except OSError as e:
        raise DataError(f"{output}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)  # gone already when the rename happened


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.limit is not None and args.limit < 1:
            raise DataError(f"--limit: must be a positive integer, got {args.limit}")
        rows = convert(args.input, args.problem_key, args.answer_key, _filters(args.filter),
                       args.limit, args.split)
        write_jsonl(rows, args.output)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(rows)} problems to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
