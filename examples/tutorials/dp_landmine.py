"""Tutorial: which minefields behave alike? Dirichlet-process task clustering (Xue et al. 2007).

Walked through in docs/tutorials/dp-landmine.md. 29 minefields, each a logistic-regression
task (landmine or clutter from 9 radar features). The DP prior lets fields share one set of
coefficients when their data agree, and learns how many groups there are. Fields 1-15 are
foliated, 16-29 bare earth or desert: the clusters can be checked against that.

    .venv/bin/python examples/tutorials/dp_landmine.py --out runs/tutorial-landmine
    .venv/bin/python examples/tutorials/dp_landmine.py --smoke      # tiny settings (CI)

Writes scores.csv, clusters.csv and the figures num_clusters.png and coclustering.png to
``--figures`` (default: ``--out``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import bayesmtl as bm
from bayesmtl.datasets import landmine, landmine_split
from bayesmtl.relations import adjusted_rand_index


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (rank form); NaN when a field's test rows have one class."""
    pos, neg = p[y == 1], p[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def num_clusters_figure(nc: pd.DataFrame, path: Path) -> None:
    """Bar chart of the posterior of the number of occupied clusters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 2.8))
    ax.bar(nc["num_clusters"], nc["probability"], color="0.45")
    ax.set_xlabel("number of occupied clusters")
    ax.set_ylabel("posterior probability")
    ax.set_xticks(nc["num_clusters"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="svi", help="svi (default) or nuts")
    p.add_argument("--n-train", type=int, default=80, help="training rows per field")
    p.add_argument("--steps", type=int, default=8000, help="most SVI steps")
    p.add_argument("--warmup", type=int, default=500, help="MCMC warmup")
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--chains", type=int, default=2, help="MCMC chains")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/tutorial-landmine)")
    p.add_argument("--figures", type=Path, default=None, help="folder for the figures (default --out)")
    p.add_argument("--smoke", action="store_true", help="tiny settings: 40 rows per field, 200 SVI steps")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.smoke:
        a.n_train, a.steps, a.warmup, a.draws, a.chains = 40, 200, 30, 30, 1
    out = a.out or (Path(tempfile.mkdtemp()) if a.smoke else Path("runs/tutorial-landmine"))
    figures = a.figures or out
    for folder in (out, figures):
        folder.mkdir(parents=True, exist_ok=True)

    train, test = landmine_split(landmine(), n_train=a.n_train, seed=a.seed)
    data = bm.MultiTaskData.from_frame(train, task="field", target="label", standardize=True)
    settings = (dict(steps=a.steps, draws=a.draws) if a.method == "svi"
                else dict(chains=a.chains, warmup=a.warmup, draws=a.draws))
    models = {"independent": bm.models.Independent(likelihood="bernoulli"),
              "hierarchical": bm.models.Hierarchical(likelihood="bernoulli"),
              "dp-clustering": bm.models.DPClustering(likelihood="bernoulli")}
    rows, posts = [], {}
    y = test["label"].to_numpy()
    for name, model in models.items():
        post = bm.fit(model, data, method=a.method, seed=a.seed, device=a.device, progress=False, **settings)
        posts[name] = post
        prob = post.predict(test, seed=a.seed)["probability"].to_numpy()
        per_field = [auc(y[m], prob[m]) for m in (test["field"].to_numpy() == f for f in data.task_names)]
        rows.append({"model": name, "mean AUC over fields": float(np.nanmean(per_field)),
                     "Brier": float(np.mean((prob - y) ** 2)), "warnings": len(post.diagnose())})
    scores = pd.DataFrame(rows)
    print(f"{a.n_train} training rows per field, {len(test)} test rows\n" + scores.round(4).to_string(index=False))

    dp = posts["dp-clustering"]
    nc = dp.num_clusters()
    print("posterior of the number of clusters:\n" + nc.round(3).to_string(index=False))
    rel = dp.relations()  # co-clustering probabilities: P(field a and field b share a cluster)
    part = rel.clusters()  # the point partition that best summarises the draws (Binder loss)
    terrain = np.array([int(f.split("_")[1]) > 15 for f in part["task"]])
    print(f"point partition: {part['cluster'].nunique()} clusters; adjusted Rand index against terrain "
          f"(foliated / bare) {adjusted_rand_index(part['cluster'].to_numpy(), terrain):.2f}")
    print(rel.graph(threshold=0.5).head(10)[["task_a", "task_b", "mean"]].round(2).to_string(index=False))
    scores.to_csv(out / "scores.csv", index=False)
    part.to_csv(out / "clusters.csv", index=False)
    num_clusters_figure(nc, figures / "num_clusters.png")
    rel.plot(figures / "coclustering.png", title="P(two fields share a cluster), ordered by clustering")
    print(f"wrote {out}" + (f" and figures to {figures}" if figures != out else ""))
    return scores


if __name__ == "__main__":
    main()
