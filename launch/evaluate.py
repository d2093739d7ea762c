"""Benchmark evaluation: generation on the vLLM generators, grading on the reward pool.

    python -m launch.evaluate --model PATH --template qwen_math --data-dir DIR \\
        --benchmarks aime24,amc23,math500,minerva,olympiad_bench --output runs/eval/my-model

`evaluate` is the one code path used both by periodic evaluation during training and by this
command line; it returns `eval/<benchmark>/accuracy` (and friends) plus `eval/average`, and one
record per generation. `grade_groups` is its grading stage, usable with a local `Grader` too.
The command line writes results.json, results.md and generations.jsonl to `--output`; see
docs/evaluation.md. Bad input stops with one `error:` line (exit 2) before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from actors.generator import Completion, Sampling
from drgrpo.config import EvalConfig
from drgrpo.data import Problem
from drgrpo.seeds import derive_seed
from drgrpo.templates import TEMPLATES, apply_template, stop_strings

PAPER_BENCHMARKS = ("aime24", "amc23", "math500", "minerva", "olympiad_bench")
# Prompts per generator per call, times samples: enough to fill vLLM's running batch
# (max_num_seqs, 256 by default), few enough that the progress bar moves on big benchmarks.
SEQUENCES_PER_CALL = 512
TOP_P = 1.0  # the paper evaluates greedily or with plain temperature sampling


# ---------------------------------------------------------------- grading stage


def _grader_answer(problem: Problem) -> str | list[str]:
    # The grader reads a list as "any of these"; a tuple would be graded as one string.
    return problem.answer if isinstance(problem.answer, str) else list(problem.answer)


def grade_groups(score: Callable, template: str, benchmark: str, problems: list[Problem],
                 groups: list[list[Completion]], first_index: int = 0) -> list[dict]:
    """One record per completion; groups[i] are the samples for problems[i].

    `score` is `cluster.score` (the reward pool) or `Grader.grade`: both take (responses,
    answers, template, truncated) and return one `Verdict` per response, in order.
    """
    if len(groups) != len(problems):
        raise ValueError(f"{len(groups)} groups of completions for {len(problems)} problems")
    items = [(i, j, p, c) for i, (p, group) in enumerate(zip(problems, groups))
             for j, c in enumerate(group)]
    verdicts = score([c.text for *_, c in items], [_grader_answer(p) for _, _, p, _ in items],
                     template, [c.truncated for *_, c in items])
    return [{"benchmark": benchmark, "index": first_index + i, "sample": j,
             "question": p.question, "answer": _grader_answer(p), "response": c.text,
             "reward": v.reward, "formatted": v.formatted, "truncated": c.truncated,
             "timed_out": v.timed_out, "crashed": v.crashed,
             "response_length": len(c.response_ids)}
            for (i, j, p, c), v in zip(items, verdicts)]


def summarize(records: list[dict]) -> dict:
    """Per-benchmark figures: means over responses (avg@K), counts of grader failures."""
    n = max(len(records), 1)
    return {
        "accuracy": sum(r["reward"] for r in records) / n,
        "formatted": sum(r["formatted"] for r in records) / n,
        "response_length": sum(r["response_length"] for r in records) / n,
        "truncated": sum(r["truncated"] for r in records) / n,
        "timeouts": sum(r["timed_out"] for r in records),
        "crashed": sum(r["crashed"] for r in records),
    }


def evaluate(cluster, benchmarks: dict[str, list[Problem]], template: str, eval_cfg: EvalConfig,
             seed: int, *, progress: bool = False) -> tuple[dict, list[dict]]:
    """pass@1 averaged over `eval_cfg.samples` responses per problem (avg@K), per benchmark."""
    from tqdm import tqdm

    sampling = Sampling(eval_cfg.temperature, TOP_P, eval_cfg.max_new_tokens,
                        tuple(stop_strings(template)), seed)
    k = eval_cfg.samples
    step = max(1, SEQUENCES_PER_CALL // k) * max(1, len(cluster.generators))
    metrics: dict[str, float] = {}
    records: list[dict] = []
    for name, problems in benchmarks.items():
        done: list[dict] = []
        with tqdm(total=len(problems) * k, desc=name, unit="resp", disable=not progress,
                  dynamic_ncols=True, file=sys.stderr) as bar:
            for start in range(0, len(problems), step):
                chunk = problems[start:start + step]
                groups = cluster.generate([apply_template(template, p.question) for p in chunk],
                                          k, replace(sampling, seed=derive_seed(seed, name, start)))
                done += grade_groups(cluster.score, template, name, chunk, groups, start)
                bar.update(len(chunk) * k)
                bar.set_postfix(accuracy=f"{summarize(done)['accuracy']:.3f}")
        metrics.update({f"eval/{name}/{key}": v for key, v in summarize(done).items()})
        records += done
    accuracies = [metrics[f"eval/{name}/accuracy"] for name in benchmarks]
    if accuracies:
        metrics["eval/average"] = sum(accuracies) / len(accuracies)
    return metrics, records


# ---------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other input error
        self.exit(2, f"error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m launch.evaluate",
                description="Evaluate a model on math benchmarks (avg@K accuracy).")
    p.add_argument("--model", required=True, help="Hugging Face model folder (or hub name)")
    p.add_argument("--template", choices=TEMPLATES, default="qwen_math")
    p.add_argument("--benchmarks", default=",".join(PAPER_BENCHMARKS),
                   help="comma-separated names; NAME is read from DATA_DIR/NAME.jsonl")
    p.add_argument("--data-dir", default="data/eval", help="folder of NAME.jsonl files")
    p.add_argument("--samples", type=_positive_int, default=1, help="responses per problem (K)")
    p.add_argument("--temperature", type=_temperature, default=0.0, help="0 = greedy")
    p.add_argument("--max-new-tokens", type=_positive_int, default=3000)
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="evaluate only the first N problems of each benchmark")
    p.add_argument("--output", default=None,
                   help="output folder (default runs/eval/<model name>-<template>)")
    p.add_argument("--num-generators", type=_positive_int, default=1,
                   help="vLLM engines (one GPU each on cuda)")
    p.add_argument("--num-reward-workers", type=_positive_int, default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                   help="vLLM's dtype; auto = bfloat16, or float32 on a CPU without bfloat16 "
                        "arithmetic (drgrpo/precision.py)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--generate-timeout-s", type=_positive_float, default=1800.0,
                   help="a generator that has not answered a call this long is restarted "
                        "and its prompts sampled again (as cluster.generate_timeout_s)")
    return p


@dataclass
class Job:
    """Validated input: everything the run needs, checked before Ray starts."""
    model: str
    template: str
    benchmarks: dict[str, list[Problem]]
    eval_cfg: EvalConfig
    max_model_len: int
    output: Path
    settings: dict


def _read_benchmarks(data_dir: Path, names: list[str], limit: int | None) -> dict:
    from drgrpo.data import DataError, load_problems
    from launch.run import InputError

    if not data_dir.is_dir():
        raise InputError(f"--data-dir: {data_dir} is not a folder")
    known = sorted(p.stem for p in data_dir.glob("*.jsonl"))
    if not names:
        raise InputError("--benchmarks: no benchmark named")
    benchmarks = {}
    for name in names:
        path = data_dir / f"{name}.jsonl"
        if not path.is_file():
            raise InputError(f"--benchmarks: unknown benchmark {name!r} (no {path}); "
                             f"benchmarks in {data_dir}: {', '.join(known) or 'none'}")
        try:  # the whole file, so a bad row is reported even past --limit
            benchmarks[name] = load_problems(path)[:limit]
        except DataError as err:
            raise InputError(str(err)) from None
    return benchmarks


def _max_model_len(args, benchmarks: dict, tokenizer) -> int:
    """Longest prompt + max_new_tokens, capped at the model's context as the paper's 4096 is:
    vLLM then stops a long prompt's response at the context end (finish reason "length")."""
    from transformers import AutoConfig

    from launch.run import InputError

    try:
        config = AutoConfig.from_pretrained(args.model)
    except Exception as err:  # transformers raises many types; the user needs one line
        raise InputError(f"--model: cannot read the config of {args.model}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else err!r}"
                         ) from None
    context = getattr(config, "max_position_embeddings", None)
    longest, where = 0, ""
    for name, problems in benchmarks.items():
        for i, p in enumerate(problems):
            n = len(tokenizer(apply_template(args.template, p.question)).input_ids)
            if n > longest:
                longest, where = n, f"{name} problem {i}"
    if context and longest >= context:
        raise InputError(f"{where}: the prompt is {longest} tokens, which leaves no room "
                         f"in the model's context of {context}")
    needed = longest + args.max_new_tokens
    return min(needed, context) if context else needed


def prepare(args: argparse.Namespace) -> Job:
    """Every check on user input; raises launch.run.InputError. Starts nothing, writes nothing."""
    from launch.run import InputError, _load_tokenizer

    names = list(dict.fromkeys(n.strip() for n in args.benchmarks.split(",") if n.strip()))
    data_dir = Path(args.data_dir)
    benchmarks = _read_benchmarks(data_dir, names, args.limit)
    output = Path(args.output or f"runs/eval/{Path(args.model).name or 'model'}-{args.template}")
    if output.exists() and not output.is_dir():
        raise InputError(f"--output: {output} exists and is not a folder")
    existing = next(d for d in [output, *output.absolute().parents] if d.exists())
    if not os.access(existing, os.W_OK):  # found now, not after hours of generation
        raise InputError(f"--output: cannot write to {existing}")
    try:
        tokenizer = _load_tokenizer(args.model, trust_remote_code=False)
    except InputError as err:
        raise InputError(str(err).replace("model.path:", "--model:", 1)) from None
    max_model_len = _max_model_len(args, benchmarks, tokenizer)
    eval_cfg = EvalConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                          samples=args.samples, limit=args.limit)
    settings = {
        "model": args.model, "template": args.template, "benchmarks": names,
        "data_files": {n: str(data_dir / f"{n}.jsonl") for n in names},
        "samples": args.samples, "temperature": args.temperature, "top_p": TOP_P,
        "max_new_tokens": args.max_new_tokens, "max_model_len": max_model_len,
        "limit": args.limit, "seed": args.seed, "dtype": args.dtype, "device": args.device,
        "num_generators": args.num_generators, "num_reward_workers": args.num_reward_workers,
        "generate_timeout_s": args.generate_timeout_s,
    }
    return Job(args.model, args.template, benchmarks, eval_cfg, max_model_len, output, settings)


def run(job: Job) -> tuple[dict, list[dict]]:
    """Start the generators and reward workers, evaluate, shut them down."""
    import ray

    from drgrpo.config import ClusterConfig
    from drgrpo.precision import AUTO, native_dtype
    from launch.inference import InferenceCluster

    kwargs = {"log_to_driver": os.environ.get("DRGRPO_RAY_LOGS", "0") == "1"}
    if "RAY_ADDRESS" not in os.environ:  # else join that cluster (e.g. under ray job submit)
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)
    try:
        device = ClusterConfig(device=job.settings["device"]).resolve_device(
            ray.cluster_resources())
        job.settings["device"] = device
        if job.settings["dtype"] == AUTO:
            job.settings["dtype"] = native_dtype(device)
        cluster = InferenceCluster(
            job.model, dtype=job.settings["dtype"], device=device,
            num_generators=job.settings["num_generators"],
            num_reward_workers=job.settings["num_reward_workers"],
            max_model_len=job.max_model_len, seed=job.settings["seed"],
            generate_timeout_s=job.settings["generate_timeout_s"])
        try:
            start = time.perf_counter()
            metrics, records = evaluate(cluster, job.benchmarks, job.template, job.eval_cfg,
                                        job.settings["seed"], progress=True)
            wall = time.perf_counter() - start
        finally:
            cluster.shutdown()
    finally:
        ray.shutdown()
    per = {}
    for name, problems in job.benchmarks.items():
        m = {key.rsplit("/", 1)[1]: v for key, v in metrics.items()
             if key.startswith(f"eval/{name}/")}
        per[name] = {"accuracy": m["accuracy"], "problems": len(problems),
                     "samples": job.eval_cfg.samples,
                     "responses": len(problems) * job.eval_cfg.samples,
                     "mean_response_length": m["response_length"], "formatted": m["formatted"],
                     "truncated": m["truncated"], "timeouts": m["timeouts"],
                     "grader_crashes": m["crashed"]}
    results = {"benchmarks": per, "average": metrics.get("eval/average"),
               "settings": job.settings, "eval_seconds": wall}
    return results, records


def results_table(results: dict) -> str:
    """Markdown: one row per benchmark, then the unweighted average, percentages as the paper."""
    s = results["settings"]
    lines = [f"Model `{s['model']}`, template `{s['template']}`, avg@{s['samples']}, "
             f"temperature {s['temperature']:g}, up to {s['max_new_tokens']} new tokens.", "",
             "| Benchmark | Accuracy (%) | Problems | Samples | Mean length | Formatted (%) "
             "| Truncated (%) | Timeouts |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, b in results["benchmarks"].items():
        lines.append(f"| {name} | {100 * b['accuracy']:.1f} | {b['problems']} | {b['samples']} "
                     f"| {b['mean_response_length']:.0f} | {100 * b['formatted']:.1f} "
                     f"| {100 * b['truncated']:.1f} | {b['timeouts']} |")
    lines.append(f"| **Average** | {100 * (results['average'] or 0):.1f} | | | | | | |")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


def write_outputs(output: Path, results: dict, records: list[dict]) -> str:
    output.mkdir(parents=True, exist_ok=True)
    table = results_table(results)
    _write_atomic(output / "generations.jsonl",
                  "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _write_atomic(output / "results.md", table)
    _write_atomic(output / "results.json", json.dumps(results, indent=2) + "\n")  # last: done
    return table


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from actors.failures import RunError
    from launch.run import InputError

    try:
        job = prepare(args)
        results, records = run(job)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunError as err:  # an actor failed, or the cluster cannot hold the generators
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(write_outputs(job.output, results, records), end="")
    print(f"wrote {job.output}/results.json, results.md, generations.jsonl", file=sys.stderr)
    return 0


if __name__ == "__main__":  # vLLM's CPU engine spawns processes that re-import __main__
    sys.exit(main())
