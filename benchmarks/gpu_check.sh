#!/usr/bin/env bash
# benchmarks/gpu_check.py on a GPU machine that has torch and transformers and no network:
#
#   OUT=results bash benchmarks/gpu_check.sh [more gpu_check.py options]
#
# writes $OUT/gpu_check.json and $OUT/gpu_check.md. Beyond torch and transformers the check
# needs pydantic 2 (drgrpo.config) and pyyaml (a transformers dependency, so normally there);
# where they are missing, benchmarks/gpu_script.sh unpacks them from the wheels in $WHEELS.
exec bash "$(dirname "$0")/gpu_script.sh" gpu_check "$@"
