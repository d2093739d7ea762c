"""The project's own training runs, for the `step` and `overhead` parts.

A run is `launch.train` on the demo config (evaluation off, metrics.jsonl only), in a fresh
process, as `python -m launch.train` runs it. After it, the same process reads Ray's timeline of
the session: when each actor call (generate, grade, train, send/receive weights) executed
inside its actor. metrics.jsonl has the driver's phase times (time/{generate,reward,train,
weight_sync}_s, which add up to time/step_s); the timeline has the actors' own, and what the
driver's time has beyond them is orchestration: Ray calls, (de)serialisation, driver work.

Runs are kept in the suite's work folder under a name made of their settings, so the
`overhead` part reads the runs that `step` made in the same suite run instead of repeating them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from benchmarks.common import demo_config, load_avg, part_main, run_child, work_dir

# The actor calls of each phase of a step (launch/cluster.py), as Ray's timeline names them.
PHASES = {
    "generate": ("GeneratorActor.generate",),
    # Many calls a step: the pool hands small chunks to whichever worker is free.
    "reward": ("RewardWorkerActor.judge",),
    "train": ("LearnerActor.train",),
    "weight_sync": ("LearnerActor.send_weights", "GeneratorActor.start_weight_update",
                    "GeneratorActor.update_weights", "GeneratorActor.finish_weight_update"),
}


def project_run(prompts_per_step: int, steps: int, overrides: tuple[str, ...] = (),
                timeline: bool = True) -> dict:
    """{"settings", "steps": [one record per policy step], "load_avg"}; run once per suite.
    `timeline` False skips Ray's timeline (no actor_* times): an asynchronous run's actor
    calls overlap, so they are not one per phase of a step."""
    tag = hashlib.blake2b(repr(overrides).encode(), digest_size=4).hexdigest()
    folder = work_dir() / f"project_p{prompts_per_step}_s{steps}_{tag}"
    done = folder / "bench.json"
    if not done.is_file():
        spec = {"prompts_per_step": prompts_per_step, "steps": steps, "overrides": overrides,
                "folder": str(folder), "timeline": timeline}
        result = run_child("benchmarks.project_runs", spec)
        done.write_text(json.dumps(result, indent=2))
    return json.loads(done.read_text())


def measure(spec: dict) -> dict:
    import ray

    from launch.train import train

    folder = Path(spec["folder"])
    cfg = demo_config([
        "--rollout.prompts_per_step", str(spec["prompts_per_step"]),
        "--trainer.max_steps", str(spec["steps"]), "--trainer.eval_every", "0",
        "--trainer.loggers", "[jsonl]", "--trainer.output_dir", str(folder / "run"),
        *spec["overrides"]])
    before = load_avg()
    train(cfg)
    after = load_avg()
    calls = {}
    if spec.get("timeline", True):
        time.sleep(2)  # actors report task events to Ray's GCS once a second
        calls = actor_calls(ray.timeline())
    ray.shutdown()
    shutil.rmtree(folder / "run" / "checkpoints", ignore_errors=True)  # ~1.6 GB, not needed
    metrics = [json.loads(line) for line in
               (folder / "run" / "metrics.jsonl").read_text().splitlines() if line]
    if calls:
        calls = per_step(calls, len(metrics))
    steps = []
    for k, m in enumerate(metrics):
        record = {"step": m["step"], "step_s": m["time/step_s"],
                  "tokens_per_s": m["tokens_per_s"], "reward_mean": m["reward/mean"],
                  "response_tokens_mean": m["response_length/mean"],
                  # The asynchronous pipeline's figures (issue 11) and the weight sync's parts.
                  **{key.removeprefix("time/"): m[key] for key in
                     ("time/generator_wait_s", "time/learner_wait_s") if key in m},
                  **{key: m[key] for key in ("staleness/mean", "staleness/max") if key in m},
                  **{key: v for key, v in m.items() if key.startswith("weight_sync/")}}
        for phase, methods in PHASES.items():
            record[f"{phase}_s"] = m[f"time/{phase}_s"]
            if not calls:
                continue
            # Several actors (or calls) of one phase run at once: its actor time is their union.
            spans = [span for method in methods for span in calls[method][k]]
            record[f"actor_{phase}_s"] = (max(e for _, e in spans) - min(s for s, _ in spans))
        steps.append(record)
    return {"settings": {"prompts_per_step": cfg.rollout.prompts_per_step,
                         "samples_per_prompt": cfg.rollout.samples_per_prompt,
                         "max_new_tokens": cfg.rollout.max_new_tokens,
                         "train_batch_size": cfg.learner.train_batch_size,
                         "micro_batch_size": cfg.learner.micro_batch_size,
                         "dtype": cfg.model.dtype,
                         "generation_dtype": cfg.model.rollout_dtype,
                         "max_staleness": cfg.rollout.max_staleness,
                         "generator_cores": cfg.cluster.generator_cores,
                         "learner_cores": cfg.cluster.learner_cores,
                         "overrides": list(spec["overrides"])},
            "steps": steps, "load_avg": {"before": before, "after": after}}


def per_step(calls: dict[str, list[tuple[float, float]]], steps: int) -> dict[str, list[list]]:
    """{method: [the spans of its calls in step k, for each k]}. Every method but the
    grader's is called once a step; the grader's calls of step k are the ones between the
    end of step k's generation and the start of its training (a synchronous run's phases
    follow each other)."""
    out = {}
    for method, spans in calls.items():
        if method in PHASES["reward"]:
            continue
        if len(spans) != steps:
            raise RuntimeError(f"Ray's timeline has {len(spans)} {method} calls for {steps} steps")
        out[method] = [[span] for span in spans]
    (generate,), (train,) = PHASES["generate"], PHASES["train"]
    for method in PHASES["reward"]:
        out[method] = [[span for span in calls[method]
                        if gen[0][1] <= span[0] and span[1] <= tr[0][0]]
                       for gen, tr in zip(out[generate], out[train])]
        missing = [k + 1 for k, spans in enumerate(out[method]) if not spans]
        if missing:
            raise RuntimeError(f"Ray's timeline has no {method} calls in step(s) {missing}")
    return out


def actor_calls(events: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """{"Class.method": [(start_s, end_s) of each call's execution, in call order]} for the
    methods in PHASES. Ray's timeline has one event per call (argument deserialisation,
    execution, storing the result) and, nested in it on the same worker, its execution alone."""
    wanted = {m for methods in PHASES.values() for m in methods}
    executes: dict[tuple, list[dict]] = {}
    for e in events:
        if e.get("cat") == "task:execute":
            executes.setdefault((e.get("pid"), e.get("tid")), []).append(e)
    calls: dict[str, list[tuple[float, float]]] = {m: [] for m in wanted}
    for e in events:
        method = str(e.get("cat", "")).removeprefix("task::")
        if method not in wanted:
            continue
        start, end = e["ts"], e["ts"] + e["dur"]
        inner = [x for x in executes.get((e.get("pid"), e.get("tid")), [])
                 if start <= x["ts"] and x["ts"] + x["dur"] <= end]
        if len(inner) != 1:
            raise RuntimeError(f"Ray's timeline: {len(inner)} executions inside one {method} call")
        calls[method].append((inner[0]["ts"] / 1e6, (inner[0]["ts"] + inner[0]["dur"]) / 1e6))
    return {m: sorted(spans) for m, spans in calls.items()}


def main(argv: list[str] | None = None) -> int:
    return part_main(None, "benchmarks.project_runs", __doc__, argv, measure=measure)


if __name__ == "__main__":  # vLLM's CPU engine spawns processes that re-import __main__
    sys.exit(main())
