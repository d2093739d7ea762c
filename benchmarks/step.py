"""One policy step: the project (launch.train on the demo config) vs TRL's GRPOTrainer.

    python -m benchmarks.step [--quick]

Both sides train SmolLM2-135M-Instruct on the demo's arithmetic task, 4 prompts x 8 samples x
at most 64 new tokens per step, one optimizer step per rollout (micro-batches of 8),
temperature 0.5, AdamW lr 1e-5, clip 0.2, Dr. GRPO loss without KL, graded by drgrpo's grader.
The project's phase times come from its metrics.jsonl (time/step_s, generate, reward, train,
weight_sync), TRL's from its own methods (benchmarks/trl_grpo.py). The first step of each is
a warm-up; the figures are medians over the rest, and each phase's share is its total over the
step's total. The project also runs at 2x, 4x and 8x the prompts per step (quick: 2x), the
other settings unchanged (train_batch_size 32: a bigger rollout is more optimizer steps, as
in the paper's runs), so the cost's growth is visible.
"""

from __future__ import annotations

import sys

from benchmarks.common import cpu_dtypes, load_span, median, part_main, target
from benchmarks.project_runs import project_run
from benchmarks.trl_grpo import trl_run

TARGET = 0.5  # issue 10: the project's step <= 0.5 x TRL's
PROMPTS = 4  # the demo's prompts_per_step
SAMPLES = 8  # its samples_per_prompt
# Each side in the same precision: float32 throughout, and, on a CPU with bfloat16 arithmetic
# (AVX-512 BF16 here), each side's best: the project computes and samples in bfloat16 over
# float32 master weights, as the demo does; TRL trains (and generates) under bf16 autocast over
# float32 weights.
PRECISIONS = {
    "bfloat16": {"project": ("--model.dtype", "bfloat16", "--model.generation_dtype", "bfloat16"),
                 "trl": {"bf16": True, "model_dtype": "float32"}},
    "float32": {"project": ("--model.dtype", "float32", "--model.generation_dtype", "float32"),
                "trl": {"bf16": False, "model_dtype": "float32"}},
}


def precisions(quick: bool) -> dict:
    """The settings this CPU computes (common.cpu_dtypes); --quick: the demo's only (bfloat16,
    or float32 on a CPU without bfloat16 arithmetic)."""
    names = cpu_dtypes()[:1] if quick else cpu_dtypes()
    return {name: PRECISIONS[name] for name in names}


def summary(steps: list[dict], phases: tuple[str, ...], responses: int) -> dict:
    """Median step time and each phase's share, over the steps after the warm-up one, and
    the median step time per sampled token: as a run learns, its responses change length
    (the demo's shorten), and the two sides do not learn alike step by step."""
    timed = steps[1:]
    total = sum(s["step_s"] for s in timed)
    out = {"step_s_median": median([s["step_s"] for s in timed]), "timed_steps": len(timed),
           "ms_per_response_token_median": median(
               [1000 * s["step_s"] / (responses * s["response_tokens_mean"]) for s in timed]),
           # What the rollouts held: both sides should be doing comparable work.
           "reward_mean": sum(s["reward_mean"] for s in timed) / len(timed),
           "response_tokens_mean": sum(s["response_tokens_mean"] for s in timed) / len(timed)}
    for phase in phases:
        out[f"{phase}_s_median"] = median([s[f"{phase}_s"] for s in timed])
        out[f"{phase}_share"] = sum(s[f"{phase}_s"] for s in timed) / total
    return out


def project_steps(quick: bool) -> int:
    return 3 if quick else 11  # a warm-up step, then 2 (quick) or 10 timed ones


def run(quick: bool) -> dict:
    steps = project_steps(quick)
    # --quick: TRL's warm-up step and one timed step (its steps take twice the project's), and
    # no bigger rollouts, so the whole suite's quick run stays within minutes on 2 cores.
    trl_steps = 2 if quick else steps
    scales = () if quick else (2, 4, 8)
    figures, baseline, ratios, targets, settings, failures = {}, {}, {}, {}, {}, []
    for precision, sides in precisions(quick).items():
        mine = project_run(PROMPTS, steps, sides["project"])
        theirs = trl_run(trl_steps, sides["trl"])
        figures[precision] = summary(mine["steps"], ("generate", "reward", "train", "weight_sync"),
                                     PROMPTS * SAMPLES)
        figures[precision]["load_avg_before_after"] = load_span(mine)
        baseline[precision] = summary(theirs["steps"],
                                      ("generate", "reward", "rollout_other", "train"),
                                      PROMPTS * SAMPLES)
        baseline[precision]["load_avg_before_after"] = load_span(theirs)
        ratio = figures[precision]["step_s_median"] / baseline[precision]["step_s_median"]
        ratios[f"project_vs_trl_step_{precision}"] = ratio
        targets[f"project_vs_trl_step_{precision}"] = target(ratio, "<=", TARGET)
        ratios[f"project_vs_trl_ms_per_token_{precision}"] = (
            figures[precision]["ms_per_response_token_median"]
            / baseline[precision]["ms_per_response_token_median"])
        settings[precision] = {"project": mine["settings"], "trl": theirs["settings"]}
        for scale in scales:
            # Fewer steps at the bigger sizes: a warm-up and 3 timed ones.
            try:
                big = project_run(PROMPTS * scale, 4, sides["project"])
            except RuntimeError as err:  # the project failing at a size is a result too
                failures.append(f"{precision} x{scale} ({PROMPTS * scale} prompts per step): "
                                f"the project's run failed: {last_error(str(err))}")
                continue
            s = summary(big["steps"], ("generate", "reward", "train", "weight_sync"),
                        PROMPTS * scale * SAMPLES)
            s["load_avg_before_after"] = load_span(big)
            figures[f"{precision}_x{scale}"] = s
            ratios[f"step_x{scale}_vs_x1_{precision}"] = (s["step_s_median"]
                                                           / figures[precision]["step_s_median"])
    return {
        "name": "step", "figures": figures, "baseline": baseline, "ratios": ratios,
        "targets": targets,
        "notes": [
            f"figures = the project (launch.train, demo config), {steps - 1} timed steps after "
            "a warm-up; _xN = N times the prompts per step (N x 32 responses), other settings "
            f"unchanged; baseline = TRL 1.16 GRPOTrainer, same prompts in the same order, "
            f"{trl_steps - 1} timed step(s) after a warm-up",
            *[f"TRL, {precision}: " + ", ".join(f"{k}={v}" for k, v in side["trl"].items())
              for precision, side in settings.items()],
            "TRL generates with transformers on the policy (its CPU default), so it has no "
            "weight sync; its rollout_other is the rest of its rollout (tokenising, decoding, "
            "advantages), its train the step minus the rollout",
            "the project skips responses whose advantage is 0 (their group all alike) in "
            "training, as it always does; TRL trains all 32",
            "ms_per_response_token: step time over the responses' sampled tokens, per step; "
            "the sides learn differently step by step (response lengths, groups all alike), "
            "so this ratio is the one that compares equal work",
            "load_avg_before_after: 1-minute load average when the run started and ended",
            *failures,
        ],
    }


def last_error(output: str) -> str:
    """The line of a failed run's output that says what failed (its last error line)."""
    lines = [line.strip() for line in output.splitlines() if "Error" in line or "error" in line]
    return lines[-1] if lines else output.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    return part_main(run, "benchmarks.step", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
