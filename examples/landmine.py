"""Landmine benchmark (Xue et al. 2007): independent vs pooled vs hierarchical vs DP clustering
vs a tree given by the terrain.

Protocol: for each n_train in {40, 80, 160} and each of the splits, draw n_train rows per field
stratified by label (``bayesmtl.datasets.landmine_split``, at least one positive), test on the
other rows of the field; metric: AUC of the posterior predictive probability per field, averaged
over the 29 fields; reported as mean ± sd over splits. For the DP model the adjusted Rand index
of its point partition (expected-Binder-loss minimiser) against the terrain split of the data
README (fields 1-15 foliated, 16-29 bare earth / desert) is reported too, and the co-clustering
heatmap of the first split at the largest n_train is saved. The ``tree`` model is a
``TreeHierarchy`` over that terrain split (a task-level column ``terrain``): what DP clustering
would find if it found the terrain exactly. ``learned-tree`` learns the tree from the fields'
data (``TreeHierarchy(tree="learn")``); its level-1 groups are scored against the terrain (ARI),
with the smallest clade probability among them.

Features are standardised with the training rows' mean and sd (``standardize=True``).

    .venv/bin/python examples/landmine.py --method svi --n-train 40,80,160 --splits 10 --seed 0 \\
        --out runs/landmine
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import bayesmtl as bm
from bayesmtl.datasets import landmine, landmine_split
from bayesmtl.relations import adjusted_rand_index

MODELS = ("independent", "pooled", "hierarchical", "dp", "tree", "learned-tree")


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN without both classes."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n1, n0 = y.sum(), (~y).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def make_model(name: str, smoke: bool = False):
    if name == "dp":
        return bm.models.DPClustering(likelihood="bernoulli")
    if name == "tree":
        return bm.models.TreeHierarchy("terrain", likelihood="bernoulli")
    if name == "learned-tree":  # the tree learned from the fields' data (nested CRP), not given
        sweeps = dict(warmup=5, draws=5) if smoke else {}
        return bm.models.TreeHierarchy(tree="learn", likelihood="bernoulli", **sweeps)
    return {"independent": bm.models.Independent, "pooled": bm.models.Pooled,
            "hierarchical": bm.models.Hierarchical}[name](likelihood="bernoulli")


def _with_terrain(df: pd.DataFrame) -> pd.DataFrame:
    """The data README's terrain of each field: 1-15 foliated, 16-29 bare earth or desert."""
    number = df["field"].str.split("_").str[1].astype(int)
    return df.assign(terrain=np.where(number > 15, "bare", "foliated"))


def _ints(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="svi", help="svi (default), pyro_nuts, nuts, map")
    ap.add_argument("--n-train", default="40,80,160", help="comma-separated rows per field")
    ap.add_argument("--splits", type=int, default=10, help="number of random splits")
    ap.add_argument("--seed", type=int, default=0, help="split s uses seed + s; fits use seed")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=2000, help="most SVI steps")
    ap.add_argument("--lr", type=float, default=0.05, help="SVI learning rate")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--num-chains", "--chains", dest="chains", type=int, default=2, help="MCMC chains")
    ap.add_argument("--warmup", type=int, default=500, help="MCMC warmup")
    ap.add_argument("--out", default=None, help="output folder (default runs/landmine; a temp folder with --smoke)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny settings (one split, n_train=40, few steps and draws) to check the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.splits, args.n_train = 1, "40"
        args.steps, args.draws, args.warmup, args.chains = 150, 30, 30, 1
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="landmine_smoke_") if args.smoke else "runs/landmine"
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    df = landmine()
    kw = (dict(steps=args.steps, min_steps=min(500, args.steps), lr=args.lr, window=min(100, args.steps),
               draws=args.draws) if args.method == "svi"
          else dict(chains=args.chains, warmup=args.warmup, draws=args.draws))
    n_trains = _ints(args.n_train)
    rows = []
    for n_train in n_trains:
        for s in range(args.splits):
            train, test = landmine_split(df, n_train, seed=args.seed + s)
            train, test = _with_terrain(train), _with_terrain(test)
            data = bm.MultiTaskData.from_frame(train, task="field", target="label", standardize=True,
                                               features=[c for c in train.columns if c.startswith("x")],
                                               task_features=["terrain"])
            for name in models:
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    post = bm.fit(make_model(name, args.smoke), data, method=args.method, seed=args.seed,
                                  device=args.device, progress=False, **kw)
                pred = post.predict(test)
                aucs = [auc(test["label"].to_numpy()[m], pred["probability"].to_numpy()[m])
                        for m in (test["field"].to_numpy() == f for f in data.task_names)]
                row = {"model": name, "n_train": n_train, "split": s, "auc": float(np.nanmean(aucs)),
                       "seconds": time.perf_counter() - t0}
                if name == "dp":
                    rel = post.relations()
                    part = rel.clusters()
                    # terrain of the data README: fields 1-15 foliated, 16-29 bare earth or desert
                    terrain = [int(f.split("_")[1]) > 15 for f in part["task"]]
                    row["ari_terrain"] = adjusted_rand_index(part["cluster"].to_numpy(), np.array(terrain))
                    row["clusters"] = int(part["cluster"].nunique())
                    nc = post.num_clusters()
                    row["num_clusters_mode"] = int(nc.loc[nc["probability"].idxmax(), "num_clusters"])
                    if n_train == max(n_trains) and s == 0:
                        rel.plot(out / f"coclustering_n{n_train}.png",
                                 title=f"landmine co-clustering, n_train={n_train}")
                        part.to_csv(out / f"clusters_n{n_train}.csv", index=False)
                if name == "learned-tree":
                    tree = post.tree()
                    top = tree[tree["level"] == "level1"]
                    labels = np.zeros(data.n_tasks, dtype=int)
                    for k, tasks in enumerate(top["tasks"]):
                        labels[[data.task_names.index(t) for t in tasks]] = k
                    terrain = np.array([int(f.split("_")[1]) > 15 for f in data.task_names])
                    row["ari_terrain"] = adjusted_rand_index(labels, terrain)
                    row["clusters"] = len(top)
                    row["min_clade_probability"] = float(top["probability"].min())
                rows.append(row)
                print(json.dumps(row), flush=True)
            pd.DataFrame(rows).to_csv(out / "results.csv", index=False)  # partial results survive an interrupt
    res = pd.DataFrame(rows)
    res.to_csv(out / "results.csv", index=False)
    table = res.groupby(["model", "n_train"])["auc"].agg(["mean", "std", "count"]).unstack("n_train")
    table = table.reindex([m for m in MODELS if m in models])
    print(f"\nmean AUC over the {len(df.field.unique())} fields (mean ± sd over splits); every model fitted with "
          f"method={args.method}; load average {os.getloadavg()[0]:.1f}")
    for m, r in table.iterrows():
        cells = [f"{r[('mean', n)]:.3f} ± {r[('std', n)]:.3f} (k={int(r[('count', n)])})" for n in n_trains]
        print(f"{m:>13}: " + "   ".join(f"n={n}: {c}" for n, c in zip(n_trains, cells, strict=True)))
    if "dp" in models:
        dp = res[res.model == "dp"].groupby("n_train")[["ari_terrain", "clusters", "num_clusters_mode"]].mean()
        print("\nDP point partition vs terrain (ARI), clusters in the partition, mode of occupied clusters (means):")
        print(dp.to_string())
    if "learned-tree" in models:
        lt = res[res.model == "learned-tree"].groupby("n_train")[["ari_terrain", "clusters",
                                                                   "min_clade_probability"]].mean()
        print("\nlearned tree's level-1 groups vs terrain (ARI), number of groups, smallest clade probability (means):")
        print(lt.to_string())
    print(f"\nwrote {out}/results.csv" + (f", {out}/coclustering_n{max(n_trains)}.png" if "dp" in models else ""))
    return res


if __name__ == "__main__":
    main()
