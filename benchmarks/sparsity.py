"""Joint sparsity and the dirty model (issue 19) against what a user would pick instead.

Prints one table per case:

- ``planted``: issue 19's problem (``synthetic.sparse_regression``: 20 tasks, 60 features, 40
  rows a task, 5 shared features, 6 private ones): ROC AUC of the shared inclusion
  probabilities, of the private ones over task-feature pairs, test MSE, r_hat, divergences and
  time, for each ``--methods``; the hierarchical Normal prior and independent fits (SVI), and
  scikit-learn's per-task ``LassoCV`` as the point-estimate anchor (the tasks have different
  rows, so ``MultiTaskLasso``, which needs one design for every task, does not apply).
- ``subspace``: issue 19's planted subspace (``synthetic.subspace_regression``: 30 tasks, 25
  features, sparse codes on 3 basis vectors in 3 overlapping groups), 6 tasks with only 5
  training rows: the posterior mode of the number of active factors, the adjusted Rand index of
  the groups cut from |relation|, and test MSE on the few-row tasks, against the hierarchical prior.
- ``survey``: computer survey (190 respondents rate the same 16 profiles; the last 4 are the
  test): RMSE, against scikit-learn ``MultiTaskLassoCV`` / ``MultiTaskElasticNetCV`` (one
  design for every respondent, so they apply as they stand), per-respondent ``RidgeCV`` and
  the hierarchical model.
- ``school``: explained variance (1 - MSE / var(y_test), in %) on the Argyriou et al. splits,
  all 21 features per school under the sparsity priors; the hierarchical model with the
  school-level features shared, as in ``benchmarks/calibration.py``; scikit-learn anchors:
  ``RidgeCV`` per school on the 5 student-level features, and one ``LassoCV`` over all schools
  on the 21 features plus a school indicator (the schools have different students, so
  ``MultiTaskLasso`` does not apply).
- ``landmine``: mean AUC over the 29 fields at ``--n-train`` rows a field (Bernoulli
  likelihood), splits as ``examples/landmine.py``; anchors: per-field L1 and L2 logistic
  regression with a cross-validated penalty (``LogisticRegressionCV``) and the hierarchical
  model. The DP model's .738/.776/.777 comes from ``examples/landmine.py`` (docs/benchmarks.md).

    .venv/bin/python benchmarks/sparsity.py --cases planted --methods chees,svi
    .venv/bin/python benchmarks/sparsity.py --cases survey,school --splits 0-2
    .venv/bin/python benchmarks/sparsity.py --cases landmine --n-train 40,80,160 --splits 0-9

Bayesian fits use their default settings (SVI: the structured guide, 20,000 steps at most).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import (
    LassoCV,
    LogisticRegression,
    LogisticRegressionCV,
    MultiTaskElasticNetCV,
    MultiTaskLassoCV,
    RidgeCV,
)
from sklearn.metrics import roc_auc_score

import bayesmtl as bm
from bayesmtl import datasets
from bayesmtl.synthetic import sparse_regression

SCHOOL_VARYING = ["year_1985", "year_1986", "female", "vr1", "vr2"]
SCHOOL_SHARED = ["pct_fsm", "pct_vr1", "ethnic_african", "ethnic_arab", "ethnic_bangladeshi", "ethnic_caribbean",
                 "ethnic_greek", "ethnic_indian", "ethnic_pakistani", "ethnic_se_asian", "ethnic_turkish",
                 "ethnic_other", "school_boys", "school_girls", "denom_cofe", "denom_rc"]
MCMC = dict(chains=4, warmup=500, draws=500)


#: MCMC options from the command line (``--target-accept``)
MCMC_OPTIONS: dict = {}


def _fit(model, data, method, seed, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        mcmc = {**MCMC, **MCMC_OPTIONS} if method != "svi" else {}
        post = bm.fit(model, data, method=method, seed=seed, progress=False, **mcmc, **kw)
        seconds = time.perf_counter() - t0
    n_warn = sum(issubclass(w.category, bm.diagnostics.DiagnosticWarning) for w in caught)
    return post, seconds, n_warn


def _mcmc_stats(post) -> dict:
    if post.info.get("draws_kind") != "mcmc":
        return {"max r_hat": None, "divergences": None}
    s = post.summary()
    return {"max r_hat": round(float(s["r_hat"].max()), 3), "divergences": post.diagnostics()["divergences"]}


def planted(args) -> list[dict]:
    train, test, truth = sparse_regression(seed=args.seed, test_rows=40)
    data = bm.MultiTaskData.from_frame(train, task="task", target="y")
    feats = [c for c in train.columns if c.startswith("x")]
    T = train["task"].nunique()
    mask = ~truth["shared"][None, :].repeat(T, 0)
    rows = []

    def mse(pred):
        return float(((pred - test["y"].to_numpy()) ** 2).mean())

    for name, cls in (("dirty", bm.models.Dirty), ("shared-sparsity", bm.models.SharedSparsity)):
        for method in args.methods if name in args.models else ():
            post, sec, n_warn = _fit(cls(), data, method, args.seed)
            inc = post.inclusion()
            row = {"case": "planted", "model": name, "method": method,
                   "shared AUC": round(roc_auc_score(truth["shared"], inc["shared"]), 3),
                   "test MSE": round(mse(post.predict(test)["mean"].to_numpy()), 3), "seconds": round(sec, 1),
                   "warnings": n_warn, "path": post.info["path"], **_mcmc_stats(post)}
            if name == "dirty":
                private = inc.drop(columns="shared").to_numpy().T
                row["private AUC"] = round(roc_auc_score(truth["private"][mask], private[mask]), 3)
            rows.append(row)
            print(row, flush=True)
    for name, model in (("hierarchical", bm.models.Hierarchical()), ("independent", bm.models.Independent())):
        if name not in args.models:
            continue
        post, sec, n_warn = _fit(model, data, "svi", args.seed)
        rows.append({"case": "planted", "model": name, "method": "svi", "seconds": round(sec, 1),
                     "test MSE": round(mse(post.predict(test)["mean"].to_numpy()), 3)})
        print(rows[-1], flush=True)
    if "sklearn" not in args.models:
        return rows
    pred = np.empty(len(test))
    t0 = time.perf_counter()
    for task, part in train.groupby("task"):
        rows_test = (test["task"] == task).to_numpy()
        fit = LassoCV(cv=5, random_state=args.seed).fit(part[feats], part["y"])
        pred[rows_test] = fit.predict(test.loc[rows_test, feats])
    rows.append({"case": "planted", "model": "LassoCV per task", "method": "sklearn",
                 "test MSE": round(mse(pred), 3), "seconds": round(time.perf_counter() - t0, 1)})
    print(rows[-1], flush=True)
    return rows


def subspace(args) -> list[dict]:
    """Issue 19's planted subspace (``synthetic.subspace_regression``), 6 of 30 tasks with 5 rows."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    from sklearn.metrics import adjusted_rand_score

    from bayesmtl.synthetic import subspace_regression

    train, test, truth = subspace_regression(seed=args.seed, test_rows=30)
    few = [f"task{t}" for t in range(24, 30)]
    train = train[~train["task"].isin(few) | (train.groupby("task").cumcount() < 5)]
    data = bm.MultiTaskData.from_frame(train, task="task", target="y")
    new = test[test["task"].isin(few)]

    def mse(post, df):
        return round(float(((post.predict(df)["mean"].to_numpy() - df["y"].to_numpy()) ** 2).mean()), 3)

    rows = []
    for sparse in (True, False):
        for method in args.methods:
            model = bm.models.SharedSubspace(prior=bm.priors.SharedSubspace(max_factors=8, sparse_codes=sparse))
            post, sec, n_warn = _fit(model, data, method, args.seed)
            counts = model.num_factors(post).set_index("num_factors")["probability"]
            d = 1 - np.abs(post.relations().mean().to_numpy())
            np.fill_diagonal(d, 0)
            groups = fcluster(linkage(squareform(d, checks=False), "average"), 3, criterion="maxclust")
            order = [int(t.removeprefix("task")) for t in post.task_names]
            rows.append({"case": "subspace", "model": f"shared-subspace ({'sparse' if sparse else 'dense'} codes)",
                         "method": method, "factors mode": int(counts.idxmax()),
                         "P(mode)": round(float(counts.max()), 2),
                         "group ARI": round(adjusted_rand_score(truth["group"][order], groups), 3),
                         "few-row tasks MSE": mse(post, new), "test MSE": mse(post, test), "seconds": round(sec, 1),
                         "warnings": n_warn, **_mcmc_stats(post)})
            print(rows[-1], flush=True)
    post, sec, _ = _fit(bm.models.Hierarchical(), data, "svi", args.seed)
    rows.append({"case": "subspace", "model": "hierarchical", "method": "svi", "few-row tasks MSE": mse(post, new),
                 "test MSE": mse(post, test), "seconds": round(sec, 1)})
    print(rows[-1], flush=True)
    return rows


def survey(args) -> list[dict]:
    train, test = datasets.computer_survey()
    attrs = list(datasets.SURVEY_ATTRIBUTES)
    # each respondent rates the same profiles in the same order
    train = train.assign(profile=train.groupby("respondent").cumcount())
    test = test.assign(profile=test.groupby("respondent").cumcount())
    data = bm.MultiTaskData.from_frame(train.drop(columns="profile"), task="respondent", target="rating",
                                       features=attrs)
    rows = []

    def rmse(pred):
        return float(np.sqrt(((pred - test["rating"].to_numpy()) ** 2).mean()))

    for name, model in _bayesian(args.models, "gaussian"):
        post, sec, n_warn = _fit(model, data, args.method, args.seed)
        rows.append({"case": "survey", "model": name, "method": args.method, "RMSE": round(rmse(
            post.predict(test)["mean"].to_numpy()), 3), "seconds": round(sec, 1), "warnings": n_warn})
        print(rows[-1], flush=True)
    # one design for every respondent: Y is (16 profiles, 190 respondents)
    wide = train.pivot(index="profile", columns="respondent", values="rating")
    X = train.drop_duplicates("profile").set_index("profile").loc[wide.index, attrs].to_numpy(float)
    Xt = test.drop_duplicates("profile").set_index("profile")[attrs]
    anchors = (("MultiTaskLassoCV", MultiTaskLassoCV(cv=4)), ("MultiTaskElasticNetCV", MultiTaskElasticNetCV(cv=4)),
               ("RidgeCV (one alpha for all respondents)", RidgeCV(alphas=np.logspace(-3, 3, 13))))
    for name, est in anchors:
        t0 = time.perf_counter()
        fit = est.fit(X, wide.to_numpy(float))
        pred_wide = pd.DataFrame(fit.predict(Xt.to_numpy(float)), index=Xt.index, columns=wide.columns)
        pred = pred_wide.stack().rename("p").reset_index()
        merged = test.merge(pred, on=["profile", "respondent"], how="left")
        rows.append({"case": "survey", "model": name, "method": "sklearn",
                     "RMSE": round(rmse(merged["p"].to_numpy()), 3), "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    return rows


#: the Gaussian models' noise mode (``--noise``)
NOISE = {"noise": "per_task"}


def _bayesian(names: list[str], likelihood, shared: list[str] | None = None):
    """(name, model) for the Bayesian rows of the real-data cases that ``--models`` names; the
    hierarchical model takes the school-level features as shared (``shared``)."""
    if likelihood == "gaussian" and NOISE["noise"] != "per_task":
        likelihood = bm.likelihoods.Gaussian(noise=NOISE["noise"])
    made = {"hierarchical": lambda: bm.models.Hierarchical(likelihood, shared=shared or ()),
            "shared-sparsity": lambda: bm.models.SharedSparsity(likelihood=likelihood),
            "dirty": lambda: bm.models.Dirty(likelihood=likelihood),
            "shared-subspace": lambda: bm.models.SharedSubspace(likelihood=likelihood)}
    return [(name, make()) for name, make in made.items() if name in names]


def school(args) -> list[dict]:
    rows = []
    for k in args.splits:
        train, test = datasets.school(split=k)
        feats, shared = SCHOOL_VARYING + SCHOOL_SHARED, SCHOOL_SHARED  # no reference levels
        data = bm.MultiTaskData.from_frame(train, task="school", target="score", features=feats, standardize=True)
        for name, model in _bayesian(args.models, "gaussian", shared):
            post, sec, n_warn = _fit(model, data, args.method, args.seed + k)
            pred = post.predict(test)["mean"].to_numpy()
            y = test["score"].to_numpy()
            ev = 100 * (1 - ((pred - y) ** 2).mean() / y.var())
            rows.append({"case": "school", "split": k, "model": name, "method": args.method,
                         "explained variance %": round(float(ev), 2), "seconds": round(sec, 1), "warnings": n_warn})
            print(rows[-1], flush=True)
        for name, pred, sec in _school_anchors(train, test, feats) if "sklearn" in args.models else ():
            y = test["score"].to_numpy()
            rows.append({"case": "school", "split": k, "model": name, "method": "sklearn",
                         "explained variance %": round(float(100 * (1 - ((pred - y) ** 2).mean() / y.var())), 2),
                         "seconds": round(sec, 1)})
            print(rows[-1], flush=True)
    return rows


def _school_anchors(train, test, feats):
    """Per-school ``RidgeCV`` on the student-level features; one ``LassoCV`` with a school indicator."""
    t0 = time.perf_counter()
    pred = np.full(len(test), train["score"].mean())
    for school, part in train.groupby("school"):
        rows_test = (test["school"] == school).to_numpy()
        if rows_test.any():
            fit = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(part[SCHOOL_VARYING], part["score"])
            pred[rows_test] = fit.predict(test.loc[rows_test, SCHOOL_VARYING])
    yield "RidgeCV per school", pred, time.perf_counter() - t0
    t0 = time.perf_counter()
    schools = pd.Categorical(train["school"]).categories

    def design(df):
        dummies = pd.get_dummies(pd.Categorical(df["school"], categories=schools), dtype=float)
        x = df[feats].to_numpy(float)
        return np.hstack([(x - mu) / sd, dummies.to_numpy()])

    mu, sd = train[feats].to_numpy(float).mean(0), train[feats].to_numpy(float).std(0) + 1e-12
    fit = LassoCV(cv=5, random_state=0).fit(design(train), train["score"])
    yield "LassoCV, pooled + school indicator", fit.predict(design(test)), time.perf_counter() - t0


def _mean_auc(test: pd.DataFrame, prob: np.ndarray) -> float:
    """AUC of ``prob`` within each field that has both labels, averaged over fields."""
    aucs = [roc_auc_score(part["label"], prob[(test["field"] == f).to_numpy()])
            for f, part in test.groupby("field") if part["label"].nunique() == 2]
    return round(float(np.mean(aucs)), 3)


def landmine(args) -> list[dict]:
    df = datasets.landmine()
    feats = list(datasets.LANDMINE_FEATURES)
    rows = []
    for n_train in args.n_train:
        for k in args.splits:
            train, test = datasets.landmine_split(df, n_train, seed=args.seed + k)
            data = bm.MultiTaskData.from_frame(train, task="field", target="label", features=feats)

            for name, model in _bayesian(args.models, "bernoulli"):
                post, sec, n_warn = _fit(model, data, args.method, args.seed)
                prob = post.predict(test)["probability"].to_numpy()
                rows.append({"case": "landmine", "n_train": n_train, "split": k, "model": name,
                             "method": args.method, "mean AUC": _mean_auc(test, prob), "seconds": round(sec, 1),
                             "warnings": n_warn})
                print(rows[-1], flush=True)
            for penalty in ("l1", "l2") if "sklearn" in args.models else ():
                t0 = time.perf_counter()
                prob = np.empty(len(test))
                for f, part in train.groupby("field"):
                    m = (test["field"] == f).to_numpy()
                    cv = min(5, int(part["label"].sum()))
                    if cv < 2:  # one positive: no cross-validation possible, a fixed moderate penalty
                        est = LogisticRegression(penalty=penalty, C=1.0, solver="liblinear")
                    else:
                        est = LogisticRegressionCV(Cs=10, cv=cv, penalty=penalty, solver="liblinear",
                                                   scoring="roc_auc")
                    prob[m] = est.fit(part[feats], part["label"]).predict_proba(test.loc[m, feats])[:, 1]
                rows.append({"case": "landmine", "n_train": n_train, "split": k,
                             "model": f"{penalty.upper()} logistic per field (CV)", "method": "sklearn",
                             "mean AUC": _mean_auc(test, prob), "seconds": round(time.perf_counter() - t0, 1)})
                print(rows[-1], flush=True)
    return rows


def _splits(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="planted", help="planted,subspace,survey,school,landmine")
    p.add_argument("--methods", default="chees,svi", help="planted: back ends for the sparsity models")
    p.add_argument("--method", default="svi", help="survey, school: back end of the Bayesian models")
    p.add_argument("--splits", default="0", help="school, landmine: '0-9' or '0,3'")
    p.add_argument("--n-train", default="80", help="landmine: rows per field, e.g. '40,80,160'")
    p.add_argument("--models", default="hierarchical,independent,shared-sparsity,dirty,shared-subspace,sklearn",
                   help="which rows to fit (every case but subspace)")
    p.add_argument("--target-accept", type=float, default=None, help="MCMC: the back end's target_accept")
    p.add_argument("--noise", default="per_task", choices=["per_task", "shared"],
                   help="survey, school: the Gaussian models' noise (per task by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the rows")
    args = p.parse_args(argv)
    args.methods = args.methods.split(",")
    args.models = args.models.split(",")
    NOISE["noise"] = args.noise
    if args.target_accept is not None:
        MCMC_OPTIONS["target_accept"] = args.target_accept
    args.splits = _splits(args.splits)
    args.n_train = [int(n) for n in args.n_train.split(",")]
    run_cases({"planted": planted, "subspace": subspace, "survey": survey, "school": school,
               "landmine": landmine}, args)


def run_cases(cases: dict, args) -> None:
    """Run ``args.cases`` (comma-separated names of ``cases``) on one thread, write the rows to
    ``args.out`` (JSON) and print them as a table."""
    torch.set_num_threads(1)
    rows = []
    for case in args.cases.split(","):
        rows += cases[case](args)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
