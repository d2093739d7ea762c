import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drgrpo.data import DataError, Problem, load_problems

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ROWS = [
    {"problem": "What is 1 + 1?", "answer": "2", "level": 1},
    {"problem": "Half of 1?", "answer": ["\\frac{1}{2}", "0.5"], "level": 2},
    {"problem": "Six times seven?", "answer": ["42"], "level": 3},
]
EXPECTED = [
    Problem("What is 1 + 1?", "2"),
    Problem("Half of 1?", ("\\frac{1}{2}", "0.5")),
    Problem("Six times seven?", "42"),  # a one-item list is just that answer
]


def rows_table():
    """ROWS as an Arrow table: a column has one type, so every answer is a list of strings."""
    answers = [r["answer"] if isinstance(r["answer"], list) else [r["answer"]] for r in ROWS]
    return pa.table({"problem": [r["problem"] for r in ROWS], "answer": answers})


def write_jsonl(path, rows, blank_lines=False):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text(("\n\n" if blank_lines else "\n").join(lines) + "\n")
    return path


def write_dataset_folder(folder, table, shards=1):
    """What `datasets.Dataset.save_to_disk` writes: Arrow streaming-format shards plus two JSON files."""
    folder.mkdir(parents=True)
    names, per_shard = [], -(-table.num_rows // shards)
    for i in range(shards):
        name = f"data-{i:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(i * per_shard, per_shard))
        names.append(name)
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": {}}))
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": n} for n in names], "_fingerprint": "0", "_format_type": None, "_split": None}))
    return folder


def test_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS, blank_lines=True)
    assert load_problems(path) == EXPECTED
    assert load_problems(str(path), limit=2) == EXPECTED[:2]
    assert EXPECTED[0].answers == ("2",) and EXPECTED[1].answers == ("\\frac{1}{2}", "0.5")
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_problems(bom) == EXPECTED


def test_numbers_become_strings(tmp_path):
    rows = [{"problem": "a", "answer": 3}, {"problem": "b", "answer": 3.0}, {"problem": "c", "answer": 0.25},
            {"problem": "d", "answer": [1, "1.0"]}]
    answers = [p.answer for p in load_problems(write_jsonl(tmp_path / "n.jsonl", rows))]
    assert answers == ["3", "3", "0.25", ("1", "1.0")]


def test_custom_keys(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", [{"question": "q?", "solution": "7"}])
    assert load_problems(path, prompt_key="question", answer_key="solution") == [Problem("q?", "7")]


def test_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(rows_table(), path)
    assert load_problems(path) == EXPECTED
    pq.write_table(pa.table({"problem": ["x?", "y?"], "answer": [1.0, 2.5]}), path)
    assert load_problems(path) == [Problem("x?", "1"), Problem("y?", "2.5")]


def test_dataset_folder(tmp_path):
    table = pa.Table.from_pylist([{"problem": f"p{i}", "answer": str(i)} for i in range(10)])
    folder = write_dataset_folder(tmp_path / "ds", table, shards=3)
    problems = load_problems(folder)
    assert [p.question for p in problems] == [f"p{i}" for i in range(10)] and problems[9].answer == "9"
    assert len(load_problems(folder, limit=4)) == 4


def test_dataset_dict_folder(tmp_path):
    table = rows_table()
    both = tmp_path / "both"
    write_dataset_folder(both / "train", table)
    write_dataset_folder(both / "test", table.slice(0, 1))
    (both / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert load_problems(both) == EXPECTED  # the train split
    assert load_problems(both / "test") == EXPECTED[:1]

    single = tmp_path / "single"
    write_dataset_folder(single / "test", table)
    (single / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    assert load_problems(single) == EXPECTED

    ambiguous = tmp_path / "ambiguous"
    for split in ("test", "validation"):
        write_dataset_folder(ambiguous / split, table)
    (ambiguous / "dataset_dict.json").write_text(json.dumps({"splits": ["test", "validation"]}))
    with pytest.raises(DataError, match="splits test, validation; pass one split's folder"):
        load_problems(ambiguous)


def error(path, **kwargs):
    with pytest.raises(DataError) as info:
        load_problems(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("bad_line, reason", [
    ('{"problem": "q", "answer": ', "not valid JSON (Expecting value at column 28)"),
    ('["q", "1"]', "expected a JSON object, got a list"),
    ('{"problem": "q"}', "field 'answer' is missing"),
    ('{"answer": "1"}', "field 'problem' is missing"),
    ('{"problem": "  ", "answer": "1"}', "field 'problem' is empty"),
    ('{"problem": 5, "answer": "1"}', "field 'problem' must be a string, got int"),
    ('{"problem": "q", "answer": null}', "field 'answer' must be a string, a number or a list of them, got null"),
    ('{"problem": "q", "answer": true}', "field 'answer' must be a string, a number or a list of them, got a boolean"),
    ('{"problem": "q", "answer": {"a": 1}}', "field 'answer' must be a string, a number or a list of them, got an object"),
    ('{"problem": "q", "answer": []}', "field 'answer' is an empty list"),
    ('{"problem": "q", "answer": ["1", ""]}', "field 'answer[1]' is empty"),
    ('{"problem": "q", "answer": ["1", [2]]}', "field 'answer[1]' must be a string, a number or a list of them, got a list"),
])
def test_jsonl_errors_name_the_line(tmp_path, bad_line, reason):
    path = write_jsonl(tmp_path / "train.jsonl", [ROWS[0], "", ROWS[1], bad_line, ROWS[2]])
    assert error(path) == f"{path}:4: {reason}"


def test_columnar_errors_name_the_row(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"problem": ["a", "b", ""], "answer": ["1", "2", "3"]}), path)
    assert error(path) == f"{path}: row 2: field 'problem' is empty"
    assert [p.question for p in load_problems(path, limit=2)] == ["a", "b"]  # the bad row is past the limit
    assert error(path, answer_key="solution") == f"{path}: row 0: field 'solution' is missing (columns: problem, answer)"
    folder = write_dataset_folder(tmp_path / "ds", pa.table({"problem": ["a", "b"], "answer": ["1", None]}))
    assert error(folder) == f"{folder}: row 1: field 'answer' must be a string, a number or a list of them, got null"


def test_path_errors(tmp_path):
    assert error(tmp_path / "none.jsonl") == f"{tmp_path / 'none.jsonl'}: no such file or folder"
    csv = tmp_path / "train.csv"
    csv.write_text("problem,answer\n")
    assert error(csv) == f"{csv}: unsupported file type '.csv'; expected .jsonl, .parquet, or a datasets save_to_disk folder"
    assert error(write_jsonl(tmp_path / "empty.jsonl", ["", "  "])) == f"{tmp_path / 'empty.jsonl'}: the dataset is empty"
    empty_parquet = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"problem": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), empty_parquet)
    assert error(empty_parquet) == f"{empty_parquet}: the dataset is empty"
    (tmp_path / "folder").mkdir()
    assert error(tmp_path / "folder").startswith(f"{tmp_path / 'folder'}: not a dataset folder")
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("hello")
    assert error(not_parquet).startswith(f"{not_parquet}: not a readable Parquet file")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"problem": "q", "answer": "1"}\n{"problem": "caf\xe9", "answer": "1"}\n')
    assert error(latin1) == f"{latin1}:2: not valid UTF-8"


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared data folder is not on this machine")
def test_shared_benchmarks():
    counts = {"aime24": 30, "amc23": 83, "math500": 500, "minerva": 272, "olympiad_bench": 675}
    loaded = {name: load_problems(SHARED / "eval" / f"{name}.jsonl") for name in counts}
    assert {name: len(problems) for name, problems in loaded.items()} == counts
    assert sum(counts.values()) == 1560
    assert sum(isinstance(p.answer, tuple) for p in loaded["minerva"]) == 75
    assert all(p.question.strip() and all(a.strip() for a in p.answers) for ps in loaded.values() for p in ps)
    assert len(load_problems(SHARED / "train" / "gsm8k.jsonl", limit=5)) == 5
