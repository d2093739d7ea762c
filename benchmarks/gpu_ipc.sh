#!/usr/bin/env bash
# benchmarks/gpu_ipc.py on a GPU machine that has torch and transformers and no network:
#
#   OUT=results bash benchmarks/gpu_ipc.sh [more gpu_ipc.py options]
#
# writes $OUT/gpu_ipc.json and $OUT/gpu_ipc.md. The learner-step part needs pydantic 2 and
# pyyaml (drgrpo.config); where they are missing, benchmarks/gpu_script.sh unpacks them from
# the wheels in $WHEELS, as for gpu_check.sh.
exec bash "$(dirname "$0")/gpu_script.sh" gpu_ipc "$@"
