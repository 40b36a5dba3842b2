"""Baseline speed of the hierarchical family: NUTS wall time and min bulk ESS per second, SVI
steps per second.

Problems:

* radon partially pooled (radon_mn, 85 counties, 919 houses; needs the shared data folder);
* synthetic hierarchical regression, 100 tasks x 50 rows x 5 features;
* SVI only: synthetic, 2,000 tasks x 200 rows x 20 features.

Rows ``pyro_nuts`` and ``nuts`` are timed separately (the same sampler until ``nuts`` is replaced
by a faster one). Full settings: 4 chains x (1000 warmup + 1000 draws); ``--quick``: 2 chains x
(150 + 150) and fewer SVI steps. ESS/s = min over summarised parameters of bulk ESS / wall
time of the fit (compilation included). SVI steps/s is over a fixed number of steps with the
mean-field guide (``AutoNormal``), JIT-compiled ELBO, no minibatching; 1 torch thread unless
``--threads``.

    .venv/bin/python benchmarks/hierarchical.py --quick --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
import pandas as pd
import pyro.distributions as dist
import torch

import bayesmtl as bm
from bayesmtl.synthetic import hierarchical_regression


def radon_data() -> tuple[bm.MultiTaskData, bm.MultiTaskModel] | None:
    from bayesmtl.datasets import data_dir

    try:
        path = data_dir() / "posteriordb" / "radon_mn-radon_partially_pooled_noncentered" / "data.json"
    except FileNotFoundError:
        return None
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    df = pd.DataFrame({"county": [str(j) for j in d["county_idx"]], "log_radon": d["log_radon"]})
    data = bm.MultiTaskData.from_frame(df, task="county", target="log_radon", features=[])
    prior = bm.priors.Hierarchical(mean=dist.Normal(0.0, 10.0), scale=dist.HalfNormal(1.0))
    model = bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian(noise="shared"), prior=prior)
    return data, model


def synthetic(tasks: int, rows: int, features: int, seed: int) -> tuple[bm.MultiTaskData, bm.MultiTaskModel]:
    df, _ = hierarchical_regression(n_tasks=tasks, rows=rows, features=features, seed=seed)
    return bm.MultiTaskData.from_frame(df, task="task", target="y"), bm.models.Hierarchical()


def time_mcmc(method: str, model, data, chains: int, warmup: int, draws: int, seed: int) -> dict:
    t0 = time.perf_counter()
    post = bm.fit(model, data, method=method, chains=chains, warmup=warmup, draws=draws, seed=seed, progress=False)
    wall = time.perf_counter() - t0
    diag = post.diagnostics()
    return {"wall_s": wall, "min_ess_bulk": diag["min_ess_bulk"], "ess_per_s": diag["min_ess_bulk"] / wall,
            "max_r_hat": diag["max_r_hat"], "divergences": diag["divergences"], "steps_per_s": np.nan,
            "settings": f"{chains}x({warmup}+{draws})"}


def time_svi(model, data, steps: int, seed: int, guide: str = "normal") -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a fixed step count is not meant to converge
        post = bm.fit(model, data, method="svi", draws=10, seed=seed, progress=False, guide=guide,
                      steps=steps, min_steps=steps, window=max(steps // 2, 1))
    info = post.info
    return {"wall_s": info["fit_seconds"], "min_ess_bulk": np.nan, "ess_per_s": np.nan, "max_r_hat": np.nan,
            "divergences": np.nan, "steps_per_s": info["steps_per_second"],
            "settings": f"{info['steps']} steps, guide={guide}, jit={info['jit']}"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 chains x (150 + 150), fewer SVI steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (Pyro: 1 measured fastest)")
    p.add_argument("--methods", default="pyro_nuts,nuts,svi")
    p.add_argument("--skip-large", action="store_true", help="leave out the 2,000-task SVI problem")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    chains, warmup, draws = (2, 150, 150) if args.quick else (4, 1000, 1000)
    svi_steps, large_steps = (500, 20) if args.quick else (2000, 200)
    methods = args.methods.split(",")

    problems = []
    radon = radon_data()
    if radon is None:
        print("radon: shared data folder not found; skipped")
    else:
        problems.append(("radon partially pooled (85 x 919)", *radon, True))
    problems.append(("synthetic 100 tasks x 50 rows x 5 feat", *synthetic(100, 50, 5, args.seed), True))
    if not args.skip_large:
        problems.append(("synthetic 2000 x 200 x 20 (SVI only)", *synthetic(2000, 200, 20, args.seed), False))

    rows = []
    for name, data, model, mcmc in problems:
        for method in methods:
            if method == "svi":
                r = time_svi(model, data, svi_steps if mcmc else large_steps, args.seed)
            elif mcmc:
                r = time_mcmc(method, model, data, chains, warmup, draws, args.seed)
            else:
                continue
            r = {"problem": name, "method": method, **r}
            rows.append(r)
            print(f"{name:40s} {method:10s} {r['settings']:32s} wall {r['wall_s']:8.1f} s  "
                  f"ESS/s {r['ess_per_s']:8.2f}  steps/s {r['steps_per_s']:8.1f}", flush=True)
    table = pd.DataFrame(rows).set_index(["problem", "method"])
    print(f"\ntorch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"seed {args.seed}{', quick' if args.quick else ''}, load average {os.getloadavg()[0]:.1f}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(2).to_string())


if __name__ == "__main__":
    main()
