"""Math problems (a question and its reference answer) from JSONL, Parquet or `datasets` folders.

Accepted sources, chosen by the path:

- `*.jsonl`: one JSON object per line; blank lines are skipped.
- `*.parquet`: one row per problem.
- a folder written by `datasets.Dataset.save_to_disk` (`state.json`, `dataset_info.json` and
  `data-*.arrow` shards in Arrow's streaming format), read with pyarrow alone. A folder written by
  `DatasetDict.save_to_disk` (`dataset_dict.json` plus one subfolder per split) is accepted when
  it has a `train` split (used) or a single split; otherwise name the split folder itself.

The question and answer are read from the fields named by `prompt_key` and `answer_key`. An answer
is a string, a number (turned into a string: 3 and 3.0 both become "3"), or a list of those when
several forms are acceptable. A bad row raises `DataError` naming the file, the line (JSONL,
1-based) or row (Parquet/Arrow, 0-based as in `dataset[i]`) and the field; nothing is returned.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FORMATS = ".jsonl, .parquet, or a datasets save_to_disk folder"


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str | tuple[str, ...]  # a tuple when several answers are acceptable

    @property
    def answers(self) -> tuple[str, ...]:
        """Every acceptable answer, as a tuple even when there is one."""
        return self.answer if isinstance(self.answer, tuple) else (self.answer,)


class DataError(Exception):
    """A dataset that cannot be used; the message is one line naming the file, row and field."""


def load_problems(
    path: str | Path,
    prompt_key: str = "problem",
    answer_key: str = "answer",
    limit: int | None = None,
) -> list[Problem]:
    """Every problem in `path` (or the first `limit`), in file order. Raises DataError."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        rows = _table_rows(*_read_dataset_folder(path), (prompt_key, answer_key))
    elif path.suffix.lower() == ".jsonl":
        rows = _jsonl_rows(path)
    elif path.suffix.lower() == ".parquet":
        rows = _table_rows(path, _read_parquet(path), (prompt_key, answer_key))
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; expected {_FORMATS}")
    problems = [_to_problem(where, row, prompt_key, answer_key) for where, row in itertools.islice(rows, limit)]
    if not problems:
        raise DataError(f"{path}: the dataset is empty")
    return problems


def _to_problem(where: str, row: Any, prompt_key: str, answer_key: str) -> Problem:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {_kind(row)}")
    for key in (prompt_key, answer_key):
        if key not in row:
            raise DataError(f"{where}: field {key!r} is missing")
    question = row[prompt_key]
    if not isinstance(question, str):
        raise DataError(f"{where}: field {prompt_key!r} must be a string, got {_kind(question)}")
    if not question.strip():
        raise DataError(f"{where}: field {prompt_key!r} is empty")
    answer = row[answer_key]
    if isinstance(answer, (list, tuple)):
        if not answer:
            raise DataError(f"{where}: field {answer_key!r} is an empty list")
        texts = tuple(_answer_text(where, f"{answer_key}[{i}]", a) for i, a in enumerate(answer))
        return Problem(question, texts[0] if len(texts) == 1 else texts)
    return Problem(question, _answer_text(where, answer_key, answer))


def _answer_text(where: str, field: str, value: Any) -> str:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field {field!r} is empty")
        return value
    # bool is an int subclass, but True is no math answer: more likely a wrong column.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        # Integral floats usually come from a numeric column that also held NaN; print them as ints.
        return str(int(value)) if value.is_integer() else repr(value)
    raise DataError(f"{where}: field {field!r} must be a string, a number or a list of them, got {_kind(value)}")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", type(None): "null", bool: "a boolean", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        f = path.open("rb")  # decoded line by line, so a bad byte is blamed on its own line
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        for line_no, raw in enumerate(f, 1):
            try:
                # utf-8-sig: tolerate the byte-order mark some editors write at the start.
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{line_no}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno})") from None
            yield f"{path}:{line_no}", row


def _read_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None


def _read_dataset_folder(path: Path) -> tuple[Path, Any]:
    """(the split folder actually read, its table) for a save_to_disk folder."""
    import pyarrow as pa

    if (path / "dataset_dict.json").is_file():
        splits = _read_json(path / "dataset_dict.json").get("splits") or []
        if "train" in splits or len(splits) == 1:
            return _read_dataset_folder(path / ("train" if "train" in splits else splits[0]))
        raise DataError(f"{path}: a DatasetDict with splits {', '.join(splits) or '(none)'}; "
                        f"pass one split's folder, e.g. {path / (splits[0] if splits else 'test')}")
    files = []
    if (path / "state.json").is_file():  # the shards, in dataset order
        files = [path / f["filename"] for f in _read_json(path / "state.json").get("_data_files", [])]
    files = files or sorted(path.glob("data-*.arrow"))
    if not files:
        raise DataError(f"{path}: not a dataset folder; expected {_FORMATS} "
                        "(state.json and data-*.arrow files, or dataset_dict.json and split folders)")
    tables = []
    for file in files:
        try:
            tables.append(_read_arrow(file))
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{file}: not a readable Arrow file ({e})") from None
    try:
        return path, pa.concat_tables(tables)
    except pa.ArrowException as e:
        raise DataError(f"{path}: its Arrow shards do not share one schema ({e})") from None


def _read_arrow(file: Path):
    import pyarrow as pa

    # `datasets` writes Arrow's streaming format; the random-access file format is accepted too.
    with pa.OSFile(str(file), "rb") as source:
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {_kind(data)}")
    return data


def _table_rows(path: Path, table: Any, keys: tuple[str, str]) -> Iterator[tuple[str, dict]]:
    """Rows of just the two columns we need, so unrelated column types never matter."""
    for key in keys:
        if key not in table.column_names and table.num_rows:
            raise DataError(f"{path}: row 0: field {key!r} is missing (columns: {', '.join(table.column_names)})")
    columns = [table.column(key).to_pylist() for key in dict.fromkeys(keys)]
    names = list(dict.fromkeys(keys))
    for i, values in enumerate(zip(*columns)):
        yield f"{path}: row {i}", dict(zip(names, values))
