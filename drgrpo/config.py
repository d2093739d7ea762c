"""The schema of a run's config: every section and setting, with its type, default and
description, and the rules that tie settings together. Add or change a setting here; the
`--help` text and docs/config.md are generated from these descriptions (drgrpo/config_cli.py).

    cfg = load_config("launch/configs/qwen2.5-math-7b.yaml", ["--rollout.samples_per_prompt", "4"])
    cfg = parse_args()   # in a script's main(): --config FILE plus --section.field VALUE overrides

`load_config` (drgrpo/config_load.py) reads defaults < YAML file < command-line overrides into a
`Config`; unknown keys are errors everywhere (a typo must never be silently ignored), and invalid
input is reported all at once as a `ConfigError` whose `problems` are "dotted.path: reason"
lines. `parse_args` (drgrpo/config_cli.py) is its command line: `python -m drgrpo.config_cli
--config FILE [overrides]` prints the resolved config; `--markdown` prints docs/config.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from drgrpo.grader import DEFAULT_TIMEOUT_S
from drgrpo.precision import AUTO, native_dtype

# cluster.max_logprob_diff's default: about ten times the largest logprob/abs_diff_mean of a
# healthy bfloat16 demo run (0.0085 to 0.0226 over 8 steps, 2026-12-06; the largest single
# token's difference, logprob/abs_diff_max, was 0.37 to 0.81).
LOGPROB_DIFF_LIMIT = 0.2

# coerce_numbers_to_str: `path: 2024` in YAML means the string, not a type error.
_STRICT = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
_Beta = Annotated[float, Field(ge=0, lt=1)]
# `~/...` is expanded when the config is read, on the driver, so every actor gets the same
# absolute path (a learner's `from_pretrained("~/x")` would not expand it).
_Path = Annotated[str, Field(min_length=1), AfterValidator(os.path.expanduser)]


class ModelConfig(BaseModel):
    model_config = _STRICT
    path: _Path = Field(description="Base model: a local Hugging Face folder or a hub name such as Qwen/Qwen2.5-Math-7B.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("bfloat16", description="The learners' compute dtype (their master weights and optimizer stay float32) and the dtype of saved checkpoints. auto = bfloat16, except on a CPU run (cluster.device cpu) whose CPU has no bfloat16 arithmetic (no AVX-512, AMX or ARM BF16), where it is ~50x slower than float32: float32 there. Resolved when the config is read, on that machine (drgrpo/precision.py); the run's config.yaml holds the result.")
    generation_dtype: Literal["bfloat16", "float16", "float32"] | None = Field(None, description="vLLM's dtype for rollouts and evaluation, and the dtype weights travel in to the generators; null = model.dtype.")

    @property
    def rollout_dtype(self) -> str:
        return self.generation_dtype or self.dtype
    trust_remote_code: bool = Field(False, description="Let transformers/vLLM run model code shipped with the checkpoint (not needed for Qwen2.5).")


class DataConfig(BaseModel):
    model_config = _STRICT
    train_path: _Path = Field(description="Training problems: a .jsonl or .parquet file, or a datasets save_to_disk folder.")
    eval_paths: dict[str, _Path] = Field(default_factory=dict, description="Benchmarks to evaluate, name -> path (same formats as train_path); empty = no evaluation.")
    template: Literal["r1", "qwen_math", "no"] = Field("qwen_math", description="Prompt template: r1 (think/answer tags), qwen_math (Qwen chat, answer in \\boxed{}), or no (the bare question).")
    prompt_key: str = Field("problem", min_length=1, description="Field of each row that holds the question.")
    answer_key: str = Field("answer", min_length=1, description="Field of each row that holds the reference answer (a string or a list of acceptable strings).")
    max_prompt_tokens: PositiveInt = Field(1024, description="Training prompts longer than this many tokens (after templating) are dropped.")

    @field_validator("template", mode="before")
    @classmethod
    def _bare_no(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted `no` as false; both mean "no template".
        return "no" if value is False else value


class RolloutConfig(BaseModel):
    model_config = _STRICT
    prompts_per_step: PositiveInt = Field(128, description="Prompts drawn from the training set per policy step.")
    samples_per_prompt: PositiveInt = Field(8, description="Responses sampled per prompt (the group); at least 2, as the group mean is the baseline.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature for training rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus-sampling threshold for training rollouts; 1.0 = off.")
    max_new_tokens: PositiveInt = Field(3000, description="Most tokens generated per training response; longer ones are cut off.")
    max_staleness: int = Field(0, ge=0, description="0 = synchronous: each rollout is sampled by the latest weights. k > 0: the generators sample up to k rollouts ahead while the learners train, so a trained response comes from weights at most k updates old (see algorithm.tis_cap).")


class AlgorithmConfig(BaseModel):
    model_config = _STRICT
    method: Literal["dr_grpo", "grpo"] = Field("dr_grpo", description="dr_grpo: no length or std normalisation (unbiased); grpo: the original objective.")
    clip_eps: float = Field(0.2, ge=0, lt=1, description="PPO clip range: the importance ratio is clipped to [1 - clip_eps, 1 + clip_eps].")
    kl_coef: float = Field(0.0, ge=0, description="Weight of the KL penalty towards the initial model; 0 = no KL term (the paper's setting).")
    epochs_per_step: PositiveInt = Field(1, description="Passes over each rollout before the next one is generated.")
    tis_cap: float = Field(0.0, ge=0, description="Truncated importance sampling: each token's term is weighted by min(pi_old/mu, tis_cap), mu being the policy vLLM sampled it from (older weights when rollout.max_staleness > 0, other numerics always); 0 = off.")


class LearnerConfig(BaseModel):
    model_config = _STRICT
    strategy: Literal["fsdp", "deepspeed"] = Field("fsdp", description="Distributed training backend.")
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate, constant (no warm-up or decay).")
    train_batch_size: PositiveInt = Field(128, description="Responses per optimizer step over all learners; it must divide the rollout size.")
    micro_batch_size: PositiveInt = Field(8, description="Responses per forward/backward pass on one learner, in rollout order; gradients accumulate to its share of a step. Unused when max_tokens_per_micro_batch is set.")
    max_tokens_per_micro_batch: PositiveInt | None = Field(None, description="Cut each learner's share of a step by tokens instead: sorted by length, longest first, each pass takes responses while rows x longest row (prompt + response, padding included) stays within this; a longer one runs alone. null = micro_batch_size responses per pass.")
    grad_clip: float = Field(1.0, gt=0, description="Clip the global gradient norm to this value.")
    adam_betas: tuple[_Beta, _Beta] = Field((0.9, 0.95), description="AdamW (beta1, beta2).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations during the backward pass to save memory.")
    zero_stage: Literal[1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage; used only when strategy is deepspeed.")


class ClusterConfig(BaseModel):
    model_config = _STRICT
    num_generators: PositiveInt = Field(1, description="vLLM engines generating rollouts.")
    generator_tp: PositiveInt = Field(1, description="Tensor-parallel GPUs per vLLM engine.")
    num_learners: PositiveInt = Field(1, description="Training processes (one GPU each on cuda).")
    num_reward_workers: PositiveInt = Field(2, description="CPU processes that grade responses.")
    reward_timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="Hard limit for grading one answer, in CPU seconds of its grading process (and 6x that in wall-clock seconds); an answer that reaches it scores 0 and is counted in reward/timeouts. Why 5 s: drgrpo/grader.py.")
    colocate: bool = Field(False, description="Generator i shares learner i's GPU and sleeps while the learners train (the paper's setup); on CPUs it only shares the bundle.")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="Share of each GPU's memory vLLM may use; null = 0.35 when colocated (the paper's value), else 0.9.")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto = cuda when the Ray cluster has GPUs (any node's, not the driver's), else cpu.")
    learner_labels: dict[str, str] = Field(default_factory=dict, description="Ray node labels the learners' nodes must carry (`ray start --labels`), e.g. {pool: train}; empty = any node.")
    generator_labels: dict[str, str] = Field(default_factory=dict, description="Ray node labels the generators' nodes must carry; empty = any node.")
    generator_cores: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, description="CPU only: the cores the generators' vLLM engines run on (e.g. [0]); with learner_cores, a CPU machine models a cluster's separate generator and learner GPUs. Empty = share every core.")
    learner_cores: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, description="CPU only: the cores the learners run on (e.g. [1]); empty = share every core.")
    placement_timeout_s: float = Field(600.0, gt=0, description="Stop, saying what is missing, when the Ray cluster cannot hold every actor within this many seconds; also how long each actor may take to start (load its model) before it is named as the one that did not.")
    sync_timeout_s: float = Field(600.0, gt=0, description="A generator that has not finished its part of a weight sync this many seconds after learner rank 0 asked is taken for dead: it is restarted and the sync redone. The sync group's own collectives fail 30 s later (so NCCL's watchdog never takes learner 0 down first), and the driver gives the learners 60 s more. Also the bound on a colocated engine's sleep and wake-up.")
    generate_timeout_s: float = Field(1800.0, gt=0, description="A generator that has not answered a generate call this many seconds after the driver started waiting for it is taken for hung: it is killed, restarted on its bundle, and the call's prompts are sampled again with the same seeds.")
    max_logprob_diff: float = Field(LOGPROB_DIFF_LIMIT, ge=0, description="Stop the run when a step's logprob/abs_diff_mean (vLLM's log-probs of the tokens it sampled against the learners', over responses sampled by the weights being trained) exceeds this: the generators are not sampling from the learners' weights. The default is about ten times what healthy bfloat16 runs of the demo show; 0 = never stop.")
    save_timeout_s: float = Field(1800.0, gt=0, description="Writing a checkpoint, or loading one's optimizer state, that takes the learners longer than this stops the run, naming the learners still at it.")
    max_actor_restarts: int = Field(3, ge=0, description="Restarts allowed per generator or reward worker (each counted in faults/*); one more failure of the same actor stops the run, naming it.")

    @model_validator(mode="after")
    def _default_gpu_share(self) -> ClusterConfig:
        # A colocated vLLM must leave room for the learner's weights, grads and optimizer state.
        if self.gpu_memory_utilization is None:
            self.gpu_memory_utilization = 0.35 if self.colocate else 0.9
        return self

    def resolve_device(self, cluster_resources: Mapping[str, float]) -> Literal["cuda", "cpu"]:
        """The device to run on. `auto` looks at the Ray cluster's resources, not at the
        driver's own GPUs: a CPU head node (or a laptop submitting a job) still drives GPUs."""
        if self.device != "auto":
            return self.device
        return "cuda" if cluster_resources.get("GPU", 0) > 0 else "cpu"


class EvalConfig(BaseModel):
    model_config = _STRICT
    temperature: float = Field(0.0, ge=0, description="Sampling temperature for evaluation; 0 = greedy.")
    max_new_tokens: PositiveInt = Field(3000, description="Most tokens generated per evaluation response.")
    samples: PositiveInt = Field(1, description="Responses per problem; accuracy is averaged over them.")
    limit: PositiveInt | None = Field(None, description="Evaluate only the first N problems of each benchmark; null = all.")


class TrainerConfig(BaseModel):
    model_config = _STRICT
    max_steps: PositiveInt = Field(500, description="Policy steps to run (each: one rollout, then its optimizer steps).")
    eval_every: int = Field(16, ge=0, description="Evaluate every N policy steps; 0 = never.")
    samples_every: int = Field(0, ge=0, description="Every N policy steps, write each response of the step with its question, reference answer and verdict to output_dir/samples.jsonl; 0 = never.")
    save_every: int = Field(64, ge=0, description="Save a checkpoint every N policy steps; 0 = only the final save, which always happens.")
    output_dir: _Path = Field("runs/drgrpo", description="Folder for checkpoints, logs and the resolved config.yaml.")
    seed: int = Field(42, ge=0, description="Random seed for data order, sampling and initialisation.")
    max_restarts: int = Field(3, ge=0, description="When an actor is lost mid-run (a learner's process killed, and its state with it), restart the run in the same driver from its latest complete checkpoint (the start if none), at most this many times; 0 = stop at the first such failure.")
    resume: _Path = Field("never", description="never = start fresh; auto = continue from the latest complete checkpoint in output_dir (fresh if none); else a checkpoint path.")
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(default_factory=lambda: ["jsonl", "tensorboard"], description="Where each step's metrics go: jsonl (metrics.jsonl; required, as summary.json, the plots and resume read it), tensorboard (output_dir/tensorboard/), wandb (needs the wandb package; WANDB_MODE=offline logs without a network).")
    wandb_project: str = Field("drgrpo", min_length=1, description="W&B project when loggers has wandb; the W&B run is named after output_dir's last folder.")

    @field_validator("loggers")
    @classmethod
    def _loggers(cls, names: list[str]) -> list[str]:
        twice = [n for i, n in enumerate(names) if n in names[:i]]
        if twice:
            raise PydanticCustomError("loggers", "{name} is listed twice", {"name": twice[0]})
        if "jsonl" not in names:
            # Not silently added: the list should say every place the metrics go.
            raise PydanticCustomError("loggers", "must include jsonl: summary.json, the plots and trainer.resume read metrics.jsonl")
        return names


# Each rule is reported at the first field it names; listed in --help and docs/config.md.
CROSS_FIELD_RULES = (
    "rollout.samples_per_prompt >= 2: a group needs two samples for its mean reward to be a baseline.",
    "learner.train_batch_size divides rollout.prompts_per_step x rollout.samples_per_prompt: whole optimizer steps.",
    "learner.train_batch_size is divisible by cluster.num_learners: every learner gets an equal share of a step.",
    "cluster.colocate needs cluster.num_generators == cluster.num_learners and cluster.generator_tp 1: generator i shares learner i's GPU.",
    "rollout.max_staleness > 0 needs cluster.colocate false: colocated generators sleep while the learners train.",
    "cluster.generator_labels needs cluster.colocate false: colocated generators run on the learners' nodes (cluster.learner_labels places both).",
    "algorithm.tis_cap > 0 needs rollout.top_p 1: vLLM's log-probs are of the top-p truncated distribution, the learner's of the full one, and a ratio of two different distributions is no importance weight.",
)
CROSS_FIELD_PATHS = (
    "rollout.prompts_per_step", "rollout.samples_per_prompt", "learner.train_batch_size",
    "cluster.num_learners", "cluster.colocate", "cluster.num_generators", "cluster.generator_tp",
    "rollout.max_staleness", "cluster.generator_labels", "algorithm.tis_cap", "rollout.top_p",
)


def cross_field_problems(v: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(path, reason) for each broken rule; a rule is skipped unless all its inputs are in `v`."""
    out = []

    def have(*paths: str) -> bool:
        return all(p in v for p in paths)

    if have("rollout.samples_per_prompt") and v["rollout.samples_per_prompt"] < 2:
        why = f"must be at least 2 (got {v['rollout.samples_per_prompt']}): a group needs two samples for a baseline"
        out.append(("rollout.samples_per_prompt", why))
    if have("rollout.prompts_per_step", "rollout.samples_per_prompt", "learner.train_batch_size"):
        p, s, b = v["rollout.prompts_per_step"], v["rollout.samples_per_prompt"], v["learner.train_batch_size"]
        if (p * s) % b:
            why = (f"must divide rollout.prompts_per_step x rollout.samples_per_prompt = {p} x {s} = {p * s}"
                   f" (got {b}): each rollout is trained as whole optimizer steps")
            out.append(("learner.train_batch_size", why))
    if have("learner.train_batch_size", "cluster.num_learners"):
        b, n = v["learner.train_batch_size"], v["cluster.num_learners"]
        if b % n:
            why = f"must be divisible by cluster.num_learners = {n} (got {b}): every learner takes an equal share"
            out.append(("learner.train_batch_size", why))
    if have("cluster.colocate", "cluster.num_generators", "cluster.num_learners", "cluster.generator_tp"):
        g, n, tp = v["cluster.num_generators"], v["cluster.num_learners"], v["cluster.generator_tp"]
        if v["cluster.colocate"] and (g != n or tp != 1):
            why = (f"generator i shares learner i's GPU, so it needs cluster.num_generators == "
                   f"cluster.num_learners and cluster.generator_tp 1 (got {g}, {n}, {tp})")
            out.append(("cluster.colocate", why))
    if have("rollout.max_staleness", "cluster.colocate") and v["rollout.max_staleness"] and v["cluster.colocate"]:
        why = "colocated generators sleep while the learners train, so nothing can overlap: set cluster.colocate false"
        out.append(("rollout.max_staleness", why))
    if have("cluster.generator_labels", "cluster.colocate") and v["cluster.generator_labels"] \
            and v["cluster.colocate"]:
        # Else silently ignored: the labelled generator nodes would sit idle.
        why = ("colocated generators run on the learners' nodes, so these labels would place "
               "nothing: set cluster.colocate false, or label the nodes with cluster.learner_labels")
        out.append(("cluster.generator_labels", why))
    if have("algorithm.tis_cap", "rollout.top_p") and v["algorithm.tis_cap"] > 0 and v["rollout.top_p"] < 1:
        # vLLM returns processed log-probs (after top-p), the learner computes full-softmax ones.
        why = (f"needs rollout.top_p 1 (got {v['rollout.top_p']}): vLLM's log-probs are of the top-p "
               "truncated, renormalised distribution and the learner's of the full one, so their "
               "ratio is not an importance weight")
        out.append(("algorithm.tis_cap", why))
    return out


class Config(BaseModel):
    model_config = _STRICT
    model: ModelConfig = Field(description="The policy being trained.")
    data: DataConfig = Field(description="Training and evaluation problems, and how prompts are built.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling of training responses.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="The policy-gradient objective.")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="Optimizer and distributed training.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Processes and GPUs.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Benchmark evaluation during training.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Run length, checkpoints and output.")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `learner:` with every key commented out loads as None; it means "all defaults".
        if isinstance(data, dict):
            return {k: {} if v is None and k in cls.model_fields else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _auto_dtype(self) -> Config:
        if self.model.dtype == AUTO:
            self.model.dtype = native_dtype(self.cluster.device)
        return self

    @model_validator(mode="after")
    def _cross_field(self) -> Config:
        values = {p: getattr(getattr(self, p.split(".")[0]), p.split(".")[1]) for p in CROSS_FIELD_PATHS}
        broken = cross_field_problems(values)
        if broken:
            # A ValidationError raised here keeps each problem's own loc (pydantic merges it).
            raise ValidationError.from_exception_data("Config", [
                InitErrorDetails(type=PydanticCustomError("cross_field", "{reason}", {"reason": reason}),
                                 loc=tuple(path.split(".")), input=values.get(path))
                for path, reason in broken
            ])
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able values (tuples become lists)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        header = "# Resolved drgrpo config: every setting, defaults included. Reload with --config <this file>.\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, directory: str | Path | None = None) -> Path:
        """Write config.yaml into `directory` (default trainer.output_dir) atomically; return its path."""
        directory = Path(directory if directory is not None else self.trainer.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "config.yaml"
        tmp = path.with_name(f".config.yaml.{os.getpid()}.tmp")
        tmp.write_text(self.to_yaml(), encoding="utf-8")
        os.replace(tmp, path)
        return path


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.to_dict()


def save_config(cfg: Config, directory: str | Path | None = None) -> Path:
    return cfg.save(directory)
