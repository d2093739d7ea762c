"""CUDA IPC between two processes on one GPU, and the 1.5B paper learner step's peak memory
beside launch.plan's prediction.

    python benchmarks/gpu_ipc.py --device cuda --output gpu_ipc.json   # one GPU, a few minutes
    python benchmarks/gpu_ipc.py --device cpu --tiny                   # seconds, on a CPU

(a) IPC. A producer process holds a model-sized bf16 state on the GPU as `--bucket-gib` tensors
(Qwen2.5-Math-1.5B: 3.09 GB, 7B: 15.23 GB; the parameter counts come from the config.json files
in tests/data/models/). For each bucket it sends what
`torch.multiprocessing.reductions.reduce_tensor` makes of it over a pipe; the consumer process
rebuilds it (`rebuild_cuda_tensor`, which opens the IPC handle) and copies it into its own
preallocated tensor, then answers. GB/s = bytes / (first send to last answer), for a first pass
(every handle opened) and a second (torch's cache of opened handles, the tensors refilled).
Beside it, a device-to-device copy of the same bytes in one process. The consumer checks every
value it received. On a CPU the CUDA figures are skipped, saying so, and the same protocol runs
over shared memory at a tiny size, as a check of this script (not a figure).

(b) Step. The learner's own code (drgrpo.backends.load_policy: FSDP2 at world size 1, float32
master weights, bf16 compute, gradient checkpointing) on a random-init Qwen2.5-Math-1.5B-shaped
model: optimizer steps of two passes of one 4,024-token sequence (1,024 prompt + 3,000 response
tokens, the paper config's token budget), the second pass with the first one's gradients held,
as in a step of the paper's 16 responses a learner. Their peak allocated memory stands beside
drgrpo.memory's prediction for the same settings: launch.plan's learner with
`--cluster.num_learners 1 --learner.strategy fsdp`.

(a) needs torch only; (b) transformers, and pydantic and pyyaml for drgrpo.config, which
`benchmarks/gpu_ipc.sh` unpacks from wheels where they are missing, as gpu_check.sh does.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the project

MODELS = ROOT / "tests" / "data" / "models"
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=1024, tie_word_embeddings=True,
            max_position_embeddings=256, model_type="qwen2")
GB = 1e9


# ------------------------------------------------------------------ (a) CUDA IPC

def consume(conn, device: str, sizes: list[int]) -> None:
    """The consumer process: rebuild each bucket it is sent, copy it into its own tensor."""
    import torch

    if device == "cuda":
        torch.cuda.set_device(0)
    dst = [torch.empty(n, dtype=torch.bfloat16, device=device) for n in sizes]
    mapped = {}  # rebuilt tensors kept, as a receiver that maps the sender's buckets once
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        i, rebuild, args = msg
        start = time.perf_counter()
        src = mapped[i] = rebuild(*args)
        opened = time.perf_counter()
        dst[i].copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        conn.send((opened - start, time.perf_counter() - opened))
    expected = conn.recv()  # the value each bucket held in the last pass
    conn.send(all(bool((d == v).all()) for d, v in zip(dst, expected)))
    mapped.clear()


def run_ipc(job: dict) -> dict:
    """In a child process: the producer side of both passes, then the one-process copy."""
    import multiprocessing as mp

    import torch
    from torch.multiprocessing.reductions import reduce_tensor

    device, total, bucket = job["device"], job["bytes"], job["bucket_bytes"]
    if device == "cuda":
        torch.cuda.set_device(0)
    sizes = [min(bucket, total - s) // 2 for s in range(0, total, bucket)]
    src = [torch.empty(n, dtype=torch.bfloat16, device=device) for n in sizes]
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    consumer = ctx.Process(target=consume, args=(there, device, sizes), daemon=True)
    consumer.start()
    assert here.recv() == "ready"
    passes = []
    for p in range(2):
        values = [float(16 * p + i + 1) for i in range(len(src))]  # exact in bf16
        for t, v in zip(src, values):
            t.fill_(v)
        if device == "cuda":
            torch.cuda.synchronize()
        start, opens, copies = time.perf_counter(), [], []
        for i, t in enumerate(src):
            rebuild, args = reduce_tensor(t)
            here.send((i, rebuild, args))
            opened, copied = here.recv()
            opens.append(opened)
            copies.append(copied)
        seconds = time.perf_counter() - start
        passes.append({"seconds": seconds, "gb_per_s": total / GB / seconds,
                       "open_ms_mean": 1e3 * statistics.mean(opens),
                       "copy_gb_per_s": total / GB / sum(copies)})
    here.send(None)
    here.send(values)
    correct = here.recv()
    consumer.join(timeout=60)
    # The same bytes copied device to device in this one process.
    dst = [torch.empty_like(t) for t in src]
    times = []
    for _ in range(3):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for d, s in zip(dst, src):
            d.copy_(s)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"name": job["name"], "bytes": total, "buckets": len(src), "bucket_bytes": bucket,
            "first_pass": passes[0], "second_pass": passes[1], "received_correctly": correct,
            "d2d_gb_per_s": total / GB / min(times), "status": "ok" if correct else "error"}


# ------------------------------------------------------------------ (b) the learner step

def run_step(job: dict) -> dict:
    """In a child process: build the model, train, and set the peak beside the plan's."""
    import torch
    import torch.distributed as dist
    from transformers import AutoConfig, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    from benchmarks.common import free_port
    from drgrpo.algorithm import policy_loss
    from drgrpo.backends import load_policy
    from drgrpo.batching import Sample, collate
    from drgrpo.config_load import load_config
    from drgrpo.memory import GiB, learner_memory, shape_of
    from launch.plan import learner_run

    hf_logging.disable_progress_bar()
    cuda = job["device"] == "cuda"
    folder = Path(job["model_dir"])
    config = AutoConfig.for_model(**TINY) if job["tiny"] else AutoConfig.from_pretrained(
        MODELS / "qwen2.5-math-1.5b")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built and saved in bf16: half the bytes to write
    Qwen2ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    torch.set_default_dtype(torch.float32)
    if cuda:
        torch.cuda.set_device(0)
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1,
                            init_method=f"tcp://127.0.0.1:{free_port()}")
    prompt, response = job["prompt"], job["response"]
    cfg = load_config(ROOT / "launch" / "configs" / "qwen2.5-math-1.5b.yaml", [
        f"--{k}={v}" for k, v in {
            "model.path": folder, "data.train_path": "unused", "learner.strategy": "fsdp",
            "cluster.num_learners": 1, "cluster.num_generators": 1,
            "cluster.device": job["device"], "data.max_prompt_tokens": prompt,
            "rollout.max_new_tokens": response,
            "learner.max_tokens_per_micro_batch": prompt + response}.items()])
    plan = learner_memory(shape_of(config), learner_run(cfg, shape_of(config)))
    backend = load_policy(cfg, device)
    gen = torch.Generator().manual_seed(1)
    samples = [Sample(*(torch.randint(0, config.vocab_size, (n,), generator=gen).tolist()
                        for n in (prompt, response)), 1.0 if k % 2 else -1.0)
               for k in range(job["passes"])]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = {"device": torch.cuda.get_device_name(0) if cuda else "cpu",
           "params": shape_of(config).params, "tokens_per_pass": prompt + response,
           "passes_per_step": job["passes"], "steps": job["steps"]}
    try:
        for _ in range(job["steps"]):
            for sample in samples:  # the learner's passes: gradients accumulate between them
                batch = collate([sample]).to(device)
                logprobs = backend.module(batch.input_ids, batch.attention_mask,
                                          batch.response_mask)
                loss, _ = policy_loss(logprobs, logprobs.detach(), batch.advantages,
                                      batch.response_mask, "dr_grpo", 0.2, response,
                                      num_responses=len(samples))
                backend.backward(loss)
            out["grad_norm"] = backend.step()
        out["status"] = "ok"
    except Exception as err:  # running out of memory is a result too
        oom = "out of memory" in str(err).lower()
        out.update(status="oom" if oom else "error", error=f"{type(err).__name__}: {err}"[:500])
    if cuda:
        out.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / GiB,
                   peak_reserved_gib=torch.cuda.max_memory_reserved() / GiB)
    out.update(predicted_peak_gib=plan.peak / GiB, predicted_phase=plan.peak_phase,
               predicted_items_gib={k: v / GiB for k, v in plan.phases[plan.peak_phase].items()},
               predicted_startup_gib=plan.startup / GiB)
    if out.get("peak_allocated_gib"):
        out["predicted_over_measured"] = out["predicted_peak_gib"] / out["peak_allocated_gib"]
    return out


# ------------------------------------------------------------------ driver

def run_child(part: str, job: dict, timeout: float) -> dict:
    """One part in a fresh process; a crash or a timeout becomes a result."""
    from benchmarks.common import ChildFailed, child

    try:
        return child([__file__, "--child", part, json.dumps(job)], timeout_s=timeout,
                     partial=True)
    except ChildFailed as err:
        return {**job, "status": "failed", "error": err.why}


def state_bytes(name: str, tiny: bool) -> int:
    """A model's bf16 state: 2 bytes a parameter, counted from its config.json alone."""
    if tiny:
        return {"1.5b": 3 * 2**20, "7b": 7 * 2**20}[name]
    from transformers import AutoConfig

    from drgrpo.memory import shape_of

    return 2 * shape_of(AutoConfig.from_pretrained(MODELS / f"qwen2.5-math-{name}")).params


def markdown(report: dict) -> str:
    lines = [f"{report.get('device', '?')}, torch {report['torch']}, "
             f"transformers {report.get('transformers', '-')}", ""]
    ipc = report["ipc"]
    if ipc.get("status") == "skipped":
        lines.append(f"CUDA IPC: skipped ({ipc['reason']})")
        check = ipc.get("protocol_check", {})
        lines.append(f"protocol check over CPU shared memory: {check.get('status')}, "
                     f"received correctly: {check.get('received_correctly')}")
    else:
        lines += ["CUDA IPC between two processes on one GPU, bf16 state in "
                  f"{report['bucket_gib']:g} GiB buckets:", "",
                  "| state | GB | IPC, first pass GB/s | open ms/bucket | IPC, second pass GB/s "
                  "| consumer copy GB/s | one-process copy GB/s | data |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in ipc["runs"]:
            if r.get("status") != "ok":
                lines.append(f"| {r['name']} | {r['bytes'] / GB:.2f} | {r.get('status')}: "
                             f"{r.get('error', '')[:80]} |||||")
                continue
            a, b = r["first_pass"], r["second_pass"]
            lines.append(f"| {r['name']} | {r['bytes'] / GB:.2f} | {a['gb_per_s']:.0f} | "
                         f"{a['open_ms_mean']:.2f} | {b['gb_per_s']:.0f} | "
                         f"{b['copy_gb_per_s']:.0f} | {r['d2d_gb_per_s']:.0f} | "
                         f"{'ok' if r['received_correctly'] else 'WRONG'} |")
    s = report["step"]
    lines += ["", f"Learner step, {'tiny' if report['tiny'] else 'Qwen2.5-Math-1.5B'} shape, "
              f"FSDP2 at world size 1, bf16 over float32, checkpointing on, "
              f"{s.get('passes_per_step')} passes of {s.get('tokens_per_pass')} tokens a step: "
              f"{s.get('status')}", "",
              "| peak allocated GiB | peak reserved GiB | launch.plan's learner peak GiB | "
              "its phase | predicted / measured |", "|---:|---:|---:|---|---:|"]

    def num(key, fmt="{:.2f}"):
        return fmt.format(s[key]) if s.get(key) is not None else "-"

    lines.append(f"| {num('peak_allocated_gib')} | {num('peak_reserved_gib')} | "
                 f"{num('predicted_peak_gib')} | {s.get('predicted_phase', '-')} | "
                 f"{num('predicted_over_measured', '{:.3f}')} |")
    return "\n".join(lines)


def main() -> None:
    from benchmarks.common import save_json, script_parser

    parser = script_parser(__doc__, child_nargs=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model and states, a smoke run")
    parser.add_argument("--bucket-gib", type=float, default=1.0, help="IPC bucket size")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps (first: warm-up)")
    parser.add_argument("--timeout", type=float, default=480, help="seconds per part")
    args = parser.parse_args()
    if args.child:
        part, job = args.child[0], json.loads(args.child[1])
        args.result.write_text(json.dumps(run_ipc(job) if part == "ipc" else run_step(job)))
        return

    import torch

    report = {"torch": torch.__version__, "tiny": args.tiny, "bucket_gib": args.bucket_gib}
    try:
        import transformers

        report["transformers"] = transformers.__version__
    except ImportError:
        pass
    bucket = int(args.bucket_gib * 2**30) if not args.tiny else 2**20
    sizes = {name: state_bytes(name, args.tiny) for name in ("1.5b", "7b")}
    jobs = [{"name": f"Qwen2.5-Math-{n.upper()}", "device": args.device, "bytes": b,
             "bucket_bytes": bucket} for n, b in sizes.items()]
    if args.device == "cuda":
        report["ipc"] = {"runs": [run_child("ipc", job, args.timeout) for job in jobs]}
    else:
        report["ipc"] = {"status": "skipped", "reason": "CUDA IPC needs a CUDA device",
                         "protocol_check": run_child("ipc", jobs[0], args.timeout)}
    with tempfile.TemporaryDirectory() as tmp:
        report["step"] = run_child("step", {
            "device": args.device, "tiny": args.tiny, "model_dir": str(Path(tmp) / "model"),
            "prompt": 16 if args.tiny else 1024, "response": 48 if args.tiny else 3000,
            "passes": 2, "steps": args.steps}, args.timeout)
    report["device"] = report["step"].get("device", args.device)
    save_json(args.output, report)
    print(markdown(report))
    parts = report["ipc"].get("runs", [report["ipc"].get("protocol_check", {})])
    # Running out of memory is a result; a part that failed otherwise is not.
    sys.exit(int(any(p.get("status") in ("failed", "error") for p in [*parts, report["step"]])))


if __name__ == "__main__":
    main()
