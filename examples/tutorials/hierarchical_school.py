"""Tutorial: partial pooling of 139 schools (hierarchical regression on the ILEA exam scores).

Walked through in docs/tutorials/hierarchical-school.md. Each school is a task; its intercept
and slopes are drawn from a population whose mean and spread the model learns, so small
schools borrow strength from the others. A few schools are held out entirely to show what the
model predicts for a school it has never seen.

    .venv/bin/python examples/tutorials/hierarchical_school.py --out runs/tutorial-school
    .venv/bin/python examples/tutorials/hierarchical_school.py --smoke      # tiny settings (CI)

Writes summary.csv, predictions.csv, ppc.csv and the figures shrinkage.png and ppc.png to
``--figures`` (default: ``--out``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import bayesmtl as bm
from bayesmtl.datasets import school

VARYING = ["year_1985", "year_1986", "female", "vr1", "vr2"]  # student level: may differ by school
SHARED = ["pct_fsm", "pct_vr1"]  # school level: constant within a school, so one coefficient for all


def coverage(pred: pd.DataFrame, y: np.ndarray) -> float:
    """Share of rows inside their 90% predictive interval."""
    return float(np.mean((pred["q05"].to_numpy() <= y) & (y <= pred["q95"].to_numpy())))


def shrinkage_figure(post, train: pd.DataFrame, path: Path) -> None:
    """Each school's own mean score (no pooling: y = x) against the model's fitted mean for the
    same students (partial pooling). Small schools move towards the population."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fitted = post.predict(train, seed=0)["mean"].to_numpy()
    by_school = train.assign(fitted=fitted).groupby("school")
    raw, fit, size = by_school["score"].mean(), by_school["fitted"].mean(), by_school.size()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    span = [min(raw.min(), fit.min()), max(raw.max(), fit.max())]
    ax.plot(span, span, "k--", lw=0.8, label="no pooling (y = x)")
    ax.axhline(float(train["score"].mean()), color="0.6", lw=0.8, label="complete pooling")
    sc = ax.scatter(raw, fit, c=np.log10(size), cmap="viridis", s=16, zorder=2)
    ax.set_xlabel("school's own mean score")
    ax.set_ylabel("fitted mean score of its students")
    ax.set_title("Partial pooling pulls small schools towards the population", fontsize=10)
    fig.colorbar(sc, ax=ax, label="log10 students in the school")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def ppc_figure(check: pd.DataFrame, path: Path) -> None:
    """Per school: where its observed mean and sd fall among the replicated data sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0), sharey=True)
    for ax, col, what in zip(axes, ["p_mean", "p_sd"], ["mean", "sd"], strict=True):
        ax.hist(check[col], bins=np.linspace(0, 1, 11), color="0.55", edgecolor="white")
        ax.set_xlabel(f"P(replicated {what} >= observed)")
    axes[0].set_ylabel("schools")
    fig.suptitle("Posterior predictive p-values per school (near 0 or 1: the model misses it)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="nuts", help="nuts (default), chees or svi")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--new-schools", type=int, default=14, help="schools held out entirely")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/tutorial-school)")
    p.add_argument("--figures", type=Path, default=None, help="folder for the figures (default --out)")
    p.add_argument("--smoke", action="store_true", help="tiny settings: 30 schools, 2 x (40 + 40) draws")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = a.out or (Path(tempfile.mkdtemp()) if a.smoke else Path("runs/tutorial-school"))
    figures = a.figures or out
    for folder in (out, figures):
        folder.mkdir(parents=True, exist_ok=True)

    train, test = school(split=0)  # the first of the 10 splits of Argyriou et al. (2008)
    schools = sorted(train["school"].unique())
    if a.smoke:
        schools = schools[:30]
        a.chains, a.warmup, a.draws, a.new_schools = 2, 40, 40, 4
    rng = np.random.default_rng(a.seed)
    unseen = set(rng.choice(schools, size=a.new_schools, replace=False))
    known = [s for s in schools if s not in unseen]
    fit_rows = train[train["school"].isin(known)]

    # 1. data: long format, one row per student; features standardised (replayed on new rows)
    data = bm.MultiTaskData.from_frame(fit_rows, task="school", target="score",
                                       features=VARYING + SHARED, standardize=True)
    # 2. model: school-level features get one shared coefficient; the rest vary by school.
    #    No prior is given: the defaults scale to the scores (sd about 13), see prior_summary().
    model = bm.models.Hierarchical(likelihood="gaussian", shared=SHARED)
    # 3. inference
    t0 = time.perf_counter()
    quick = {"max_tree_depth": 4} if a.smoke and a.method == "nuts" else {}  # smoke: short trees, short run
    post = bm.fit(model, data, method=a.method, chains=a.chains, warmup=a.warmup, draws=a.draws,
                  seed=a.seed, device=a.device, progress=False, **quick)
    print(f"{post} in {time.perf_counter() - t0:.0f} s, inference path: {post.info['path']}")
    print(post.prior_summary().to_string())
    problems = post.diagnose()  # fit has already warned about each of these
    print("diagnostics:", "no problems" if not problems else "\n  ".join(pr.message for pr in problems))
    summary = post.summary()
    population = [i for i in summary.index if not any(t in i for t in post.task_names)]
    print(summary.loc[population].round(3).to_string())  # the population; summary.csv has every school

    # 4. prediction: test students of known schools, and every student of the unseen schools
    known_test = test[test["school"].isin(known)]
    new_rows = pd.concat([train, test])
    new_rows = new_rows[new_rows["school"].isin(unseen)]
    results = {}
    for label, rows in (("known schools", known_test), ("new schools", new_rows)):
        pred = post.predict(rows, seed=a.seed)
        y = rows["score"].to_numpy()
        results[label] = coverage(pred, y)
        rmse = float(np.sqrt(np.mean((pred["mean"].to_numpy() - y) ** 2)))
        print(f"{label}: {len(rows)} students, RMSE {rmse:.2f}, 90% interval coverage {results[label]:.3f}")
        pred.assign(school=rows["school"].to_numpy(), score=y).to_csv(
            out / f"predictions_{label.split()[0]}.csv", index=False)

    # 5. checks and figures
    check = post.ppc(seed=a.seed)
    print(f"posterior predictive check: 90% coverage of the training rows {check.attrs['coverage']:.3f}; "
          f"schools with p_sd outside [0.05, 0.95]: {int(((check.p_sd < 0.05) | (check.p_sd > 0.95)).sum())}")
    summary.to_csv(out / "summary.csv")
    check.to_csv(out / "ppc.csv")
    shrinkage_figure(post, fit_rows, figures / "shrinkage.png")
    ppc_figure(check, figures / "ppc.png")
    print(f"wrote {out}" + (f" and figures to {figures}" if figures != out else ""))
    return results


if __name__ == "__main__":
    main()
