#!/usr/bin/env bash
# Set up .venv with bayesmtl and its dev tools. Safe to re-run.
# torch is pinned to the CPU build first: an unpinned torch request would pull GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=$(mktemp)
trap 'rm -f "$log"' EXIT
quiet_pip() {  # pip's noise about this machine's local index stays out of the log
  if ! .venv/bin/pip install -q "$@" >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2
    echo "setup failed: pip install $* did not succeed (see above)" >&2
    exit 1
  fi
}
.venv/bin/python -c "import torch" 2>/dev/null || quiet_pip "torch==2.13.0"
quiet_pip -e ".[dev]"
.venv/bin/python -c "import bayesmtl, bayesmtl.models, pyro, gpytorch, arviz" \
  || { echo "setup failed: bayesmtl does not import" >&2; exit 1; }
# Debian's Chromium for the report's browser test (playwright drives it; it downloads no browser)
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >"$log" 2>&1 \
      || echo "note: apt-get could not install chromium; the report's browser test will skip" >&2
  else
    echo "note: no chromium and no root apt-get to install it; the report's browser test will skip" >&2
  fi
fi
if .venv/bin/pip list 2>/dev/null | grep -qi '^nvidia'; then
  echo "warning: CUDA packages (nvidia-*) are installed in .venv; torch was not the pinned CPU build" >&2
fi
