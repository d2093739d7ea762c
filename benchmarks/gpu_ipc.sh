#!/usr/bin/env bash
# benchmarks/gpu_ipc.py on a GPU machine that has torch and transformers and no network:
#
#   OUT=results bash benchmarks/gpu_ipc.sh [more gpu_ipc.py options]
#
# writes $OUT/gpu_ipc.json and $OUT/gpu_ipc.md. The learner-step part needs pydantic 2 and
# pyyaml (drgrpo.config); where they are missing they come from the wheels in $WHEELS (default
# .whl/, fetched as gpu_check.py's notes say), unpacked into a temporary folder on PYTHONPATH,
# exactly as benchmarks/gpu_check.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
for candidate in python3 python; do
  if [ -z "$PY" ] && "$candidate" -c 'import torch' 2>/dev/null; then PY=$candidate; fi
done
if [ -z "$PY" ]; then echo "no python with torch found; set PYTHON" >&2; exit 1; fi
OUT=${OUT:-runs/gpu_ipc}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"

if ! "$PY" -c 'import sys, pydantic, yaml; sys.exit(int(pydantic.VERSION.split(".")[0]) < 2)' \
    2>/dev/null; then
  site=$(mktemp -d)
  for wheel in "$WHEELS"/*.whl; do
    "$PY" -m zipfile -e "$wheel" "$site"
  done
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "pydantic/pyyaml unpacked from $WHEELS into $site" >&2
fi

"$PY" benchmarks/gpu_ipc.py --device cuda --output "$OUT/gpu_ipc.json" "$@" \
  | tee "$OUT/gpu_ipc.md"
