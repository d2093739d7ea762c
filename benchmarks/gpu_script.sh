#!/usr/bin/env bash
# A GPU script, benchmarks/NAME.py, on a GPU machine that has torch and transformers and no
# network (benchmarks/gpu_check.sh and gpu_ipc.sh are this, with their NAME):
#
#   OUT=results bash benchmarks/gpu_script.sh NAME [more NAME.py options]
#
# writes $OUT/NAME.json and $OUT/NAME.md (OUT defaults to runs/NAME). Python is the first of
# python3 and python that has torch, unless PYTHON says which. Where pydantic 2 or pyyaml
# (drgrpo.config) is missing, they come from the wheels in $WHEELS (default .whl/, fetched
# with `pip download`, see gpu_check.py's notes), unpacked into a temporary folder on
# PYTHONPATH rather than pip-installed: no index needed, no "externally managed" refusal,
# and the machine's own packages stay as they are.
set -euo pipefail
NAME=$1
shift
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
for candidate in python3 python; do
  if [ -z "$PY" ] && "$candidate" -c 'import torch' 2>/dev/null; then PY=$candidate; fi
done
if [ -z "$PY" ]; then echo "no python with torch found; set PYTHON" >&2; exit 1; fi
OUT=${OUT:-runs/$NAME}
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

"$PY" "benchmarks/$NAME.py" --device cuda --output "$OUT/$NAME.json" "$@" \
  | tee "$OUT/$NAME.md"
