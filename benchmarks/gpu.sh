#!/usr/bin/env bash
# GPU checks and tables on a CUDA machine whose Python has torch (CUDA build), pyro, gpytorch,
# arviz and bayesmtl installed (NumPyro with jax[cuda] too, for its rows).
#   PY=python3 OUT=runs/gpu bash benchmarks/gpu.sh tests neural svi mcmc lmc sarcos
# Each part writes its log to $OUT; a part that runs past its limit is stopped, the rest go on.
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
for part in "$@"; do
  case $part in
    tests)  timeout "${TESTS_S:-240}" "$PY" -m pytest -m cuda -v -p no:cacheprovider --durations=0 tests 2>&1 | tee "$OUT/cuda_tests.log" \
              | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|skipped|s call" ;;
    mcmc)   timeout 420 "$PY" benchmarks/mcmc.py --only d --device cuda --many "${MANY:-4,1024,16384,131072}" \
              --warmup "${WARMUP:-300}" --draws "${DRAWS:-200}" --with-numpyro --numpyro-python "$PY" \
              --skip "${SKIP:-}" 2>&1 | tee "$OUT/mcmc_d.log" | grep -v "^# row" ;;
    neural) timeout 150 "$PY" benchmarks/neural.py --case speed --device cuda --steps "${NEURAL_STEPS:-1000}" \
              --out "$OUT/neural" 2>&1 | tee "$OUT/neural_speed.log" | tail -8 ;;
    svi)    timeout "${SVI_S:-300}" "$PY" benchmarks/svi.py --device cuda --problems "${SVI_PROBLEMS:-small,large}" \
              --steps "${SVI_STEPS:-2000,1000}" --numpyro-python "$PY" 2>&1 | tee "$OUT/svi.log" | grep -E "^[|#]|torch" ;;
    lmc)    timeout 120 "$PY" benchmarks/gp.py --lmc-only --device cuda --lmc-iters 100 2>&1 | tee "$OUT/lmc.log" | tail -4 ;;
    sarcos) timeout 400 "$PY" examples/sarcos.py --ranks "${RANKS:-2}" --private --device cuda \
              --steps "${STEPS:-20}" --out "$OUT/sarcos" 2>&1 | tee "$OUT/sarcos.log" ;;
    *) echo "unknown part $part (tests, neural, svi, mcmc, lmc, sarcos)" >&2 ;;
  esac
done
