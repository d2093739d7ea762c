"""The bookkeeping of one training run, kept out of the step loop.

`prepare` does every check on user input before any actor starts (loggers' packages, model
folder, tokenizer, datasets, output folder, checkpoint to resume), so bad input stops with one line and nothing
else; `Run` then owns the prompt order, the metrics loggers (launch/loggers.py), the progress
bar, checkpoints and summary.json.

Checkpoints: `<output_dir>/checkpoints/step_000012/` holds `model/` (Hugging Face format with
the tokenizer: loadable by transformers and vLLM), `optimizer/` (every learner's state) and
`trainer_state.json`. Each is written under a `.tmp` name and renamed only when complete, so a
crash mid-save never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from actors.failures import RunError
from actors.fault_log import FaultLog
from drgrpo.config import Config
from drgrpo.data import DataError, Problem, load_problems
from drgrpo.templates import apply_template
from launch.loggers import Loggers, LoggerStartError, missing_package
from launch.pipeline import Rollout, rollouts_from_json, rollouts_to_json

CHECKPOINT = re.compile(r"^step_(\d{6,})$")
ROLLOUTS = "rollouts.json"  # in a checkpoint: the rollouts it kept for the steps after it


class InputError(Exception):
    """Bad user input found before any actor starts; the message is one line."""


def check_agreement(metrics: dict, limit: float) -> None:
    """Stop (`RunError`, one line) when the step's generators sampled from other weights than
    the learners trained: their log-probs of their own samples part from the learners'."""
    diff = metrics.get("logprob/abs_diff_mean")
    if limit and diff is not None and diff > limit:
        raise RunError(
            f"step {metrics['step']}: vLLM's log-probs of the sampled tokens differ from the "
            f"learners' by {diff:.3g} on average (max {metrics['logprob/abs_diff_max']:.3g}), "
            f"over cluster.max_logprob_diff {limit:g}: the generators are not sampling from "
            "the weights being trained (did a weight sync not reach them?)")


@dataclass
class RunState:
    step: int = 0
    started_at: float = field(default_factory=time.time)
    wall_time_s: float = 0.0
    eval_accuracy_initial: float | None = None
    eval_accuracy_final: float | None = None
    # Each time the driver restarted the run from a checkpoint (launch/restarts.py): kept in
    # the checkpoints, so a run re-submitted with `--trainer.resume auto` still lists them.
    restarts: list[dict] = field(default_factory=list)


def _load_tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    local = Path(path)
    if local.exists() and not (local / "config.json").is_file():
        raise InputError(f"model.path: {path} has no config.json (not a Hugging Face model folder)")
    if not local.exists() and (path.startswith((".", "/", "~")) or path.count("/") != 1):
        raise InputError(f"model.path: {path} does not exist")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises many types; the user needs one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"model.path: cannot load a tokenizer from {path}: {reason}") from None


def _load(path: str, cfg: Config, limit: int | None = None) -> list[Problem]:
    try:
        return load_problems(path, cfg.data.prompt_key, cfg.data.answer_key, limit=limit)
    except DataError as err:
        raise InputError(str(err)) from None


def latest_checkpoint(output_dir: Path) -> Path | None:
    root = output_dir / "checkpoints"
    done = [p for p in root.glob("step_*") if CHECKPOINT.match(p.name)
            and (p / "trainer_state.json").is_file()] if root.is_dir() else []
    return max(done, key=lambda p: int(p.name[5:]), default=None)


@dataclass
class Run:
    cfg: Config
    model_path: str
    train_set: list[Problem]
    eval_sets: dict[str, list[Problem]]
    max_model_len: int
    state: RunState
    resume_from: Path | None
    output_dir: Path
    loggers: Loggers
    actors: dict = field(default_factory=dict)  # name -> node, pid, start-up times
    faults: FaultLog | None = None  # actors restarted (actors/fault_log.py), for the whole run
    saved: list[Rollout] = field(default_factory=list)  # read, and checked, by `prepare`

    def __post_init__(self):
        if self.faults is None:
            self.faults = FaultLog(self.cfg.cluster.max_actor_restarts)
        self.faults.step = self.state.step + 1

    def saved_rollouts(self) -> list[Rollout]:
        """The rollouts a resumed checkpoint kept for the steps after it (see save_checkpoint)."""
        return self.saved

    def clock(self, wall_time: float) -> float:
        """A `time.time()` reading as seconds since the run started (resumed runs included)."""
        return wall_time - self.state.started_at

    @property
    def ray_init_kwargs(self) -> dict:
        # Under `ray job submit` RAY_ADDRESS is set and ray.init() joins that cluster; else a
        # local one starts (without the dashboard: `ray start --head` gives you one).
        kwargs = {"log_to_driver": os.environ.get("DRGRPO_RAY_LOGS", "0") == "1"}
        if "RAY_ADDRESS" not in os.environ:
            kwargs["include_dashboard"] = False
        return kwargs

    def note_actors(self, actors: dict) -> None:
        self.actors = actors

    def prompts_for_step(self, step: int) -> list[Problem]:
        """A fresh seeded shuffle every epoch; the batch depends only on (seed, step), so a
        resumed run draws exactly the prompts the uninterrupted run would have."""
        n, k = len(self.train_set), self.cfg.rollout.prompts_per_step
        orders: dict[int, list[int]] = {}  # a step spans at most two epochs
        out = []
        for i in range((step - 1) * k, step * k):
            epoch, pos = divmod(i, n)
            if epoch not in orders:
                orders[epoch] = list(range(n))
                random.Random(self.cfg.trainer.seed * 1_000_003 + epoch).shuffle(orders[epoch])
            out.append(self.train_set[orders[epoch][pos]])
        return out

    # --- logging -------------------------------------------------------------------------------

    def progress_bar(self):
        from tqdm import tqdm

        return tqdm(total=self.cfg.trainer.max_steps, initial=self.state.step, desc="dr_grpo"
                    if self.cfg.algorithm.method == "dr_grpo" else "grpo", unit="step",
                    dynamic_ncols=True)

    def log_eval(self, step: int, eval_metrics: dict) -> None:
        self.loggers.log({"step": step, **eval_metrics})
        self._note_eval(eval_metrics)

    def _note_eval(self, eval_metrics: dict) -> None:
        if "eval/average" in eval_metrics:
            if self.state.eval_accuracy_initial is None:
                self.state.eval_accuracy_initial = eval_metrics["eval/average"]
            self.state.eval_accuracy_final = eval_metrics["eval/average"]

    def log_samples(self, step: int, rollout: Rollout, verdicts: list) -> None:
        """Every trainer.samples_every steps: each response, its question and its verdict."""
        every = self.cfg.trainer.samples_every
        if not every or step % every:
            return
        G = self.cfg.rollout.samples_per_prompt
        self.loggers.log_samples([
            {"step": step, "question": rollout.problems[i // G].question,
             "answer": rollout.problems[i // G].answer, "response": c.text,
             "reward": v.reward, "formatted": v.formatted, "truncated": c.truncated,
             "timed_out": v.timed_out, "crashed": v.crashed, "version": c.version}
            for i, (c, v) in enumerate(zip(rollout.completions, verdicts))])

    def log_step(self, metrics: dict, progress) -> None:
        self.state.step = metrics["step"]
        metrics.update(self.faults.metrics())  # restarts so far: faults/generator_restarts, ...
        self.faults.step = self.state.step + 1
        self._note_eval(metrics)
        self.loggers.log(metrics)
        progress.update(1)
        progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}",
                             step_s=f"{metrics['time/step_s']:.1f}", refresh=False)
        check_agreement(metrics, self.cfg.cluster.max_logprob_diff)

    # --- checkpoints and the end -----------------------------------------------------------------

    def save_checkpoint(self, cluster, step: int, in_flight: list[Rollout] = ()) -> Path:
        """The learners' model and optimizer, the run's state, and the rollouts already
        sampled for later steps (asynchronous runs): weights the checkpoint does not hold
        sampled them, so a resumed run must train on these very responses."""
        root = self.output_dir / "checkpoints"
        final = root / f"step_{step:06d}"
        tmp = root / f"step_{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cluster.save(str(tmp))
        if in_flight:
            (tmp / ROLLOUTS).write_text(rollouts_to_json(in_flight))
        _load_tokenizer(self.model_path, self.cfg.model.trust_remote_code).save_pretrained(
            tmp / "model")
        self.state.wall_time_s = time.time() - self.state.started_at
        # Written last: its presence is what marks the checkpoint complete.
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(self.state), indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def write_summary(self) -> dict:
        records = [json.loads(line) for line in
                   (self.output_dir / "metrics.jsonl").read_text().splitlines() if line]
        last = next((r for r in reversed(records) if "reward/mean" in r), {})
        summary = {
            "steps": self.state.step,
            "wall_time_s": time.time() - self.state.started_at,
            "method": self.cfg.algorithm.method,
            "eval_accuracy_initial": self.state.eval_accuracy_initial,
            "eval_accuracy_final": self.state.eval_accuracy_final,
            "final": last,
            "actors": self.actors,
            "restarts": self.state.restarts,
            # Each actor restarted: the step it failed in, which, why, seconds to recover.
            "faults": [asdict(e) for e in self.faults.events],
        }
        path = self.output_dir / "summary.json"
        path.with_suffix(".tmp").write_text(json.dumps(summary, indent=2))
        path.with_suffix(".tmp").rename(path)
        return summary


def prepare(cfg: Config) -> Run:
    missing = missing_package(cfg.trainer.loggers)
    if missing:
        raise InputError(f"trainer.loggers: {missing} needs the {missing} package: "
                         f"pip install {missing}")
    output_dir = absolute_output_dir(cfg)
    resume_from = None
    if cfg.trainer.resume == "auto":
        resume_from = latest_checkpoint(output_dir)
    elif cfg.trainer.resume != "never":
        resume_from = Path(cfg.trainer.resume).absolute()
        if not (resume_from / "trainer_state.json").is_file():
            raise InputError(f"trainer.resume: {resume_from} is not a complete checkpoint "
                             "(no trainer_state.json)")
    saved = _saved_rollouts(resume_from, cfg) if resume_from else []
    model_path = str(resume_from / "model") if resume_from else cfg.model.path
    tokenizer = _load_tokenizer(model_path, cfg.model.trust_remote_code)

    template = cfg.data.template
    train_set = [p for p in _load(cfg.data.train_path, cfg)
                 if len(tokenizer(apply_template(template, p.question)).input_ids)
                 <= cfg.data.max_prompt_tokens]
    if len(train_set) < cfg.rollout.prompts_per_step:
        raise InputError(f"data.train_path: {cfg.data.train_path} has {len(train_set)} problems "
                         f"within data.max_prompt_tokens, fewer than rollout.prompts_per_step")
    eval_sets = ({name: _load(path, cfg, cfg.eval.limit)
                  for name, path in cfg.data.eval_paths.items()}
                 if cfg.trainer.eval_every else {})
    longest_eval = max((len(tokenizer(apply_template(template, p.question)).input_ids)
                        for problems in eval_sets.values() for p in problems), default=0)
    max_model_len = (max(cfg.data.max_prompt_tokens, longest_eval)
                     + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens if eval_sets else 0))
    # Never past the model's own context (Qwen2.5-Math: 4096): vLLM then ends a response that
    # reaches it with finish reason "length", as the paper's runs did.
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(model_path,
                                              trust_remote_code=cfg.model.trust_remote_code)
    context = getattr(model_config, "max_position_embeddings", None)
    if context:
        max_model_len = min(max_model_len, context)
    _check_tensor_parallel(cfg.cluster.generator_tp, model_config, model_path)

    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(output_dir)
    except OSError as err:
        raise InputError(f"trainer.output_dir: cannot write to {output_dir}: {err.strerror}") from None
    state = RunState()
    if resume_from:
        state = RunState(**json.loads((resume_from / "trainer_state.json").read_text()))
        state.started_at = time.time() - state.wall_time_s
    try:
        loggers = Loggers(cfg, state.step if resume_from else None)
    except LoggerStartError as err:
        raise InputError(f"trainer.loggers: {err}") from None
    return Run(cfg, model_path, train_set, eval_sets, max_model_len, state, resume_from,
               output_dir, loggers, saved=saved)


def _saved_rollouts(checkpoint: Path, cfg: Config) -> list[Rollout]:
    path = checkpoint / ROLLOUTS
    if not path.is_file():
        return []
    try:
        rollouts = rollouts_from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"trainer.resume: cannot read {path}: {type(err).__name__}: {err}") from None
    # Else the first learner to train on them fails mid-run, its actors all up.
    if cfg.algorithm.tis_cap > 0 and any(c.logprobs is None for r in rollouts for c in r.completions):
        raise InputError(
            f"algorithm.tis_cap: {cfg.algorithm.tis_cap:g} weights each token by vLLM's log-prob, "
            f"but the rollouts in {path} were saved without them: resume with "
            "algorithm.tis_cap 0")
    return rollouts


def absolute_output_dir(cfg: Config) -> Path:
    """trainer.output_dir made absolute here, on the driver, and written back into `cfg`, so
    every learner on every node writes its checkpoint shard to the same path (which, across
    nodes, must be shared storage)."""
    output_dir = Path(cfg.trainer.output_dir).expanduser().absolute()
    if not Path(cfg.trainer.output_dir).expanduser().is_absolute() and \
            "working_dir" in os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", ""):
        print(f"warning: trainer.output_dir is relative, so this job writes into Ray's "
              f"temporary copy of its working directory: {output_dir}; pass an absolute "
              f"path to keep the run", file=sys.stderr)
    cfg.trainer.output_dir = str(output_dir)
    return output_dir


def _check_tensor_parallel(tp: int, model_config, model_path: str) -> None:
    """vLLM splits attention heads over the tensor-parallel GPUs (and replicates KV heads
    when there are fewer of them than GPUs)."""
    heads = getattr(model_config, "num_attention_heads", None)
    kv = getattr(model_config, "num_key_value_heads", None) or heads
    if tp == 1 or heads is None:
        return
    if heads % tp or (kv % tp and tp % kv):
        raise InputError(f"cluster.generator_tp: {tp} GPUs cannot split the {heads} attention "
                         f"heads ({kv} key/value heads) of {model_path}; use a divisor of {heads}")
