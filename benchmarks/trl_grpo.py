"""TRL's GRPOTrainer on the demo's problem, set up as the project's demo run: the `step` baseline.

Same model and prompts (the project's own `Run.prompts_for_step` order, so step k trains on the
same 4 questions in both), group size, completion length, temperature, optimizer, clip range
and loss (TRL's `dr_grpo` loss, no std scaling, no KL); the reward is drgrpo's own grader.
Generation is TRL's default on a CPU: transformers' `generate` on the policy itself, so there
is no weight sync. Step time is TRL's optimizer step (`on_step_begin` to `on_step_end`); its
phases come from timing TRL's own methods (generation, reward, the rest of the rollout).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks.common import demo_config, load_avg, part_main, run_child, work_dir


def trl_run(steps: int, trl_args: dict) -> dict:
    """{"settings", "steps": [one record per optimizer step], "load_avg"} in a fresh process."""
    folder = work_dir() / f"trl_s{steps}_{int(time.time())}"
    spec = {"steps": steps, "trl_args": trl_args, "folder": str(folder)}
    result = run_child("benchmarks.trl_grpo", spec)
    (folder / "bench.json").write_text(json.dumps(result, indent=2))
    return result


def grpo_config(cfg, steps: int, folder: Path, trl_args: dict):
    """GRPOConfig with the project config's settings, field by field."""
    import torch
    from trl import GRPOConfig

    extra = dict(trl_args)
    dtype = extra.pop("model_dtype")
    return GRPOConfig(
        output_dir=str(folder), max_steps=steps, seed=cfg.trainer.seed, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=1, dataloader_num_workers=0,
        shuffle_dataset=False,  # the dataset is already in the project run's prompt order
        # One rollout of prompts x G completions per optimizer step, in micro-batches of the
        # project's size: per device batch x accumulation = the project's train_batch_size.
        num_generations=cfg.rollout.samples_per_prompt,
        per_device_train_batch_size=cfg.learner.micro_batch_size,
        gradient_accumulation_steps=cfg.learner.train_batch_size // cfg.learner.micro_batch_size,
        max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=0,
        # Dr. GRPO: sum of token losses / max_completion_length, advantages r - mean (no std).
        loss_type="dr_grpo", scale_rewards="none", beta=cfg.algorithm.kl_coef,
        epsilon=cfg.algorithm.clip_eps, num_iterations=cfg.algorithm.epochs_per_step,
        learning_rate=cfg.learner.lr, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=cfg.learner.adam_betas[0], adam_beta2=cfg.learner.adam_betas[1],
        weight_decay=cfg.learner.weight_decay, max_grad_norm=cfg.learner.grad_clip,
        gradient_checkpointing=cfg.learner.gradient_checkpointing,
        disable_dropout=True,  # the project trains in train mode without dropout
        model_init_kwargs={"dtype": getattr(torch, dtype)},
        **extra,
    )


def measure(spec: dict) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from drgrpo.grader import Grader
    from drgrpo.templates import apply_template
    from launch.run import prepare

    folder, steps = Path(spec["folder"]), spec["steps"]
    cfg = demo_config(["--trainer.max_steps", str(steps), "--trainer.eval_every", "0",
                       "--trainer.loggers", "[jsonl]",
                       "--trainer.output_dir", str(folder / "project_order")])
    run = prepare(cfg)  # the project's own checks and prompt order, nothing else
    template = cfg.data.template
    rows = [{"prompt": apply_template(template, p.question), "answer": p.answer}
            for step in range(1, steps + 1) for p in run.prompts_for_step(step)]
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    eos = tokenizer.eos_token_id
    # The reward pool's grader, as its Ray workers hold it: one grading process, the project's
    # per-answer limit (cluster.reward_timeout_s).
    grader = Grader(num_workers=1, timeout_s=cfg.cluster.reward_timeout_s)

    def correct_answer(completions, answer, completion_ids, **_):
        # As in the project, a response cut at max_completion_length (no EOS) scores 0.
        truncated = [ids[-1:] != [eos] for ids in completion_ids]
        rewards = [v.reward for v in grader.grade(completions, answer, template, truncated)]
        done.update(reward_mean=sum(rewards) / len(rewards),
                    response_tokens_mean=sum(map(len, completion_ids)) / len(completion_ids))
        return rewards

    phases: dict[str, float] = {}
    done: dict[str, float] = {}  # what the rollout of the step produced

    class Timed(GRPOTrainer):
        def _timed(self, phase, fn, *args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - start

        def _generate_single_turn(self, *args, **kwargs):
            return self._timed("generate", super()._generate_single_turn, *args, **kwargs)

        def _calculate_rewards(self, *args, **kwargs):
            return self._timed("reward", super()._calculate_rewards, *args, **kwargs)

        def _generate_and_score_completions(self, *args, **kwargs):
            return self._timed("rollout", super()._generate_and_score_completions, *args, **kwargs)

    records: list[dict] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            phases.clear()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_s = time.perf_counter() - self.start
            gen, reward, rollout = (phases.get(k, 0.0) for k in ("generate", "reward", "rollout"))
            records.append({"step": state.global_step, "step_s": step_s, "generate_s": gen,
                            "reward_s": reward, "rollout_other_s": rollout - gen - reward,
                            "train_s": step_s - rollout, "weight_sync_s": 0.0, **done})

    args = grpo_config(cfg, steps, folder / "trl", spec["trl_args"])
    trainer = Timed(model=cfg.model.path, reward_funcs=[correct_answer], args=args,
                    train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                    callbacks=[StepTimes()])
    before = load_avg()
    trainer.train()
    after = load_avg()
    grader.close()
    if len(records) != steps:
        raise RuntimeError(f"TRL ran {len(records)} optimizer steps, not {steps}")
    return {"settings": {k: v for k, v in args.to_dict().items() if k in SHOWN},
            "steps": records, "load_avg": {"before": before, "after": after}}


# The GRPOConfig fields the results show: the ones that make the comparison like for like.
SHOWN = ("num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
         "generation_batch_size", "max_completion_length", "temperature", "top_p", "top_k",
         "loss_type", "scale_rewards", "beta", "epsilon", "num_iterations", "learning_rate",
         "adam_beta1", "adam_beta2", "weight_decay", "max_grad_norm", "optim",
         "gradient_checkpointing", "bf16", "use_vllm")


def main(argv: list[str] | None = None) -> int:
    return part_main(None, "benchmarks.trl_grpo", __doc__, argv, measure=measure)


if __name__ == "__main__":
    sys.exit(main())
