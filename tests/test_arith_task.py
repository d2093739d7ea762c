import json

import pytest

from demo.arith_task import (
    EXAMPLE,
    HELDOUT_FILE,
    TRAIN_FILE,
    key,
    make_problems,
    operands,
    write_task,
)


def test_same_seed_same_problems_and_prefix_stable():
    assert make_problems(3, 50) == make_problems(3, 50)
    assert make_problems(3, 20) == make_problems(3, 50)[:20]
    assert make_problems(3, 50) != make_problems(4, 50)


def test_answers_are_correct_and_problems_distinct():
    problems = make_problems(0, 500)
    keys = set()
    for p in problems:
        assert p["problem"].startswith(EXAMPLE)
        a, b = operands(p["problem"])
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert p["answer"] == str(a + b)
        keys.add(key(a, b))
    assert len(keys) == len(problems)  # b + a counts as a repeat of a + b


def test_too_many_problems_is_an_error():
    assert len(make_problems(0, 10, low=1, high=4)) == 10  # every unordered pair of 1..4
    with pytest.raises(ValueError, match="distinct"):
        make_problems(0, 11, low=1, high=4)


def test_written_task_is_disjoint_fixed_jsonl(tmp_path):
    train_path, heldout_path = write_task(tmp_path / "a", seed=0, n_train=300, n_eval=100)
    assert (train_path.name, heldout_path.name) == (TRAIN_FILE, HELDOUT_FILE)
    train = [json.loads(line) for line in train_path.read_text().splitlines()]
    heldout = [json.loads(line) for line in heldout_path.read_text().splitlines()]
    assert (len(train), len(heldout)) == (300, 100)
    for row in train + heldout:
        assert set(row) == {"problem", "answer"} and isinstance(row["answer"], str)
    train_keys = {key(*operands(r["problem"])) for r in train}
    assert not train_keys & {key(*operands(r["problem"])) for r in heldout}
    # The held-out set does not move with the training seed; the training set does.
    other_train, other_heldout = write_task(tmp_path / "b", seed=1, n_train=300, n_eval=100)
    assert other_heldout.read_text() == heldout_path.read_text()
    assert other_train.read_text() != train_path.read_text()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [HELDOUT_FILE, TRAIN_FILE]  # no temp files


def test_the_project_loader_reads_the_files(tmp_path):
    data = pytest.importorskip("drgrpo.data")
    train_path, heldout_path = write_task(tmp_path, n_train=20, n_eval=10)
    problems = data.load_problems(heldout_path)
    assert len(problems) == 10 and problems[0].answer == json.loads(heldout_path.read_text().splitlines()[0])["answer"]
    assert len(data.load_problems(train_path)) == 20
