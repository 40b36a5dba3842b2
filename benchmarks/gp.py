"""Exact ICM: seconds per training iteration, Kronecker vs Hadamard vs GPyTorch's multitask model.

One iteration = marginal likelihood + gradient + an Adam step. GPyTorch's documented model is
``ExactGP`` with ``MultitaskMean``, ``MultitaskKernel(RBFKernel(), rank=1)`` and
``MultitaskGaussianLikelihood`` (returns ``MultitaskMultivariateNormal``), trained the same way
on the same data. Prediction: time to predict 200 new inputs (all tasks) after training,
ours from the cached Kronecker factors.

    .venv/bin/python benchmarks/gp.py            # 1000, 2000, 5000 inputs x 4 tasks
    .venv/bin/python benchmarks/gp.py --quick    # 250, 500, 1000
"""

from __future__ import annotations

import argparse
import math
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


def ours(x, Y, path, iters):
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
            return icm.kronecker_mll(x, Y, B, raw["ls"].exp(), raw["nz"].exp(), raw["m"])
        return icm.hadamard_mll(xl, yl, task, B, raw["ls"].exp(), raw["nz"].exp(), raw["m"])

    times = []
    for _ in range(iters + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = -mll() / Y.numel()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    pred = float("nan")
    if path == "kronecker":
        with torch.no_grad():
            B = icm.task_covariance(raw["W"], raw["v"].exp())
            ls, nz, m = raw["ls"].exp(), raw["nz"].exp(), raw["m"]
            xs = torch.rand(200, 1, dtype=dt)
            t0 = time.perf_counter()
            c = icm.kronecker_cache(x, Y, B, ls, nz, m, "rbf")  # once after training
            xs_all = xs.repeat_interleave(T, 0)
            icm.kronecker_predict(c, x, xs_all, torch.arange(T).repeat(200), B, ls, m, "rbf")
            pred = time.perf_counter() - t0
    return float(np.mean(times[1:])), pred


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    sizes = args.sizes or ([250, 500, 1000] if args.quick else [1000, 2000, 5000])
    rows = []
    for n in sizes:
        x, Y = make_data(n, args.tasks, args.seed, dtype)
        row = {"inputs": n, "tasks": args.tasks}
        row["kronecker s/iter"], row["kronecker predict 200 s"] = ours(x, Y, "kronecker", args.iters)
        row["hadamard s/iter"] = ours(x, Y, "hadamard", args.iters)[0] if n <= args.hadamard_max else float("nan")
        if n <= args.gpytorch_max:
            row["gpytorch s/iter"], row["gpytorch predict 200 s"] = gpytorch_model(x, Y, max(1, args.iters - 1), True)
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    if "gpytorch s/iter" in df:
        df["speed-up vs gpytorch"] = df["gpytorch s/iter"] / df["kronecker s/iter"]
    print(f"\n{args.dtype}, {args.threads} torch threads, mean of {args.iters} iterations after one warm-up")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
