"""launch.plan: the memory model against DeepSpeed's estimators and the H200 rows in docs/gpu,
the command line, and launch.train refusing a run its GPUs cannot hold before any actor."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from drgrpo.config_load import load_config
from drgrpo.memory import GiB, Learner, learner_memory, shape_of
from launch import plan as planner

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "data" / "models"  # each folder holds only the model's config.json
CONFIGS = ROOT / "launch" / "configs"
DOCS_GPU = ROOT / "docs" / "gpu"


def paper(size: str, *overrides: str):
    return load_config(CONFIGS / f"qwen2.5-math-{size}.yaml",
                       ["--model.path", str(MODELS / f"qwen2.5-math-{size}"), *overrides])


@pytest.fixture(scope="module")
def shapes():
    return {size: planner.model_shape(str(MODELS / f"qwen2.5-math-{size}"))
            for size in ("7b", "1.5b")}


# --------------------------------------------------------------- parameters from config.json

def test_parameters_counted_from_a_folder_holding_only_config_json(shapes):
    assert [p.name for p in (MODELS / "qwen2.5-math-7b").iterdir()] == ["config.json"]
    # Qwen's model cards: 7.61B and 1.54B parameters.
    assert shapes["7b"].params == 7_615_616_512
    assert shapes["1.5b"].params == 1_543_714_304
    # Untied: the head is a matrix of its own; tied: counted once, as the embedding.
    assert shapes["7b"].root_params == 2 * 152064 * 3584 + 3584
    assert shapes["1.5b"].root_params == 151936 * 1536 + 1536
    assert shapes["7b"].largest_module == 152064 * 3584


@pytest.mark.parametrize("fixture", ["tiny_model_path", "tied_model_path"])
def test_parameters_match_a_real_model(fixture, request, tmp_path):
    """A real model's unique parameters, as DeepSpeed's own helper counts them (tied ones
    once), against the count from a copy of its config.json alone."""
    import torch
    from deepspeed.runtime.zero.stage3 import model_to_params
    from transformers import AutoModelForCausalLM

    real = request.getfixturevalue(fixture)
    shutil.copy(real / "config.json", tmp_path / "config.json")
    shape = planner.model_shape(str(tmp_path))
    total, largest = model_to_params(AutoModelForCausalLM.from_pretrained(real,
                                                                         dtype=torch.float32))
    assert (shape.params, shape.largest_module) == (total, largest)


# --------------------------------------------------------------- model states vs DeepSpeed

def _states(shape, strategy, stage, n):
    return learner_memory(shape, Learner(strategy, stage, n, True, 4024, 3000)).model_states


@pytest.mark.parametrize("size", ["7b", "1.5b"])
@pytest.mark.parametrize("n", [1, 2, 8, 16])
def test_zero2_states_agree_with_deepspeeds_estimator(shapes, size, n):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = shapes[size]
    _, gpu = estimate_zero2_model_states_mem_needs(shape.params, num_gpus_per_node=n,
                                                   num_nodes=1, cpu_offload=False)
    assert _states(shape, "deepspeed", 2, n) == pytest.approx(gpu, rel=0.10)
    # ZeRO-1 keeps the whole bf16 gradient (stage 1 partitions only the optimizer): the same
    # count plus those 2 bytes a parameter, exactly.
    assert _states(shape, "deepspeed", 1, n) == pytest.approx(gpu + 2 * shape.params, abs=64)


@pytest.mark.parametrize("size", ["7b", "1.5b"])
@pytest.mark.parametrize("n", [1, 2, 8, 16])
def test_zero3_states_are_deepspeeds_estimate_plus_the_bf16_gradient_partition(shapes, size, n):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    shape = shapes[size]
    _, gpu, _ = estimate_zero3_model_states_mem_needs(
        shape.params, shape.largest_module, num_gpus_per_node=n, num_nodes=1,
        cpu_offload=False)
    ours = _states(shape, "deepspeed", 3, n)
    # stage3.py keeps grad_partitions_flat_buffer (bf16, P/N) beside the float32 gradient it
    # makes for the step; the estimator's 18 bytes leave those 2 out.
    assert ours == pytest.approx(gpu + 2 * shape.params / n, abs=64)
    if n >= 8:  # the paper's 8 GPUs, and more: the gathered largest layer dilutes the 2/18
        assert ours == pytest.approx(gpu, rel=0.10)


def test_fsdp_states_are_16_bytes_a_parameter_over_the_learners_plus_gathered(shapes):
    shape = shapes["7b"]
    mem = learner_memory(shape, Learner("fsdp", 2, 8, True, 4024, 3000))
    assert mem.kept + mem.grads == 16 * shape.params // 8
    assert mem.gathered == 2 * (shape.root_params + shape.head_params + 2 * shape.layer_params) \
        + 6 * shape.layer_params


# --------------------------------------------------------------- the measured H200 rows

def _gpu_check_rows():
    text = (DOCS_GPU / "gpu_check.md").read_text()
    shape_name = text.splitlines()[0].split(", ")[1]
    rows = re.findall(r"^\| (on|off) \| (\d+) x (\d+) \| ok \| ([\d.]+) \| ([\d.]+) \|", text,
                      re.MULTILINE)
    return shape_name, [(c == "on", int(b), int(s), float(a), float(r)) for c, b, s, a, r in rows]


def test_activation_model_reproduces_each_docs_gpu_row_within_15_percent():
    """benchmarks/gpu_check.py: FSDP2 at world size 1, one pass per optimizer step (no
    gradient accumulation), every position through the head; peak allocated GiB."""
    from transformers import Qwen2Config

    from benchmarks.gpu_check import SHAPES

    name, rows = _gpu_check_rows()
    assert len(rows) == 6, rows
    shape = shape_of(Qwen2Config(**SHAPES[name]))
    for checkpointing, batch, seq, allocated, _ in rows:
        run = Learner("fsdp", 2, 1, checkpointing, batch * seq, batch * (seq - 1),
                      accumulating=False)
        predicted = learner_memory(shape, run).peak / GiB
        assert predicted == pytest.approx(allocated, rel=0.15), (checkpointing, batch)


def test_allocator_slack_is_what_the_rows_measured():
    _, rows = _gpu_check_rows()
    slack = [reserved - allocated for *_, allocated, reserved in rows]
    assert min(slack) <= planner.ALLOCATOR_SLACK_GIB <= max(slack)


def test_logprob_chunk_term_reproduces_the_logprobs_memory_rows():
    """benchmarks/logprobs_memory.py (a float32 model of hidden 896): the chunked pass's extra
    peak is the head's and the embedding's float32 gradients, three float32 chunk tensors (the
    term drgrpo.memory counts per chunk) and the hidden rows with their gradient."""
    files = sorted(DOCS_GPU.glob("logprobs_b*_s*_c*.txt"))
    assert len(files) == 3
    for path in files:
        text = path.read_text()
        batch, seq, vocab = map(int, re.search(r"batch (\d+) x seq (\d+) x vocab (\d+)",
                                               text).groups())
        chunk = int(re.search(r"_c(\d+)\.txt$", path.name).group(1))
        measured = float(re.search(r"chunked: peak \+([\d.]+) GiB", text).group(1))
        hidden, rows = 896, batch * (seq - 1)
        model = 2 * vocab * hidden * 4 + 3 * 4 * min(chunk, rows) * vocab + 2 * rows * hidden * 4
        assert model / GiB == pytest.approx(measured, rel=0.15), path.name


def test_deepspeed_reduce_bucket_is_deepspeeds_default():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from drgrpo.memory import DEEPSPEED_REDUCE_BUCKET

    assert DeepSpeedZeroConfig().reduce_bucket_size == DEEPSPEED_REDUCE_BUCKET


# --------------------------------------------------------------- plans and verdicts

def test_paper_configs_fit_80gb_and_the_7b_one_not_40gb(shapes):
    for size in ("7b", "1.5b"):
        assert planner.make_plan(paper(size), shapes[size], 79.3).fits
    small = planner.make_plan(paper("7b"), shapes["7b"], 39.5)
    assert not small.fits
    # Colocated, vLLM's 35% of 39.5 GiB cannot even hold the 14.2 GiB of bf16 weights.
    assert small.kv_tokens == 0 and "weights (14.2 GiB)" in small.problems[0]


def test_refusal_names_the_largest_item_and_a_setting_checked_to_fit(shapes):
    cfg = paper("7b", "--cluster.num_learners", "2", "--cluster.num_generators", "2")
    plan = planner.make_plan(cfg, shapes["7b"], 80)
    assert not plan.fits
    line = planner.verdict(plan)
    assert "\n" not in line
    assert "largest item is model states" in line
    # ZeRO-2 on 2 GPUs keeps the whole bf16 model on each; ZeRO-3 gathers too little back to
    # fit; FSDP2 shards all 16 bytes of a parameter, and fits.
    assert "; --learner.strategy fsdp would make it fit (at most " in line
    change, fitting = planner.what_fits(cfg, shapes["7b"], 80)
    assert change == {"learner.strategy": "fsdp"} and fitting.fits
    assert not planner.make_plan(planner._with(cfg, {"learner.zero_stage": 3}),
                                 shapes["7b"], 80).fits
    # Where only more GPUs help, more learners (colocated: as many engines) is what it says.
    one = paper("7b", "--cluster.num_learners", "1", "--cluster.num_generators", "1",
                "--learner.strategy", "fsdp")
    assert "--cluster.num_learners 2 --cluster.num_generators 2 would make it fit" in \
        planner.verdict(planner.make_plan(one, shapes["7b"], 80))


def test_refusal_says_so_when_no_setting_makes_it_fit(shapes):
    line = planner.verdict(planner.make_plan(paper("7b"), shapes["7b"], 10))
    assert line.startswith("does not fit:") and "no one or two settings make it fit" in line


def test_more_learners_shrink_states_and_checkpointing_activations(shapes):
    shape = shapes["7b"]
    eight = planner.make_plan(paper("7b"), shape, 80).learner
    sixteen = planner.make_plan(paper("7b", "--cluster.num_learners", "16",
                                      "--cluster.num_generators", "16"), shape, 80).learner
    assert sixteen.model_states < eight.model_states
    off = planner.make_plan(paper("7b", "--learner.gradient_checkpointing", "false"),
                            shape, 80).learner
    assert off.activations > 10 * eight.activations


# --------------------------------------------------------------- the command line

def test_cli_json_from_config_json_alone(capsys):
    args = ["--config", str(CONFIGS / "qwen2.5-math-7b.yaml"),
            "--model.path", str(MODELS / "qwen2.5-math-7b"), "--json"]
    assert planner.main([*args, "--gpu-memory-gib", "79.3"]) == 0
    fits = json.loads(capsys.readouterr().out)
    for key in ("model_states_gib", "activations_gib", "generator_gib", "peak_gib",
                "gpu_memory_gib", "fits"):
        assert key in fits
    assert fits["fits"] is True and fits["gpu_memory_gib"] == 79.3
    assert fits["peak_gib"] <= 79.3 and fits["generator_gib"] == pytest.approx(0.35 * 79.3)
    assert planner.main([*args, "--gpu-memory-gib=39.5"]) == 3
    assert json.loads(capsys.readouterr().out)["fits"] is False


def test_cli_exit_codes_and_one_line_verdict(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "launch.plan", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    base = ["--config", str(CONFIGS / "qwen2.5-math-7b.yaml"),
            "--model.path", str(MODELS / "qwen2.5-math-7b")]
    proc = run(*base, "--gpu-memory-gib", "39.5")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "learner + generator GPU x 8" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("does not fit: ")
    bad = run(*base, "--gpu-memory-gib", "lots")
    assert bad.returncode == 2 and "error: --gpu-memory-gib" in bad.stderr
    (tmp_path / "empty").mkdir()
    missing = run(*base[:2], "--model.path", str(tmp_path / "empty"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: model.path: ")
    typo = run(*base, "--learner.zero_stag", "3")
    assert typo.returncode == 2 and "learner.zero_stag: unknown field" in typo.stderr


def test_cpu_config_is_planned_as_on_gpus(tiny_model_path, capsys):
    assert planner.main(["--config", str(CONFIGS / "demo_cpu.yaml"),
                         "--model.path", str(tiny_model_path), "--gpu-memory-gib", "80"]) == 0
    out = capsys.readouterr().out
    assert "cluster.device is cpu" in out and out.strip().splitlines()[-1].startswith("fits:")


# --------------------------------------------------------------- launch.train

def test_train_plans_on_cuda_only_and_before_the_cluster(monkeypatch, tiny_model_path):
    """launch.train._train: on cuda the plan runs first (its refusal stops the run before
    Cluster is built); on cpu it does not run at all."""
    import ray

    import launch.cluster
    import launch.plan
    from launch.run import InputError
    from launch.train import _train

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(launch.plan, "refuse_if_unfit",
                        lambda cfg, path: (calls.append("plan"), _raise(InputError("refused"))))
    monkeypatch.setattr(launch.cluster, "Cluster",
                        lambda *a, **k: (calls.append("cluster"), _raise(RuntimeError("built"))))
    run = SimpleNamespace(model_path=str(tiny_model_path), max_model_len=64,
                          state=SimpleNamespace(step=0), faults=None)
    for device, error, expected in (("cuda", InputError, ["plan"]),
                                    ("cpu", RuntimeError, ["cluster"])):
        calls.clear()
        cfg = load_config(CONFIGS / "demo_cpu.yaml", ["--model.path", str(tiny_model_path),
                                                      "--cluster.device", device])
        with pytest.raises(error):
            _train(cfg, run)
        assert calls == expected


def _raise(err):
    raise err


def test_train_refuses_an_unfit_config_in_one_line_before_any_actor(tmp_path):
    """The real command: a 7B run on 2 GPUs, its model a folder with the real config.json
    (and a tokenizer, which launch.train reads before any actor). This Ray cluster has no
    GPU, so the plan assumes 80 GiB and says so. Were the check missing, placing the GPU
    actors would fail after cluster.placement_timeout_s, with another message."""
    from demo.tiny import build_tokenizer

    model = tmp_path / "qwen2.5-math-7b"
    model.mkdir()
    shutil.copy(MODELS / "qwen2.5-math-7b" / "config.json", model / "config.json")
    build_tokenizer().save_pretrained(model)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1)})
                            + "\n" for i in range(16)))
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config", str(CONFIGS / "qwen2.5-math-7b.yaml"),
         "--model.path", str(model), "--data.train_path", str(data),
         "--cluster.device", "cuda", "--cluster.num_learners", "2",
         "--cluster.num_generators", "2", "--cluster.placement_timeout_s", "5",
         "--rollout.prompts_per_step", "16", "--trainer.eval_every", "0",
         "--trainer.output_dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith("error: does not fit: the learner + generator GPU needs ")
    assert "; --learner.strategy fsdp would make it fit" in errors[0]
    assert "the Ray cluster has no GPU, assumed 80 GiB" in errors[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_readme_tables_are_the_plans_output(shapes):
    """README.md's plan table, row by row, as make_plan gives them now."""
    readme = (ROOT / "README.md").read_text()
    assert "| 8 GPUs | model states |" in readme
    for gib, gpu in ((79.3, "A100-80GB"), (39.5, "A100-40GB")):
        for size in ("1.5b", "7b"):
            plan = planner.make_plan(paper(size), shapes[size], gib)
            mem, phases = plan.learner, plan.gpus[0].phases
            row = (f"| {size}, {gpu} | {mem.model_states / GiB:.1f} | "
                   f"{mem.activations / GiB:.1f} + {mem.logprob_chunk / GiB:.1f} | "
                   f"{0.35 * gib:.1f}: {phases['start-up']['vLLM weights']:.1f}, "
                   f"{int(plan.kv_tokens):,} tokens | "
                   + " | ".join(f"{plan.gpus[0].total(p):.1f}" for p in
                                ("start-up", "generating", "training", "weight sync"))
                   + f" | {'yes' if plan.fits else 'no'} |")
            assert row in readme, row
    assert planner.verdict(planner.make_plan(paper("7b"), shapes["7b"], 39.5)) in readme
