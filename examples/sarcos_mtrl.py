"""SARCOS inverse dynamics with linear task-relationship learning (as in Zhang & Yeung 2010).

The 7 joint torques are 7 tasks sharing the 21 inputs (positions, velocities, accelerations);
only the test file is available, so its even rows train and its odd rows test
(``bayesmtl.datasets.sarcos``). Every model is linear in the standardised inputs with a
per-task intercept; each torque is standardised by its training mean and sd (so one prior
scale suits all joints) and mapped back. Reports the normalised MSE per torque on the test rows
(MSE / variance of the test torque) for

* independent Bayesian linear regression (one regression per torque),
* pooled regression (one coefficient vector for all torques),
* task-relationship learning (full LKJ task covariance; W integrated out for NUTS),

and saves the learned 7 x 7 torque correlation heatmap (``torque_correlation.png``), the graph
of pairs whose 90% interval excludes 0 (``torque_graph.png``, ``torque_pairs.csv``), the
correlations with intervals (``relations.csv``) and the NMSE table (``nmse.csv``) in ``--out``.

    .venv/bin/python examples/sarcos_mtrl.py --method nuts --num-chains 2 --seed 0 --out runs/sarcos_mtrl
    .venv/bin/python examples/sarcos_mtrl.py --method svi --seed 0 --out runs/sarcos_mtrl_svi
    .venv/bin/python examples/sarcos_mtrl.py --method svi --max-train 60 --out runs/sarcos_mtrl_n60   # few rows
    .venv/bin/python examples/sarcos_mtrl.py --smoke            # tiny settings (SVI unless --method)

With all 2,225 training rows a torque the data swamp the prior and every linear model is about
as good as independent regression; the task relations pay off when rows are few (``--max-train``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

import bayesmtl as bm
from bayesmtl.datasets import SARCOS_INPUTS, sarcos, sarcos_long


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default=None, help="nuts (default; svi with --smoke) or svi")
    p.add_argument("--num-chains", type=int, default=2, help="MCMC chains")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--steps", type=int, default=10000, help="most SVI steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-train", type=int, default=None, help="use the first n training rows of the wide frame")
    p.add_argument("--smoke", action="store_true", help="tiny settings (300 training rows, a few draws)")
    p.add_argument("--out", default=None, help="output folder (default runs/sarcos_mtrl; a temp folder with --smoke)")
    a = p.parse_args(argv)
    if a.smoke:
        a.method = a.method or "svi"
        a.num_chains, a.warmup, a.draws, a.steps = 1, 30, 30, 300
        a.max_train = a.max_train or 300
    a.method = a.method or "nuts"
    torch.set_num_threads(a.threads)
    out = Path(a.out or (tempfile.mkdtemp(prefix="sarcos_mtrl_") if a.smoke else "runs/sarcos_mtrl"))
    out.mkdir(parents=True, exist_ok=True)
    train_w, test_w = sarcos()
    if a.max_train:
        train_w = train_w.iloc[:a.max_train]
    train, test = sarcos_long(train_w), sarcos_long(test_w)
    stats = train.groupby("joint")["torque"].agg(["mean", "std"])
    for df in (train, test):
        df["torque_z"] = (df["torque"] - df["joint"].map(stats["mean"])) / df["joint"].map(stats["std"])
    data = bm.MultiTaskData.from_frame(train, task="joint", target="torque_z", features=list(SARCOS_INPUTS),
                                       standardize=True)
    print(f"{data}; test: {len(test)} rows; method {a.method}, seed {a.seed}")
    models = {"independent": bm.models.Independent(), "pooled": bm.models.Pooled(),
              "task-relationship": bm.models.TaskRelationship()}
    table, rel, timing = {}, None, {}
    for name, model in models.items():
        opts = {}
        if a.method == "svi":
            opts = {"steps": a.steps, "min_steps": min(2000, a.steps)}
            if name == "task-relationship":  # integrate W out and fit a full-rank guide over Omega
                opts.update(collapse=True, guide="mvn")
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            if a.smoke:
                warnings.simplefilter("ignore", RuntimeWarning)  # SVI stopped before converging
            post = bm.fit(model, data, method=a.method, chains=a.num_chains, warmup=a.warmup, draws=a.draws,
                          seed=a.seed, device=a.device, progress=False, **opts)
        secs = time.perf_counter() - t0
        pred = post.predict(test, seed=a.seed)
        y_hat = pred["mean"].to_numpy() * test["joint"].map(stats["std"]).to_numpy() \
            + test["joint"].map(stats["mean"]).to_numpy()
        err = pd.DataFrame({"joint": test["joint"], "se": (test["torque"].to_numpy() - y_hat) ** 2,
                            "y": test["torque"]})
        nmse = err.groupby("joint").apply(lambda g: g["se"].mean() / g["y"].var(ddof=0), include_groups=False)
        table[name] = nmse
        timing[name] = secs
        d = post.diagnostics()
        print(f"{name}: {secs:.1f} s, path {post.info['path']}, divergences {d['divergences']}, "
              f"max r_hat {_fmt(d.get('max_r_hat'), '.3f')}, min bulk ESS {_fmt(d.get('min_ess_bulk'), '.0f')}",
              flush=True)
        if name == "task-relationship":
            rel = post.relations()
    frame = pd.DataFrame(table)
    frame.loc["mean"] = frame.mean()
    frame.loc["seconds"] = pd.Series(timing)
    print(f"\nnormalised MSE on the test rows (MSE / variance of the test torque), method {a.method}")
    print(frame.round(4).to_string())
    print("\nposterior mean torque correlation (task-relationship)")
    print(rel.mean().round(2).to_string())
    print("\npairs with a 90% interval excluding 0 and |mean| >= 0.3")
    pairs = rel.graph(threshold=0.3, path=out / "torque_graph.png")
    print(pairs.round(3).to_string())
    rel.plot(out / "torque_correlation.png", title="SARCOS: posterior mean torque correlation")
    frame.to_csv(out / "nmse.csv")
    pairs.to_csv(out / "torque_pairs.csv", index=False)
    rel.to_frame(extra=True).to_csv(out / "relations.csv", index=False)
    print(f"\nwrote torque_correlation.png, torque_graph.png, torque_pairs.csv, relations.csv, nmse.csv to {out}")
    return frame


if __name__ == "__main__":
    main()
