#!/usr/bin/env bash
# Set up .venv with bayesmtl and its dev tools. Safe to re-run.
# torch is pinned to the CPU build first: an unpinned torch request would pull GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
log=$(mktemp)
if ! .venv/bin/pip install -q -e ".[dev]" >"$log" 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" "$log" >&2
  echo "setup failed: pip could not install bayesmtl (see above)" >&2
  exit 1
fi
rm -f "$log"
.venv/bin/python -c "import bayesmtl, bayesmtl.models, pyro, gpytorch, arviz" \
  || { echo "setup failed: bayesmtl does not import" >&2; exit 1; }
if .venv/bin/pip list 2>/dev/null | grep -qi '^nvidia'; then
  echo "warning: CUDA packages (nvidia-*) are installed in .venv; torch was not the pinned CPU build" >&2
fi
