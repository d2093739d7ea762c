"""The learner's training step on one GPU: peak memory, tokens/s and MFU, gradient checkpointing
on and off.

    python benchmarks/gpu_check.py --device cuda --output gpu_check.json  # Qwen2.5-0.5B shape
    python benchmarks/gpu_check.py --device cpu --tiny                   # seconds, on a CPU

What runs is the learner's own code, without Ray or vLLM: `drgrpo.backends.load_policy` (fp32
master weights, bf16 compute, FSDP2 at world size 1 over NCCL, or gloo on a CPU), the Policy
module's token log-probs, `policy_loss` with the dr_grpo normaliser, backward and the optimizer
step. The model is random-init, built here and saved to a temporary folder; nothing is
downloaded. Each checkpointing mode runs in its own process (its peaks are its own, and running
out of memory in one mode cannot disturb the other), over the batch sizes in increasing order,
stopping at the first that runs out of memory.

MFU = model FLOPs per step / (median step time x the card's dense bf16 peak). Model FLOPs per
step = 6 * N * tokens + 12 * layers * hidden * seq^2 * sequences (PaLM's count, appendix B of
Chowdhery et al. 2022: forward + backward; attention as if unmasked, not halved for causality;
recomputation not counted, so checkpointing lowers MFU). N = parameters used in matmuls: all of
them but an untied input embedding (a lookup); a tied one counts once, as the lm_head.

On a GPU machine with torch and transformers but no network, `benchmarks/gpu_check.sh` runs it;
the wheels it may need (pydantic for drgrpo.config, and its dependencies) are fetched beforehand
into .whl/ with, for each of pydantic, pydantic-core, annotated-types, typing-inspection,
typing-extensions and pyyaml at the versions the project's .venv has:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl NAME==VERSION
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run from a checkout without installing the project (as on the device machine).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                         tie_word_embeddings=True, rope_theta=1e6,
                         max_position_embeddings=32768, rms_norm_eps=1e-6),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=1024,
                 tie_word_embeddings=True, rope_theta=1e6, max_position_embeddings=256,
                 rms_norm_eps=1e-6),
}
# Dense bf16 peaks (NVIDIA datasheets, without sparsity); the first name contained wins.
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
               ("A100", 312.0)]


def build_model(folder: Path, shape: str) -> dict:
    """Save a random-init Qwen2 of `shape` to `folder`; return its FLOP-relevant sizes."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**SHAPES[shape])
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())  # a tied matrix is listed once
    embed = model.get_input_embeddings().weight.numel()
    return {"shape": shape, "params": params,
            "matmul_params": params if config.tie_word_embeddings else params - embed,
            "layers": config.num_hidden_layers, "hidden": config.hidden_size}


def model_flops(model: dict, batch: int, seq: int) -> float:
    return (6 * model["matmul_params"] * batch * seq
            + 12 * model["layers"] * model["hidden"] * seq**2 * batch)


def run_mode(job: dict) -> dict:
    """In a child process: one checkpointing mode over the batch sizes; a result per batch.
    Only children touch the GPU: a CUDA context in the parent would take memory from them."""
    import torch
    import torch.distributed as dist
    from transformers.utils import logging as hf_logging

    from benchmarks.common import free_port
    from drgrpo.algorithm import policy_loss
    from drgrpo.backends import load_policy
    from drgrpo.batching import Sample, collate
    from drgrpo.config_load import load_config

    hf_logging.disable_progress_bar()
    cuda = job["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(0)
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1,
                            init_method=f"tcp://127.0.0.1:{free_port()}")
    seq, prompt = job["seq"], max(1, job["seq"] // 16)
    cfg = load_config(None, [f"--{k}={v}" for k, v in {
        "model.path": job["model_dir"], "model.dtype": job["dtype"], "data.train_path": "unused",
        "learner.strategy": "fsdp", "learner.gradient_checkpointing": job["checkpointing"],
        "algorithm.method": "dr_grpo", "rollout.max_new_tokens": seq - prompt,
        "cluster.device": job["device"]}.items()])
    backend = load_policy(cfg, device)
    info = {"device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "device_total_gib": torch.cuda.get_device_properties(0).total_memory / 2**30
            if cuda else None,
            "attention": getattr(backend.hf_config, "_attn_implementation", None)}
    vocab = SHAPES[job["shape"]]["vocab_size"]
    # Forward calls of the first decoder layer per step: 2 with checkpointing (the forward and
    # the recompute in backward), 1 without; the proof that the recompute really runs.
    layer_calls: list[int] = []
    backend.module.lm.model.layers[0].register_forward_pre_hook(
        lambda module, args: layer_calls.append(1))

    def step(batch) -> tuple[float, float]:
        # The learner's first optimizer step of a rollout: old log-probs = these, detached.
        logprobs = backend.module(batch.input_ids, batch.attention_mask)
        loss, _ = policy_loss(logprobs, logprobs.detach(), batch.advantages,
                              batch.response_mask, cfg.algorithm.method, cfg.algorithm.clip_eps,
                              cfg.rollout.max_new_tokens, num_responses=batch.advantages.numel())
        backend.backward(loss)  # x world size (1), as the learner does
        return loss.item(), backend.step()

    results = []
    for b in job["batches"]:
        gen = torch.Generator().manual_seed(b)
        ids = torch.randint(0, vocab, (b, seq), generator=gen).tolist()
        batch = collate([Sample(row[:prompt], row[prompt:], 1.0 if i % 2 else -1.0)
                         for i, row in enumerate(ids)]).to(device)
        out = {"gradient_checkpointing": job["checkpointing"], "batch": b, "seq": seq}
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times, layer_calls[:] = [], []
        try:
            for _ in range(job["warmup"] + job["steps"]):
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out["loss"], out["grad_norm"] = step(batch)  # .item() waits for the GPU
                times.append(time.perf_counter() - start)
        except Exception as err:  # any failure: keep the smaller batches' results
            # torch.OutOfMemoryError, or an error of NCCL's that says the same.
            oom = "out of memory" in str(err).lower()
            out.update(status="oom" if oom else "error",
                       error=f"{type(err).__name__}: {err}"[:500])
            if cuda:
                out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            results.append(out)
            break  # larger batches would run out too; after an error, state is suspect
        median = statistics.median(times[job["warmup"]:])
        out.update(status="ok", step_seconds=times, median_step_s=median,
                   layer_forwards_per_step=len(layer_calls) / len(times),
                   tokens_per_s=b * seq / median,
                   model_tflops_per_s=model_flops(job["model"], b, seq) / median / 1e12)
        if cuda:
            out.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                       peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
                       allocated_between_steps_gib=torch.cuda.memory_allocated() / 2**30)
        results.append(out)
    for out in results:
        out["process_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {**info, "runs": results}


def peak_tflops(name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if name == "cpu":
        return None, "no peak known for a CPU; pass --peak-tflops"
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value, f"dense bf16 peak of {key} ({name})"
    return None, f"unknown card {name!r}; pass --peak-tflops"


def table(report: dict) -> str:
    def num(r, key, fmt):
        return fmt.format(r[key]) if r.get(key) is not None else "-"

    lines = ["| checkpointing | batch x seq | status | peak alloc. GiB | peak reserved GiB "
             "| tokens/s | MFU | layer-0 forwards/step |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        lines.append(f"| {'on' if r['gradient_checkpointing'] else 'off'} | {r['batch']} x "
                     f"{r['seq']} | {r['status']} | {num(r, 'peak_allocated_gib', '{:.1f}')} | "
                     f"{num(r, 'peak_reserved_gib', '{:.1f}')} | {num(r, 'tokens_per_s', '{:,.0f}')}"
                     f" | {num(r, 'mfu', '{:.1%}')} | {num(r, 'layer_forwards_per_step', '{:g}')} |")
    return "\n".join(lines)


def main() -> None:
    from benchmarks.common import save_json, script_parser

    parser = script_parser(__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model, short sequences")
    parser.add_argument("--seq", type=int, help="tokens per sequence (4096; --tiny 64)")
    parser.add_argument("--batch", help="sequences per step, comma-separated (1,4,16; --tiny 2)")
    parser.add_argument("--steps", type=int, help="timed steps after warm-up (5; --tiny 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (2; --tiny 1)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="compute dtype (master weights are fp32)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense peak, TFLOP/s")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per mode")
    args = parser.parse_args()
    if args.child:
        # Results first: if tearing down after an out-of-memory error hangs, they are out.
        args.result.write_text(json.dumps(run_mode(json.loads(args.child))))
        import torch.distributed as dist

        dist.destroy_process_group()
        return

    started = time.perf_counter()
    shape = "tiny" if args.tiny else "qwen2.5-0.5b"
    seq = args.seq if args.seq is not None else (64 if args.tiny else 4096)
    batches = sorted(int(b) for b in (args.batch or ("2" if args.tiny else "1,4,16")).split(","))
    steps = args.steps if args.steps is not None else (2 if args.tiny else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    if steps < 1 or warmup < 0 or min(batches) < 1 or seq < 2:
        parser.error("the least values are --steps 1, --batch 1, --warmup 0, --seq 2")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    report = {"torch": torch.__version__, "transformers": transformers.__version__,
              "dtype": args.dtype, "seq": seq, "warmup": warmup, "steps": steps,
              "flops_formula": "6*N*tokens + 12*layers*hidden*seq^2*sequences (PaLM, fwd+bwd, "
                               "attention unmasked, recompute not counted)", "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        report["model"] = build_model(Path(tmp) / "model", shape)
        print(f"[{time.perf_counter() - started:.0f} s] built {shape} "
              f"({report['model']['params'] / 1e6:.1f}M parameters)", file=sys.stderr)
        for checkpointing in (True, False):
            job = {"device": args.device, "shape": shape, "model_dir": str(Path(tmp) / "model"),
                   "model": report["model"], "dtype": args.dtype, "seq": seq,
                   "batches": batches, "warmup": warmup, "steps": steps,
                   "checkpointing": checkpointing}
            child = run_child(job, args.timeout)
            report["runs"] += child.pop("runs")
            report.update(child)  # the device, as the children saw it
            print(f"[{time.perf_counter() - started:.0f} s] checkpointing {checkpointing}: done",
                  file=sys.stderr)
    report["peak_tflops"], report["peak_tflops_source"] = peak_tflops(
        report.get("device", "unknown"), args.peak_tflops)
    for r in report["runs"]:
        if r["status"] == "ok" and report["peak_tflops"]:
            r["mfu"] = r["model_tflops_per_s"] / report["peak_tflops"]
    report["wall_s"] = time.perf_counter() - started
    save_json(args.output, report)
    print(f"{report.get('device')}, {report['model']['shape']}, {args.dtype}, attention "
          f"{report.get('attention')}, torch {report['torch']}, transformers "
          f"{report['transformers']}\n")
    print(table(report))
    print(f"\nMFU: model FLOPs per step = {report['flops_formula']}, N = "
          f"{report['model']['matmul_params']:,}; peak {report['peak_tflops']} TFLOP/s "
          f"({report['peak_tflops_source']}).")
    # Running out of memory is a result; a run that failed otherwise is not.
    sys.exit(int(any(r["status"] in ("failed", "error") for r in report["runs"])))


def run_child(job: dict, timeout: float) -> dict:
    """One mode in a fresh process; a crash or a timeout becomes a result, not an exception
    (the results of a child that failed after measuring count)."""
    from benchmarks.common import ChildFailed, child

    try:
        return child([__file__, "--child", json.dumps(job)], timeout_s=timeout, partial=True)
    except ChildFailed as err:
        sys.stderr.write(err.why + "\n")
        return {"runs": [{"gradient_checkpointing": job["checkpointing"],
                          "batch": job["batches"][0], "seq": job["seq"], "status": "failed",
                          "error": err.why}]}


if __name__ == "__main__":
    main()
