"""Benchmark: DP task clustering next to the hierarchical model.

For each data set (landmine at n_train = 160, split seed 0; planted clusters, 3 x 10 logistic
tasks of 60 rows) and each model (hierarchical, dp-clustering), prints wall time and SVI steps
per second, and for MCMC (``--mcmc-method``, default the batched NUTS ``method="nuts"``, which samples the
closed-form marginal with the cluster assignments summed out; ``pyro_nuts`` enumerates them) the minimum
bulk ESS per second over the label-invariant continuous parameters: the concentration ``alpha``,
the base measure's hyperparameters (``atom_mu``, ``atom_tau``) and the task parameters ``w``
(for the hierarchical model ``mu``, ``tau``, ``w``). Cluster atoms themselves are left out:
label switching makes their ESS meaningless.

    .venv/bin/python benchmarks/dp.py --seed 0 --mcmc planted --warmup 100 --draws 100 --num-chains 2

MCMC ESS/s counts the whole run (warmup included). NUTS on landmine (``--mcmc landmine``) is supported
but was not run: on the planted data (1,800 rows) 2 x 200 iterations took 24 min on the shared 2-core box.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import arviz as az
import numpy as np
import pandas as pd
import torch

import bayesmtl as bm
from bayesmtl.synthetic import planted_clusters

INVARIANT = {"dp": ("alpha", "atom_mu", "atom_tau", "w"), "hierarchical": ("mu", "tau", "w")}


def datasets(seed: int) -> dict[str, bm.MultiTaskData]:
    out = {}
    try:
        from bayesmtl.datasets import landmine, landmine_split

        train, _ = landmine_split(landmine(), 160, seed=seed)
        out["landmine n=160"] = bm.MultiTaskData.from_frame(train, task="field", target="label", standardize=True)
    except FileNotFoundError as e:  # data absent: benchmark the planted data only
        print(f"landmine skipped: {e}")
    df, _ = planted_clusters(tasks_per_cluster=10, rows=60, likelihood="bernoulli", seed=seed)
    out["planted 3x10"] = bm.MultiTaskData.from_frame(df, task="task", target="y")
    return out


def min_ess_per_s(post, names) -> float:
    sampled = sum(post.info.get("seconds_per_chain", [post.info["seconds"]]))
    ess = []
    for k in names:
        if k in post.samples:
            v = np.asarray(post.samples[k], dtype=float)
            v = v.reshape(v.shape[:2] + (-1,))
            ess += [float(az.ess(v[..., j], method="bulk")) for j in range(v.shape[-1])]
    return min(ess) / sampled


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000, help="most SVI steps")
    ap.add_argument("--mcmc", default="planted", help="data sets for MCMC: none, planted, landmine, all")
    ap.add_argument("--mcmc-method", default="nuts", help="nuts (batched, default) or pyro_nuts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-chains", "--chains", dest="chains", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--draws", type=int, default=200)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for dname, data in datasets(args.seed).items():
        for mname in ("hierarchical", "dp"):
            model = (bm.models.DPClustering(likelihood="bernoulli") if mname == "dp"
                     else bm.models.Hierarchical(likelihood="bernoulli"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                t0 = time.perf_counter()
                post = bm.fit(model, data, method="svi", seed=args.seed, progress=False, draws=200, device=args.device,
                              steps=args.steps, min_steps=min(1500, args.steps), lr=0.02, window=250)
            rows.append({"data": dname, "model": mname, "method": "svi", "wall_s": time.perf_counter() - t0,
                         "svi_steps": post.info["steps"], "steps_per_s": post.info["steps_per_second"],
                         "min_ess_bulk_per_s": np.nan})
            print(rows[-1], flush=True)
            if args.mcmc in ("all", dname.split()[0]):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # truncation notices are reported by the tests
                    post = bm.fit(model, data, method=args.mcmc_method, seed=args.seed, progress=False,
                                  chains=args.chains, warmup=args.warmup, draws=args.draws, device=args.device)
                rows.append({"data": dname, "model": mname, "method": args.mcmc_method,
                             "wall_s": time.perf_counter() - t0, "svi_steps": np.nan, "steps_per_s": np.nan,
                             "min_ess_bulk_per_s": min_ess_per_s(post, INVARIANT[mname])})
                print(rows[-1], flush=True)
    res = pd.DataFrame(rows)
    print(f"\nchains={args.chains} warmup={args.warmup} draws={args.draws} (MCMC); SVI up to {args.steps} steps; "
          f"load average {os.getloadavg()[0]:.1f} (2-core machine: figures are noisy when it is high)")
    print(res.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    return res


if __name__ == "__main__":
    main()
