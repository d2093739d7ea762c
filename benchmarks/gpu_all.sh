#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one go (on a lent GPU machine):
#   OUT=results bash benchmarks/gpu_all.sh
# the learner step (gpu_check.sh), log-prob memory by torch's peak counter, the NCCL
# weight-sync group's timeout, and CUDA IPC with the 1.5B step beside launch.plan (gpu_ipc.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/gpu.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 150 python3 benchmarks/nccl_timeout.py --timeout-s 7 > "$OUT/nccl_timeout.json" 2>&1
cat "$OUT/nccl_timeout.json"
for chunk in 1024 512 256; do
  timeout 60 python3 benchmarks/logprobs_memory.py --device cuda --batch 2 --seq 2048 \
    --chunk-size $chunk 2>&1 | tee "$OUT/logprobs_b2_s2048_c$chunk.txt"
done
timeout 60 python3 benchmarks/logprobs_memory.py --device cuda --batch 8 --seq 4096 \
  --chunk-size 1024 2>&1 | tee "$OUT/logprobs_b8_s4096_c1024.txt"
timeout 300 bash benchmarks/gpu_check.sh 2>&1 | tail -40
timeout 600 bash benchmarks/gpu_ipc.sh 2>&1 | tail -30
