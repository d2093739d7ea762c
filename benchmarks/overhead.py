"""The project's orchestration overhead: the share of a step spent outside the actors' work.

    python -m benchmarks.overhead [--quick]

From the project runs of the `step` part (the same ones, when the suite ran `step` first): per
policy step, the driver's time/step_s minus the time the actors spent executing generate,
grade, train and the weight sync (from Ray's timeline; benchmarks/project_runs.py). What is
left is Ray calls, argument and result (de)serialisation, and the driver's own work (advantages,
batching, metrics). The driver's phase times add up to the step by construction, so the
overhead is the driver's time in each phase beyond its actors'.
"""

from __future__ import annotations

import json
import sys

from benchmarks.common import median, part_main, target, work_dir
from benchmarks.project_runs import PHASES, project_run
from benchmarks.step import PROMPTS, precisions, project_steps

TARGET = 0.05  # issue 10: overhead <= 5% of the step


def overhead(steps: list[dict]) -> dict:
    """Median overhead share and seconds, and each phase's part of it, after the warm-up step."""
    timed = steps[1:]
    shares, seconds = [], []
    per_phase = {phase: [] for phase in PHASES}
    for s in timed:
        extra = {p: s[f"{p}_s"] - s[f"actor_{p}_s"] for p in PHASES}
        for p, v in extra.items():
            per_phase[p].append(v)
        seconds.append(s["step_s"] - sum(s[f"actor_{p}_s"] for p in PHASES))
        shares.append(seconds[-1] / s["step_s"])
    return {"share_median": median(shares), "seconds_median": median(seconds),
            "step_s_median": median([s["step_s"] for s in timed]), "timed_steps": len(timed),
            **{f"{p}_extra_s_median": median(v) for p, v in per_phase.items()}}


def run(quick: bool) -> dict:
    figures, targets = {}, {}
    for precision, sides in precisions(quick).items():
        base = project_run(PROMPTS, project_steps(quick), sides["project"])
        figures[precision] = overhead(base["steps"])
        targets[f"overhead_share_{precision}"] = target(figures[precision]["share_median"],
                                                        "<=", TARGET)
        # The bigger rollouts, where the `step` part ran them in this suite run.
        for folder in sorted(work_dir().glob("project_p*/bench.json")):
            other = json.loads(folder.read_text())
            p = other["settings"]["prompts_per_step"]
            if p != PROMPTS and other["settings"]["overrides"] == list(sides["project"]):
                figures[f"{precision}_x{p // PROMPTS}"] = overhead(other["steps"])
    return {
        "name": "overhead", "figures": figures, "baseline": {}, "ratios": {},
        "targets": targets,
        "notes": [
            "overhead = time/step_s - (actor time in generate + grade + train + weight sync), "
            "actor time = the calls' execution inside the actors per Ray's timeline; "
            "<phase>_extra_s = the driver's time in that phase beyond its actors'",
            "the same project runs as the step part (its figures' load averages apply)",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    return part_main(run, "benchmarks.overhead", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
