"""Peak memory and time of chunked vs naive token log-probs at Qwen2.5's vocabulary (152,064).

    python benchmarks/logprobs_memory.py [--batch 2] [--seq 2048] [--hidden 896]

Each variant runs forward + backward in a fresh process; the figure is the growth of the
process's peak resident memory over its baseline (CPU), or torch's peak allocation (CUDA).
Both variants share the same weights, inputs and hidden states. `run(quick)` is the
`logprobs_memory` part of the benchmark suite (benchmarks/run.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

VOCAB = 152_064
FULL = {"batch": 2, "seq": 2048, "hidden": 896}  # Qwen2.5-0.5B's width
# The logits' size, not the width, sets the peaks; six of the project's 276-row chunks keep
# chunking at work, at a third of the full size's logits.
QUICK = {"batch": 1, "seq": 1536, "hidden": 64}
TARGET = 0.25  # issue 10: chunked peak <= 0.25 x naive


def logprobs(variant: str, lm, ids, chunk_size: int):
    from drgrpo.algorithm import naive_token_logprobs, token_logprobs

    if variant == "chunked":
        return token_logprobs(lm, ids, chunk_size=chunk_size)
    return naive_token_logprobs(lm.lm_head(lm.model(ids).last_hidden_state), ids)


def measure(variant: str, batch: int, seq: int, hidden: int, device: str,
            chunk_size: int | None = None) -> dict:
    import torch

    torch.manual_seed(0)

    class Base(torch.nn.Module):  # stands in for the transformer body: only its output matters
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, hidden)

        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"last_hidden_state": self.embed(input_ids)})

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Base()
            self.lm_head = torch.nn.Linear(hidden, VOCAB, bias=False)

    lm = LM().to(device)
    ids = torch.randint(0, VOCAB, (batch, seq), device=device)
    if device == "cuda":  # one untimed pass first: CUDA's lazy set-up is not the variant's cost
        logprobs(variant, lm, ids, chunk_size).sum().backward()
        lm.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    logprobs(variant, lm, ids, chunk_size).sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "peak_extra_gb": (peak - base) / 2**30,
            "seconds": time.perf_counter() - start}


def compare(batch: int, seq: int, hidden: int, device: str = "cpu",
            chunk_size: int | None = None) -> dict:
    """Both variants, each in a fresh process: {variant: {"peak_extra_gb", "seconds"}}.
    `chunk_size` None: the project's own (drgrpo.algorithm sizes chunks by bytes)."""
    from benchmarks.common import child

    results = {}
    for variant in ("naive", "chunked"):
        chunk = [f"--chunk-size={chunk_size}"] if chunk_size else []
        results[variant] = child([__file__, "--variant", variant, f"--batch={batch}",
                                  f"--seq={seq}", f"--hidden={hidden}", f"--device={device}",
                                  *chunk])
    return results


def run(quick: bool) -> dict:
    """The suite's part: peak memory of chunked vs naive at the FULL (or QUICK) size."""
    from benchmarks.common import target

    size = QUICK if quick else FULL
    r = compare(**size)
    ratio = r["chunked"]["peak_extra_gb"] / max(r["naive"]["peak_extra_gb"], 1e-9)
    return {
        "name": "logprobs_memory",
        "figures": {"chunked_peak_extra_gib": r["chunked"]["peak_extra_gb"],
                    "chunked_seconds": r["chunked"]["seconds"], **size, "vocab": VOCAB,
                    "logits_fp32_gib": size["batch"] * (size["seq"] - 1) * VOCAB * 4 / 2**30},
        "baseline": {"naive_peak_extra_gib": r["naive"]["peak_extra_gb"],
                     "naive_seconds": r["naive"]["seconds"]},
        "ratios": {"chunked_vs_naive_peak": ratio,
                   "chunked_vs_naive_seconds": r["chunked"]["seconds"] / r["naive"]["seconds"]},
        "targets": {"chunked_vs_naive_peak": target(ratio, "<=", TARGET)},
        "notes": [f"forward + backward of batch {size['batch']} x seq {size['seq']} token "
                  f"log-probs at vocabulary {VOCAB}, hidden {size['hidden']}, the project's "
                  "chunks (160 MiB of float32 logits each); peak = growth of the process's max RSS over its baseline, each variant "
                  "in a fresh process"]
                 + (["--quick measures a smaller size than the target is set for "
                     f"({FULL}); its ratio is a smoke figure"] if quick else []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=FULL["batch"])
    parser.add_argument("--seq", type=int, default=FULL["seq"])
    parser.add_argument("--hidden", type=int, default=FULL["hidden"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-size", type=int, help="rows per chunk (default: the project's)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        args.result.write_text(json.dumps(measure(args.variant, args.batch, args.seq,
                                                  args.hidden, args.device, args.chunk_size)))
        return

    full = args.batch * (args.seq - 1) * VOCAB * 4 / 2**30
    print(f"batch {args.batch} x seq {args.seq} x vocab {VOCAB}: one float32 copy of the "
          f"logits is {full:.2f} GiB")
    results = compare(args.batch, args.seq, args.hidden, args.device, args.chunk_size)
    for variant, r in results.items():
        print(f"{variant:>8}: peak +{r['peak_extra_gb']:.2f} GiB, {r['seconds']:.2f} s "
              "(forward + backward)")
    ratio = results["naive"]["peak_extra_gb"] / max(results["chunked"]["peak_extra_gb"], 1e-9)
    print(f"naive / chunked peak memory: {ratio:.1f}x")

if __name__ == "__main__":
    main()
