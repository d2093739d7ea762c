"""`python -m launch.data`: local JSON Lines / Parquet (and hub names) to the training format,
checked by the project's own loader; bad input is one line and leaves nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drgrpo.data import Problem, load_problems
from launch.data import main

ROOT = Path(__file__).resolve().parents[1]

MATH_ROWS = [  # MATH's shape: no answer field, the answer is the solution's last \boxed{}
    {"problem": "Simplify $\\frac{2}{4}$.", "level": "Level 3", "type": "Algebra",
     "solution": "Divide by 2: $\\boxed{\\frac{1}{2}}$."},
    {"problem": "What is $1+1$?", "level": "Level 1", "type": "Prealgebra",
     "solution": "It is $\\boxed{2}$."},
    {"problem": "Find $x$ if $x^2=9$, $x>0$.", "level": "Level 5", "type": "Algebra",
     "solution": "Try $\\boxed{2}$: no. So $x=\\boxed{3}$."},
    {"problem": "Evaluate $\\sqrt{16}$.", "level": "Level 4", "type": "Algebra",
     "solution": "$\\sqrt{16} = \\boxed{4}$"},
    {"problem": "Compute $2 \\cdot 3$.", "level": "Level 2", "type": "Prealgebra",
     "solution": "$\\boxed{6}$"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's own errors (its error() is one line here too)
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_math_rows_levels_3_to_5_answer_from_the_last_box(tmp_path, capsys):
    src = write_jsonl(tmp_path / "math.jsonl", MATH_ROWS)
    out = tmp_path / "out" / "math_lvl3to5.jsonl"  # a folder that does not exist yet
    code, stdout, _ = run(capsys, "--input", src, "--output", out,
                          "--filter", "level=Level 3,Level 4,Level 5")
    assert code == 0 and "wrote 3 problems" in stdout
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"problem": "Simplify $\\frac{2}{4}$.", "answer": "\\frac{1}{2}"},
        {"problem": "Find $x$ if $x^2=9$, $x>0$.", "answer": "3"},
        {"problem": "Evaluate $\\sqrt{16}$.", "answer": "4"}]
    assert load_problems(out)[1] == Problem("Find $x$ if $x^2=9$, $x>0$.", "3")
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left


def test_filters_quoted_as_a_shell_passes_them_several_and_limit(tmp_path, capsys):
    src = write_jsonl(tmp_path / "math.jsonl", MATH_ROWS)
    out = tmp_path / "out.jsonl"
    # `--filter level="Level 3","Level 5"` reaches the program as level=Level 3,Level 5; quotes
    # left in (no shell in between) mean the same.
    assert run(capsys, "--input", src, "--output", out, "--filter", 'level="Level 3","Level 5"',
               "--filter", "type=Algebra")[0] == 0
    assert [p.answer for p in load_problems(out)] == ["\\frac{1}{2}", "3"]
    assert run(capsys, "--input", src, "--output", out, "--filter", "type=Algebra",
               "--limit", "2")[0] == 0
    assert [p.answer for p in load_problems(out)] == ["\\frac{1}{2}", "3"]
    assert run(capsys, "--input", src, "--output", out, "--limit", "1")[0] == 0
    assert len(load_problems(out)) == 1


def test_parquet_with_other_keys_numbers_and_answer_lists(tmp_path, capsys):
    src = tmp_path / "train.parquet"
    pq.write_table(pa.table({"question": ["1 + 2?", "Half of 1?", "5 - 5?"],
                             "final": [["3", "three"], ["0.5", "\\frac{1}{2}"], ["0"]],
                             "level": [3, 4, 2]}), src)
    out = tmp_path / "train.jsonl"
    code, _, _ = run(capsys, "--input", src, "--output", out, "--problem-key", "question",
                     "--answer-key", "final", "--filter", "level=3,4")
    assert code == 0
    assert load_problems(out) == [Problem("1 + 2?", ("3", "three")),
                                  Problem("Half of 1?", ("0.5", "\\frac{1}{2}"))]
    pq.write_table(pa.table({"problem": ["6 * 7?"], "answer": [42]}), src)
    assert run(capsys, "--input", src, "--output", out)[0] == 0
    assert json.loads(out.read_text()) == {"problem": "6 * 7?", "answer": "42"}


def test_an_answer_holding_a_box_is_reduced_to_its_content(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", [{"problem": "p", "answer": "so \\boxed{\\{1,2\\}}"}])
    assert run(capsys, "--input", src, "--output", tmp_path / "o.jsonl")[0] == 0
    assert load_problems(tmp_path / "o.jsonl") == [Problem("p", "\\{1,2\\}")]


@pytest.mark.parametrize("rows, argv, expected", [
    (None, [], "missing.jsonl: no such file or folder"),
    ([{"problem": "a", "answer": "1"}, "{not json"], [], "src.jsonl:2: not valid JSON"),
    ([{"problem": "a", "answer": "1"}, {}, {"problem": "b"}], [],
     "src.jsonl:2: field 'problem' is missing"),
    ([{"problem": "a", "answer": "1"}, {"problem": "b"}], [], "src.jsonl:2: field 'answer' is missing"),
    ([{"problem": "a", "solution": "no box here"}], [],
     "src.jsonl:1: field 'answer' is missing and field 'solution' has no complete \\boxed{...}"),
    ([{"problem": "a", "answer": "1"}], ["--filter", "level=Level 3"],
     "src.jsonl:1: field 'level' (of --filter) is missing"),
    ([{"problem": "a", "answer": "1", "level": "Level 1"}], ["--filter", "level=Level 3"],
     "src.jsonl: no rows pass the filters"),
    ([{"problem": "a", "answer": "1"}], ["--filter", "level"], "--filter: expected FIELD=V1,V2,..."),
    ([{"problem": "a", "answer": "1"}], ["--limit", "0"], "--limit: must be a positive integer"),
    ([{"problem": "a", "answer": True}], [], "src.jsonl:1: field 'answer' must be a string"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, rows, argv, expected):
    src = tmp_path / ("missing.jsonl" if rows is None else "src.jsonl")
    if rows is not None:
        write_jsonl(src, rows)
    out = tmp_path / "out.jsonl"
    out.write_text("the previous file\n")
    code, stdout, err = run(capsys, "--input", src, "--output", out, *argv)
    assert code == 2 and stdout == ""
    assert expected in one_error(err)
    assert out.read_text() == "the previous file\n"  # untouched: no half-written output
    assert {p.name for p in tmp_path.iterdir()} <= {"out.jsonl", src.name}  # no temporary file


def test_a_bad_parquet_row_is_named(tmp_path, capsys):
    src = tmp_path / "t.parquet"
    pq.write_table(pa.table({"problem": ["a", "  "], "answer": ["1", "2"]}), src)
    code, _, err = run(capsys, "--input", src, "--output", tmp_path / "o.jsonl")
    assert code == 2 and f"{src}: row 1: field 'problem' is empty" in one_error(err)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_hub_name_offline_or_without_datasets_is_one_line(tmp_path):
    """The real command, as a user runs it: this machine has no hub (and may lack `datasets`);
    the offline switches keep `datasets`, where installed, from waiting on the network."""
    out = tmp_path / "math.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "launch.data", "--input",
                           "DigitalLearningGmbH/MATH-lighteval", "--output", str(out),
                           "--filter", "level=Level 3,Level 4,Level 5"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = one_error(proc.stderr)
    assert line.startswith("error: DigitalLearningGmbH/MATH-lighteval: not a local file or folder")
    assert not out.exists()


def test_round_trip_of_the_real_benchmarks(shared_data_dir, tmp_path, capsys):
    """The shared JSON Lines files are already in the training format: converting them changes
    nothing the loader sees, list answers (Minerva) included."""
    for name in ("math500", "minerva"):
        src, out = shared_data_dir / "eval" / f"{name}.jsonl", tmp_path / f"{name}.jsonl"
        assert run(capsys, "--input", src, "--output", out)[0] == 0
        assert load_problems(out) == load_problems(src)


def test_a_hub_dataset_through_datasets_load_dataset(tmp_path, capsys, monkeypatch):
    """`datasets` stood in for (it is not a dependency): its rows are converted like a file's,
    and a failure to load (offline, here) is one line naming the name and the split."""
    import types

    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        if split == "test":
            raise ConnectionError("Couldn't reach 'DigitalLearningGmbH/MATH-lighteval' on the Hub"
                                  " (LocalEntryNotFoundError)\nmore lines")
        return MATH_ROWS

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    out = tmp_path / "math.jsonl"
    assert run(capsys, "--input", "DigitalLearningGmbH/MATH-lighteval", "--output", out,
               "--filter", "level=Level 4")[0] == 0
    assert load_problems(out) == [Problem("Evaluate $\\sqrt{16}$.", "4")]
    code, _, err = run(capsys, "--input", "DigitalLearningGmbH/MATH-lighteval", "--split", "test",
                       "--output", tmp_path / "test.jsonl")
    assert code == 2 and "the datasets hub did not give its 'test' split (ConnectionError: " \
        "Couldn't reach" in one_error(err)
    assert calls == [("DigitalLearningGmbH/MATH-lighteval", "train"),
                     ("DigitalLearningGmbH/MATH-lighteval", "test")]
    assert not (tmp_path / "test.jsonl").exists()


def test_save_to_disk_folders_as_the_paper_repository_ships_them(tmp_path, capsys):
    """understand-r1-zero's datasets/train/math_lvl3to5_8k (a DatasetDict with a train split) and
    one split folder of its datasets/evaluation_suite, as `datasets.save_to_disk` writes them."""
    from test_data import write_dataset_folder

    train = tmp_path / "math_lvl3to5_8k"
    write_dataset_folder(train / "train", pa.table({"problem": ["2+2?", "3+3?"], "answer": ["4", "6"]}))
    (train / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    assert run(capsys, "--input", train, "--output", tmp_path / "train.jsonl")[0] == 0
    assert load_problems(tmp_path / "train.jsonl") == [Problem("2+2?", "4"), Problem("3+3?", "6")]
    aime = write_dataset_folder(tmp_path / "evaluation_suite" / "aime",
                                pa.table({"problem": ["p"], "answer": ["204"], "input": ["x"]}))
    assert run(capsys, "--input", aime, "--output", tmp_path / "eval" / "aime24.jsonl")[0] == 0
    assert load_problems(tmp_path / "eval" / "aime24.jsonl") == [Problem("p", "204")]


def test_an_unwritable_output_is_one_line(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", [{"problem": "p", "answer": "1"}])
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "--input", src, "--output", tmp_path / "file" / "out.jsonl")
    assert code == 2 and f"{tmp_path / 'file' / 'out.jsonl'}: cannot write" in one_error(err)
