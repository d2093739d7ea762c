"""Weight sync: the project's sync vs its floor, a raw gloo broadcast of the same bytes plus
vLLM's own load of the same tensors.

    python -m benchmarks.weight_sync [--quick]

The project's figures come from a training run of the demo (benchmarks/project_runs.py; the
`step` part's own run when the suite ran it first): every step's metrics.jsonl has the sync's
bytes and its parts, timed where they happen (launch.cluster.Cluster.sync_weights): on learner
0 gathering the full parameters, packing them into buckets and waiting for the broadcasts
(send); on the slowest generator waiting for them (receive), loading them into vLLM (its
layerwise reload, layers re-processed included) and resetting the prefix cache; the whole is
the driver's time/weight_sync_s.

The floor is what a sync cannot do without, measured in the same run: the wire, two local
processes in one gloo group (torch.distributed, as the sync's group is), rank 0 broadcasting
one flat tensor of the same number of bytes to rank 1, already allocated on both sides (the
slower rank's time, median over rounds after an untimed one); plus vLLM's own load of the same
tensors, `reload_weights` from memory in a vLLM engine of the same model and dtype
(benchmarks/vllm_reload.py), median likewise. A sync that overlaps the two can beat their sum.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import (
    child,
    demo_config,
    free_port,
    load_avg,
    load_span,
    median,
    part_main,
    run_child,
    target,
)
from benchmarks.project_runs import project_run
from benchmarks.step import PROMPTS, precisions, project_steps

TARGET = 1.2  # issue 17: the project's sync <= 1.2 x its floor (raw broadcast + vLLM's load)
PARTS = ("gather", "pack", "send", "receive", "load", "cache_reset")


def raw_broadcast(nbytes: int, rounds: int) -> dict:
    """One flat uint8 tensor of `nbytes`, rank 0 -> rank 1 over gloo, in two fresh processes:
    {"seconds_median", "seconds": [per round, the slower rank's]}."""
    port = free_port()  # for the rendezvous
    with ThreadPoolExecutor(2) as ranks:  # both at once
        per_rank = list(ranks.map(lambda r: run_child(
            "benchmarks.weight_sync", {"rank": r, "port": port, "nbytes": nbytes,
                                       "rounds": rounds}, timeout_s=600), range(2)))
    seconds = [max(a, b) for a, b in zip(per_rank[0], per_rank[1])]
    return {"seconds_median": median(seconds), "seconds": seconds}


def broadcast_rank(rank: int, port: int, nbytes: int, rounds: int) -> list[float]:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    flat = (torch.ones if rank == 0 else torch.zeros)(nbytes, dtype=torch.uint8)
    seconds = []
    for i in range(rounds + 1):  # the first round is untimed: gloo sets up its pairs in it
        dist.barrier()
        start = time.perf_counter()
        dist.broadcast(flat, src=0)
        if i:
            seconds.append(time.perf_counter() - start)
    if rank == 1 and not bool(flat.all()):
        raise RuntimeError("the broadcast did not arrive")
    dist.destroy_process_group()
    return seconds


def summary(steps: list[dict]) -> dict:
    """Medians over the steps after the warm-up one: the sync's time, bytes and parts."""
    timed = [s for s in steps[1:] if "weight_sync/bytes" in s]
    if not timed:
        raise RuntimeError("the project's metrics.jsonl has no weight_sync/* figures")
    out = {"sync_s_median": median([s["weight_sync_s"] for s in timed]),
           "bytes": timed[0]["weight_sync/bytes"], "timed_steps": len(timed),
           # 0: one machine, the weights handed over in shared memory; else all the bytes
           "socket_bytes": timed[0].get("weight_sync/socket_bytes", timed[0]["weight_sync/bytes"])}
    for part in PARTS:
        out[f"{part}_s_median"] = median([s[f"weight_sync/{part}_s"] for s in timed])
    out["gb_per_s"] = out["bytes"] / out["sync_s_median"] / 1e9
    return out


def run(quick: bool) -> dict:
    precision, sides = next(iter(precisions(quick).items()))  # the demo's setting
    mine = project_run(PROMPTS, project_steps(quick), sides["project"])
    figures = summary(mine["steps"])
    figures["load_avg_before_after"] = load_span(mine)
    before = load_avg()
    rounds = 3 if quick else 10
    raw = raw_broadcast(figures["bytes"], rounds)
    cfg = demo_config(sides["project"])
    reload = child(["-m", "benchmarks.vllm_reload", "--model", cfg.model.path,
                    "--dtype", cfg.model.rollout_dtype, "--rounds", str(rounds)])
    floor = raw["seconds_median"] + median(reload["seconds"])
    baseline = {"raw_broadcast_s_median": raw["seconds_median"],
                "vllm_reload_s_median": median(reload["seconds"]),
                "floor_s": floor, "reload_bytes": reload["bytes"],
                "reload_threads": reload["threads"],
                "gb_per_s": figures["bytes"] / raw["seconds_median"] / 1e9,
                "rounds": len(raw["seconds"]),
                "load_avg_before_after": [before[0], load_avg()[0]]}
    ratio = figures["sync_s_median"] / floor
    return {
        "name": "weight_sync",
        "figures": {precision: figures},
        "baseline": {precision: baseline},
        "ratios": {f"sync_vs_floor_{precision}": ratio,
                   f"sync_vs_raw_broadcast_{precision}":
                       figures["sync_s_median"] / raw["seconds_median"],
                   f"load_vs_vllm_reload_{precision}":
                       figures["load_s_median"] / median(reload["seconds"])},
        "targets": {f"sync_vs_floor_{precision}": target(ratio, "<=", TARGET)},
        "notes": [
            f"figures = the project's sync in a demo training run ({mine['settings']['dtype']} "
            f"learner, weights sent as {mine['settings']['generation_dtype']}), medians over "
            f"{figures['timed_steps']} steps after a warm-up; sync_s = the driver's "
            "time/weight_sync_s; gather, pack and send (the broadcasts) on learner 0; "
            "receive, load (vLLM reload_weights) and cache_reset on the slowest generator; "
            f"socket_bytes {figures['socket_bytes']}: 0 when learner and generator share the "
            "machine and the buckets go through shared memory (send and receive then 0)",
            "baseline = one dist.broadcast of a flat uint8 tensor of the same bytes between two "
            f"fresh local processes over gloo, median of {len(raw['seconds'])} rounds after an "
            "untimed one, the slower rank's time",
            f"floor = that broadcast + vLLM's own reload_weights of the model's "
            f"{reload['bytes'] / 1e6:.0f} MB of tensors (cast to "
            f"{mine['settings']['generation_dtype']}) from memory in a vLLM engine of "
            f"{reload['threads']} threads, median of {len(reload['seconds'])} rounds after an "
            "untimed one (benchmarks/vllm_reload.py)",
            "load_vs_vllm_reload: the generator's load (its layerwise reload through vLLM's "
            "weight-transfer API, tied layers re-processed) against vLLM's reload_weights",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    return part_main(run, "benchmarks.weight_sync", __doc__, argv,
                     measure=lambda spec: broadcast_rank(**spec))


if __name__ == "__main__":
    sys.exit(main())
