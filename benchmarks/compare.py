"""Does ``bm.compare`` pick the structure that generated the data?

Three planted data sets, each from one structure, each fitted with the hierarchical, DP
clustering and task-relationship models at default settings; PSIS-LOO (``--by row`` or
``task``) ranks the three. Prints, per data set, the comparison table and whether the
generating family came first by more than 2 dse (the issue's criterion).

- ``clustered``: 3 clusters x 4 tasks with identical coefficients (``planted_clusters``,
  Gaussian, 30 rows a task): DP clustering generated it;
- ``correlated``: 6 tasks in pairs at correlation +0.9, -0.9 and 0 across 12 features (the
  task-relationship tests' planted data, 40 rows a task): task relationship generated it;
- ``hierarchical``: 12 exchangeable tasks (``hierarchical_regression`` with one group, 30 rows
  a task): the hierarchical model generated it.

    .venv/bin/python benchmarks/compare.py --method svi --seed 0
    .venv/bin/python benchmarks/compare.py --method nuts --warmup 300 --draws 300 --by task
    .venv/bin/python benchmarks/compare.py --cases landmine,school --by task   # real data: the table only
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
import torch

import bayesmtl as bm
from bayesmtl.synthetic import hierarchical_regression, planted_clusters

FAMILIES = {"hierarchical": bm.models.Hierarchical, "dp-clustering": bm.models.DPClustering,
            "task-relationship": bm.models.TaskRelationship}
TRUTH = {"clustered": "dp-clustering", "correlated": "task-relationship", "hierarchical": "hierarchical"}
REAL = ("landmine", "school")  # no known truth: the table only


def correlated(seed: int) -> pd.DataFrame:
    """6 tasks in pairs (0, 1) +0.9, (2, 3) -0.9, (4, 5) 0: each feature's weights across tasks
    are one draw N(0, Omega)."""
    rng = np.random.default_rng(seed)
    omega = np.eye(6)
    for a, b, r in ((0, 1, 0.9), (2, 3, -0.9), (4, 5, 0.0)):
        omega[a, b] = omega[b, a] = r
    D, rows = 12, 40
    W = np.linalg.cholesky(omega) @ rng.standard_normal((6, D))
    X = rng.standard_normal((6 * rows, D))
    task = np.repeat(np.arange(6), rows)
    y = (X * W[task]).sum(1) + 0.5 * rng.standard_normal(6 * rows)
    return pd.DataFrame({"task": [f"t{t}" for t in task], **{f"x{d}": X[:, d] for d in range(D)}, "y": y})


def real(kind: str, seed: int) -> tuple[bm.MultiTaskData, str | None]:
    """Landmine (80 rows a field, Bernoulli) or school (Argyriou split 0, the calibration
    benchmark's features), from ``../shared/data`` (``BAYESMTL_DATA``)."""
    from bayesmtl import datasets

    if kind == "landmine":
        train, _ = datasets.landmine_split(datasets.landmine(), 80, seed=seed)
        return bm.MultiTaskData.from_frame(train, task="field", target="label",
                                           features=list(datasets.LANDMINE_FEATURES), standardize=True), "bernoulli"
    from calibration import SCHOOL_VARYING

    train, _ = datasets.school(split=0)
    return bm.MultiTaskData.from_frame(train, task="school", target="score", features=SCHOOL_VARYING,
                                       standardize=True), None


def planted(kind: str, seed: int) -> pd.DataFrame:
    if kind == "clustered":
        return planted_clusters(clusters=3, tasks_per_cluster=4, rows=30, likelihood="gaussian", seed=seed)[0]
    if kind == "correlated":
        return correlated(seed)
    return hierarchical_regression(n_tasks=12, rows=30, groups=1, seed=seed)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="svi")
    p.add_argument("--by", default="row", choices=["row", "task"])
    p.add_argument("--cases", default=",".join(TRUTH), help=f"also {', '.join(REAL)} (real data, table only)")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--draws", type=int, default=300, help="per chain (MCMC); SVI draws 1000")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for case in args.cases.split(","):
        likelihood = None
        if case in REAL:
            data, likelihood = real(case, args.seed)
        else:
            data = bm.MultiTaskData.from_frame(planted(case, args.seed), task="task", target="y")
        runs, seconds = {}, {}
        for name, family in FAMILIES.items():
            kw = (dict(steps=5000, draws=1000) if args.method == "svi" else
                  dict(warmup=args.warmup, draws=args.draws, chains=args.chains))
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", bm.DiagnosticWarning)
                model = family() if likelihood is None else family(likelihood=likelihood)
                runs[name] = bm.fit(model, data, method=args.method, seed=args.seed, progress=False, **kw)
            seconds[name] = time.perf_counter() - t0
        table = bm.compare(runs, by=args.by)
        table["seconds"] = pd.Series(seconds).round(1)
        if case in REAL:
            print(f"\n{case} ({data.n_tasks} tasks, {data.n_rows} rows), {args.method}, leave one {args.by} out")
            print(table.round(2).to_string())
            for note in table.attrs["notes"]:
                print(f"note: {note}")
            continue
        best, second = table.index[0], table.index[1]
        clear = table.loc[second, "elpd_diff"] > 2 * table.loc[second, "dse"]
        picked = best == TRUTH[case] and clear
        results.append({"case": case, "truth": TRUTH[case], "first": best,
                        "diff to second": round(float(table.loc[second, "elpd_diff"]), 1),
                        "dse": round(float(table.loc[second, "dse"]), 1), "picked (> 2 dse)": picked})
        print(f"\n{case} ({data.n_tasks} tasks, {data.n_rows} rows; generated by {TRUTH[case]}), "
              f"{args.method}, leave one {args.by} out")
        print(table.round(2).to_string())
        for note in table.attrs["notes"]:
            print(f"note: {note}")
    if not results:
        return 0
    out = pd.DataFrame(results)
    print(f"\nsummary ({args.method}, by {args.by}, seed {args.seed}): generating family first by > 2 dse in "
          f"{int(out['picked (> 2 dse)'].sum())} of {len(out)}")
    print(out.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
