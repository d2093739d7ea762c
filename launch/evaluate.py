"""Benchmark evaluation: generation on the vLLM generators, grading on the reward pool.

`evaluate` is the one code path used both by periodic evaluation during training and by the
command line; it returns `eval/<benchmark>/accuracy` metrics and one record per generation.
"""

from __future__ import annotations

from actors.generator import Sampling
from drgrpo.config import EvalConfig
from drgrpo.data import Problem
from drgrpo.templates import apply_template, stop_strings


def evaluate(cluster, benchmarks: dict[str, list[Problem]], template: str, eval_cfg: EvalConfig,
             seed: int) -> tuple[dict, list[dict]]:
    """pass@1 averaged over `eval_cfg.samples` responses per problem (avg@K), per benchmark."""
    sampling = Sampling(eval_cfg.temperature, 1.0, eval_cfg.max_new_tokens,
                        tuple(stop_strings(template)), seed)
    metrics: dict[str, float] = {}
    records: list[dict] = []
    for name, problems in benchmarks.items():
        prompts = [apply_template(template, p.question) for p in problems]
        groups = cluster.generate(prompts, eval_cfg.samples, sampling)
        completions = [c for group in groups for c in group]
        answers = [p.answer for p in problems for _ in range(eval_cfg.samples)]
        verdicts = cluster.score([c.text for c in completions], answers, template,
                                 [c.truncated for c in completions])
        n = max(len(verdicts), 1)
        metrics[f"eval/{name}/accuracy"] = sum(v.reward for v in verdicts) / n
        metrics[f"eval/{name}/formatted"] = sum(v.formatted for v in verdicts) / n
        metrics[f"eval/{name}/response_length"] = sum(len(c.response_ids) for c in completions) / n
        for i, (c, v) in enumerate(zip(completions, verdicts)):
            p = problems[i // eval_cfg.samples]
            records.append({"benchmark": name, "question": p.question, "answer": p.answer,
                            "response": c.text, "reward": v.reward, "formatted": v.formatted,
                            "truncated": c.truncated, "timed_out": v.timed_out})
    accuracies = [metrics[f"eval/{name}/accuracy"] for name in benchmarks]
    if accuracies:
        metrics["eval/average"] = sum(accuracies) / len(accuracies)
    return metrics, records
