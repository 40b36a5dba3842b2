"""Simulation-based calibration (Talts et al. 2018) of the batched NUTS sampler on a small
hierarchical regression.

For each of ``--sims`` data sets: draw (mu, tau, sigma) from the prior, task coefficients
w_t ~ N(mu, diag(tau)^2) and rows y ~ N(x'w_t, sigma); sample the posterior; record the rank of
each true hyperparameter among ``--keep`` thinned posterior draws. Calibrated inference gives
uniform ranks: the script bins them and prints a chi-square test per hyperparameter.

Two modes:

- ``batched`` (default, minutes): every simulated data set is one chain of ONE batched run of
  ``bayesmtl.infer.nuts.run_nuts`` (adaptation included) on the collapsed density of
  ``bayesmtl.marginals.hierarchical_gaussian`` (w integrated out), so all data sets are sampled at once.
- ``fit``: each data set through ``bm.fit(..., method="nuts")`` (or ``--method chees``, which
  needs ``--chains`` >= 2) (the Pyro model, plain path with ``--plain``), one at a time; slower.

    .venv/bin/python scripts/sbc.py --sims 256 --seed 0           # quick configuration
    .venv/bin/python scripts/sbc.py --sims 200 --mode fit --plain --draws 400
    .venv/bin/python scripts/sbc.py --sims 200 --mode fit --method chees --chains 8 --draws 250
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import pandas as pd
import pyro.distributions as dist
import torch
from scipy import stats

import bayesmtl as bm
from bayesmtl.infer.hmc_util import HMCState
from bayesmtl.infer.nuts import run_nuts
from bayesmtl.marginals.hierarchical_gaussian import HierarchicalGaussian

warnings.filterwarnings("ignore")

MU, TAU, SIGMA = dist.Normal(0.0, 1.0), dist.HalfNormal(1.0), dist.HalfNormal(1.0)


def simulate(rng: np.random.Generator, tasks: int, rows: int, features: int):
    """One data set from the prior: frame and the true hyperparameters."""
    D = features + 1
    mu = rng.normal(0, 1, D)
    tau = np.abs(rng.normal(0, 1, D))
    sigma = abs(rng.normal(0, 1))
    w = mu + tau * rng.normal(size=(tasks, D))
    X = rng.normal(size=(tasks * rows, features))
    task = np.repeat(np.arange(tasks), rows)
    y = w[task, 0] + (X * w[task, 1:]).sum(1) + sigma * rng.normal(size=len(task))
    df = pd.DataFrame(X, columns=[f"x{j + 1}" for j in range(features)])
    df.insert(0, "task", [f"t{t}" for t in task])
    df["y"] = y
    truth = {f"mu[{j}]": mu[j] for j in range(D)} | {f"tau[{j}]": tau[j] for j in range(D)} | {"sigma": sigma}
    return df, truth


def model_for() -> bm.models.Hierarchical:
    prior = bm.priors.Hierarchical(mean=MU, scale=TAU)
    return bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian("shared", SIGMA), prior=prior)


def batched(frames, warmup, draws, seed, target):
    """All data sets as chains of one run; returns draws name -> (sims, draws)."""
    model = model_for()
    cols = [HierarchicalGaussian(model, bm.MultiTaskData.from_frame(df, task="task", target="y")) for df in frames]
    stack = cols[0]
    stack.XX = torch.stack([c.XX for c in cols])      # (C, T, D, D)
    stack.Xy = torch.stack([c.Xy for c in cols])      # (C, T, D)
    stack.yy = torch.stack([c.yy for c in cols])      # (C, T)
    C, D = len(cols), stack.D

    def log_post(z):  # z = (mu (D), log tau (D), log sigma)
        mu, ltau, lsig = z[:, :D], z[:, D:2 * D], z[:, 2 * D]
        tau, sigma = ltau.exp(), lsig.exp()
        lp = stack.log_density({"mu": mu, "tau": tau, "sigma": sigma})
        return lp + ltau.sum(-1) + lsig

    def vg(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            U = -log_post(z)
            (g,) = torch.autograd.grad(U.sum(), z)
        U = U.detach()
        bad = ~torch.isfinite(U)
        return torch.where(bad, math.inf, U), torch.where(bad.unsqueeze(-1), 0.0, g)

    gen = torch.Generator().manual_seed(seed)
    z0 = (torch.rand(C, 2 * D + 1, generator=gen, dtype=torch.float64) * 2 - 1) * 2
    U, g = vg(z0)
    st, extra = run_nuts(vg, HMCState(z0, U, g), warmup, draws, gen, target=target)
    z = extra["z"]                                     # (C, draws, P)
    out = {f"mu[{j}]": z[..., j] for j in range(D)}
    out |= {f"tau[{j}]": np.exp(z[..., D + j]) for j in range(D)}
    out["sigma"] = np.exp(z[..., 2 * D])
    return out, int(st["diverging"].sum())


def via_fit(frames, warmup, draws, seed, plain, chains, method="nuts"):
    """Each data set through bm.fit; returns draws name -> (sims, chains * draws), divergences and
    each data set's bulk ESS name -> (sims,)."""
    import arviz as az

    model, out, div, ess = model_for(), {}, 0, {}
    for i, df in enumerate(frames):
        data = bm.MultiTaskData.from_frame(df, task="task", target="y")
        post = bm.fit(model, data, method=method, chains=chains, warmup=warmup, draws=draws, seed=seed + i,
                      progress=False, collapse=False if plain else None)
        s = post.samples
        D = s["mu"].shape[-1]
        row = {f"mu[{j}]": s["mu"][..., j].reshape(-1) for j in range(D)}
        row |= {f"tau[{j}]": s["tau"][..., j].reshape(-1) for j in range(D)}
        row["sigma"] = s["sigma"].reshape(-1)
        for k, v in row.items():
            out.setdefault(k, []).append(v)
            ess.setdefault(k, []).append(float(az.ess(v.reshape(chains, -1), method="bulk")))
        div += int(post.sample_stats["diverging"].sum())
    return {k: np.stack(v) for k, v in out.items()}, div, {k: np.array(v) for k, v in ess.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sims", type=int, default=256)
    p.add_argument("--tasks", type=int, default=6)
    p.add_argument("--rows", type=int, default=5)
    p.add_argument("--features", type=int, default=1)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--keep", type=int, default=99, help="thinned draws per data set (ranks 0..keep)")
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--mode", choices=["batched", "fit"], default="batched")
    p.add_argument("--plain", action="store_true", help="fit mode: sample the full (non-collapsed) model")
    p.add_argument("--chains", type=int, default=1, help="fit mode: chains per data set")
    p.add_argument("--method", choices=["nuts", "chees"], default="nuts", help="fit mode: the sampler")
    p.add_argument("--target-accept", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(a.seed)
    sims = [simulate(rng, a.tasks, a.rows, a.features) for _ in range(a.sims)]
    frames, truths = [s[0] for s in sims], [s[1] for s in sims]
    t0 = time.perf_counter()
    if a.mode == "batched":
        draws, div = batched(frames, a.warmup, a.draws, a.seed, a.target_accept)
        ess = {}
    else:
        draws, div, ess = via_fit(frames, a.warmup, a.draws, a.seed, a.plain, a.chains, a.method)
    wall = time.perf_counter() - t0
    rows = []
    for name, v in draws.items():
        n = v.shape[1]
        idx = np.linspace(0, n - 1, a.keep).round().astype(int)   # thin to ~independent draws
        thin = v[:, idx]
        truth = np.array([t[name] for t in truths])
        ranks = (thin < truth[:, None]).sum(1)                    # 0..keep
        counts = np.bincount(ranks * a.bins // (a.keep + 1), minlength=a.bins)
        chi2, pval = stats.chisquare(counts)
        row = {"parameter": name, "chi2": round(float(chi2), 2), "df": a.bins - 1, "p": round(float(pval), 4),
               "uniform (p > 0.01)": bool(pval > 0.01), "counts": " ".join(map(str, counts))}
        if name in ess:   # ranks among more thinned draws than the chains' ESS are correlated, hence lumpy
            row |= {"min ESS": round(float(ess[name].min())), "median ESS": round(float(np.median(ess[name]))),
                    f"ESS < {a.keep}": int((ess[name] < a.keep).sum())}
        rows.append(row)
    print(f"# SBC: {a.sims} simulated data sets, {a.tasks} tasks x {a.rows} rows x {a.features} feature(s), "
          f"mode {a.mode}{' plain' if a.plain else ''}, {a.warmup}+{a.draws} per data set, ranks among "
          f"{a.keep} thinned draws, {a.bins} bins, {div} divergences, {wall:.0f} s, seed {a.seed}\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
