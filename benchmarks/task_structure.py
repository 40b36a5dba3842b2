"""Issue 20's task-structure priors against what a user would pick instead.

Cases (``--cases``):

* ``gate``: ``synthetic.gated_clusters`` (40 tasks x 20 rows, 20 tasks x 5 rows, 3 clusters set
  noisily by two task features): gated clusters against DP clustering, which cannot read the
  features; adjusted Rand of the point partition and the log predictive density (LPD) and MSE of
  the 5-row tasks' test rows.
* ``tree``: ``synthetic.tree_regression`` (4 regions > 3 districts > 4 tasks): divergences,
  r_hat and whether the 90% intervals of each level's spread cover the planted value.
* ``school``: explained variance on the Argyriou et al. splits; gated clusters reading the
  school's gender and denomination (copies of the school-level columns, which stay shared
  features as in the hierarchical model), against the hierarchical model and task-relationship
  learning (MTRL, default settings).

    .venv/bin/python benchmarks/task_structure.py --cases gate --methods svi,nuts --noise 1.5
    .venv/bin/python benchmarks/task_structure.py --cases school --splits 0-4
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch
from sparsity import SCHOOL_SHARED, SCHOOL_VARYING, _splits, run_cases  # benchmarks/ is the script's folder

import bayesmtl as bm
from bayesmtl import datasets
from bayesmtl.relations import adjusted_rand_index
from bayesmtl.synthetic import gated_clusters, tree_regression

#: school-level columns the gate reads (copies of them: the originals stay shared features)
SCHOOL_GATE = ["school_boys", "school_girls", "denom_cofe", "denom_rc"]


def _fit(model, data, method: str, seed: int):
    kw = dict(chains=4, warmup=500, draws=500) if method in ("nuts", "chees") else {}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = bm.fit(model, data, method=method, seed=seed, progress=False, **kw)
    diagnostic = bm.diagnostics.DiagnosticWarning
    problems = [str(w.message).split(":")[0][:60] for w in caught if issubclass(w.category, diagnostic)]
    return post, time.perf_counter() - t0, problems


def _lpd(post, frame) -> float:
    """Mean log predictive density of ``frame``'s rows (their tasks known to the fit)."""
    new = post.data.prepare(frame, require_target=True)
    with torch.no_grad():
        ll = post.model.log_likelihood(new, post.flat())
    return float((torch.logsumexp(ll, 0) - math.log(ll.shape[0])).mean())


def gate(args) -> list[dict]:
    train, test, truth = gated_clusters(seed=args.seed, noise=args.noise)
    data = bm.MultiTaskData.from_frame(train, task="task", target="y", features=["x1"], task_features=["f1", "f2"])
    few = test[test["task"].isin([f"t{t:02d}" for t in np.flatnonzero(truth["few"])])]
    rows = []
    for method in args.methods:
        gated = bm.models.GatedClusters(["f1", "f2"], clusters=5, likelihood="gaussian")
        dp = bm.models.DPClustering("gaussian", prior=bm.priors.DirichletProcess(truncation=5))
        for name, model in (("gated clusters", gated), ("DP clustering", dp)):
            post, sec, problems = _fit(model, data, method, args.seed)
            part = post.relations().clusters()
            pred = post.predict(few)["mean"].to_numpy()
            rows.append({"case": "gate", "model": name, "method": method,
                         "ARI": round(adjusted_rand_index(part["cluster"].to_numpy(), truth["cluster"]), 3),
                         "few-row LPD": round(_lpd(post, few), 4),
                         "few-row MSE": round(float(((pred - few["y"].to_numpy()) ** 2).mean()), 3),
                         "seconds": round(sec, 1), "warnings": "; ".join(problems)})
            print(rows[-1], flush=True)
    return rows


def tree(args) -> list[dict]:
    """Given tree, planted spreads 1.0 / 0.6 / 0.3: which 90% intervals of the level spreads cover
    the planted values, per planted seed (``--planted-seeds``), and the total over seeds."""
    rows = []
    for method in args.methods:
        covered_all = []
        for seed in args.planted_seeds:
            df, truth = tree_regression(seed=seed)
            data = bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x1"],
                                               task_features=["region", "district"])
            post, sec, problems = _fit(bm.models.TreeHierarchy("region/district"), data, method, seed)
            covered, missed = [], []
            for site in ("region_scale", "district_scale", "tau"):
                lo, hi = np.quantile(post.flat()[site].numpy(), [0.05, 0.95], axis=0)
                inside = (lo <= truth[site]) & (truth[site] <= hi)
                covered += list(inside)
                missed += [f"{site}[{d}] {lo[d]:.2f}-{hi[d]:.2f}" for d in np.flatnonzero(~inside)]
            covered_all += covered
            diag = post.diagnostics()
            rows.append({"case": "tree", "method": method, "planted seed": seed, "path": post.info["path"],
                         "spreads covered": f"{sum(covered)} of {len(covered)}", "missed": "; ".join(missed),
                         "divergences": diag.get("divergences"), "max r_hat": diag.get("max_r_hat"),
                         "seconds": round(sec, 1)})
            print(rows[-1], flush=True)
        if len(args.planted_seeds) > 1:
            rows.append({"case": "tree", "method": method, "planted seed": "all",
                         "spreads covered": f"{sum(covered_all)} of {len(covered_all)} "
                                            f"({np.mean(covered_all):.2f}; nominal 0.90)"})
            print(rows[-1], flush=True)
    return rows


def school(args) -> list[dict]:
    rows = []
    gate_cols = [f"gate_{c}" for c in SCHOOL_GATE]
    for k in args.splits:
        train, test = datasets.school(split=k)
        copies = {g: c for g, c in zip(gate_cols, SCHOOL_GATE, strict=True)}
        train = train.assign(**{g: train[c] for g, c in copies.items()})
        test = test.assign(**{g: test[c] for g, c in copies.items()})
        data = bm.MultiTaskData.from_frame(train, task="school", target="score", standardize=True,
                                           features=SCHOOL_VARYING + SCHOOL_SHARED, task_features=gate_cols)
        for name, model in (("hierarchical", bm.models.Hierarchical(shared=SCHOOL_SHARED)),
                            ("gated clusters", bm.models.GatedClusters(gate_cols, clusters=args.clusters,
                                                                       likelihood="gaussian", shared=SCHOOL_SHARED)),
                            ("task relationship", bm.models.TaskRelationship(likelihood="gaussian",
                                                                             shared=SCHOOL_SHARED))):
            if name not in args.models:
                continue
            post, sec, problems = _fit(model, data, "svi", args.seed + k)
            y = test["score"].to_numpy()
            ev = 100 * (1 - ((post.predict(test)["mean"].to_numpy() - y) ** 2).mean() / y.var())
            rows.append({"case": "school", "split": k, "model": name, "explained variance %": round(float(ev), 2),
                         "seconds": round(sec, 1), "warnings": "; ".join(problems)})
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="gate,tree", help="gate, tree, school")
    p.add_argument("--methods", default="svi,nuts", help="gate, tree: back ends")
    p.add_argument("--noise", type=float, default=1.5, help="gate: the planted noise sd")
    p.add_argument("--splits", default="0", help="school: '0-9' or '0,3'")
    p.add_argument("--models", default="hierarchical,gated clusters,task relationship",
                   help="school: which rows to fit")
    p.add_argument("--clusters", type=int, default=5, help="school: the gated model's upper bound on clusters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--planted-seeds", default=None, help="tree: planted data sets, '0-9' (default: --seed)")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    args = p.parse_args(argv)
    args.methods = args.methods.split(",")
    args.models = args.models.split(",")
    args.splits = _splits(args.splits)
    args.planted_seeds = _splits(args.planted_seeds) if args.planted_seeds else [args.seed]
    run_cases({"gate": gate, "tree": tree, "school": school}, args)


if __name__ == "__main__":
    main()
