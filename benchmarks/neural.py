"""Bayesian heads on a shared network against what a deep multi-task user writes in PyTorch.

SARCOS inverse dynamics (7 torques = 7 tasks, 21 inputs; the test file's even rows train and
its odd rows test, ``bayesmtl.datasets.sarcos``), at the full training set and with each torque
observed at its own random ``--fraction`` of the training inputs. Inputs and each torque are
standardised by their training mean and sd; metrics are on that scale, per torque, averaged.

Every network has the same trunk (21 -> 128 -> 32, SiLU), the same optimiser (Adam, ``--lr``),
the same ``--steps`` minibatches of ``--batch`` (task, input) rows:

* ``independent nets``: one trunk and head per torque (MSE);
* ``hard sharing``: one trunk, 7 heads, equal loss weights (MSE);
* ``hard sharing + Kendall``: the loss weight of each task is its learned noise
  (Kendall, Gal & Cipolla 2018), a point estimate;
* ``bayesmtl DRN``: ``NeuralMultiTask(trunk, prior=TaskRelationship())`` by SVI (Long et al. 2017);
* ``bayesmtl hier. heads``: ``NeuralMultiTask(trunk)`` (hierarchical prior over heads);
* ``bayesmtl linear MTRL``: ``models.TaskRelationship()`` on the inputs (SVI, its defaults);
* ``ICM GP`` (``--gp``, at fractions below 1): ``models.MultitaskGP(kind="icm", rank=7)``, type-II ML.

Point estimates predict N(f(x), s_t^2) with s_t^2 the task's training MSE (Kendall: its learned
noise). Reports SMSE (MSE / variance of the test torque), NLPD (mean negative log predictive
density) and 90% interval coverage, mean +- sd over ``--seeds``, and the DRN's 7 x 7 torque
correlation (seed 0). Needs ``../shared/data/sarcos`` (or ``BAYESMTL_DATA``).

    .venv/bin/python benchmarks/neural.py --seeds 5 --fractions 1.0 0.1 --out runs/bench_neural
    .venv/bin/python benchmarks/neural.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import bayesmtl as bm
from bayesmtl.data import wide_to_long
from bayesmtl.datasets import SARCOS_INPUTS as _IN
from bayesmtl.datasets import SARCOS_TORQUES as _OUT
from bayesmtl.datasets import sarcos

SARCOS_INPUTS, SARCOS_TORQUES = list(_IN), list(_OUT)

Z90 = 1.6448536269514722


def make_trunk(n_in: int, seed: int) -> nn.Module:
    """The trunk every network shares: 21 -> 128 -> 32, SiLU."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, 128), nn.SiLU(), nn.Linear(128, 32), nn.SiLU())


def split(fraction: float, seed: int, max_train: int | None = None):
    """Standardised (train long, test long) frames; each torque keeps its own random
    ``fraction`` of the training inputs."""
    train, test = sarcos()
    if max_train:
        train, test = train.iloc[:max_train], test.iloc[:max_train]
    mx, sx = train[SARCOS_INPUTS].mean(), train[SARCOS_INPUTS].std()
    my, sy = train[SARCOS_TORQUES].mean(), train[SARCOS_TORQUES].std()
    train = pd.concat([(train[SARCOS_INPUTS] - mx) / sx, (train[SARCOS_TORQUES] - my) / sy], axis=1)
    test = pd.concat([(test[SARCOS_INPUTS] - mx) / sx, (test[SARCOS_TORQUES] - my) / sy], axis=1)
    if fraction < 1:
        rng = np.random.default_rng(1000 + seed)
        for c in SARCOS_TORQUES:
            hide = rng.uniform(size=len(train)) >= fraction
            train.loc[hide, c] = np.nan
    return wide_to_long(train, SARCOS_TORQUES), wide_to_long(test, SARCOS_TORQUES)


def scores(y: np.ndarray, mean: np.ndarray, sd_or_lo, hi=None, lpd: np.ndarray | None = None) -> dict:
    """SMSE, NLPD and 90% coverage of one torque's test rows (Gaussian predictive when ``hi`` is None)."""
    if hi is None:
        sd = sd_or_lo
        lo, hi = mean - Z90 * sd, mean + Z90 * sd
        lpd = -0.5 * np.log(2 * math.pi * sd ** 2) - 0.5 * (y - mean) ** 2 / sd ** 2
    else:
        lo = sd_or_lo
    return {"SMSE": float(np.mean((y - mean) ** 2) / np.var(y)), "NLPD": float(-np.mean(lpd)),
            "cover90": float(np.mean((y >= lo) & (y <= hi)))}


# ---------------------------------------------------------------------- plain PyTorch baselines
class Heads(nn.Module):
    """Trunk(s) and one linear head per task; ``independent``: a trunk per task too."""

    def __init__(self, n_in: int, n_tasks: int, independent: bool, kendall: bool, seed: int):
        super().__init__()
        self.trunks = nn.ModuleList([make_trunk(n_in, seed + 17 * k) for k in range(n_tasks if independent else 1)])
        self.heads = nn.Linear(32, n_tasks)
        self.log_var = nn.Parameter(torch.zeros(n_tasks)) if kendall else None

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        if len(self.trunks) == 1:
            return self.heads(self.trunks[0](x)).gather(1, task[:, None]).squeeze(1)
        h = torch.stack([t(x) for t in self.trunks], 1)  # (B, T, 32)
        h = h[torch.arange(len(task)), task]
        return (h * self.heads.weight[task]).sum(-1) + self.heads.bias[task]


def fit_point(kind: str, train: pd.DataFrame, test: pd.DataFrame, a, seed: int) -> tuple[list[dict], float]:
    names = list(SARCOS_TORQUES)
    X = torch.tensor(train[SARCOS_INPUTS].to_numpy(), dtype=torch.float32)
    y = torch.tensor(train["y"].to_numpy(), dtype=torch.float32)
    t = torch.tensor(train["task"].map(names.index).to_numpy())
    net = Heads(X.shape[1], len(names), kind == "independent nets", kind == "hard sharing + Kendall", seed)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        idx = torch.randint(len(y), (min(a.batch, len(y)),), generator=gen)
        err = (net(X[idx], t[idx]) - y[idx]) ** 2
        if net.log_var is None:
            loss = err.mean()
        else:  # Kendall et al.: 1/(2 s^2) MSE + log s per task
            lv = net.log_var[t[idx]]
            loss = (0.5 * torch.exp(-lv) * err + 0.5 * lv).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        fit = net(X, t)
        var = (torch.exp(net.log_var) if net.log_var is not None else
               torch.stack([((fit - y)[t == k] ** 2).mean() for k in range(len(names))]))
        Xt = torch.tensor(test[SARCOS_INPUTS].to_numpy(), dtype=torch.float32)
        tt = torch.tensor(test["task"].map(names.index).to_numpy())
        mean = net(Xt, tt).numpy()
    rows = []
    for k, name in enumerate(names):
        sel = (tt == k).numpy()
        rows.append({"torque": name, **scores(test["y"].to_numpy()[sel], mean[sel], math.sqrt(float(var[k])))})
    return rows, seconds


# ---------------------------------------------------------------------- bayesmtl
def fit_bayes(model, train: pd.DataFrame, test: pd.DataFrame, a, seed: int, **kw) -> tuple[list[dict], float, object]:
    data = bm.MultiTaskData.from_frame(train, task="task", target="y", features=list(SARCOS_INPUTS),
                                       dtype=torch.float32)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(model, data, seed=seed, progress=False, draws=a.draws, **kw)
    seconds = time.perf_counter() - t0
    rows = []
    if isinstance(model, bm.models.MultitaskGP):
        new = post.data.prepare(test, require_target=False)
        with torch.no_grad():
            mu, var = post.model.predictive_moments(post.data, new, post.flat())
        y = torch.tensor(test["y"].to_numpy(), dtype=mu.dtype)
        lpd = (torch.logsumexp(-0.5 * (y - mu) ** 2 / var - 0.5 * torch.log(2 * math.pi * var), 0)
               - math.log(mu.shape[0])).numpy()
        mean, sd = mu.mean(0).numpy(), (var.mean(0) + mu.var(0, correction=0)).sqrt().numpy()
        lo, hi = mean - Z90 * sd, mean + Z90 * sd
    else:
        pred = post.predict(test, seed=seed)
        new = post.data.prepare(test, require_target=True)
        with torch.no_grad():
            ll = post.model.log_likelihood(new, post.flat())
        lpd = (torch.logsumexp(ll.double(), 0) - math.log(ll.shape[0])).numpy()
        mean, lo, hi = pred["mean"].to_numpy(), pred["q05"].to_numpy(), pred["q95"].to_numpy()
    for name in SARCOS_TORQUES:
        sel = (test["task"] == name).to_numpy()
        rows.append({"torque": name, **scores(test["y"].to_numpy()[sel], mean[sel], lo[sel], hi[sel], lpd[sel])})
    return rows, seconds, post


POINT = ("independent nets", "hard sharing", "hard sharing + Kendall")
BAYES = ("bayesmtl DRN", "bayesmtl hier. heads", "bayesmtl linear MTRL")


def fit_one(name: str, train: pd.DataFrame, test: pd.DataFrame, a, seed: int) -> tuple:
    """(per-torque rows, seconds[, posterior]) of the method called ``name``."""
    if name in POINT:
        return fit_point(name, train, test, a, seed)
    svi = dict(method="svi", steps=a.steps, min_steps=a.steps, anneal=0, lr=a.lr, batch_size=a.batch)
    if name == "bayesmtl DRN":
        model = bm.models.NeuralMultiTask(make_trunk(len(SARCOS_INPUTS), seed), prior=bm.priors.TaskRelationship())
    elif name == "bayesmtl hier. heads":
        model = bm.models.NeuralMultiTask(make_trunk(len(SARCOS_INPUTS), seed))
    elif name == "bayesmtl linear MTRL":
        model, svi = bm.models.TaskRelationship(), dict(method="svi")
    else:
        model, svi = bm.models.MultitaskGP(kind="icm", rank=7), dict(method="map")
    return fit_bayes(model, train, test, a, seed, **svi)


def run(a) -> pd.DataFrame:
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fraction in a.fractions:
        for seed in range(a.seeds):
            train, test = split(fraction, seed, a.max_train)
            names = [n for n in [*POINT, *BAYES] + (["ICM GP"] if a.gp and fraction < 1 else [])
                     if a.models is None or n in a.models]
            for name in names:
                got = fit_one(name, train, test, a, seed)
                per, seconds = got[0], got[1]
                if name == "bayesmtl DRN" and seed == 0:
                    corr = got[2].relations().to_frame()
                    corr.to_csv(out / f"drn_correlation_f{fraction:g}.csv", index=False)
                for r in per:
                    rows.append({"fraction": fraction, "seed": seed, "model": name, "seconds": seconds, **r})
                row = pd.DataFrame(per)[["SMSE", "NLPD", "cover90"]].mean()
                print(json.dumps({"fraction": fraction, "seed": seed, "model": name, "seconds": round(seconds, 1),
                                  **{k: round(float(v), 4) for k, v in row.items()}}), flush=True)
            pd.DataFrame(rows).to_csv(out / "per_torque.csv", index=False)  # nothing lost if stopped
    df = pd.DataFrame(rows)
    per_seed = df.groupby(["fraction", "model", "seed"])[["SMSE", "NLPD", "cover90", "seconds"]].mean()
    table = per_seed.groupby(["fraction", "model"]).agg(["mean", "std"])
    print(table.round(3).to_string())
    table.to_csv(out / "summary.csv")
    return df


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    p.add_argument("--steps", type=int, default=3000, help="minibatch steps of every network")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--draws", type=int, default=300, help="posterior draws kept (bayesmtl)")
    p.add_argument("--gp", action=argparse.BooleanOptionalAction, default=True, help="the ICM GP at fractions < 1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=None, help="only these (names as in the table)")
    p.add_argument("--max-train", type=int, default=None, help="first n wide rows of train and test")
    p.add_argument("--smoke", action="store_true", help="1 seed, 300 rows, 100 steps, no GP")
    p.add_argument("--out", default="runs/bench_neural")
    a = p.parse_args(argv)
    if a.smoke:
        a.seeds, a.steps, a.max_train, a.draws, a.gp, a.fractions = 1, 100, 300, 50, False, [1.0, 0.2]
    return run(a)


if __name__ == "__main__":
    main()
