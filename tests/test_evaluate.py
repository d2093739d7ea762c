"""Benchmark evaluation: the grading stage against the real data, `evaluate()` with a stand-in
cluster, and `python -m launch.evaluate` end to end on the tiny model (one vLLM engine)."""

import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from actors.generator import Completion
from drgrpo import grade
from drgrpo.config import EvalConfig
from drgrpo.data import Problem, load_problems
from drgrpo.grader import Grader
from drgrpo.templates import TEMPLATES, reference_response
from launch import evaluate as ev

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ev.PAPER_BENCHMARKS
ROWS = {"aime24": 30, "amc23": 83, "math500": 500, "minerva": 272, "olympiad_bench": 675}
RESULT_KEYS = {"accuracy", "problems", "samples", "responses", "mean_response_length",
               "formatted", "truncated", "timeouts", "grader_crashes"}
RECORD_KEYS = {"benchmark", "index", "sample", "question", "answer", "response", "reward",
               "formatted", "truncated", "timed_out", "crashed", "response_length"}


def wrong(answer: str) -> str:
    """A mathematically different answer: a number + 1, else the expression + 1 (an equation's
    right-hand side + 1, a list's last element + 1). `\\infty + 1` is still infinity, so an
    infinite bound becomes 100 instead."""
    number = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*", answer)
    if number:
        return str(Decimal(number.group(1)) + 1)
    if "\\infty" in answer:
        return answer.replace("\\infty", "100", 1)
    return answer + "+1"


def completion(text: str, truncated: bool = False, length: int = 0) -> Completion:
    return Completion([], [0] * length, text, "length" if truncated else "stop")


@pytest.fixture(scope="module")
def grader():
    # Generous limit: one perturbed Minerva equation takes math-verify ~10 s to reject.
    with Grader(num_workers=2, timeout_s=60) as g:
        yield g


@pytest.fixture(scope="module")
def suite(shared_data_dir):
    return {name: load_problems(shared_data_dir / "eval" / f"{name}.jsonl")
            for name in BENCHMARKS}


def _failures(records, expected_reward):
    return [(r["benchmark"], r["index"], r["answer"], r["response"][-80:]) for r in records
            if r["reward"] != expected_reward or not r["formatted"] or r["timed_out"]
            or r["crashed"]]


# ---------------------------------------------------------------- grading stage vs the data


def test_suite_is_the_papers_1560_problems(suite):
    assert {name: len(p) for name, p in suite.items()} == ROWS


@pytest.mark.parametrize("template", TEMPLATES)
def test_reference_answers_score_100_percent(suite, grader, template):
    """Every acceptable form of every reference answer, written the way the template asks,
    is graded correct by the same stage evaluate() uses."""
    for name, problems in suite.items():
        groups = [[completion(reference_response(template, a)) for a in p.answers]
                  for p in problems]
        records = ev.grade_groups(grader.grade, template, name, problems, groups)
        stats = ev.summarize(records)
        assert _failures(records, 1.0) == [], name
        assert stats["accuracy"] == 1.0 and stats["formatted"] == 1.0, name


def test_perturbed_answers_score_0_percent(suite, grader):
    template = "qwen_math"
    for name, problems in suite.items():
        groups = []
        for p in problems:
            assert all(wrong(a) not in p.answers for a in p.answers)
            groups.append([completion(reference_response(template, wrong(a))) for a in p.answers])
        records = ev.grade_groups(grader.grade, template, name, problems, groups)
        assert _failures(records, 0.0) == [], name
        assert ev.summarize(records)["accuracy"] == 0.0


# ---------------------------------------------------------------- evaluate() itself


class FakeCluster:
    """The two verbs evaluate() uses: 'generates' the reference answer (wrong for questions
    starting with "W", cut off for "T") and grades with a local Grader."""

    def __init__(self, grader, answers: dict[str, str]):
        self.generators = [None, None]
        self.answers, self.grader, self.calls = answers, grader, []

    def generate(self, prompts, n, sampling):
        self.calls.append(len(prompts))
        out = []
        for prompt in prompts:
            question = next(q for q in self.answers if q in prompt)
            answer = self.answers[question]
            text = reference_response("qwen_math", wrong(answer) if question[0] == "W" else answer)
            out.append([completion(text, question[0] == "T", length=5 + j) for j in range(n)])
        return out

    def score(self, responses, answers, template, truncated):
        return self.grader.grade(responses, answers, template, truncated)


def test_evaluate_metrics_records_and_regrading(grader, monkeypatch, tmp_path, capsys):
    bench = {
        "a": [Problem("R one?", "1"), Problem("W two?", "2"), Problem("R three?", "3"),
              Problem("T four?", "4"), Problem("R half?", ("0.5", "\\frac{1}{2}"))],
        "b": [Problem("R five?", "5")],
    }
    answers = {p.question: p.answers[0] for ps in bench.values() for p in ps}
    cluster = FakeCluster(grader, answers)
    monkeypatch.setattr(ev, "SEQUENCES_PER_CALL", 2)  # 1 prompt per generator per call
    metrics, records = ev.evaluate(cluster, bench, "qwen_math", EvalConfig(samples=2), seed=0)

    assert cluster.calls == [2, 2, 1, 1]  # chunks of 2 prompts (2 generators), in order
    assert metrics["eval/a/accuracy"] == pytest.approx(3 / 5)
    assert metrics["eval/b/accuracy"] == 1.0
    assert metrics["eval/average"] == pytest.approx((3 / 5 + 1) / 2)
    assert metrics["eval/a/truncated"] == pytest.approx(1 / 5)
    assert metrics["eval/a/response_length"] == 5.5
    assert metrics["eval/a/formatted"] == 1.0 and metrics["eval/a/timeouts"] == 0
    assert len(records) == 12 and all(set(r) == RECORD_KEYS for r in records)
    assert [(r["index"], r["sample"]) for r in records[:10]] == [(i, j) for i in range(5)
                                                                  for j in range(2)]
    assert records[8]["answer"] == ["0.5", "\\frac{1}{2}"]  # a list, as the grader reads it

    # generations.jsonl is drgrpo.grade's input format: re-grading reproduces every reward.
    ev._write_atomic(tmp_path / "g.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    capsys.readouterr()
    assert grade.main(["--template", "qwen_math", str(tmp_path / "g.jsonl")]) == 0
    regraded = [json.loads(line)["reward"] for line in capsys.readouterr().out.splitlines()]
    assert regraded == [r["reward"] for r in records]
    assert sum(regraded) == 8


# ---------------------------------------------------------------- the command line


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "launch.evaluate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


LIMIT, SAMPLES, MAX_NEW_TOKENS = 6, 4, 48


def cli_args(tiny_model_path, shared_data_dir) -> list[str]:
    return ["--model", str(tiny_model_path), "--template", "qwen_math",
            "--benchmarks", ",".join(BENCHMARKS), "--data-dir", str(shared_data_dir / "eval"),
            "--limit", str(LIMIT), "--samples", str(SAMPLES), "--temperature", "1.0",
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def clean_eval(tiny_model_path, shared_data_dir, tmp_path_factory):
    """`launch.evaluate` on the five benchmarks, without faults: (output folder, process)."""
    out = tmp_path_factory.mktemp("eval") / "clean"
    return out, run_cli(*cli_args(tiny_model_path, shared_data_dir), "--output", str(out))


def test_cli_end_to_end_on_tiny_model(clean_eval):
    (out, proc), samples, limit = clean_eval, SAMPLES, LIMIT
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["generations.jsonl", "results.json",
                                                     "results.md"]  # no .tmp left behind

    results = json.loads((out / "results.json").read_text())
    assert list(results["benchmarks"]) == list(BENCHMARKS)
    for b in results["benchmarks"].values():
        assert set(b) == RESULT_KEYS
        assert (b["problems"], b["samples"], b["responses"]) == (limit, samples, limit * samples)
        assert 0 < b["mean_response_length"] <= MAX_NEW_TOKENS and 0 <= b["accuracy"] <= 1
    accuracies = [b["accuracy"] for b in results["benchmarks"].values()]
    assert results["average"] == pytest.approx(sum(accuracies) / len(accuracies))
    s = results["settings"]
    assert (s["template"], s["limit"], s["samples"], s["max_new_tokens"]) == (
        "qwen_math", limit, samples, MAX_NEW_TOKENS)

    table = (out / "results.md").read_text()
    assert table in proc.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == [*BENCHMARKS, "**Average**"]
    assert re.search(rf"olympiad_bench: 100%.*{limit * samples}/{limit * samples}",
                     proc.stderr)  # a progress bar each

    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(records) == len(BENCHMARKS) * limit * samples
    assert all(set(r) == RECORD_KEYS for r in records)
    regrade = subprocess.run([sys.executable, "-m", "drgrpo.grade", "--template", "qwen_math",
                              str(out / "generations.jsonl")], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert regrade.returncode == 0, regrade.stderr
    assert [json.loads(line)["reward"] for line in regrade.stdout.splitlines()] == [
        r["reward"] for r in records]


@pytest.mark.parametrize("case,expected", [
    ("unknown benchmark", "unknown benchmark 'aime25'"),
    ("missing data folder", "--data-dir"),
    ("row without an answer", "bad.jsonl:2: field 'answer' is missing"),
    ("missing model", "--model: /nonexistent/model does not exist"),
    ("prompt longer than the context", "long problem 0: the prompt is"),
])
def test_bad_input_is_one_line_before_ray(tiny_model_path, shared_data_dir, tmp_path, case,
                                          expected):
    data = shared_data_dir / "eval"
    args = {"--model": str(tiny_model_path), "--data-dir": str(data),
            "--benchmarks": "aime24,amc23", "--output": str(tmp_path / "out")}
    if case == "unknown benchmark":
        args["--benchmarks"] = "aime24,aime25"
    elif case == "missing data folder":
        args["--data-dir"] = str(tmp_path / "nowhere")
    elif case == "row without an answer":
        (tmp_path / "bad.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n'
                                            '{"problem": "2+2?"}\n')
        args.update({"--data-dir": str(tmp_path), "--benchmarks": "bad"})
    elif case == "missing model":
        args["--model"] = "/nonexistent/model"
    else:  # the tiny model's context is 2048 tokens
        (tmp_path / "long.jsonl").write_text(json.dumps({"problem": "7 " * 3000, "answer": "7"}))
        args.update({"--data-dir": str(tmp_path), "--benchmarks": "long"})
    proc = run_cli(*[x for kv in args.items() for x in kv], timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Ray" not in proc.stderr + proc.stdout
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert expected in proc.stderr
    if case == "unknown benchmark":  # names what there is
        assert "aime24, amc23, math500, minerva, olympiad_bench" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_engine_killed_mid_evaluation_is_recovered(tiny_model_path, shared_data_dir, clean_eval,
                                                   tmp_path):
    """`launch.evaluate` borrows the training cluster's recovery: a generator whose vLLM engine
    dies is replaced on its bundle and its prompts sampled again, with their own seeds, so
    the results are those of a run without the fault."""
    import psutil
    from run_processes import kill_generating_engine

    out = {"clean": clean_eval[0], "killed": tmp_path / "killed"}
    assert clean_eval[1].returncode == 0, clean_eval[1].stderr[-3000:]
    log = tmp_path / "stderr.log"  # a file, not a pipe: a full pipe would stall the run
    with open(log, "w") as stderr_file:
        proc = subprocess.Popen([sys.executable, "-m", "launch.evaluate",
                                 *cli_args(tiny_model_path, shared_data_dir), "--output",
                                 str(out["killed"])], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=stderr_file)
    try:
        kill_generating_engine(psutil.Process(proc.pid), log=log)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = log.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    assert "recovered: generator 0 failed" in stderr, stderr[-3000:]
    records = [(out[k] / "generations.jsonl").read_text() for k in ("clean", "killed")]
    assert records[0] == records[1]
