"""What a run of a config holds on each GPU, and whether it fits, before anything starts.

    python -m launch.plan --config launch/configs/qwen2.5-math-7b.yaml [--section.key value ...]
        [--gpu-memory-gib 39.5] [--json]

Reads only the model's config.json (a folder holding nothing else will do; a hub name fetches
just that file), so a 7B run can be planned on a laptop. Prints, per kind of GPU, what each
phase of the run holds there, item by item: the learner's model states by strategy, the
activations of its largest training pass, the log-prob chunk, vLLM's share (weights and KV
cache), the start-up load, and the phases where they meet. The learner's own figures come from
drgrpo/memory.py, which says where each one comes from; the constants below are the rest.

Exits 0 when the run fits GPUs of `--gpu-memory-gib` (default: the GPU torch sees here, else
80), 3 when it does not, with one line naming the largest item and the first setting that makes
it fit, checked by planning again with it; 2 on bad input. `launch.train` runs the same plan on
CUDA before any actor starts (`refuse_if_unfit`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from itertools import combinations

from pydantic import ValidationError

from drgrpo.config import Config
from drgrpo.config_cli import parse_args
from drgrpo.memory import GiB, Learner, LearnerMemory, Shape, learner_memory, shape_of

# Reserved but unallocated by torch's caching allocator while training: 2.8 to 5.0 GiB, median
# 3.35, in the six H200 rows of docs/gpu/gpu_check.md (peak reserved - peak allocated).
ALLOCATOR_SLACK_GIB = 3.4
# A process's CUDA context and communicator buffers, outside torch's counters: a vLLM engine
# asleep at tensor parallelism 1 holds 774 MiB (NVIDIA-NeMo/RL#223), nearly all of it that.
CUDA_CONTEXT_GIB = 0.75
ENGINE_ASLEEP_GIB = 0.76  # the same measurement: vLLM after sleep(level=2), weights and KV freed
# Inside vLLM's share besides weights and KV cache: its profiling run's activation peak, the
# sampler's logits and CUDA graphs. An estimate (vllm#17117 logs 0.4 GiB at TP 8; it grows
# with max_num_batched_tokens and the vocabulary).
ENGINE_WORKSPACE_GIB = 1.5
# Colocated weight sync: each learner stages the weights for vLLM's CUDA IPC engine through one
# packed buffer of vLLM's default size (actors/weight_transfer.py, IPCTrainerInitInfo).
IPC_BUFFER_GIB = 1.0
DEFAULT_GPU_GIB = 80.0
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass
class GPU:
    """One kind of GPU in the run: for each phase, what it holds (GiB by item)."""

    name: str
    count: int
    phases: dict[str, dict[str, float]]

    def total(self, phase: str) -> float:
        return sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.total)


@dataclass
class Plan:
    cfg: Config
    shape: Shape
    gpu_gib: float
    learner: LearnerMemory
    gpus: list[GPU]
    longest: int          # prompt + response tokens
    pass_tokens: int      # the largest training pass
    kv_tokens: float      # tokens vLLM's KV cache holds per engine
    problems: list[str] = field(default_factory=list)  # other reasons it cannot run

    @property
    def peak_gib(self) -> float:
        return max(gpu.total(gpu.peak_phase) for gpu in self.gpus)

    @property
    def gpu_count(self) -> int:
        return sum(gpu.count for gpu in self.gpus)

    @property
    def fits(self) -> bool:
        return self.peak_gib <= self.gpu_gib and not self.problems

    def worst(self) -> tuple[GPU, str, str, float]:
        """The fullest GPU, its fullest phase, and that phase's largest item (GiB)."""
        gpu = max(self.gpus, key=lambda g: g.total(g.peak_phase))
        phase = gpu.peak_phase
        item = max(gpu.phases[phase], key=gpu.phases[phase].get)
        return gpu, phase, item, gpu.phases[phase][item]


def longest_sequence(cfg: Config, shape: Shape) -> int:
    """A training sequence's most tokens, capped at the model's context as launch.run caps
    vLLM's max_model_len."""
    tokens = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    return min(tokens, shape.context) if shape.context else tokens


def learner_run(cfg: Config, shape: Shape) -> Learner:
    """The learner's largest pass (drgrpo.batching.micro_batches): rows x longest row within
    the token budget, or a single longer row alone; else micro_batch_size rows."""
    L, lc = longest_sequence(cfg, shape), cfg.learner
    share = lc.train_batch_size // cfg.cluster.num_learners  # responses per learner per step
    if lc.max_tokens_per_micro_batch:
        rows = max(1, lc.max_tokens_per_micro_batch // L)
    else:
        rows = lc.micro_batch_size
    rows = min(rows, share)
    return Learner(strategy=lc.strategy, zero_stage=lc.zero_stage,
                   world=cfg.cluster.num_learners, checkpointing=lc.gradient_checkpointing,
                   tokens=rows * L, head_rows=rows * min(cfg.rollout.max_new_tokens, L),
                   accumulating=share > rows, compute_bytes=BYTES[cfg.model.dtype],
                   reference=cfg.algorithm.kl_coef > 0)


def gathered_param(cfg: Config, shape: Shape) -> int:
    """Bytes of the largest parameter as the sync yields it (actors/weight_transfer.py,
    LearnerWeights): whole, then cast to the generators' dtype."""
    lc, out = cfg.learner, BYTES[cfg.model.rollout_dtype] * shape.largest_module
    if lc.strategy == "fsdp":  # full_tensor() of a float32 shard
        return 4 * shape.largest_module + out
    if lc.zero_stage == 3:  # GatheredParameters, then a clone
        return 2 * BYTES[cfg.model.dtype] * shape.largest_module + out
    return out  # ZeRO-1/2 hold it whole already


def make_plan(cfg: Config, shape: Shape, gpu_gib: float) -> Plan:
    c, run = cfg.cluster, learner_run(cfg, shape)
    mem = learner_memory(shape, run)
    gib = {item: b / GiB for item, b in mem.phases[mem.peak_phase].items() if b}
    training = {**gib, "allocator slack": ALLOCATOR_SLACK_GIB,
                "learner CUDA context": CUDA_CONTEXT_GIB}
    start = {"float32 model, loading": mem.startup / GiB, "learner CUDA context": CUDA_CONTEXT_GIB}
    between = {item: b / GiB for item, b in mem.between_steps.items() if b}
    between["learner CUDA context"] = CUDA_CONTEXT_GIB

    # vLLM: its share of the GPU holds the weights, its workspace and the KV cache.
    gen_bytes = BYTES[cfg.model.rollout_dtype]
    share = c.gpu_memory_utilization * gpu_gib
    weights = shape.params * gen_bytes / c.generator_tp / GiB
    kv_heads = max(1, shape.kv_heads // c.generator_tp)  # replicated when TP > KV heads
    kv_per_token = 2 * shape.layers * kv_heads * shape.head_dim * gen_bytes
    kv = share - weights - ENGINE_WORKSPACE_GIB
    kv_tokens = max(kv, 0) * GiB / kv_per_token
    engine = {"vLLM weights": weights, "vLLM KV cache + workspace": max(share - weights, 0.0)}
    problems = []
    longest = longest_sequence(cfg, shape)
    if kv_tokens < longest:
        problems.append(
            f"vLLM's share ({c.gpu_memory_utilization:g} x {gpu_gib:g} GiB = {share:.1f} GiB) "
            f"holds its weights ({weights:.1f} GiB) and workspace but not one {longest}-token "
            f"sequence's KV cache ({longest * kv_per_token / GiB:.2f} GiB)")

    if c.colocate:
        asleep = {"vLLM asleep": ENGINE_ASLEEP_GIB}
        gpus = [GPU("learner + generator GPU", c.num_learners, {
            "start-up": {**engine, **start},
            "generating": {**engine, **between},
            "training": {**asleep, **training},
            # The learner has returned its cached blocks (actors/learner.py, end of train);
            # the engine takes its weights back, then each parameter is gathered whole (FSDP2:
            # in float32), cast to vLLM's dtype and staged for CUDA IPC.
            "weight sync": {**asleep, "vLLM weights": weights, **between,
                            "IPC staging buffer": IPC_BUFFER_GIB,
                            "a gathered parameter": gathered_param(cfg, shape) / GiB},
        })]
    else:
        gpus = [GPU("learner GPU", c.num_learners, {"start-up": start, "training": training}),
                GPU("generator GPU", c.num_generators * c.generator_tp,
                    {"generating": engine})]
    return Plan(cfg, shape, gpu_gib, mem, gpus, longest, run.tokens, kv_tokens, problems)


# ------------------------------------------------------------------ what would make it fit

def _changes(cfg: Config) -> list[dict[str, object]]:
    """Single changes to try, cheapest first."""
    lc, c = cfg.learner, cfg.cluster
    out: list[dict[str, object]] = []
    if not lc.gradient_checkpointing:
        out.append({"learner.gradient_checkpointing": True})
    if lc.strategy == "deepspeed" and lc.zero_stage < 3:
        out.append({"learner.zero_stage": 3})
    if lc.strategy == "deepspeed":
        out.append({"learner.strategy": "fsdp"})
    if lc.max_tokens_per_micro_batch and lc.max_tokens_per_micro_batch > 1:
        out.append({"learner.max_tokens_per_micro_batch": lc.max_tokens_per_micro_batch // 2})
    elif not lc.max_tokens_per_micro_batch and lc.micro_batch_size > 1:
        out.append({"learner.micro_batch_size": lc.micro_batch_size // 2})
    util = round(c.gpu_memory_utilization, 2)
    steps = [round(util - 0.05 * k, 2) for k in range(1, 20)] if c.colocate else \
        [round(util + 0.05 * k, 2) for k in range(1, 20)]
    out += [{"cluster.gpu_memory_utilization": u} for u in steps if 0.05 <= u <= 0.95]
    more = {"cluster.num_learners": c.num_learners * 2}
    out.append({**more, "cluster.num_generators": c.num_generators * 2} if c.colocate else more)
    if not c.colocate:
        out.append({"cluster.generator_tp": c.generator_tp * 2})
    if c.colocate:  # the engines get GPUs of their own, and vLLM's usual share of them
        out.append({"cluster.colocate": False, "cluster.gpu_memory_utilization": 0.9})
    return out


def _with(cfg: Config, change: dict[str, object]) -> Config | None:
    data = cfg.to_dict()
    for dotted, value in change.items():
        section, key = dotted.split(".")
        data[section][key] = value
    try:
        return Config.model_validate(data)
    except ValidationError:  # e.g. a batch that no longer divides over the learners
        return None


def flags(change: dict[str, object]) -> str:
    return " ".join(f"--{k} {str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in change.items())


def what_fits(cfg: Config, shape: Shape, gpu_gib: float) -> tuple[dict, Plan] | None:
    """The first change (one setting, else two) whose plan fits."""
    singles = _changes(cfg)
    utils = [ch for ch in singles if list(ch) == ["cluster.gpu_memory_utilization"]]
    pairs = [{**a, **b} for a, b in combinations([ch for ch in singles if ch not in utils], 2)
             if not set(a) & set(b)]
    for change in singles + pairs:
        changed = _with(cfg, change)
        if changed is not None:
            plan = make_plan(changed, shape, gpu_gib)
            if plan.fits:
                return change, plan
    return None


def verdict(plan: Plan) -> str:
    """One line: fits, or the largest item and what would make it fit."""
    gpu, phase, item, size = plan.worst()
    if plan.fits:
        return (f"fits: at most {plan.peak_gib:.1f} of {plan.gpu_gib:g} GiB per GPU on "
                f"{plan.gpu_count} GPUs ({gpu.name}, {phase})")
    why = (f"the {gpu.name} needs {plan.peak_gib:.1f} GiB in {phase}, over {plan.gpu_gib:g} "
           f"GiB; its largest item is {item} ({size:.1f} GiB)"
           if plan.peak_gib > plan.gpu_gib else plan.problems[0])
    found = what_fits(plan.cfg, plan.shape, plan.gpu_gib)
    if found is None:
        return f"does not fit: {why}; no one or two settings make it fit"
    change, fitting = found
    return (f"does not fit: {why}; {flags(change)} would make it fit "
            f"(at most {fitting.peak_gib:.1f} GiB per GPU on {fitting.gpu_count} GPUs)")


# ------------------------------------------------------------------ output

def to_json(plan: Plan) -> dict:
    mem, g = plan.learner, GiB
    return {
        "model": plan.cfg.model.path, "params": plan.shape.params,
        "gpu_memory_gib": plan.gpu_gib, "fits": plan.fits, "peak_gib": plan.peak_gib,
        "model_states_gib": mem.model_states / g,
        "activations_gib": mem.activations / g, "logprob_chunk_gib": mem.logprob_chunk / g,
        "learner_peak_gib": mem.peak / g, "learner_peak_phase": mem.peak_phase,
        "startup_gib": mem.startup / g,
        "generator_gib": plan.cfg.cluster.gpu_memory_utilization * plan.gpu_gib,
        "kv_cache_tokens": int(plan.kv_tokens), "longest_sequence": plan.longest,
        "pass_tokens": plan.pass_tokens, "problems": plan.problems,
        "gpus": {gpu.name: {"count": gpu.count, "phases": {p: {"total_gib": gpu.total(p), **items}
                                                            for p, items in gpu.phases.items()}}
                 for gpu in plan.gpus},
        "verdict": verdict(plan),
    }


def render(plan: Plan) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg, console = plan.cfg, Console()
    lc = cfg.learner
    strategy = lc.strategy if lc.strategy == "fsdp" else f"deepspeed ZeRO-{lc.zero_stage}"
    console.print(
        f"{cfg.model.path}: {plan.shape.params / 1e9:.2f}B parameters; {strategy} over "
        f"{cfg.cluster.num_learners} learner(s), checkpointing "
        f"{'on' if lc.gradient_checkpointing else 'off'}, largest pass {plan.pass_tokens:,} "
        f"tokens ({plan.longest:,}-token sequences); vLLM share "
        f"{cfg.cluster.gpu_memory_utilization:g}, KV cache {plan.kv_tokens:,.0f} tokens")
    if cfg.cluster.device == "cpu":
        console.print("cluster.device is cpu: these are the figures the same run needs on GPUs "
                      "(launch.train checks them only on cuda)")
    for gpu in plan.gpus:
        table = Table(title=f"{gpu.name} x {gpu.count}, GiB of {plan.gpu_gib:g}")
        table.add_column("item")
        for phase in gpu.phases:
            table.add_column(phase, justify="right")
        items = list(dict.fromkeys(i for p in gpu.phases.values() for i in p))
        for item in items:
            table.add_row(item, *(f"{p[item]:.1f}" if item in p else ""
                                  for p in gpu.phases.values()))
        table.add_row("total", *(f"{gpu.total(p):.1f}" + ("" if gpu.total(p) <= plan.gpu_gib
                                                          else " > " + f"{plan.gpu_gib:g}")
                                 for p in gpu.phases), style="bold")
        console.print(table)
    print(verdict(plan))


# ------------------------------------------------------------------ entry points

class PlanError(Exception):
    """The model's config.json cannot be read or built; the message is one line."""


def model_shape(path: str, trust_remote_code: bool = False) -> Shape:
    from transformers import AutoConfig

    try:
        return shape_of(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
    except Exception as err:  # transformers raises many types; the user needs one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PlanError(f"model.path: cannot read a model config from {path}: {reason}") from None


def visible_gpu_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return min(torch.cuda.get_device_properties(i).total_memory
               for i in range(torch.cuda.device_count())) / GiB


def refuse_if_unfit(cfg: Config, model_path: str) -> None:
    """Before any actor starts on CUDA: raise InputError, one line, if the run cannot fit the
    Ray cluster's GPUs."""
    from launch.run import InputError

    gib, source = cluster_gpu_gib()
    try:
        plan = make_plan(cfg, model_shape(model_path, cfg.model.trust_remote_code), gib)
    except PlanError as err:
        raise InputError(str(err)) from None
    if not plan.fits:
        raise InputError(f"{verdict(plan)} [GPU memory: {source}; python -m launch.plan "
                         "shows every item]")


def cluster_gpu_gib(timeout_s: float = 60.0) -> tuple[float, str]:
    """The memory of a GPU of the Ray cluster (asked of a one-GPU task), and where it came
    from; DEFAULT_GPU_GIB when the cluster has no GPU or does not answer."""
    import ray

    if ray.cluster_resources().get("GPU", 0) < 1:
        return DEFAULT_GPU_GIB, f"the Ray cluster has no GPU, assumed {DEFAULT_GPU_GIB:g} GiB"
    ref = ray.remote(num_gpus=1)(visible_gpu_gib).remote()
    try:
        gib = ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        gib = None
    if gib is None:
        return DEFAULT_GPU_GIB, f"no GPU answered within {timeout_s:g} s, assumed " \
                                f"{DEFAULT_GPU_GIB:g} GiB"
    return gib, f"{gib:.1f} GiB per GPU, as the Ray cluster's GPU reports"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "python -m launch.plan"
    if "-h" in argv or "--help" in argv:
        print(__doc__.split("\n\n", 2)[1] + "\n")  # the usage lines; then every setting
    as_json, gpu_gib, rest, i = False, None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--json":
            as_json = True
        elif arg == "--gpu-memory-gib" or arg.startswith("--gpu-memory-gib="):
            value = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv)
                                                              else "")
            i += 0 if "=" in arg else 1
            try:
                gpu_gib = float(value)
            except ValueError:
                gpu_gib = float("nan")
            if not 0 < gpu_gib < float("inf"):
                print(f"usage: {prog} --config FILE [--section.field VALUE ...] "
                      "[--gpu-memory-gib N] [--json]", file=sys.stderr)
                print(f"error: --gpu-memory-gib: expected a positive number of GiB, got "
                      f"{value!r}", file=sys.stderr)
                return 2
        else:
            rest.append(arg)
        i += 1
    cfg = parse_args(rest, prog=prog)  # bad input: prints its lines and exits 2; --help too
    if gpu_gib is None:
        gpu_gib = visible_gpu_gib() or DEFAULT_GPU_GIB
    try:
        plan = make_plan(cfg, model_shape(cfg.model.path, cfg.model.trust_remote_code), gpu_gib)
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(to_json(plan), indent=2))
    else:
        render(plan)
    return 0 if plan.fits else 3


if __name__ == "__main__":
    sys.exit(main())
