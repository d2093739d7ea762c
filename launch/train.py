"""Train a policy with Dr. GRPO.

    python -m launch.train --config launch/configs/qwen2.5-math-7b.yaml [--section.key value ...]

Connects to the running Ray cluster when there is one (as under `ray job submit`) and starts a
local one otherwise. Each step: sample questions, sample a group of responses per question,
score them, compute group advantages, update the learners, and send the new weights to the
generators.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import torch

from actors.failures import RunError
from actors.generator import Sampling
from drgrpo.algorithm import group_advantages
from drgrpo.batching import Sample, plan_steps
from drgrpo.config import Config
from drgrpo.config_cli import parse_args
from drgrpo.data import Problem
from drgrpo.metrics import rollout_metrics
from drgrpo.seeds import derive_seed
from drgrpo.templates import apply_template, stop_strings
from launch.evaluate import evaluate
from launch.pipeline import Rollout, Rollouts
from launch.restarts import train_with_restarts
from launch.run import InputError, Run, RunState


def train(cfg: Config) -> dict:
    # An actor lost mid-run (a learner, and its state with it) restarts the run from its
    # latest checkpoint, up to trainer.max_restarts times: see launch/restarts.py.
    return train_with_restarts(cfg, _train)


def _train(cfg: Config, run: Run) -> dict:
    import ray

    from launch.cluster import Cluster

    if not ray.is_initialized():  # a run restart trains again in the same process
        ray.init(**run.ray_init_kwargs)
    device = cfg.cluster.resolve_device(ray.cluster_resources())
    if device == "cuda":  # a run its GPUs cannot hold stops here, in one line, before any actor
        from launch.plan import refuse_if_unfit

        refuse_if_unfit(cfg, run.model_path)
    cluster = Cluster(cfg, device, model_path=run.model_path, max_model_len=run.max_model_len,
                      weights_version=run.state.step, faults=run.faults)
    run.note_actors(cluster.actors)
    try:
        return _steps(cfg, run, cluster)
    finally:  # a failed run too: its actors and placement groups end with it, not with Ray
        cluster.shutdown()


def _steps(cfg: Config, run: Run, cluster) -> dict:
    state: RunState = run.state
    if run.resume_from:
        cluster.load_optimizer(str(run.resume_from))
        # The generators started from the checkpoint's model, saved in model.dtype; an
        # uninterrupted run's hold the learners' float32 weights cast to generation_dtype,
        # finer when that is float32. Send them those, restored, as that run did.
        cluster.sync_weights(version=state.step)
    G, template = cfg.rollout.samples_per_prompt, cfg.data.template
    sampling = Sampling(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens,
                        # vLLM's log-probs of what it sampled: truncated importance sampling
                        # uses them, and every step checks them against the learners'.
                        tuple(stop_strings(template)), logprobs=True)

    def questions(step: int) -> tuple[list[Problem], list[str]]:
        problems = run.prompts_for_step(step)
        return problems, [apply_template(template, p.question) for p in problems]

    rollouts = Rollouts(
        cluster, questions, G, lambda step: replace(
            sampling, seed=derive_seed(cfg.trainer.seed, "rollout", step)),
        cfg.rollout.max_staleness, cfg.trainer.max_steps, saved=run.saved_rollouts())

    if run.eval_sets and state.step == 0:
        run.log_eval(0, evaluate(cluster, run.eval_sets, template, cfg.eval, cfg.trainer.seed)[0])
    with run.progress_bar() as progress:  # closed before any error line is printed
        for step in range(state.step + 1, cfg.trainer.max_steps + 1):
            t0 = time.time()

            # 1. A group of G responses to each of the step's questions, sampled by weights at
            #    most rollout.max_staleness updates older than the learners' (0: the latest).
            rollout = rollouts.take(step)
            completions = rollout.completions
            t1 = time.time()

            # 2. Score every response against its question's reference answer (0/1 reward).
            answers = [p.answer for p in rollout.problems for _ in range(G)]
            verdicts = cluster.score([c.text for c in completions], answers, template,
                                     [c.truncated for c in completions])
            rewards = torch.tensor([v.reward for v in verdicts])
            run.log_samples(step, rollout, verdicts)
            t2 = time.time()

            # 3. Advantages within each group: r - mean(group) (Dr. GRPO; GRPO also divides by std).
            advantages = group_advantages(rewards, G, cfg.algorithm.method)

            # 4. Policy update (step - 1 -> step): the rollout, as optimizer steps of
            #    train_batch_size; vLLM's own log-probs go along, for importance sampling and
            #    to check that it samples from the weights being trained.
            samples = [Sample(c.prompt_ids, c.response_ids, a, c.logprobs,
                              on_policy=c.version == step - 1)
                       for c, a in zip(completions, advantages.tolist())]
            plan = plan_steps(samples, cfg.learner.train_batch_size, cfg.cluster.num_learners,
                              seed=cfg.trainer.seed * 100_003 + step)
            train_stats = cluster.train(plan)
            t3 = time.time()

            # 5. The generators sample from the new weights from their next rollout on.
            sync = cluster.sync_weights(version=step)
            t4 = time.time()

            metrics = step_record(run, step, rollout, verdicts, train_stats, sync,
                                  (t0, t1, t2, t3, t4))
            if run.eval_sets and cfg.trainer.eval_every and (
                    step % cfg.trainer.eval_every == 0 or step == cfg.trainer.max_steps):
                eval_metrics, _ = evaluate(cluster, run.eval_sets, template, cfg.eval, cfg.trainer.seed)
                metrics.update(eval_metrics)
            run.log_step(metrics, progress)
            if step == cfg.trainer.max_steps or (cfg.trainer.save_every
                                                 and step % cfg.trainer.save_every == 0):
                run.save_checkpoint(cluster, step, rollouts.in_flight())
    return run.write_summary()


def step_record(run: Run, step: int, rollout: Rollout, verdicts: list, train_stats: dict,
                sync: dict, times: tuple[float, ...]) -> dict:
    """One line of metrics.jsonl: what the rollout was, how training went, where time went."""
    t0, t1, t2, t3, t4 = times
    completions = rollout.completions
    lengths = [len(c.response_ids) for c in completions]
    staleness = [step - 1 - c.version for c in completions]  # updates between mu and pi_old
    generate_s = rollout.finished - rollout.started
    return {
        "step": step,
        **rollout_metrics(lengths, [v.reward for v in verdicts],
                          [c.truncated for c in completions],
                          [v.timed_out or v.crashed for v in verdicts],
                          [v.formatted for v in verdicts]),
        **train_stats,
        "staleness/mean": sum(staleness) / len(staleness), "staleness/max": max(staleness),
        "time/step_s": t4 - t0, "time/generate_s": generate_s, "time/reward_s": t2 - t1,
        "time/train_s": t3 - t2, "time/weight_sync_s": t4 - t3,
        # Learners idle: until the rollout was sampled and graded, and in the sync until the
        # generators finished what they were sampling (sending waits for them to receive).
        "time/learner_wait_s": t2 - t0 + max(0.0, sync["send_s"] - sync["receive_s"]),
        "time/generator_wait_s": rollout.generator_wait_s,
        **{f"weight_sync/{k}": v for k, v in sync.items()},
        "tokens_per_s": sum(lengths) / max(generate_s, 1e-9),
        "faults/run_restarts": len(run.state.restarts),
        "timeline": {phase: [run.clock(a), run.clock(b)] for phase, a, b in (
            ("generate", rollout.started, rollout.finished), ("reward", t1, t2),
            ("train", t2, t3), ("weight_sync", t3, t4))},
    }


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv, prog="python -m launch.train")
    try:
        train(cfg)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunError as err:  # an actor failed, or the cluster cannot hold the run
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # vLLM's CPU engine spawns processes that re-import __main__
    sys.exit(main())
