"""Learner throughput and padding: micro-batches of a fixed count vs a token budget.

    python benchmarks/padding.py [--quick] [--output padding.json]

What runs is the learner itself (`actors.learner.LearnerActor`, without Ray): FSDP2 at world
size 1 over gloo, its `train` on one rollout, exactly as a Ray learner runs it (old log-probs
of the later optimizer steps first, then forward, backward and an optimizer step per step).
The rollout has the shape of the paper's: response lengths lognormal around a median with a
long tail, cut at 8x the median (where max_new_tokens would cut them), seeded. The model is a
random-init Qwen2 built by demo/tiny.py, wide enough that matmuls, not Python, dominate.

Three layouts train the same rollout in one process, taking turns, so a change in the
machine's load hits all of them: `micro_batch_size` responses a pass in rollout order (the
baseline); `max_tokens_per_micro_batch` = the longest possible sequence (longest prompt +
max_new_tokens), the rule the paper configs follow (the figures); and a budget of the
baseline's own worst-case pass, micro_batch_size x that (`wide_budget_*`): no pass may hold
more tokens than the baseline's may, and greedy packing fills those wide passes, so they
span a wider range of lengths and carry more padding, in fewer passes.
Learner tokens/s counts real response tokens (padding and prompts excluded) per second of
`train` (median over the timed rounds), and per second of the process's CPU time, which other
people's processes on a shared machine disturb far less; the padding fraction is the
learner's own count (`learner/padding_fraction` of a run). torch runs on one thread: on a
busy machine a multi-threaded op waits at each barrier for a thread that was scheduled out,
which charges a layout for its number of ops, not for its work (measured on 2 shared cores,
load average 7 to 29: on 2 threads the 24-pass layout with 5% padding ran at 0.48x the tokens/s
of the 8-pass baseline with 56%; on one thread, at 1.66x). The load average is reported with
the figures; on a shared machine they are indicative.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run from a checkout without installing the project.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    # hidden 256 x 4 layers (2.9M parameters): on one thread a pass costs about 20 ms of Python
    # and FSDP plus 0.3 ms per token (measured), so work, not overhead, sets the time.
    "full": dict(hidden_size=256, num_layers=4, num_heads=4, responses=64, train_batch_size=32,
                 median=64, prompt=(30, 90), micro_batch_size=8, warmup=1, repeats=3),
    "quick": dict(hidden_size=64, num_layers=2, num_heads=2, responses=16, train_batch_size=8,
                  median=16, prompt=(8, 24), micro_batch_size=4, warmup=1, repeats=1),
}
LAYOUTS = ("count", "tokens", "wide_budget")


def rollout(n: int, median: int, prompt: tuple[int, int], seed: int = 0):
    """Prompt lengths uniform in `prompt`, response lengths lognormal (sigma 1, so the mean is
    1.6x the median and 2% reach the cap) cut at 8x the median; advantages +-1 (none is
    skipped, so every layout trains every response)."""
    from drgrpo.batching import Sample

    rng = random.Random(seed)
    return [Sample([rng.randrange(3, 300) for _ in range(rng.randint(*prompt))],
                   [rng.randrange(3, 300) for _ in
                    range(max(1, min(8 * median, round(median * rng.lognormvariate(0, 1)))))],
                   1.0 if i % 2 else -1.0) for i in range(n)]


def measure(job: dict) -> dict:
    """In a child process (its own gloo group): every layout on one learner, in turns."""
    import torch
    import torch.distributed as dist
    from transformers.utils import logging as hf_logging

    from actors.learner import LearnerActor
    from benchmarks.common import free_port
    from demo.tiny import build_tiny_model
    from drgrpo.batching import micro_batches, plan_steps
    from drgrpo.config_load import load_config

    hf_logging.disable_progress_bar()
    c = job["config"]
    model = build_tiny_model(Path(job["folder"]) / "model", hidden_size=c["hidden_size"],
                             num_layers=c["num_layers"], num_heads=c["num_heads"])
    samples = rollout(c["responses"], c["median"], tuple(c["prompt"]))
    longest = c["prompt"][1] + 8 * c["median"]
    budgets = {"count": None, "tokens": longest, "wide_budget": c["micro_batch_size"] * longest}
    base = load_config(None, [f"--{k}={v}" for k, v in {
        "model.path": model, "model.dtype": "float32", "data.train_path": "unused",
        "rollout.prompts_per_step": c["responses"] // 8, "rollout.samples_per_prompt": 8,
        "rollout.max_new_tokens": 8 * c["median"], "learner.lr": 1e-6,
        "learner.train_batch_size": c["train_batch_size"],
        "learner.micro_batch_size": c["micro_batch_size"],
        "learner.gradient_checkpointing": False, "cluster.device": "cpu",
        "trainer.output_dir": job["folder"]}.items()])
    layouts = {name: base.model_copy(update={"learner": base.learner.model_copy(
        update={"max_tokens_per_micro_batch": budget})}) for name, budget in budgets.items()}
    learner = LearnerActor(base, 0, 1, "127.0.0.1", free_port(), "cpu")
    torch.set_num_threads(1)  # after the learner, which sets its own count (see the docstring)
    steps = plan_steps(samples, c["train_batch_size"], 1, seed=0)[0]

    seconds: dict[str, list[float]] = {name: [] for name in layouts}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in layouts}
    stats: dict[str, dict] = {}
    for repeat in range(c["warmup"] + c["repeats"]):  # warm-up rounds are not timed
        # Each round starts with another layout, so none is always the one after a warm-up.
        for name in LAYOUTS[repeat % 3:] + LAYOUTS[:repeat % 3]:
            cfg = layouts[name]
            learner.cfg = cfg  # the layout is read at each `train`; the model stays the same
            cpu_start = time.process_time()
            stats[name] = learner.train(steps)
            if repeat >= c["warmup"]:
                seconds[name].append(stats[name]["seconds"])
                cpu_seconds[name].append(time.process_time() - cpu_start)
    dist.destroy_process_group()

    response_tokens = sum(len(s.response_ids) for s in samples)
    out = {}
    for name, cfg in layouts.items():
        median = statistics.median(seconds[name])
        out[name] = {
            "tokens_per_s": response_tokens / median,
            "tokens_per_cpu_s": response_tokens / statistics.median(cpu_seconds[name]),
            "padding_fraction": stats[name]["padded_positions"] / stats[name]["positions"],
            "passes_per_rollout": sum(len(micro_batches(step, cfg.learner.micro_batch_size,
                                                        cfg.learner.max_tokens_per_micro_batch))
                                      for step in steps),
            "median_train_s": median,
        }
    params = sum(p.numel() for p in learner.backend.module.parameters())
    out["setup"] = {"parameters": params, "responses": len(samples),
                    "response_tokens": response_tokens,
                    "median_response_tokens": statistics.median(len(s.response_ids)
                                                                for s in samples),
                    "max_response_tokens": max(len(s.response_ids) for s in samples),
                    "optimizer_steps": len(steps), "micro_batch_size": c["micro_batch_size"],
                    "max_tokens_per_micro_batch": budgets["tokens"],
                    "wide_budget_max_tokens": budgets["wide_budget"],
                    "timed_repeats": c["repeats"]}
    return out


def run(quick: bool) -> dict:
    """The three layouts side by side; `quick` is a seconds-long run of the same code."""
    from benchmarks.common import child

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        job = {"config": CONFIGS["quick" if quick else "full"], "folder": folder}
        result = child([__file__, "--child", json.dumps(job)])
    load_end = os.getloadavg()
    tokens, count, wide = result["tokens"], result["count"], result["wide_budget"]
    return {
        "name": "padding",
        "figures": {**tokens, **{f"wide_budget_{k}": v for k, v in wide.items()},
                    **result["setup"], "quick": quick,
                    "load_avg_1m_start": load_start[0], "load_avg_1m_end": load_end[0],
                    "load_avg_15m_end": load_end[2], "cpu_count": os.cpu_count()},
        "baseline": count,
        "ratios": {"tokens_per_s": tokens["tokens_per_s"] / count["tokens_per_s"],
                   "padding_fraction": tokens["padding_fraction"] / count["padding_fraction"],
                   "tokens_per_cpu_s": tokens["tokens_per_cpu_s"] / count["tokens_per_cpu_s"],
                   "passes_per_rollout": tokens["passes_per_rollout"]
                   / count["passes_per_rollout"],
                   "wide_budget_tokens_per_s": wide["tokens_per_s"] / count["tokens_per_s"],
                   "wide_budget_tokens_per_cpu_s": wide["tokens_per_cpu_s"]
                   / count["tokens_per_cpu_s"]},
    }


def main() -> None:
    from benchmarks.common import save_json, script_parser

    parser = script_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny model, 16 responses")
    args = parser.parse_args()
    if args.child:
        args.result.write_text(json.dumps(measure(json.loads(args.child))))
        return
    started = time.perf_counter()
    result = run(args.quick)
    save_json(args.output, result)
    f, b = result["figures"], result["baseline"]
    print(f"{f['parameters'] / 1e6:.1f}M-parameter Qwen2, {f['responses']} responses "
          f"(median {f['median_response_tokens']:g}, longest {f['max_response_tokens']} response "
          f"tokens), {f['optimizer_steps']} optimizer steps; load average "
          f"{f['load_avg_1m_start']:.2f} -> {f['load_avg_1m_end']:.2f} on {f['cpu_count']} CPUs\n")
    print("| micro-batches | learner tokens/s | tokens per CPU-s | padding fraction "
          "| passes per rollout |")
    print("|---|---:|---:|---:|---:|")
    wide = {k.removeprefix("wide_budget_"): v for k, v in f.items()
            if k.startswith("wide_budget_")}
    for label, r in ((f"{f['micro_batch_size']} responses (baseline)", b),
                     (f"<= {f['max_tokens_per_micro_batch']} tokens (longest sequence)", f),
                     (f"<= {f['wide_budget_max_tokens']} tokens (baseline's largest)", wide)):
        print(f"| {label} | {r['tokens_per_s']:,.0f} | {r['tokens_per_cpu_s']:,.0f} | "
              f"{r['padding_fraction']:.1%} | "
              f"{r['passes_per_rollout']} |")
    q = result["ratios"]
    print(f"\nover the baseline, tokens/s: {q['tokens_per_s']:.2f}x (longest sequence), "
          f"{q['wide_budget_tokens_per_s']:.2f}x (baseline's largest); tokens per CPU-s: "
          f"{q['tokens_per_cpu_s']:.2f}x, {q['wide_budget_tokens_per_cpu_s']:.2f}x "
          f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
