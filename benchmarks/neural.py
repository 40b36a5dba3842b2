"""Bayesian heads on a shared network against what a deep multi-task user writes in PyTorch.

Cases (``--case``):

* ``sarcos``: SARCOS inverse dynamics (7 torques = 7 tasks, 21 inputs; the test file's even rows
  train and its odd rows test, ``bayesmtl.datasets.sarcos``), at the full training set and
  with each torque observed at its own random ``--fraction`` of the training inputs.
* ``parkinsons``: Parkinson's telemonitoring, 42 patients = tasks, target ``motor_UPDRS`` from
  the 16 voice measures, age, sex and test time; split by time within each patient (first 75%
  of each patient's recordings train) and leave-patients-out (8 random patients held out:
  new tasks).
* ``mixed``: a planted problem, 3 regression tasks (noise 0.1, 0.3, 0.6) and 2 classification
  tasks on one nonlinear feature map.
* ``speed``: steps per second and peak memory at 100k rows, each method in its own process.

Inputs and each task's target are standardised by their training mean and sd; metrics are on
that scale (Parkinson's RMSE in UPDRS points). Every network has the same trunk (F -> 128 -> 32,
SiLU), optimiser (Adam, ``--lr``) and budget (``--steps`` minibatches of ``--batch`` rows):

* ``independent nets``: one trunk and head per task (SARCOS only: 42 patients' nets cost too much);
* ``pooled net``: one trunk, one head for all tasks (Parkinson's);
* ``hard sharing``: one trunk, a head per task, equal loss weights;
* ``hard sharing + Kendall``: each task's loss weighted by its learned noise (Kendall, Gal &
  Cipolla 2018), a point estimate;
* ``bayesmtl DRN``: ``NeuralMultiTask(trunk, prior=TaskRelationship())`` by SVI (Long et al. 2017);
* ``bayesmtl DRN, Bayesian trunk`` / ``bayesmtl hier. heads, Bayesian trunk``: the same with
  ``trunk_prior=1.0``, a mean-field posterior over the trunk's weights too (Parkinson's: also
  with ``validate_by="tasks"``);
* ``bayesmtl hier. heads``: ``NeuralMultiTask(trunk)`` (hierarchical prior over the heads);
  ``..., tasks held out`` (Parkinson's): early stopping on a fifth of the training patients held
  out whole and scored as new patients (``validate_by="tasks"``), then a refit on every patient;
* ``bayesmtl linear MTRL`` / ``bayesmtl linear hier.``: the linear models on the inputs (SVI, defaults);
* ``ICM GP`` (SARCOS at fractions below 1, ``--gp``): ``MultitaskGP(kind="icm", rank=7)``, type-II MAP.

Point estimates predict N(f(x), s_t^2), s_t^2 the task's training MSE (Kendall: its learned
noise); a new patient gets the mean of the heads. Reports SMSE (MSE / variance of the test
target), RMSE, NLPD (mean negative log predictive density) and 90% coverage, mean +- sd over
``--seeds``, per task in ``per_task.csv``. Needs ``../shared/data`` (or ``BAYESMTL_DATA``).

    .venv/bin/python benchmarks/neural.py --case sarcos --seeds 5 --out runs/bench_neural
    .venv/bin/python benchmarks/neural.py --case parkinsons --seeds 5 --out runs/bench_neural
    .venv/bin/python benchmarks/neural.py --case mixed --seeds 5 --out runs/bench_neural
    .venv/bin/python benchmarks/neural.py --case speed --out runs/bench_neural
    .venv/bin/python benchmarks/neural.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import bayesmtl as bm
from bayesmtl.data import wide_to_long
from bayesmtl.datasets import PARKINSONS_VOICE, SARCOS_INPUTS, SARCOS_TORQUES, parkinsons, sarcos

Z90 = 1.6448536269514722
POINT = ("independent nets", "pooled net", "hard sharing", "hard sharing + Kendall")


def make_trunk(n_in: int, seed: int, width: int = 128) -> nn.Module:
    """The trunk every network shares: F -> width (128) -> 32, SiLU."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, width), nn.SiLU(), nn.Linear(width, 32), nn.SiLU())


def _standardise(train: pd.DataFrame, test: pd.DataFrame, cols: list[str]):
    m, s = train[cols].mean(), train[cols].std().replace(0, 1)
    return train.assign(**((train[cols] - m) / s)), test.assign(**((test[cols] - m) / s))


def _standardise_y(train: pd.DataFrame, test: pd.DataFrame, per_task: bool = True):
    """Each task's target by its training mean and sd (tasks unseen in training: the pooled ones);
    ``per_task=False``: all by the pooled ones."""
    if not per_task:
        m, s = train["y"].mean(), train["y"].std()
        return train.assign(y=(train["y"] - m) / s), test.assign(y=(test["y"] - m) / s), np.full(len(test), s)
    g = train.groupby("task")["y"]
    m, s = g.transform("mean"), g.transform("std")
    mt = test["task"].map(g.mean()).fillna(train["y"].mean())
    st = test["task"].map(g.std()).fillna(train["y"].std())
    return train.assign(y=(train["y"] - m) / s), test.assign(y=(test["y"] - mt) / st), st.to_numpy()


# ---------------------------------------------------------------------- data
def sarcos_split(fraction: float, seed: int, max_train: int | None = None):
    """(train, test, features, unit) long frames; each torque keeps its own ``fraction`` of the inputs."""
    inputs, torques = list(SARCOS_INPUTS), list(SARCOS_TORQUES)
    train, test = sarcos()
    if max_train:
        train, test = train.iloc[:max_train].copy(), test.iloc[:max_train].copy()
    if fraction < 1:
        rng = np.random.default_rng(1000 + seed)
        for c in torques:
            train.loc[rng.uniform(size=len(train)) >= fraction, c] = np.nan
    train, test = wide_to_long(train, torques), wide_to_long(test, torques)
    train, test = _standardise(train, test, inputs)
    train, test, unit = _standardise_y(train, test)
    return train, test, inputs, unit


def parkinsons_split(kind: str, seed: int, max_rows: int | None = None):
    """(train, test, features, unit): ``time`` (first 75% of each patient's recordings train) or
    ``patients`` (8 random patients held out)."""
    df = parkinsons().rename(columns={"patient": "task", "motor_UPDRS": "y"}).drop(columns="total_UPDRS")
    feats = ["age", "sex", "test_time", *PARKINSONS_VOICE]
    if max_rows:
        df = df.groupby("task").head(max_rows // 42 + 1)
    if kind == "time":
        rank = df.groupby("task")["test_time"].rank(pct=True, method="first")
        train, test = df[rank <= 0.75], df[rank > 0.75]
    else:
        rng = np.random.default_rng(2000 + seed)
        out = rng.choice(sorted(df["task"].unique()), size=8, replace=False)
        train, test = df[~df["task"].isin(out)], df[df["task"].isin(out)]
    train, test = _standardise(train, test, feats)
    # one scale for all patients: a patient's UPDRS is interpolated between visits, nearly constant
    # within a split, so a per-patient scale would blow up its errors
    train, test, unit = _standardise_y(train, test, per_task=False)
    return train, test, feats, unit


# ---------------------------------------------------------------------- scores
def scores(y, mean, lo, hi, lpd, unit, ref_var: float | None = None) -> dict:
    """SMSE (MSE / ``ref_var``, default the variance of y), RMSE (in the target's units), NLPD
    (in those units) and 90% coverage."""
    return {"SMSE": float(np.mean((y - mean) ** 2) / (np.var(y) if ref_var is None else ref_var)),
            "RMSE": float(np.sqrt(np.mean(((y - mean) * unit) ** 2))),
            "NLPD": float(-np.mean(lpd - np.log(unit))), "cover90": float(np.mean((y >= lo) & (y <= hi)))}


def per_task(test: pd.DataFrame, mean, lo, hi, lpd, unit) -> list[dict]:
    """Scores per task; SMSE against the whole test set's variance where the unit is shared."""
    y = test["y"].to_numpy()
    unit = np.broadcast_to(np.asarray(unit, dtype=float), y.shape)
    ref = float(np.var(y)) if np.all(unit == unit[0]) else None
    return [{"task": t, **scores(y[s], mean[s], lo[s], hi[s], lpd[s], unit[s], ref)}
            for t in test["task"].unique() for s in [(test["task"] == t).to_numpy()]]


# ---------------------------------------------------------------------- plain PyTorch baselines
class Heads(nn.Module):
    """Trunk(s) and one linear head per task (``independent``: a trunk per task too; ``pooled``:
    one head); ``kendall``: a learned log noise variance per task."""

    def __init__(self, n_in: int, n_tasks: int, kind: str, seed: int, width: int = 128):
        super().__init__()
        k = n_tasks if kind == "independent nets" else 1
        self.trunks = nn.ModuleList([make_trunk(n_in, seed + 17 * j, width) for j in range(k)])
        self.heads = nn.Linear(32, 1 if kind == "pooled net" else n_tasks)
        self.log_var = nn.Parameter(torch.zeros(n_tasks)) if kind == "hard sharing + Kendall" else None

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Predictions (B,); a task index of -1 (a new task) gets the mean head."""
        task = task.clamp_min(0) if self.heads.out_features > 1 else torch.zeros_like(task)
        if len(self.trunks) == 1:
            h = self.trunks[0](x)
        else:
            h = torch.stack([t(x) for t in self.trunks], 1)[torch.arange(len(task)), task]
        return (h * self.heads.weight[task]).sum(-1) + self.heads.bias[task]

    def predict(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        if (task >= 0).all() or self.heads.out_features == 1:
            return self(x, task)
        h = self.trunks[0](x)
        new = h @ self.heads.weight.mean(0) + self.heads.bias.mean()
        return torch.where(task >= 0, self(x, task), new)


def fit_point(kind, train, test, feats, unit, a, seed, task_kinds=None):
    names = list(dict.fromkeys(train["task"]))
    dev = torch.device(getattr(a, "device", "cpu"))
    X = torch.tensor(train[feats].to_numpy(), dtype=torch.float32, device=dev)
    y = torch.tensor(train["y"].to_numpy(), dtype=torch.float32, device=dev)
    t = torch.tensor(train["task"].map(names.index).to_numpy(), device=dev)
    binary = torch.tensor([task_kinds.get(n) == "bernoulli" for n in names], device=dev) if task_kinds else None
    net = Heads(X.shape[1], len(names), kind, seed, getattr(a, "width", 128)).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    gen = torch.Generator(device=dev).manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        idx = torch.randint(len(y), (min(a.batch, len(y)),), generator=gen, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=getattr(a, "bf16", False)):
            f = net(X[idx], t[idx])
        f = f.float()
        err = (f - y[idx]) ** 2
        if binary is not None:  # classification tasks: cross-entropy; Kendall: 1/s^2 CE + log s
            ce = nn.functional.binary_cross_entropy_with_logits(f, y[idx], reduction="none")
            err = torch.where(binary[t[idx]], 2 * ce, err)
        if net.log_var is None:
            loss = err.mean()
        else:  # Kendall et al.: 1/(2 s^2) MSE + log s per task
            lv = net.log_var[t[idx]]
            loss = (0.5 * torch.exp(-lv) * err + 0.5 * lv).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        fit = net(X, t)
        var = (torch.exp(net.log_var) if net.log_var is not None else
               torch.stack([((fit - y)[t == k] ** 2).mean() for k in range(len(names))]))
        var, t = var.cpu(), t.cpu()
        Xt = torch.tensor(test[feats].to_numpy(), dtype=torch.float32, device=dev)
        tt = torch.tensor(test["task"].map({n: i for i, n in enumerate(names)}).fillna(-1).astype(int).to_numpy())
        mean = net.predict(Xt, tt.to(dev)).float().cpu().numpy()
    sd = np.sqrt(np.where(tt.numpy() >= 0, var.numpy()[tt.clamp_min(0).numpy()], float(var.mean())))
    lpd = -0.5 * np.log(2 * math.pi * sd ** 2) - 0.5 * (test["y"].to_numpy() - mean) ** 2 / sd ** 2
    extra = {"noise": var.sqrt().tolist(), "mean": mean}
    return per_task(test, mean, mean - Z90 * sd, mean + Z90 * sd, lpd, unit), seconds, extra


# ---------------------------------------------------------------------- bayesmtl
def fit_bayes(model, train, test, feats, unit, a, seed, **kw):
    data = bm.MultiTaskData.from_frame(train, task="task", target="y", features=feats, dtype=torch.float32)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(model, data, seed=seed, progress=False, draws=a.draws, **kw)
    seconds = time.perf_counter() - t0
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
        with torch.no_grad():  # a new task's draws are drawn once per posterior draw: the mixture over them
            gen = torch.Generator().manual_seed(seed)
            ll = post.model.log_likelihood(new, post.flat(), train=post.data, generator=gen)
        lpd = (torch.logsumexp(ll.double(), 0) - math.log(ll.shape[0])).numpy()
        mean, lo, hi = pred["mean"].to_numpy(), pred["q05"].to_numpy(), pred["q95"].to_numpy()
    return per_task(test, mean, lo, hi, lpd, unit), seconds, post


def fit_one(name, train, test, feats, unit, a, seed):
    """(per-task rows, seconds, posterior or extras) of the method called ``name``."""
    if name in POINT:
        return fit_point(name, train, test, feats, unit, a, seed)
    svi = dict(method="svi", steps=a.steps, min_steps=a.steps, anneal=0, lr=a.lr, batch_size=a.batch)
    if name == "bayesmtl DRN":
        model = bm.models.NeuralMultiTask(make_trunk(len(feats), seed), prior=bm.priors.TaskRelationship())
    elif name == "bayesmtl DRN, Bayesian trunk":
        model = bm.models.NeuralMultiTask(make_trunk(len(feats), seed), prior=bm.priors.TaskRelationship(),
                                          trunk_prior=1.0)
    elif name == "bayesmtl hier. heads":
        model = bm.models.NeuralMultiTask(make_trunk(len(feats), seed))
    elif name.startswith("bayesmtl hier. heads, Bayesian trunk"):
        model = bm.models.NeuralMultiTask(make_trunk(len(feats), seed), trunk_prior=1.0)
        if name.endswith("tasks held out"):
            svi.update(validation=0.2, validate_by="tasks")
    elif name == "bayesmtl hier. heads, tasks held out":  # early stopping on new patients' rows
        model = bm.models.NeuralMultiTask(make_trunk(len(feats), seed))
        svi.update(validation=0.2, validate_by="tasks")
    elif name == "bayesmtl linear MTRL":
        model, svi = bm.models.TaskRelationship(), dict(method="svi")
    elif name == "bayesmtl linear hier.":  # one sigma: a patient's UPDRS, interpolated between visits, is
        # fitted exactly by its own line in time, which leaves a sigma of its own unbounded below
        model, svi = bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian(noise="shared")), dict(method="svi")
    else:
        model, svi = bm.models.MultitaskGP(kind="icm", rank=7), dict(method="map")
    return fit_bayes(model, train, test, feats, unit, a, seed, **svi)


def _report(rows: list[dict], out: Path, keys: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df.to_csv(out / "per_task.csv", index=False)
    per_seed = df.groupby([*keys, "model", "seed"])[["SMSE", "RMSE", "NLPD", "cover90", "seconds"]].mean()
    table = per_seed.groupby([*keys, "model"]).agg(["mean", "std"])
    print(table.round(3).to_string(), flush=True)
    table.to_csv(out / "summary.csv")
    return table


def _run_split(rows, setting: dict, train, test, feats, unit, names, a, seed, out: Path, corr_name: str):
    for name in names:
        per, seconds, extra = fit_one(name, train, test, feats, unit, a, seed)
        if name == "bayesmtl DRN" and seed == 0:
            extra.relations().to_frame().to_csv(out / corr_name, index=False)
        rows += [{**setting, "seed": seed, "model": name, "seconds": seconds, **r} for r in per]
        mean = pd.DataFrame(per)[["SMSE", "RMSE", "NLPD", "cover90"]].mean()
        print(json.dumps({**setting, "seed": seed, "model": name, "seconds": round(seconds, 1),
                          **{k: round(float(v), 4) for k, v in mean.items()}}), flush=True)


def case_sarcos(a, out: Path) -> pd.DataFrame:
    rows = []
    for fraction in a.fractions:
        for seed in range(a.seeds):
            train, test, feats, unit = sarcos_split(fraction, seed, a.max_train)
            names = ["independent nets", "hard sharing", "hard sharing + Kendall", "bayesmtl DRN",
                     "bayesmtl DRN, Bayesian trunk", "bayesmtl hier. heads", "bayesmtl linear MTRL"]
            names += ["ICM GP"] if a.gp and fraction < 1 else []
            names = [n for n in names if a.models is None or n in a.models]
            _run_split(rows, {"fraction": fraction}, train, test, feats, unit, names, a, seed, out,
                       f"sarcos_drn_correlation_f{fraction:g}.csv")
            _report(rows, out, ["fraction"])
    return _report(rows, out, ["fraction"])


def case_parkinsons(a, out: Path) -> pd.DataFrame:
    rows = []
    for split in a.splits:
        for seed in range(a.seeds):
            train, test, feats, unit = parkinsons_split(split, seed, a.max_train)
            names = ["pooled net", "hard sharing", "hard sharing + Kendall", "bayesmtl hier. heads",
                     "bayesmtl hier. heads, tasks held out", "bayesmtl hier. heads, Bayesian trunk",
                     "bayesmtl hier. heads, Bayesian trunk, tasks held out", "bayesmtl linear hier."]
            names = [n for n in names if a.models is None or n in a.models]
            _run_split(rows, {"split": split}, train, test, feats, unit, names, a, seed, out,
                       f"parkinsons_drn_{split}.csv")
            _report(rows, out, ["split"])
    return _report(rows, out, ["split"])


def mixed_data(n: int, seed: int):
    """3 regression tasks (noise 0.1, 0.3, 0.6) and 2 classification tasks on one map (wide)."""
    rng = np.random.default_rng(seed)
    W = np.random.default_rng(77).normal(size=(5, 3))
    X = rng.normal(size=(n, 4))
    f = np.stack([np.sin(2 * X[:, 0]), X[:, 1] * X[:, 2], np.tanh(X[:, 3] - X[:, 0])], 1) @ W.T
    wide = pd.DataFrame(X, columns=[f"x{j}" for j in range(4)])
    for t, s in enumerate([0.1, 0.3, 0.6]):
        wide[f"r{t}"] = f[:, t] + s * rng.normal(size=n)
    for t in (3, 4):
        wide[f"c{t}"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-2 * f[:, t]))).astype(float)
    return wide


def case_mixed(a, out: Path) -> pd.DataFrame:
    """Regression tasks' SMSE and learned noise, classification tasks' log loss and accuracy."""
    targets, feats = ["r0", "r1", "r2", "c3", "c4"], ["x0", "x1", "x2", "x3"]
    kinds = {t: "gaussian" if t[0] == "r" else "bernoulli" for t in targets}
    rows = []
    for seed in range(a.seeds):
        train = wide_to_long(mixed_data(a.max_train or 400, seed), targets)
        test = wide_to_long(mixed_data(2000, 10_000 + seed), targets)
        for name in ("hard sharing", "hard sharing + Kendall", "bayesmtl hier. heads"):
            t0 = time.perf_counter()
            if name in POINT:  # the nets' raw outputs: a regression's mean, a classification's logit
                _, seconds, extra = fit_point(name, train, test, feats, 1.0, a, seed, task_kinds=kinds)
                noise = dict(zip(dict.fromkeys(train["task"]), extra["noise"], strict=True))
                out_ = extra["mean"]
                prob = np.where(test["task"].str.startswith("c"), 1 / (1 + np.exp(-out_)), out_)
            else:
                data = bm.MultiTaskData.from_frame(train, task="task", target="y", features=feats, dtype=torch.float32)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    post = bm.fit(bm.models.NeuralMultiTask(make_trunk(4, seed), likelihood=kinds), data,
                                  method="svi", steps=a.steps, min_steps=a.steps, anneal=0, lr=a.lr,
                                  batch_size=a.batch, draws=a.draws, seed=seed, progress=False)
                seconds = time.perf_counter() - t0
                s = post.summary()
                noise = {t: float(s.loc[f"sigma_gaussian[{t}]", "mean"]) for t in targets[:3]}
                prob = post.predict(test, seed=seed)["mean"].to_numpy()
            for t in targets:
                sel = (test["task"] == t).to_numpy()
                y = test["y"].to_numpy()[sel]
                if t[0] == "r":
                    r = {"SMSE": float(np.mean((y - prob[sel]) ** 2) / np.var(y)), "noise": noise[t]}
                else:
                    q = np.clip(prob[sel], 1e-6, 1 - 1e-6)
                    r = {"log_loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))),
                         "accuracy": float(np.mean((q > 0.5) == (y > 0.5)))}
                rows.append({"seed": seed, "model": name, "task": t, "seconds": seconds, **r})
            print(json.dumps({"seed": seed, "model": name, "noise": {k: round(v, 3) for k, v in noise.items()},
                              "seconds": round(seconds, 1)}), flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "mixed.csv", index=False)
    table = df.groupby(["model", "task"])[[c for c in ("SMSE", "noise", "log_loss", "accuracy") if c in df]].agg(
        ["mean", "std"])
    print(table.round(3).to_string())
    return table


def speed_one(which: str, rows: int, steps: int, batch: int, width: int = 128, threads: int = 2,
              device: str = "cpu") -> dict:
    """Steps per second and peak memory (this process; on CUDA also the GPU's peak allocation) of
    one method on ``rows`` rows, 10 tasks; ", bf16" in ``which``: mixed precision (autocast to
    bfloat16; bayesmtl ``precision="bf16"``); "untraced": bayesmtl with ``jit=False``."""
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 21)).astype(np.float32)
    task = np.repeat(np.arange(10), rows // 10)
    y = np.sin(X[:, 0]) * (1 + task / 10) + 0.1 * rng.normal(size=rows)
    df = pd.DataFrame(X, columns=[f"x{j}" for j in range(21)]).assign(task=[f"t{t}" for t in task], y=y)
    feats = [f"x{j}" for j in range(21)]
    t0 = time.perf_counter()
    bf16 = which.endswith(", bf16")
    if which.startswith("bayesmtl hier. heads"):
        data = bm.MultiTaskData.from_frame(df, task="task", target="y", features=feats, dtype=torch.float32)
        prior = 1.0 if "Bayesian trunk" in which else None
        model = bm.models.NeuralMultiTask(make_trunk(21, 0, width), trunk_prior=prior,
                                          precision="bf16" if bf16 else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post = bm.fit(model, data, method="svi",
                          steps=steps, min_steps=steps, anneal=0, batch_size=batch, draws=100, seed=0,
                          progress=False, device=device, **({"jit": False} if "untraced" in which else {}))
        rate = post.info["steps_per_second"]
    else:
        class A:
            pass
        a = A()
        a.lr, a.steps, a.batch, a.bf16, a.width, a.device = 3e-3, steps, batch, bf16, width, device
        _, seconds, _ = fit_point(which, df, df.head(100), feats, 1.0, a, 0)
        rate = steps / seconds
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    return {"method": which, "device": device, "width": width, "rows": rows, "steps_per_second": rate,
            "seconds": time.perf_counter() - t0, "peak_rss_mb": peak, "peak_gpu_mb": gpu}


def case_speed(a, out: Path) -> pd.DataFrame:
    rows = []
    for which in ("hard sharing", "hard sharing + Kendall", "bayesmtl hier. heads", "bayesmtl hier. heads, untraced",
                  "bayesmtl hier. heads, Bayesian trunk", "hard sharing, bf16", "bayesmtl hier. heads, bf16"):
        if a.models is not None and which not in a.models and which != "hard sharing":
            continue  # (hard sharing is the ratio's base)
        cmd = [sys.executable, __file__, "--case", "speed-one", "--which", which, "--steps", str(a.steps),
               "--batch", str(a.batch), "--max-train", str(a.max_train or 100_000), "--width", str(a.width),
               "--threads", str(a.threads), "--device", a.device]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:  # the row is left out; the others still run
            print(f"{which}: failed\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    df = pd.DataFrame(rows)
    base = df.loc[df["method"] == "hard sharing", "steps_per_second"]
    df["ratio_to_hard_sharing"] = df["steps_per_second"] / (base.iloc[0] if len(base) else float("nan"))
    print(df.round(2).to_string(index=False))
    df.to_csv(out / "speed.csv", index=False)
    return df


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="sarcos", choices=["sarcos", "parkinsons", "mixed", "speed", "speed-one"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1], help="SARCOS training fractions")
    p.add_argument("--splits", nargs="+", default=["time", "patients"], choices=["time", "patients"],
                   help="Parkinson's splits")
    p.add_argument("--steps", type=int, default=3000, help="minibatch steps of every network")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--draws", type=int, default=300, help="posterior draws kept (bayesmtl)")
    p.add_argument("--gp", action=argparse.BooleanOptionalAction, default=True, help="the ICM GP at fractions < 1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=None, help="only these (names as in the table)")
    p.add_argument("--max-train", type=int, default=None, help="SARCOS: first n wide rows; Parkinson's: about n "
                   "rows; mixed: training rows; speed: rows")
    p.add_argument("--width", type=int, default=128, help="the trunk's hidden width (speed case)")
    p.add_argument("--device", default="cpu", help="speed case: cpu or cuda")
    p.add_argument("--which", default=None, help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="1 seed, a few hundred rows (1,500 for Parkinson's), 60 "
                   "steps, no GP")
    p.add_argument("--out", default="runs/bench_neural")
    a = p.parse_args(argv)
    if a.case == "speed-one":
        print(json.dumps(speed_one(a.which, a.max_train, a.steps, a.batch, a.width, a.threads, a.device)))
        return None
    if a.smoke:
        a.seeds, a.steps, a.max_train, a.draws, a.gp, a.fractions = 1, 60, 300, 50, False, [0.3]
        if a.case == "parkinsons":  # 300 rows are 7 a patient for 20 coefficients: each patient's line fits
            a.max_train = 1500      # exactly, and the linear model's shared noise sd runs to 0 (ELBO inf)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    return {"sarcos": case_sarcos, "parkinsons": case_parkinsons, "mixed": case_mixed, "speed": case_speed}[a.case](
        a, out)


if __name__ == "__main__":
    main()
