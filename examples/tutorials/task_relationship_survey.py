"""Tutorial: which buyers think alike, and which think the opposite? Task-relationship learning
(Zhang & Yeung 2010) on the computer-survey conjoint data.

Walked through in docs/tutorials/task-relationship-survey.md. 190 respondents each rate 16 PC
profiles (13 attributes: RAM, price, ...) from 0 to 10; each respondent is a task. The prior
learns a task covariance, so two respondents can be positively or negatively related, and
ratings of the 4 held-out profiles borrow from respondents who rate alike.

    .venv/bin/python examples/tutorials/task_relationship_survey.py --out runs/tutorial-survey
    .venv/bin/python examples/tutorials/task_relationship_survey.py --smoke      # tiny settings (CI)

Writes rmse.csv, pairs.csv and the figure correlation.png to ``--figures`` (default: ``--out``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch

import bayesmtl as bm
from bayesmtl.datasets import computer_survey


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="nuts", help="nuts (default) or svi (task weights integrated out)")
    p.add_argument("--steps", type=int, default=10000, help="most SVI steps")
    p.add_argument("--warmup", type=int, default=500, help="MCMC warmup")
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--chains", type=int, default=4, help="MCMC chains")
    p.add_argument("--respondents", type=int, default=None, help="use the first n respondents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/tutorial-survey)")
    p.add_argument("--figures", type=Path, default=None, help="folder for the figures (default --out)")
    p.add_argument("--smoke", action="store_true", help="tiny settings: 30 respondents, 1 x (30 + 30) draws")
    a = p.parse_args(argv)
    matplotlib.use("Agg")  # figures go to files
    import matplotlib.pyplot as plt
    torch.set_num_threads(1)
    if a.smoke:
        a.respondents, a.steps, a.warmup, a.draws, a.chains = a.respondents or 30, 300, 30, 30, 1
    out = a.out or (Path(tempfile.mkdtemp()) if a.smoke else Path("runs/tutorial-survey"))
    figures = a.figures or out
    for folder in (out, figures):
        folder.mkdir(parents=True, exist_ok=True)

    train, test = computer_survey()  # profiles 1-16 to fit, 17-20 held out
    if a.respondents:
        keep = train["respondent"].unique()[:a.respondents]
        train, test = train[train["respondent"].isin(keep)], test[test["respondent"].isin(keep)]
    data = bm.MultiTaskData.from_frame(train, task="respondent", target="rating")
    noise = bm.likelihoods.Gaussian("shared")  # 16 ratings each: one noise level for everyone
    # TaskRelationship() sizes itself to the data: above 10 tasks, a rank-3 task covariance and
    # a learned mean (prior_summary().attrs["defaults"] records the choice)
    models = {"hierarchical": bm.models.Hierarchical(noise),
              "task-relationship": bm.models.TaskRelationship(noise)}
    settings = (dict(steps=a.steps, min_steps=min(3000, a.steps)) if a.method == "svi"
                else dict(chains=a.chains, warmup=a.warmup, draws=a.draws))
    if a.smoke and a.method == "nuts":
        settings["max_tree_depth"] = 4  # smoke: short trees, short run
    rows, posts = [], {}
    for name, model in models.items():
        extra = {"collapse": True} if a.method == "svi" and name == "task-relationship" else {}
        post = bm.fit(model, data, method=a.method, seed=a.seed, device=a.device, progress=False,
                      **settings, **extra)
        posts[name] = post
        pred = post.predict(test, seed=a.seed)
        y = test["rating"].to_numpy()
        rows.append({"model": name, "test RMSE": float(np.sqrt(np.mean((pred["mean"].to_numpy() - y) ** 2))),
                     "90% coverage": float(np.mean((pred["q05"].to_numpy() <= y) & (y <= pred["q95"].to_numpy()))),
                     "warnings": len(post.diagnose())})
    table = pd.DataFrame(rows)
    print(f"{data.n_tasks} respondents; {len(test)} held-out ratings\n" + table.round(3).to_string(index=False))
    print(posts["task-relationship"].prior_summary().attrs.get("defaults", ""))

    rel = posts["task-relationship"].relations()  # (draws, T, T) correlations of the respondents' weights
    pairs = rel.graph(threshold=0.5)  # its network figure (attrs["figure"]) is a hairball at 190 tasks
    plt.close(pairs.attrs.pop("figure"))
    print(f"{len(pairs)} credibly related pairs with |mean| >= 0.5: {int((pairs['sign'] > 0).sum())} positive, "
          f"{int((pairs['sign'] < 0).sum())} negative")
    print(pairs.head(8)[["task_a", "task_b", "mean", "sign"]].round(2).to_string(index=False))
    rel.plot(title="respondent correlations, ordered by clustering (grey: not credible)").savefig(
        figures / "correlation.png", dpi=60)
    table.to_csv(out / "rmse.csv", index=False)
    pairs.to_csv(out / "pairs.csv", index=False)
    print(f"wrote {out}" + (f" and figures to {figures}" if figures != out else ""))
    return table


if __name__ == "__main__":
    main()
