"""Computer survey (Lenk et al. 1996; Argyriou et al. 2008): 190 respondents (tasks) rate 20 PC
profiles described by 13 binary attributes (+ a constant). The first 16 profiles train, the
last 4 test. Reports RMSE of the held-out ratings (posterior predictive mean) for

* independent Bayesian linear regression per respondent,
* the hierarchical model (partial pooling towards a population of respondents),
* task-relationship learning (MTRL) with a low-rank task covariance (rank 5 by default),

plus the task-relationship model's respondent relations. Ratings are used as they are (0..10);
the attributes are -1/+1 codes, not standardised. The task-relationship prior learns a
population mean (``mean=Normal(0, 10)``) so Omega describes how respondents deviate from it.
With the Gaussian likelihood its coefficients W are integrated out in closed form (for SVI too:
the mean-field guide then covers Omega, the feature scales and the noise only) and drawn exactly.
Writes ``rmse.csv``, ``relations.csv`` (every pair, with ``p_positive``), ``pairs.csv`` (pairs
whose 90% interval excludes 0 and |mean| >= 0.5) and ``respondent_correlation.png`` to ``--out``.

    .venv/bin/python examples/computer_survey.py --method svi --rank 5 --seed 0 --out runs/computer_survey
    .venv/bin/python examples/computer_survey.py --smoke
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyro.distributions as dist
import torch

import bayesmtl as bm
from bayesmtl.datasets import computer_survey


def rmse(post, test: pd.DataFrame, seed: int) -> float:
    pred = post.predict(test, seed=seed)
    return float(np.sqrt(np.mean((pred["mean"].to_numpy() - test["rating"].to_numpy()) ** 2)))


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="svi", help="svi (default) or nuts")
    p.add_argument("--rank", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--num-chains", type=int, default=2, help="MCMC chains")
    p.add_argument("--warmup", type=int, default=500, help="MCMC warmup")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20000, help="most SVI steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default="independent,hierarchical,task-relationship")
    p.add_argument("--respondents", type=int, default=None, help="use the first n respondents")
    p.add_argument("--smoke", action="store_true", help="tiny settings: 40 respondents, 300 SVI steps")
    p.add_argument("--out", default=None, help="output folder (default runs/computer_survey; temp with --smoke)")
    a = p.parse_args(argv)
    if a.smoke:
        a.num_chains, a.warmup, a.draws, a.steps = 1, 30, 30, 300
        a.respondents = a.respondents or 40
    torch.set_num_threads(a.threads)
    out = Path(a.out or (tempfile.mkdtemp(prefix="computer_survey_") if a.smoke else "runs/computer_survey"))
    out.mkdir(parents=True, exist_ok=True)
    train, test = computer_survey()
    if a.respondents:
        keep = train["respondent"].unique()[:a.respondents]
        train, test = train[train["respondent"].isin(keep)], test[test["respondent"].isin(keep)]
    data = bm.MultiTaskData.from_frame(train, task="respondent", target="rating")
    print(f"{data}; test: {len(test)} rows (profiles 17-20); method {a.method}, seed {a.seed}")
    noise = bm.likelihoods.Gaussian("shared")  # 16 ratings a respondent: one noise level for all
    models = {
        "independent": bm.models.Independent(noise),
        "hierarchical": bm.models.Hierarchical(noise),
        f"task-relationship (rank {a.rank})": bm.models.TaskRelationship(
            noise, prior=bm.priors.TaskRelationship(rank=a.rank, mean=dist.Normal(0.0, 10.0))),
    }
    wanted = a.models.split(",")
    unknown = [m for m in wanted if not any(k.startswith(m) for k in models)]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}; choose from independent, hierarchical, task-relationship")
    models = {k: m for k, m in models.items() if any(k.startswith(w) for w in wanted)}
    rows, rel = [], None
    for name, model in models.items():
        opts = {"steps": a.steps, "min_steps": min(5000, a.steps)} if a.method == "svi" else {}
        if a.method == "svi" and name.startswith("task-relationship"):
            opts["collapse"] = True  # W integrated out: the guide covers Omega, feature scales and noise only
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            if a.smoke:
                warnings.simplefilter("ignore", RuntimeWarning)  # SVI stopped before converging
            post = bm.fit(model, data, method=a.method, chains=a.num_chains, warmup=a.warmup, draws=a.draws,
                          seed=a.seed, device=a.device, progress=False, **opts)
        secs = time.perf_counter() - t0
        rows.append({"model": name, "test_rmse": rmse(post, test, a.seed), "seconds": secs,
                     "path": post.info["path"], "method": a.method})
        print(f"{name}: {secs:.1f} s", flush=True)
        if name.startswith("task-relationship"):
            rel = post.relations()
    base = float(np.sqrt(np.mean((test["rating"] - train["rating"].mean()) ** 2)))
    rows.append({"model": "(grand mean of train)", "test_rmse": base, "seconds": 0.0, "path": "", "method": ""})
    table = pd.DataFrame(rows)
    print(f"\nRMSE of the {len(test)} held-out ratings (posterior predictive mean), method {a.method}")
    print(table.round(3).to_string(index=False))
    table.to_csv(out / "rmse.csv", index=False)
    if rel is None:
        print(f"wrote rmse.csv to {out}")
        return table
    pairs = rel.graph(threshold=0.5, path=None)
    C = rel.draws.mean(0)
    off = C[np.triu_indices_from(C, 1)]
    print(f"\nrespondent correlations (posterior means of {len(off)} pairs): "
          f"{np.mean(off > 0.5):.1%} above 0.5, {np.mean(off < -0.5):.1%} below -0.5; "
          f"{len(pairs)} pairs with |mean| >= 0.5 and a 90% interval excluding 0 "
          f"({int((pairs['sign'] > 0).sum())} positive, {int((pairs['sign'] < 0).sum())} negative)")
    rel.to_frame(extra=True).to_csv(out / "relations.csv", index=False)
    pairs.to_csv(out / "pairs.csv", index=False)
    rel.plot(out / "respondent_correlation.png",
             title=f"computer survey: posterior mean respondent correlation (rank {a.rank})")
    print(f"wrote rmse.csv, relations.csv, pairs.csv, respondent_correlation.png to {out}")
    return table


if __name__ == "__main__":
    main()
