#!/usr/bin/env bash
# benchmarks/gpu_check.py on a GPU machine that has torch and transformers and no network:
#
#   OUT=results bash benchmarks/gpu_check.sh [more gpu_check.py options]
#
# writes $OUT/gpu_check.json and $OUT/gpu_check.md. Beyond torch and transformers the check
# needs pydantic 2 (drgrpo.config) and pyyaml (a transformers dependency, so normally there).
# When they are missing they come from the wheels in $WHEELS (default .whl/, fetched with
# `pip download`, see gpu_check.py's notes), unpacked into a temporary folder on PYTHONPATH
# rather than pip-installed: no index needed, no "externally managed" refusal, and the
# machine's own packages stay as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
# The first of python3 and python that has torch, unless PYTHON says which.
PY=${PYTHON:-}
for candidate in python3 python; do
  if [ -z "$PY" ] && "$candidate" -c 'import torch' 2>/dev/null; then PY=$candidate; fi
done
if [ -z "$PY" ]; then echo "no python with torch found; set PYTHON" >&2; exit 1; fi
OUT=${OUT:-runs/gpu_check}
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

"$PY" benchmarks/gpu_check.py --device cuda --output "$OUT/gpu_check.json" "$@" \
  | tee "$OUT/gpu_check.md"
