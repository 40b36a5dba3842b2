"""Exact ICM: seconds per training iteration, Kronecker vs Hadamard vs GPyTorch's multitask model.

One iteration = marginal likelihood + gradient + an Adam step. The Kronecker path's default
factorisation (``solver``: one eigendecomposition of K from 4 tasks on a CPU, else a Cholesky
factor per task) is timed next to the other one. GPyTorch's documented model is
``ExactGP`` with ``MultitaskMean``, ``MultitaskKernel(RBFKernel(), rank=1)`` and
``MultitaskGaussianLikelihood`` (returns ``MultitaskMultivariateNormal``), trained the same way
on the same data. Prediction: time to predict 200 new inputs (all tasks) after training,
ours from the cached Kronecker factors (the one-off cost of building that cache after training is
its own column; GPyTorch's first prediction builds its caches inside the timed call).

    .venv/bin/python benchmarks/gp.py            # 1000, 2000, 5000 inputs x 4 tasks
    .venv/bin/python benchmarks/gp.py --quick    # 250, 500, 1000
    .venv/bin/python benchmarks/gp.py --lmc-only --device cuda   # variational LMC on a GPU
    .venv/bin/python benchmarks/gp.py --hierarchical --sizes 250 500 1000 --tasks 7   # hierarchical GP
    BAYESMTL_DATA=../shared/data .venv/bin/python benchmarks/gp.py --school --threads 1   # Hadamard path on school
    BAYESMTL_DATA=../shared/data .venv/bin/python benchmarks/gp.py --school-noise 60 --threads 1  # noise pooling

``--school``: one evaluation of the ICM's Hadamard-form marginal likelihood and its gradient on
school split 0 (3,548 input x school cells, 139 schools, 21 inputs; float64, the default ICM's
starting values), by the fused closed-form path against autograd through the explicit
covariance, with S^-1 from ``cholesky_inverse`` (today's ``gaussian_logpdf``) and from
``cholesky_solve`` against I (its earlier backward), alternated in one process.

``--school-noise N``: type-II MAP of ``MultitaskGP()`` on the first N schools of school split 0,
the tasks' noise variances pooled about a shared level as estimated from the data (the
default), nearly independent (``noise_spread=1.5``) and nearly shared (0.05): coverage of nominal
90% intervals on the held-out rows, mean squared z-score and log predictive density a row.

``--hierarchical``: the hierarchical GP (``kind="hierarchical"``), seconds per iteration on its
grid path (every task at every input) against its Hadamard path on the same data, and the two
marginal likelihoods' relative difference.

Variational LMC: iterations per second (minibatch ELBO + gradient + Adam step) at 100,000 inputs
x 10 tasks (1,000,000 long rows), minibatches of 1,024, 3 latents, 256 inducing points.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import pandas as pd
import torch

from bayesmtl.gp import icm


def make_data(n, T, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 1, n, dtype=dtype)[:, None]
    f = torch.stack([torch.sin(2 * math.pi * (k + 1) * x[:, 0] + k) for k in range(T)], -1)
    return x, f + 0.2 * torch.randn(n, T, generator=g, dtype=dtype)


def _adam_steps(mll, opt, n, iters) -> list[float]:
    """Seconds of each of iters + 1 Adam steps on -mll() / n (the first is a warm-up)."""
    times = []
    for _ in range(iters + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = -mll() / n
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def ours(x, Y, path, iters, solver=None):
    n, T = Y.shape
    dt = x.dtype
    raw = {"ls": torch.tensor([math.log(0.3)], dtype=dt, requires_grad=True),
           "W": (0.5 * torch.ones(T, 1, dtype=dt) + 0.01 * torch.arange(T, dtype=dt)[:, None]).requires_grad_(),
           "v": torch.full((T,), math.log(0.5), dtype=dt, requires_grad=True),
           "nz": (math.log(0.1) + 0.01 * torch.arange(T, dtype=dt)).requires_grad_(),
           "m": torch.zeros(T, dtype=dt, requires_grad=True)}
    opt = torch.optim.Adam(list(raw.values()), lr=0.1)
    if path == "hadamard":
        task = torch.arange(T).repeat(n)
        xl, yl = x.repeat_interleave(T, 0), Y.reshape(-1)

    def mll():
        B = icm.task_covariance(raw["W"], raw["v"].exp())
        if path == "kronecker":
            return icm.kronecker_mll(x, Y, B, raw["ls"].exp(), raw["nz"].exp(), raw["m"], solver=solver)
        return icm.hadamard_mll(xl, yl, task, B, raw["ls"].exp(), raw["nz"].exp(), raw["m"])

    times = _adam_steps(mll, opt, Y.numel(), iters)
    pred = float("nan")
    if path == "kronecker":
        with torch.no_grad():
            B = icm.task_covariance(raw["W"], raw["v"].exp())
            ls, nz, m = raw["ls"].exp(), raw["nz"].exp(), raw["m"]
            xs = torch.rand(200, 1, dtype=dt)
            t0 = time.perf_counter()
            c = icm.kronecker_cache(x, Y, B, ls, nz, m, "rbf", solver=solver)  # once after training
            cache = time.perf_counter() - t0
            xs_all = xs.repeat_interleave(T, 0)
            t0 = time.perf_counter()
            icm.kronecker_predict(c, x, xs_all, torch.arange(T).repeat(200), B, ls, m, "rbf")
            pred = time.perf_counter() - t0
        return float(np.mean(times[1:])), pred, cache
    return float(np.mean(times[1:])), pred, float("nan")


def hierarchical_gp(x, Y, path, iters):
    """Seconds per iteration (marginal likelihood + gradient + Adam step) of the hierarchical GP on
    the grid or the Hadamard path, and the final marginal likelihood."""
    from bayesmtl.gp import hierarchical

    n, T = Y.shape
    dt = x.dtype
    raw = {k: torch.tensor(v, dtype=dt, requires_grad=True) for k, v in
           {"ls": [math.log(0.3)], "dls": [math.log(0.5)], "sg": math.log(0.8), "sh": math.log(0.5),
            "c": math.log(0.3), "nz": [math.log(0.05)] * T, "m": 0.0}.items()}
    grid, cells = (icm.Grid(x, Y, None), None) if path == "grid" else (
        None, icm.group_cells(x.repeat(T, 1), Y.T.reshape(-1), torch.arange(T).repeat_interleave(n)))
    opt = torch.optim.Adam(list(raw.values()), lr=0.05)

    def mll():
        h = {"lengthscale": raw["ls"].exp(), "deviation_lengthscale": raw["dls"].exp(),
             "shared_scale": raw["sg"].exp(), "deviation_scale": raw["sh"].exp(), "offset_scale": raw["c"].exp(),
             "noise": raw["nz"].exp(), "mean": raw["m"]}
        return hierarchical.mll(grid, cells, h)

    times = _adam_steps(mll, opt, Y.numel(), iters)
    with torch.no_grad():
        return float(np.mean(times[1:])), float(mll())


def gpytorch_model(x, Y, iters, predict):
    import gpytorch

    T = Y.shape[1]

    class MultitaskGPModel(gpytorch.models.ExactGP):
        def __init__(self, train_x, train_y, likelihood):
            super().__init__(train_x, train_y, likelihood)
            self.mean_module = gpytorch.means.MultitaskMean(gpytorch.means.ConstantMean(), num_tasks=T)
            self.covar_module = gpytorch.kernels.MultitaskKernel(gpytorch.kernels.RBFKernel(), num_tasks=T, rank=1)

        def forward(self, x):
            return gpytorch.distributions.MultitaskMultivariateNormal(self.mean_module(x), self.covar_module(x))

    lik = gpytorch.likelihoods.MultitaskGaussianLikelihood(num_tasks=T)
    model = MultitaskGPModel(x, Y, lik).to(x.dtype)
    lik = lik.to(x.dtype)
    model.train()
    lik.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
    times = []
    for _ in range(iters + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = -mll(model(x), Y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    pred = float("nan")
    if predict:
        model.eval()
        lik.eval()
        xs = torch.rand(200, 1, dtype=x.dtype)
        t0 = time.perf_counter()
        with torch.no_grad(), gpytorch.settings.fast_pred_var():
            p = lik(model(xs))
            p.mean, p.variance  # noqa: B018
        pred = time.perf_counter() - t0
    return float(np.mean(times[1:])), pred


def same_mll_check(n, T, seed):
    """Our Kronecker and Hadamard marginal likelihoods against GPyTorch's documented model at the
    same hyperparameters (float64): relative differences."""
    import gpytorch

    x, Y = make_data(n, T, seed, torch.float64)
    lik = gpytorch.likelihoods.MultitaskGaussianLikelihood(num_tasks=T).double()
    mean = gpytorch.means.MultitaskMean(gpytorch.means.ConstantMean(), num_tasks=T).double()
    kern = gpytorch.kernels.MultitaskKernel(gpytorch.kernels.RBFKernel(), num_tasks=T, rank=1).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        kern.task_covar_module.covar_factor.copy_(torch.randn(T, 1, generator=g, dtype=torch.float64))
        kern.data_covar_module.lengthscale = 0.2
        lik.task_noises = 0.05 + 0.1 * torch.rand(T, generator=g, dtype=torch.float64)
        for k, m in enumerate(mean.base_means):
            m.constant.fill_(0.1 * k)
        dist_ = lik(gpytorch.distributions.MultitaskMultivariateNormal(mean(x), kern(x)))
        theirs = float(dist_.log_prob(Y))
        B = kern.task_covar_module.covar_matrix.to_dense()
        ls = kern.data_covar_module.lengthscale.reshape(1)
        noise = lik.task_noises + lik.noise
        mu = torch.stack([m.constant.reshape(()) for m in mean.base_means])
        kron = float(icm.kronecker_mll(x, Y, B, ls, noise, mu))
        task = torch.arange(T).repeat(n)
        had = float(icm.hadamard_mll(x.repeat_interleave(T, 0), Y.reshape(-1), task, B, ls, noise, mu))
    return {"inputs": n, "tasks": T, "gpytorch log ML": theirs, "kronecker rel. diff": abs(kron - theirs) / abs(theirs),
            "hadamard rel. diff": abs(had - theirs) / abs(theirs)}


def lmc(n, T, batch, iters, device, seed):
    """Iterations per second of the minibatched variational LMC on n inputs x T tasks."""
    from bayesmtl.models.multitask_gp import MultitaskGP

    import bayesmtl as bm

    g = np.random.default_rng(seed)
    x = g.uniform(0, 10, (n, 2))
    f = np.stack([np.sin(x[:, 0] * (k + 1) / 3 + k) + np.cos(x[:, 1] / (k + 1)) for k in range(T)], -1)
    y = f + 0.2 * g.standard_normal((n, T))
    df = pd.DataFrame({"task": np.repeat([f"t{k}" for k in range(T)], n), "x0": np.tile(x[:, 0], T),
                       "x1": np.tile(x[:, 1], T), "y": y.T.reshape(-1)})
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = MultitaskGP(kind="lmc", num_latents=3, inducing=256)
    bm.fit(model, data, method="map", seed=seed, device=device, steps=3, batch_size=batch)  # warm-up
    post = bm.fit(model, data, method="map", seed=seed, device=device, steps=iters, batch_size=batch)
    return {"rows": len(df), "inputs": n, "tasks": T, "batch": batch, "device": device,
            "it/s": post.info["iterations_per_second"]}


class _SolveAgainstIdentity(torch.autograd.Function):
    """log N(r; 0, S) with S^-1 from ``cholesky_solve`` against I in the backward pass (the
    earlier ``icm.gaussian_logpdf``), for ``--school``'s "before" row."""

    @staticmethod
    def forward(ctx, S, r):
        L = torch.linalg.cholesky(S)
        a = torch.cholesky_solve(r.unsqueeze(-1), L).squeeze(-1)
        ctx.save_for_backward(L, a)
        return -0.5 * (r * a).sum() - L.diagonal().log().sum() - 0.5 * r.shape[-1] * math.log(2 * math.pi)

    @staticmethod
    def backward(ctx, g):
        L, a = ctx.saved_tensors
        eye = torch.eye(L.shape[-1], dtype=L.dtype)
        return 0.5 * g * (a[:, None] * a[None] - torch.cholesky_solve(eye, L)), -g * a


def school_hadamard(repeats: int) -> pd.DataFrame:
    """Seconds for one marginal likelihood + gradient on school split 0's cells, three paths."""
    from calibration import SCHOOL_SHARED, SCHOOL_VARYING  # the calibration benchmark's 21 inputs

    import bayesmtl as bm
    from bayesmtl import datasets
    from bayesmtl.gp import typeii

    train, _ = datasets.school(split=0)
    features = SCHOOL_VARYING + SCHOOL_SHARED
    data = bm.MultiTaskData.from_frame(train, task="school", target="score", features=features, standardize=True)
    model = bm.models.MultitaskGP().bind(data)
    _, cells = icm.training_layout(data.X, data.y, data.task, data.n_tasks, None)
    raw = typeii._initial(model, data, torch.Generator().manual_seed(0))

    def run(path):
        for p in raw.values():
            p.grad = None
        B = icm.task_covariance(raw["task_W"], raw["log_v"].exp())
        ls, nz, mean = raw["log_ls"].exp(), raw["log_noise"].exp(), raw["mean"]
        if path == "fused":
            m = icm.hadamard_mll(cells.X, cells.y, cells.task, B, ls, nz, mean, "rbf", cells.count, cells.ss)
        else:  # the same covariance built explicitly (its merged-row term leaves out ss: timing only)
            S = icm._hadamard_cov(cells.X, cells.task, B, ls, nz, "rbf", cells.count)
            r = cells.y - mean[cells.task]
            m = _SolveAgainstIdentity.apply(S, r) if path == "solve" else icm.gaussian_logpdf(S, r)[0]
        m.backward()
        return {k: v.grad.clone() for k, v in raw.items()}

    labels = {"solve": "autograd through the covariance, S^-1 by cholesky_solve against I (before)",
              "inverse": "autograd through the covariance, S^-1 by cholesky_inverse",
              "fused": "closed-form gradient (_HadamardLogpdf, now)"}
    grads = {p: run(p) for p in labels}
    times = {p: [] for p in labels}
    for _ in range(repeats):
        for p in labels:
            t0 = time.perf_counter()
            run(p)
            times[p].append(time.perf_counter() - t0)
    base = min(times["solve"])
    rows = [{"path": labels[p], "cells": cells.X.shape[0], "s / evaluation (fastest)": min(times[p]),
             "x before": base / min(times[p]),
             "max rel. gradient diff (W, lengthscales, means)": max(
                 float((grads[p][k] - grads["fused"][k]).abs().max() / grads["fused"][k].abs().max())
                 for k in ("task_W", "log_ls", "mean"))} for p in labels]
    return pd.DataFrame(rows)


def school_noise(n_schools: int) -> pd.DataFrame:
    """Type-II MAP of the default ICM on the first ``n_schools`` of school split 0 with the tasks'
    noise variances pooled as estimated (the default), nearly independent (spread 1.5) and nearly
    shared (0.05): held-out coverage of nominal 90%, mean squared z and log predictive density."""
    from calibration import SCHOOL_SHARED, SCHOOL_VARYING

    import bayesmtl as bm
    from bayesmtl import datasets
    from bayesmtl.gp.predict import log_density

    train, test = datasets.school(split=0)
    keep = sorted(train["school"].unique())[:n_schools]
    train, test = train[train["school"].isin(keep)], test[test["school"].isin(keep)]
    features = SCHOOL_VARYING + SCHOOL_SHARED
    data = bm.MultiTaskData.from_frame(train, task="school", target="score", features=features, standardize=True)
    y = test["score"].to_numpy()
    rows = []
    for label, spread in (("estimated (default)", None), ("1.5: nearly independent", 1.5),
                          ("0.05: nearly shared", 0.05)):
        t0 = time.perf_counter()
        post = bm.fit(bm.models.MultitaskGP(noise_spread=spread), data, seed=0, progress=False)
        sec = time.perf_counter() - t0
        pred = post.predict(test, seed=0)
        z = (y - pred["mean"].to_numpy()) / pred["sd"].to_numpy()
        rows.append({"noise_spread": label if spread is not None else f"{post.model.noise_spread:.3g} (estimated)",
                     "coverage": float(((pred["q05"] <= y) & (y <= pred["q95"])).mean()),
                     "mean z^2": float((z ** 2).mean()),
                     "log density / row": float(log_density(torch.as_tensor(y, dtype=torch.float64),
                                                            torch.as_tensor(pred["mean"].to_numpy())[None],
                                                            torch.as_tensor(pred["sd"].to_numpy())[None] ** 2).mean()),
                     "fit s": sec})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--hadamard-max", type=int, default=2000, help="largest n for the Hadamard path")
    ap.add_argument("--gpytorch-max", type=int, default=5000, help="largest n for GPyTorch's model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="device for the LMC part")
    ap.add_argument("--lmc-only", action="store_true")
    ap.add_argument("--hierarchical", action="store_true", help="time the hierarchical GP's grid path only")
    ap.add_argument("--lmc-inputs", type=int, default=100_000)
    ap.add_argument("--lmc-iters", type=int, default=100)
    ap.add_argument("--school", action="store_true", help="the Hadamard path on school's cells only (shared data)")
    ap.add_argument("--school-noise", type=int, default=0, metavar="N",
                    help="the ICM's noise pooling on the first N schools of split 0 (shared data)")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    torch.set_num_threads(args.threads)
    if args.school_noise:
        print(school_noise(args.school_noise).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"split 0, first {args.school_noise} schools, {args.threads} torch threads; "
              f"load average {os.getloadavg()}")
        return
    if args.school:
        print(school_hadamard(args.iters).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        print(f"float64, {args.threads} torch threads, fastest of {args.iters}; load average {os.getloadavg()}")
        return
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    sizes = args.sizes or ([250, 500, 1000] if args.quick else [1000, 2000, 5000])
    if args.hierarchical:
        rows = []
        for n in sizes:
            x, Y = make_data(n, args.tasks, args.seed, torch.float64)
            g, ml_g = hierarchical_gp(x, Y, "grid", args.iters)
            row = {"inputs": n, "tasks": args.tasks, "grid s/iter": g}
            if n * args.tasks <= args.hadamard_max * 4:
                row["hadamard s/iter"], ml_h = hierarchical_gp(x, Y, "hadamard", args.iters)
                row["speed-up"] = row["hadamard s/iter"] / g
                row["log ML rel. diff"] = abs(ml_g - ml_h) / abs(ml_h)
            rows.append(row)
            print(pd.DataFrame([row]).to_string(index=False), flush=True)
        print(f"\nhierarchical GP, float64, {args.threads} torch threads, mean of {args.iters} iterations "
              "after one warm-up (marginal likelihood + gradient + Adam step)")
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"load average {os.getloadavg()}")
        return
    if not args.lmc_only:
        print("\nsame marginal likelihood as GPyTorch's model at the same hyperparameters (float64)")
        print(pd.DataFrame([same_mll_check(300, args.tasks, args.seed)]).to_string(index=False), flush=True)
    rows = []
    for n in [] if args.lmc_only else sizes:
        x, Y = make_data(n, args.tasks, args.seed, dtype)
        row = {"inputs": n, "tasks": args.tasks, "solver": icm.kronecker_solver(n, args.tasks)}
        row["kronecker s/iter"], row["kronecker predict 200 s"], row["kronecker cache s"] = ours(
            x, Y, "kronecker", args.iters)
        other = "cholesky" if row["solver"] == "eigh" else "eigh"
        row[f"kronecker ({other}) s/iter"] = ours(x, Y, "kronecker", args.iters, other)[0]
        row["hadamard s/iter"] = ours(x, Y, "hadamard", args.iters)[0] if n <= args.hadamard_max else float("nan")
        if n <= args.gpytorch_max:
            row["gpytorch s/iter"], row["gpytorch predict 200 s"] = gpytorch_model(x, Y, max(1, args.iters - 1), True)
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False), flush=True)
    if rows:
        df = pd.DataFrame(rows)
        if "gpytorch s/iter" in df:
            df["speed-up vs gpytorch"] = df["gpytorch s/iter"] / df["kronecker s/iter"]
        print(f"\n{args.dtype}, {args.threads} torch threads, mean of {args.iters} iterations after one warm-up")
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    res = lmc(args.lmc_inputs, 10, 1024, args.lmc_iters, args.device, args.seed)
    print("\nvariational LMC (float64 data, 3 latents, 256 inducing points)")
    print(pd.DataFrame([res]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
