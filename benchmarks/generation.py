"""Generation throughput: the project's generator actor vs vLLM's own API vs transformers.

    python -m benchmarks.generation [--quick]

One rollout is the demo's: 4 arithmetic prompts through the qwen_math template, 8 samples
each, at most 64 new tokens, temperature 0.5, SmolLM2-135M-Instruct. Three ways generate it:

- actor: `actors.generator.Generator` on a Ray placement group, created and called as training
  does (`launch.cluster.create_generators`, then `generate.remote` with per-prompt seeds);
- vllm: `vllm.LLM.generate` in this process, on an engine built with the actor's own engine
  arguments (a `GeneratorActor` constructed here, without Ray), the same SamplingParams;
- hf: transformers' `generate`, the 32 prompts left-padded in one batch, sampling with the
  same temperature, top_p 1 and no top-k.

Each variant runs in a process of its own (one model in memory at a time): a warm-up rollout,
then the timed ones, with the load average taken before each. Responses end at EOS as in
training; tokens/s counts the tokens really generated (up to and including EOS), and the mean
response length shows whether the three did comparable work. float32 and bfloat16 (the demo's
setting) both run, float32 alone on a CPU without bfloat16 arithmetic (common.cpu_dtypes).
"""

from __future__ import annotations

import sys
import time

from benchmarks.common import cpu_dtypes, load_avg, median, part_main, run_child, target

VARIANTS = ("actor", "vllm", "vllm_1thread", "hf")
# Ray sets OMP_NUM_THREADS=1 in an actor with a fractional CPU (the generator has 0.25), and
# vLLM's engine processes would inherit it; the actor gives its engine its share of the cores
# instead (actors.generator.share_cpu_threads). vllm_1thread runs vLLM's API with Ray's one
# thread: what that setting costs.
ENV = {"vllm_1thread": {"OMP_NUM_THREADS": "1"}}
TARGET = 0.9  # issue 10: actor tokens/s >= 0.9 x vLLM's own, same dtype


def rollouts(cfg, count: int) -> list[tuple[list[str], object]]:
    """`count` rollouts of `prompts_per_step` prompts from the demo's training set, each with
    the Sampling (seeded per rollout, as training seeds each step) the training loop uses."""
    from dataclasses import replace

    from actors.generator import Sampling
    from drgrpo.data import load_problems
    from drgrpo.seeds import derive_seed
    from drgrpo.templates import apply_template, stop_strings

    k, t = cfg.rollout.prompts_per_step, cfg.data.template
    problems = load_problems(cfg.data.train_path, limit=count * k)
    base = Sampling(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens,
                    tuple(stop_strings(t)))
    return [([apply_template(t, p.question) for p in problems[i * k:(i + 1) * k]],
             replace(base, seed=derive_seed(cfg.trainer.seed, "rollout", i + 1)))
            for i in range(count)]


class Actor:
    def __init__(self, cfg, dtype: str, max_model_len: int):
        import ray

        from launch.cluster import CPU_SHARE, create_generators, reserve

        ray.init(include_dashboard=False, log_to_driver=False)
        pg = reserve({"generators": ([{"CPU": CPU_SHARE}], {})}, 600)["generators"]
        self.gen = create_generators(pg, 1, cfg.model.path, dtype=dtype, device="cpu", gpus=0,
                                     cpus=CPU_SHARE, seed=cfg.trainer.seed,
                                     max_model_len=max_model_len)[0]
        self.threads = ray.get(self.gen.ready.remote())["engine_threads"]

    def __call__(self, prompts, n, sampling) -> list[int]:
        import ray

        from drgrpo.seeds import request_seeds

        generated = ray.get(self.gen.generate.remote(prompts, n, sampling,
                                                     request_seeds(sampling.seed, len(prompts))))
        return [len(c.response_ids) for g in generated.groups for c in g]


class Vllm:
    def __init__(self, cfg, dtype: str, max_model_len: int):
        from actors.generator import GeneratorActor

        self.llm = GeneratorActor(cfg.model.path, dtype, seed=cfg.trainer.seed,
                                  max_model_len=max_model_len, device="cpu").llm

    def __call__(self, prompts, n, sampling) -> list[int]:
        from vllm import SamplingParams

        from drgrpo.seeds import request_seeds

        params = [SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=sampling.max_new_tokens,
                                 stop=list(sampling.stop) or None,
                                 include_stop_str_in_output=True, seed=seed)
                  for seed in request_seeds(sampling.seed, len(prompts))]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [len(c.token_ids) for out in outputs for c in out.outputs]


class HF:
    def __init__(self, cfg, dtype: str, max_model_len: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(cfg.model.path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(
            cfg.model.path, dtype=getattr(torch, dtype)).eval()
        self.eos = self.model.generation_config.eos_token_id
        self.tok.pad_token_id = self.eos  # what the model's own config pads with
        self.threads = torch.get_num_threads()

    def __call__(self, prompts, n, sampling) -> list[int]:
        import torch

        torch.manual_seed(sampling.seed)
        batch = self.tok([p for p in prompts for _ in range(n)], return_tensors="pt",
                         padding=True)
        with torch.no_grad():
            out = self.model.generate(**batch, do_sample=True, temperature=sampling.temperature,
                                      top_p=sampling.top_p, top_k=0,
                                      max_new_tokens=sampling.max_new_tokens,
                                      pad_token_id=self.eos, eos_token_id=self.eos)
        new = out[:, batch.input_ids.shape[1]:]
        # A row is padded with EOS after it ends: count up to and including its first EOS.
        ended = (new == self.eos).int()
        return [int(row.argmax()) + 1 if row.any() else new.shape[1] for row in ended]


def measure(variant: str, dtype: str, rounds: int) -> dict:
    """`variant` loaded, then `rounds` timed rollouts after a warm-up one."""
    from benchmarks.common import demo_config

    cfg = demo_config()
    max_model_len = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens  # as launch.run
    start = time.perf_counter()
    generate = {"actor": Actor, "vllm": Vllm, "vllm_1thread": Vllm, "hf": HF}[variant](
        cfg, dtype, max_model_len)
    startup = time.perf_counter() - start
    runs = []
    for i, (prompts, sampling) in enumerate(rollouts(cfg, rounds + 1)):
        load, start = load_avg()[0], time.perf_counter()
        lengths = generate(prompts, cfg.rollout.samples_per_prompt, sampling)
        if i:  # rollout 0 warms the variant up
            runs.append({"seconds": time.perf_counter() - start, "tokens": sum(lengths),
                         "responses": len(lengths), "load_1m": load})
    seconds, tokens = sum(r["seconds"] for r in runs), sum(r["tokens"] for r in runs)
    out = {"tokens_per_s": tokens / seconds,
           "rollout_s_median": median([r["seconds"] for r in runs]),
           "mean_response_tokens": tokens / sum(r["responses"] for r in runs),
           "startup_s": startup,
           "load_1m_mean": sum(r["load_1m"] for r in runs) / len(runs)}
    if variant in ("hf", "actor"):
        out["torch_threads"] = generate.threads
    return out


def run(quick: bool) -> dict:
    rounds = 2 if quick else 10
    # --quick: the target's two sides in the demo's dtype only; each variant's process start
    # (Ray, vLLM's engine) costs more than its rounds.
    dtypes, variants = (("float32",), ("actor", "vllm")) if quick else (cpu_dtypes(), VARIANTS)
    # A fresh process per variant and dtype: one model in memory at a time, and nothing (Ray,
    # threads, allocator state) carried from one measurement into the next.
    results = {dtype: {v: run_child("benchmarks.generation",
                                    {"variant": v, "dtype": dtype, "rounds": rounds},
                                    env=ENV.get(v)) for v in variants}
               for dtype in dtypes}
    figures, baseline, ratios, targets = {}, {}, {}, {}
    for dtype, r in results.items():
        figures[dtype] = r["actor"]
        baseline[dtype] = {v: r[v] for v in variants if v != "actor"}
        tps = {name: r[name]["tokens_per_s"] for name in variants}
        ratios[dtype] = {f"actor_vs_{v}": tps["actor"] / tps[v] for v in variants if v != "actor"}
        if "hf" in tps:
            ratios[dtype]["vllm_vs_hf"] = tps["vllm"] / tps["hf"]
        targets[f"actor_vs_vllm_{dtype}"] = target(ratios[dtype]["actor_vs_vllm"], ">=", TARGET)
    if len(dtypes) > 1:
        ratios["bfloat16_vs_float32"] = {
            name: results["bfloat16"][name]["tokens_per_s"]
            / results["float32"][name]["tokens_per_s"] for name in variants}
    return {
        "name": "generation", "figures": figures, "baseline": baseline, "ratios": ratios,
        "targets": targets,
        "notes": [
            *(["--quick: float32 and the actor vs vLLM's LLM.generate only"] if quick else []),
            f"{rounds} timed rollouts per variant and dtype after a warm-up one, each variant "
            "in its own process, one after the other; each rollout is 4 prompts x 8 samples, at most 64 new tokens, "
            "temperature 0.5, ending at EOS; tokens/s = generated tokens / seconds",
            "figures = the generator actor (Ray, as training calls it); baseline vllm = "
            "LLM.generate in-process on the actor's engine arguments, vLLM's own threads; "
            "vllm_1thread = the same with OMP_NUM_THREADS=1, which Ray gives an actor with a "
            "fractional CPU (the actor gives its engine its share of the cores instead: "
            "torch_threads); hf = transformers generate, one left-padded batch of 32, torch's "
            "default threads",
            "load_1m_mean: the 1-minute load average taken before each timed rollout, averaged",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    return part_main(run, "benchmarks.generation", __doc__, argv,
                     measure=lambda spec: measure(**spec))


if __name__ == "__main__":  # vLLM's CPU engine spawns processes that re-import __main__
    sys.exit(main())
