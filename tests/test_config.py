import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from drgrpo.config import Config, config_to_dict, save_config
from drgrpo.config_cli import config_reference_markdown, parse_args
from drgrpo.config_load import ConfigError, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["--model.path", "m", "--data.train_path", "t.jsonl"]


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_auto_dtype_is_float32_only_on_a_cpu_without_bfloat16_arithmetic(monkeypatch):
    """`model.dtype: auto` (the CPU configs') is resolved when the config is read, from this
    machine's CPU on a cpu run only; the resolved config (config.yaml) holds the result."""
    import drgrpo.precision

    for native, device, expected in ((False, "cpu", "float32"), (True, "cpu", "bfloat16"),
                                     (False, "cuda", "bfloat16"), (False, "auto", "bfloat16")):
        monkeypatch.setattr(drgrpo.precision, "cpu_computes_bfloat16", lambda n=native: n)
        cfg = Config(model={"path": "m", "dtype": "auto"}, data={"train_path": "t.jsonl"},
                     cluster={"device": device})
        assert (cfg.model.dtype, cfg.model.rollout_dtype) == (expected, expected), device
        assert cfg.to_dict()["model"]["dtype"] == expected
        assert Config(**cfg.to_dict()).model.dtype == expected
    cfg = Config(model={"path": "m", "dtype": "auto", "generation_dtype": "float32"},
                 data={"train_path": "t.jsonl"}, cluster={"device": "cuda"})
    assert (cfg.model.dtype, cfg.model.rollout_dtype) == ("bfloat16", "float32")


def problems(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


def test_defaults():
    cfg = Config(model={"path": "m"}, data={"train_path": "t.jsonl"})
    assert cfg.model.dtype == "bfloat16" and cfg.model.trust_remote_code is False
    assert cfg.data.eval_paths == {} and cfg.data.template == "qwen_math"
    assert (cfg.data.prompt_key, cfg.data.answer_key, cfg.data.max_prompt_tokens) == ("problem", "answer", 1024)
    r = cfg.rollout
    assert (r.prompts_per_step, r.samples_per_prompt, r.temperature, r.top_p, r.max_new_tokens) == (128, 8, 1.0, 1.0, 3000)
    a = cfg.algorithm
    assert (a.method, a.clip_eps, a.kl_coef, a.epochs_per_step) == ("dr_grpo", 0.2, 0.0, 1)
    lr = cfg.learner
    assert (lr.strategy, lr.lr, lr.train_batch_size, lr.micro_batch_size, lr.grad_clip) == ("fsdp", 1e-6, 128, 8, 1.0)
    assert lr.adam_betas == (0.9, 0.95) and lr.weight_decay == 0.0 and lr.gradient_checkpointing and lr.zero_stage == 2
    c = cfg.cluster
    assert (c.num_generators, c.generator_tp, c.num_learners, c.num_reward_workers) == (1, 1, 1, 2)
    assert c.colocate is False and c.device == "auto"
    assert c.reward_timeout_s == 5.0  # the grader's own default (drgrpo/grader.py says why)
    e = cfg.eval
    assert (e.temperature, e.max_new_tokens, e.samples, e.limit) == (0.0, 3000, 1, None)
    t = cfg.trainer
    assert (t.eval_every, t.output_dir, t.seed, t.resume) == (16, "runs/drgrpo", 42, "never")
    assert (t.loggers, t.wandb_project) == (["jsonl", "tensorboard"], "drgrpo")


def test_gpu_memory_share_depends_on_colocation():
    base = {"model": {"path": "m"}, "data": {"train_path": "t"}}
    assert Config(**base).cluster.gpu_memory_utilization == 0.9
    assert Config(**base, cluster={"colocate": True}).cluster.gpu_memory_utilization == 0.35
    assert Config(**base, cluster={"colocate": True, "gpu_memory_utilization": 0.5}).cluster.gpu_memory_utilization == 0.5


def test_every_model_forbids_extra_keys_and_documents_every_field():
    for section in Config.model_fields.values():
        cls = section.annotation
        assert issubclass(cls, BaseModel) and cls.model_config["extra"] == "forbid"
        for name, field in cls.model_fields.items():
            assert field.description and "\n" not in field.description, f"{cls.__name__}.{name}"
    assert Config.model_config["extra"] == "forbid"


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, """
model: {path: Qwen/Qwen2.5-Math-1.5B}
data: {train_path: data/train.jsonl, eval_paths: {math500: a.jsonl, aime24: b.jsonl}}
rollout: {samples_per_prompt: 4, temperature: 0.7}
learner: {lr: 2e-6}
""")
    cfg = load_config(path, ["--rollout.samples_per_prompt", "16", "--learner.lr=3e-6", "--trainer.max_steps=7",
                             "--rollout.samples_per_prompt=2"])
    assert cfg.rollout.samples_per_prompt == 2  # the last flag wins
    assert cfg.rollout.temperature == 0.7  # from YAML
    assert cfg.learner.lr == 3e-6 and cfg.trainer.max_steps == 7
    assert cfg.rollout.prompts_per_step == 128  # default
    assert load_config(path).learner.lr == 2e-6


def test_override_value_types(tmp_path):
    path = write(tmp_path, "model: {path: m}\ndata: {train_path: t, eval_paths: {math500: a.jsonl}}\n")
    cfg = load_config(path, [
        "--learner.adam_betas", "[0.8, 0.99]", "--cluster.colocate", "true", "--eval.limit=50",
        "--data.eval_paths.aime24", "b.jsonl", "--model.path", "7", "--data.template", "no",
    ])
    assert cfg.learner.adam_betas == (0.8, 0.99)
    assert cfg.cluster.colocate is True and cfg.eval.limit == 50
    assert cfg.data.eval_paths == {"math500": "a.jsonl", "aime24": "b.jsonl"}  # one entry added
    assert cfg.model.path == "7" and cfg.data.template == "no"  # text settings keep the string
    cfg = load_config(path, ["--data.eval_paths", "{x: c.jsonl}", "--eval.limit", "null"])
    assert cfg.data.eval_paths == {"x": "c.jsonl"} and cfg.eval.limit is None  # replaced whole


def test_bare_no_template_in_yaml(tmp_path):
    path = write(tmp_path, "model: {path: m}\ndata: {train_path: t, template: no}\n")
    assert load_config(path).data.template == "no"


def test_parse_overrides():
    assert parse_overrides(["--a.b", "1", "--c.d=2"]) == {"a": {"b": 1}, "c": {"d": 2}}
    assert parse_overrides(["--a.b", "[1, 2]", "--a.c=x=y", "--a.d", "-1", "--e", "{f: 1e-6}"]) == {
        "a": {"b": [1, 2], "c": "x=y", "d": -1}, "e": {"f": "1e-6"}}
    for bad in (["a.b", "1"], ["--a.b"], ["--a.b", "--c.d", "1"], ["--a.b="], ["--.b", "1"], ["--a.b", "[1,"]):
        with pytest.raises(ConfigError):
            parse_overrides(bad)


def test_many_problems_reported_at_once(tmp_path):
    path = write(tmp_path, """
model: {path: m, dtype: bf16}
data: {train_path: t}
rollout: {samples_per_prompt: 1, top_p: 0}
learner: {lr: -1, lrr: 1, adam_betas: [0.9, 1.5]}
learnr: {}
""")
    found = problems(path, ["--eval.limit", "abc", "--learner.train_batch_size", "100"])
    text = "\n".join(found)
    for expected in (
        "model.dtype: Input should be 'auto', 'bfloat16', 'float16' or 'float32' (got 'bf16')",
        "rollout.top_p: Input should be greater than 0",
        "learner.lr: Input should be greater than 0 (got -1)",
        "learner.lrr: unknown field (did you mean 'lr'?)",
        "learner.adam_betas.1: Input should be less than 1",
        "learnr: unknown section (did you mean 'learner'?)",
        "eval.limit: Input should be a valid integer",
        "rollout.samples_per_prompt: must be at least 2",  # cross-field, alongside field errors
        "learner.train_batch_size: must divide",
    ):
        assert expected in text
    assert all(": " in p for p in found) and len(found) == 9


def test_unknown_keys(tmp_path):
    path = write(tmp_path, "model: {path: m, pth: x}\ndata: {train_path: t}\n")
    assert problems(path) == ["model.pth: unknown field (did you mean 'path'?)"]
    assert problems(None, [*REQUIRED, "--learner.lrr", "1e-5"]) == ["learner.lrr: unknown field (did you mean 'lr'?)"]
    assert problems(None, [*REQUIRED, "--trainr.max_steps", "1"]) == ["trainr: unknown section (did you mean 'trainer'?)"]
    [p] = problems(None, [*REQUIRED, "--learner.zzz", "1"])
    assert p.startswith("learner.zzz: unknown field (valid: strategy, lr,")
    assert problems(None, [*REQUIRED, "--learner.lr.x", "1"]) == ["learner.lr.x: learner.lr is a single value, not a section"]


def test_missing_values_and_required_fields():
    assert problems(None, [*REQUIRED, "--learner.lr"]) == ["learner.lr: missing its value (--learner.lr VALUE or --learner.lr=VALUE)"]
    assert problems(None, [*REQUIRED, "--learner.lr="]) == ["learner.lr: missing its value (--learner.lr VALUE or --learner.lr=VALUE)"]
    assert problems(None) == ["model.path: required, but not set", "data.train_path: required, but not set"]


@pytest.mark.parametrize("flags, expected", [
    (["--rollout.samples_per_prompt", "1"], "rollout.samples_per_prompt: must be at least 2 (got 1)"),
    (["--learner.train_batch_size", "96"], "learner.train_batch_size: must divide rollout.prompts_per_step x rollout.samples_per_prompt = 128 x 8 = 1024 (got 96)"),
    (["--cluster.num_learners", "3"], "learner.train_batch_size: must be divisible by cluster.num_learners = 3 (got 128)"),
    (["--cluster.colocate", "true", "--cluster.num_generators", "2"], "cluster.colocate: generator i shares learner i's GPU"),
    (["--cluster.colocate", "true", "--cluster.generator_labels", "{pool: gen}"],
     "cluster.generator_labels: colocated generators run on the learners' nodes"),
    (["--algorithm.tis_cap", "2", "--rollout.top_p", "0.95"],
     "algorithm.tis_cap: needs rollout.top_p 1 (got 0.95): vLLM's log-probs are of the top-p truncated"),
])
def test_cross_field_rules(flags, expected):
    [found] = problems(None, [*REQUIRED, *flags])
    assert found.startswith(expected)


@pytest.mark.parametrize("flags", [
    # Colocated generators follow the learners, so the learners' labels place both.
    ["--cluster.colocate", "true", "--cluster.learner_labels", "{pool: train}"],
    ["--cluster.generator_labels", "{pool: gen}", "--cluster.learner_labels", "{pool: train}"],
    ["--algorithm.tis_cap", "2", "--rollout.top_p", "1"],
    ["--rollout.top_p", "0.95"],
])
def test_near_misses_of_the_cross_field_rules_are_accepted(flags):
    load_config(None, [*REQUIRED, *flags])


@pytest.mark.parametrize("loggers, expected", [
    ("[jsonl, tensorboard, wandb]", None),
    ("[jsonl, tensorboard, jsonl]", "trainer.loggers: jsonl is listed twice"),
    ("[jsonl, tb]", "trainer.loggers.1: Input should be 'jsonl', 'tensorboard' or 'wandb' (got 'tb')"),
    ("[tensorboard, wandb]", "trainer.loggers: must include jsonl: summary.json, the plots and trainer.resume read metrics.jsonl"),
])
def test_loggers(loggers, expected):
    flags = [*REQUIRED, "--trainer.loggers", loggers]
    if expected is None:
        assert load_config(None, flags).trainer.loggers == ["jsonl", "tensorboard", "wandb"]
    else:
        [found] = problems(None, flags)
        assert found.startswith(expected)


def test_cross_field_rules_skip_invalid_inputs():
    # An invalid train_batch_size is one problem, not also a spurious divisibility one.
    assert problems(None, [*REQUIRED, "--learner.train_batch_size", "0"]) == [
        "learner.train_batch_size: Input should be greater than 0 (got 0)"]


def test_constructor_reports_cross_field_paths():
    with pytest.raises(ValidationError) as info:
        Config(model={"path": "m"}, data={"train_path": "t"}, cluster={"num_learners": 3})
    assert [e["loc"] for e in info.value.errors()] == [("learner", "train_batch_size")]


def test_file_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert problems(missing) == [f"{missing}: config file not found"]
    bad = write(tmp_path, "model:\n  path: m\n data: x\n", "bad.yaml")
    [p] = problems(bad)
    assert p.startswith(f"{bad}:3:") and "YAML syntax error" in p
    listing = write(tmp_path, "- model\n- data\n", "list.yaml")
    assert problems(listing)[0].startswith(f"{listing}: the top level must be a mapping")
    dup = write(tmp_path, "model: {path: m}\ndata: {train_path: t}\nmodel: {path: n}\n", "dup.yaml")
    [p] = problems(dup)
    assert p.startswith(f"{dup}:3:") and "duplicate key 'model'" in p
    empty = write(tmp_path, "", "empty.yaml")
    assert load_config(empty, REQUIRED).model.path == "m"


def test_empty_section_means_defaults(tmp_path):
    path = write(tmp_path, "model: {path: m}\ndata: {train_path: t}\nlearner:\n  # lr: 1e-5\nrollout:\n")
    cfg = load_config(path, ["--rollout.top_p", "0.5"])
    assert cfg.learner.lr == 1e-6 and cfg.rollout.top_p == 0.5


def test_config_error_pickles():
    err = pickle.loads(pickle.dumps(ConfigError(["a.b: bad", "c.d: worse"], "x.yaml")))
    assert err.problems == ["a.b: bad", "c.d: worse"] and err.source == "x.yaml"


def test_error_message_names_the_file(tmp_path):
    path = write(tmp_path, "model: {path: m}\ndata: {train_path: t}\nlearner: {lr: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["--rollout.top_p", "2"])
    lines = str(info.value).splitlines()
    assert lines[0] == f"invalid configuration from {path} and the command line (2 problems):"
    assert lines[1:] == ["  rollout.top_p: Input should be less than or equal to 1 (got 2)",
                         "  learner.lr: Input should be greater than 0 (got 0)"]


def test_save_round_trip(tmp_path):
    cfg = load_config(None, [*REQUIRED, "--data.template", "no", "--learner.adam_betas", "[0.8, 0.9]",
                             "--trainer.output_dir", str(tmp_path / "run")])
    path = save_config(cfg)
    assert path == tmp_path / "run" / "config.yaml"
    assert yaml.safe_load(path.read_text()) == config_to_dict(cfg)
    assert load_config(path) == cfg


def test_parse_args_in_process(tmp_path):
    path = write(tmp_path, "model: {path: m}\ndata: {train_path: t}\n")
    assert parse_args([f"--config={path}", "--eval.samples", "4"]).eval.samples == 4
    assert parse_args(["--config", str(path)]).model.path == "m"


def run_cli(*args):
    code = "import sys; from drgrpo.config_cli import parse_args; parse_args(sys.argv[1:], prog='train'); print('OK')"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=False)


def test_parse_args_exits_2_without_traceback(tmp_path):
    path = write(tmp_path, "model: {path: m}\ndata: {train_path: t}\nlearner: {lr: -1}\n")
    result = run_cli("--config", str(path), "--learner.lrr", "1", "--rollout.samples_per_prompt")
    assert result.returncode == 2 and "OK" not in result.stdout
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "error: learner.lr: Input should be greater than 0 (got -1)" in errors
    assert "error: learner.lrr: unknown field (did you mean 'lr'?)" in errors
    assert any(e.startswith("error: rollout.samples_per_prompt: missing its value") for e in errors)
    assert str(path) in result.stderr

    result = run_cli("--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "config file not found" in result.stderr


def test_help_lists_every_field():
    result = run_cli("--help")
    assert result.returncode == 0 and "usage: train" in result.stdout
    for section, field in Config.model_fields.items():
        for name in field.annotation.model_fields:
            assert f"--{section}.{name} " in result.stdout


def test_docs_are_up_to_date():
    docs = ROOT / "docs" / "config.md"
    assert docs.read_text() == config_reference_markdown(), (
        "docs/config.md is stale: run `python -m drgrpo.config_cli --markdown > docs/config.md`")


@pytest.mark.parametrize("name, model", [("qwen2.5-math-7b", "Qwen/Qwen2.5-Math-7B"),
                                         ("qwen2.5-math-1.5b", "Qwen/Qwen2.5-Math-1.5B")])
def test_paper_configs(name, model):
    cfg = load_config(ROOT / "launch" / "configs" / f"{name}.yaml")
    assert cfg.model.path == model and cfg.model.dtype == "bfloat16"
    assert sorted(cfg.data.eval_paths) == ["aime24", "amc23", "math500", "minerva", "olympiad_bench"]
    assert all(p.startswith("data/eval/") for p in cfg.data.eval_paths.values())
    assert cfg.data.template == "qwen_math" and cfg.data.max_prompt_tokens == 1024
    r = cfg.rollout
    assert (r.prompts_per_step, r.samples_per_prompt, r.temperature, r.top_p, r.max_new_tokens) == (128, 8, 1.0, 1.0, 3000)
    assert r.prompts_per_step * r.samples_per_prompt // cfg.learner.train_batch_size == 8  # optimizer steps per rollout
    a = cfg.algorithm
    assert (a.method, a.kl_coef, a.clip_eps, a.epochs_per_step) == ("dr_grpo", 0.0, 0.2, 1)
    lr = cfg.learner
    assert (lr.strategy, lr.zero_stage, lr.lr, lr.train_batch_size) == ("deepspeed", 2, 1e-6, 128)
    assert (lr.adam_betas, lr.weight_decay, lr.grad_clip, lr.gradient_checkpointing) == ((0.9, 0.95), 0.0, 1.0, True)
    # No pass holds more tokens than the paper's longest, one full prompt and response.
    assert lr.max_tokens_per_micro_batch == cfg.data.max_prompt_tokens + r.max_new_tokens
    c = cfg.cluster
    assert c.colocate and c.gpu_memory_utilization == 0.35 and c.num_learners == 8 and c.num_generators == 8
    e = cfg.eval
    assert (e.temperature, e.max_new_tokens, cfg.trainer.eval_every) == (0.0, 3000, 16)


def test_auto_device_follows_the_ray_cluster_not_the_driver():
    from drgrpo.config import ClusterConfig

    # A CPU head node (or a laptop submitting the job) driving GPU workers runs on cuda.
    assert ClusterConfig().resolve_device({"CPU": 64.0, "GPU": 16.0}) == "cuda"
    assert ClusterConfig().resolve_device({"CPU": 8.0}) == "cpu"
    assert ClusterConfig(device="cpu").resolve_device({"CPU": 8.0, "GPU": 8.0}) == "cpu"


def test_paths_expand_the_home_folder():
    cfg = load_config(None, ["--model.path", "~/m", "--data.train_path", "~/t.jsonl",
                             "--trainer.output_dir", "~/runs"])
    home = str(Path.home())
    assert (cfg.model.path, cfg.data.train_path, cfg.trainer.output_dir) == (
        f"{home}/m", f"{home}/t.jsonl", f"{home}/runs")
