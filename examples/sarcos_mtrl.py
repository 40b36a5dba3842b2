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

and saves the learned 7 x 7 torque correlation heatmap.

    .venv/bin/python examples/sarcos_mtrl.py --method nuts --seed 0 --out runs/sarcos_mtrl
    .venv/bin/python examples/sarcos_mtrl.py --method svi --draws 1000 --seed 0 --out runs/sarcos_mtrl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

import bayesmtl as bm
from bayesmtl.datasets import SARCOS_INPUTS, sarcos, sarcos_long


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="nuts")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/sarcos_mtrl")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train_w, test_w = sarcos()
    train, test = sarcos_long(train_w), sarcos_long(test_w)
    stats = train.groupby("joint")["torque"].agg(["mean", "std"])
    for df in (train, test):
        df["torque_z"] = (df["torque"] - df["joint"].map(stats["mean"])) / df["joint"].map(stats["std"])
    data = bm.MultiTaskData.from_frame(train, task="joint", target="torque_z", features=list(SARCOS_INPUTS),
                                       standardize=True)
    print(f"{data}; test: {len(test)} rows")
    models = {"independent": bm.models.Independent(), "pooled": bm.models.Pooled(),
              "task-relationship": bm.models.TaskRelationship()}
    table, rel = {}, None
    for name, model in models.items():
        t0 = time.perf_counter()
        # SVI: integrate W out for the task-relationship model and fit a full-rank guide over Omega
        opts = {"collapse": True, "guide": "mvn"} if a.method == "svi" and name == "task-relationship" else {}
        post = bm.fit(model, data, method=a.method, chains=a.chains, warmup=a.warmup, draws=a.draws,
                      seed=a.seed, progress=False, **opts)
        secs = time.perf_counter() - t0
        pred = post.predict(test, seed=a.seed)
        y_hat = pred["mean"].to_numpy() * test["joint"].map(stats["std"]).to_numpy() \
            + test["joint"].map(stats["mean"]).to_numpy()
        err = pd.DataFrame({"joint": test["joint"], "se": (test["torque"].to_numpy() - y_hat) ** 2,
                            "y": test["torque"]})
        nmse = err.groupby("joint").apply(lambda g: g["se"].mean() / g["y"].var(ddof=0), include_groups=False)
        table[name] = nmse
        print(f"{name}: {secs:.1f} s, path {post.info['path']}, {post.diagnostics()}", flush=True)
        if name == "task-relationship":
            rel = post.relations()
    frame = pd.DataFrame(table)
    frame.loc["mean"] = frame.mean()
    print("\nnormalised MSE on the test rows (MSE / variance of the test torque)")
    print(frame.round(4).to_string())
    print("\nposterior mean torque correlation (task-relationship)")
    print(rel.mean().round(2).to_string())
    print("\npairs with a 90% interval excluding 0 and |mean| >= 0.3")
    print(rel.graph(threshold=0.3, path=out / "torque_graph.png").round(3).to_string())
    rel.plot(out / "torque_correlation.png", title="SARCOS: posterior mean torque correlation")
    frame.to_csv(out / "nmse.csv")
    print(f"\nwrote {out / 'torque_correlation.png'}, {out / 'torque_graph.png'}, {out / 'nmse.csv'}")


if __name__ == "__main__":
    main()
