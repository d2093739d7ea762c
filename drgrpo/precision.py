"""`auto` dtype: bfloat16 where the run's processors compute it natively, float32 where they
would only emulate it.

bfloat16 halves the memory of weights and activations, and where the hardware computes it
(NVIDIA GPUs, x86 CPUs with AVX-512 or AMX, ARM CPUs with BF16) it is also the fast choice.
A CPU without it (AVX2 only: many laptops and older servers) computes bfloat16 through a slow
path: on a 2-core AVX2 AMD EPYC (torch 2.13, one thread, 512 x 512 matmuls) 1.3 GFLOPS in
bfloat16 against 74 in float32, and one demo step took 700 s where an AVX-512 machine of the
same size takes 8 s in bfloat16 and 16 s in float32. So `auto` picks float32 there.
"""

from __future__ import annotations

AUTO = "auto"


def cpu_computes_bfloat16() -> bool:
    """Whether this machine's CPU has bfloat16 arithmetic that torch's CPU kernels (oneDNN)
    use: AVX-512 (BW, VL, DQ) or AMX on x86, BF16 on ARM."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def native_dtype(device: str) -> str:
    """The dtype `auto` stands for on `device` ("cuda", "cpu" or "auto"). Only a CPU run is
    looked at, on this machine's CPU (the driver's: a CPU cluster's nodes are taken to be
    alike); GPUs and an undecided device get bfloat16."""
    if device == "cpu" and not cpu_computes_bfloat16():
        return "float32"
    return "bfloat16"
