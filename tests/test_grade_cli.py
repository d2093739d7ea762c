"""`python -m drgrpo.grade`: JSON Lines in, one verdict per line out, clean input errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from drgrpo.answers import grade_response

ROOT = Path(__file__).resolve().parents[1]

ROWS = [
    {"response": "so \\boxed{\\dfrac{1}{2}}", "answer": "0.5"},
    {"response": "so \\boxed{3}", "answer": "4"},
    {"response": "no box at all: 4", "answer": "4"},
    {"response": "\\boxed{0.02}", "answer": ["0.01", "0.02"]},
    {"response": "\\boxed{7}", "answer": "7", "truncated": True},
    {"response": "\\boxed{7}", "answer": "7", "truncated": False},
    {"response": "\\boxed{1{,}000 \\text{ dollars}}", "answer": "1000"},
]


def run_cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "drgrpo.grade", *args],
        input=stdin, capture_output=True, cwd=ROOT, timeout=120,
    )


def write_lines(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() + b"\n"
                              for line in lines))
    return path


def test_round_trip_from_file_and_stdin(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [json.dumps(row) for row in ROWS] + ["  "])
    expected = [grade_response(r["response"], r["answer"], "qwen_math", r.get("truncated", False))
                for r in ROWS]
    for args, stdin in [((str(path),), None), (("-",), path.read_bytes())]:
        done = run_cli("--template", "qwen_math", "--workers", "2", *args, stdin=stdin)
        assert done.returncode == 0, done.stderr.decode()
        out = [json.loads(line) for line in done.stdout.decode().splitlines()]
        assert [o["reward"] for o in out] == [v.reward for v in expected]
        assert [o["formatted"] for o in out] == [v.formatted for v in expected]
        assert [o["reward"] for o in out] == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0]
        assert not any(o["timed_out"] or o["crashed"] for o in out)
        assert "accuracy 0.5714" in done.stderr.decode()


def test_r1_template_and_timeout_are_reported(tmp_path):
    rows = [
        {"response": "x </think> <answer> 12 </answer>", "answer": "12"},
        {"response": "x <answer> 12 </answer>", "answer": "12"},
        # passes the cost guard, then takes sympy minutes to expand
        {"response": "x </think> <answer> \\boxed{(a+b+c+d)^{100}} </answer>", "answer": "1"},
    ]
    path = write_lines(tmp_path / "r1.jsonl", [json.dumps(row) for row in rows])
    done = run_cli("--template", "r1", "--timeout", "1", str(path))
    assert done.returncode == 0, done.stderr.decode()
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert out == [
        {"reward": 1.0, "formatted": True, "timed_out": False, "crashed": False},
        {"reward": 0.0, "formatted": False, "timed_out": False, "crashed": False},
        {"reward": 0.0, "formatted": True, "timed_out": True, "crashed": False},
    ]
    assert "timed out 1" in done.stderr.decode()


GOOD = json.dumps({"response": "\\boxed{1}", "answer": "1"})


@pytest.mark.parametrize(
    ("lines", "line_number", "words"),
    [
        ([GOOD, "{not json"], 2, ["JSON"]),
        ([GOOD, GOOD, "[1, 2]"], 3, ["object"]),
        (['{"response": "\\\\boxed{1}"}'], 1, ["answer"]),
        ([GOOD, '{"answer": "1"}'], 2, ["response"]),
        (['{"response": "x", "answer": 5}'], 1, ["answer"]),
        (['{"response": "x", "answer": []}'], 1, ["answer"]),
        (['{"response": "x", "answer": ["1", 2]}'], 1, ["answer"]),
        (['{"response": 3, "answer": "1"}'], 1, ["response"]),
        ([GOOD, '{"response": "x", "answer": "1", "truncated": "yes"}'], 2, ["truncated"]),
        ([GOOD, b"\xff\xfe\n"], None, ["UTF-8"]),
    ],
)
def test_bad_input_is_one_line_exit_2_no_output(tmp_path, lines, line_number, words):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    for args, stdin, name in [((str(path),), None, str(path)), (("-",), path.read_bytes(), "<stdin>")]:
        done = run_cli("--template", "no", *args, stdin=stdin)
        err = done.stderr.decode()
        assert done.returncode == 2
        assert done.stdout == b""
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
        where = name if line_number is None else f"{name}:{line_number}:"
        assert where in err
        for word in words:
            assert word in err


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    done = run_cli("--template", "r1", str(missing))
    err = done.stderr.decode()
    assert done.returncode == 2
    assert done.stdout == b""
    assert len(err.strip().splitlines()) == 1 and str(missing) in err
    assert "Traceback" not in err
