"""vLLM's own load of a model's weights from tensors already in memory: the load half of the
weight sync's floor (benchmarks/weight_sync.py).

    python -m benchmarks.vllm_reload --model DIR --dtype bfloat16 --rounds 5 --result FILE

A vLLM-CPU engine of the model in this process, as the generator actor builds it (eager, the
same dtype, its share of the cores); in its worker, the checkpoint's tensors are read into
memory and cast to `dtype` untimed, then `reload_weights` (vLLM's layerwise reload: the
checkpoint layout restored, every tensor loaded, every layer processed again) is timed on
them, round after round, after an untimed one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


class ReloadProbe:
    """vLLM worker extension: `self` is the vLLM worker."""

    def time_reload(self, model_dir: str, dtype: str, rounds: int) -> dict:
        from safetensors.torch import load_file

        tensors = {}
        for file in sorted(Path(model_dir).glob("*.safetensors")):
            tensors.update(load_file(str(file)))
        weights = [(name, t.to(getattr(torch, dtype))) for name, t in tensors.items()]
        seconds = []
        for _ in range(rounds + 1):
            start = time.perf_counter()
            self.reload_weights(weights_iterator=iter(weights))
            seconds.append(time.perf_counter() - start)
        return {"seconds": seconds[1:], "threads": torch.get_num_threads(),
                "bytes": sum(t.numel() * t.element_size() for _, t in weights)}


def measure(model_dir: str, dtype: str, rounds: int) -> dict:
    from vllm import LLM

    from actors.generator import CPU_KV_CACHE_BYTES

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # as the generator actor
    llm = LLM(model=model_dir, dtype=dtype, enforce_eager=True, max_model_len=512,
              kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enable_chunked_prefill=False,
              worker_extension_cls="benchmarks.vllm_reload.ReloadProbe")
    return llm.collective_rpc("time_reload", args=(model_dir, dtype, rounds))[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vllm_reload",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    args.result.write_text(json.dumps(measure(args.model, args.dtype, args.rounds)))
    return 0


if __name__ == "__main__":  # vLLM's CPU engine spawns processes that re-import __main__
    sys.exit(main())
