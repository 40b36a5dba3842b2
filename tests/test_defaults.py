"""Default priors are scaled to the data (rstanarm's autoscale): a raw-scale target gets honest
intervals without standardising by hand; the priors used are reported; given priors stay."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro.distributions as dist
import pytest

import bayesmtl as bm
from bayesmtl.cli import main


def _raw(n_tasks=8, rows=30, seed=0, level=500.0, spread=20.0, slope=8.0, noise=15.0):
    """Planted hierarchical data in raw units (an exam-score-like target around ``level``)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n_tasks):
        a = level + spread * rng.normal()
        for _ in range(rows):
            x = rng.normal(2.0, 1.5)  # not centred
            out.append({"task": f"t{t}", "x": x, "y": a + slope * x + noise * rng.normal()})
    return pd.DataFrame(out)


def test_default_priors_follow_the_targets_units_and_are_reported():
    df = _raw()
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.Hierarchical()
    post = bm.fit(model, data, method="map", steps=300, min_steps=100, seed=0, progress=False)
    table = post.prior_summary().set_index(["site", "entry"])["prior"]
    m, s = df["y"].mean(), df["y"].std()
    wide = s * np.sqrt(1 + (df["x"].mean() / df["x"].std()) ** 2)  # x is not centred: the intercept ranges wider
    assert table[("tau", "intercept")] == f"HalfNormal(scale={wide:.4g})"
    assert table[("sigma", "all")] == f"HalfNormal(scale={s:.4g})"
    assert table[("mu", "intercept")].startswith(f"Normal(loc={m:.4g}, ")
    assert table[("mu", "x")] == f"Normal(loc=0, scale={2.5 * s / df['x'].std():.4g})"
    assert set(post.prior_summary().attrs["defaults"]) == {"prior.mean", "prior.scale", "likelihood.noise",
                                                         "likelihood.noise_prior"}
    assert post.info["prior_scales"]["scale"] == pytest.approx(s)
    assert model.prior.mean is None and model.likelihood.noise_prior is None  # the caller's model is unchanged


def _few_rows(rows: int, dims: int, seed: int = 0) -> bm.MultiTaskData:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(6 * rows, dims))
    task = np.repeat(np.arange(6), rows)
    y = X @ rng.normal(size=dims) + rng.normal(size=6 * rows)
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(dims)]).assign(task=task, y=y)
    return bm.MultiTaskData.from_frame(frame, task="task", target="y")


@pytest.mark.parametrize("rows, mode", [(12, "shared"), (16, "per_task")])
def test_the_default_noise_is_per_task_only_where_each_task_can_estimate_it(rows, mode):
    # 10 task parameters (intercept + 9 features): 12 rows leave 2 residual degrees of freedom
    # per task, too few for a sigma per task; 16 leave 6
    data = _few_rows(rows, dims=9)
    model = bm.models.Independent()
    bound = model.bind(data)
    assert bound.likelihood.noise == mode
    assert "likelihood.noise" in bound.defaults()
    assert model.likelihood.noise is None  # the caller's model is unchanged
    given = bm.models.Independent(likelihood=bm.likelihoods.Gaussian(noise="per_task")).bind(data)
    assert given.likelihood.noise == "per_task" and "likelihood.noise" not in given.defaults()


def test_an_independent_models_new_task_warns_that_it_gets_the_prior():
    data = _few_rows(16, dims=2)
    post = bm.fit(bm.models.Independent(), data, method="map", steps=200, min_steps=50, seed=0, progress=False)
    new = pd.DataFrame({"task": [99, 99], "x0": [0.0, 1.0], "x1": [0.0, -1.0]})
    with pytest.warns(UserWarning, match="share nothing"):
        wide = post.predict(new)
    known = post.predict(new.assign(task=0))
    assert (wide["sd"] > 3 * known["sd"]).all()  # the prior's spread, not a fitted task's


def test_given_priors_stay_as_given():
    data = bm.MultiTaskData.from_frame(_raw(), task="task", target="y")
    model = bm.models.Hierarchical(prior=bm.priors.Hierarchical(scale=dist.HalfNormal(2.0)),
                                   likelihood=bm.likelihoods.Gaussian(noise_prior=dist.HalfNormal(40.0)))
    post = bm.fit(model, data, method="map", steps=300, min_steps=100, seed=0, progress=False)
    table = post.prior_summary().set_index(["site", "entry"])["prior"]
    assert table[("tau", "all")] == "HalfNormal(scale=2)" and table[("sigma", "all")] == "HalfNormal(scale=40)"
    assert post.prior_summary().attrs["defaults"] == ["prior.mean", "likelihood.noise"]  # the noise mode: from the data


def test_a_raw_scale_target_gets_calibrated_intervals_with_defaults():
    """With unit-scale defaults (HalfNormal(1) noise) sigma would be pulled far below the planted 15
    and 90% intervals would cover well under 90% of new rows."""
    full = _raw(seed=1, rows=60)
    df, test = full.groupby("task").head(30), full.groupby("task").tail(30)  # the same tasks, new rows
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    post = bm.fit(bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian(noise="shared")), data,
                  method="nuts", chains=2, warmup=300, draws=300, seed=0, progress=False)
    lo, hi = np.quantile(post.samples["sigma"], [0.05, 0.95])
    assert lo < 15.0 < hi, (lo, hi)
    pred = post.predict(test, seed=0)
    cover = ((pred["q05"] <= test["y"].to_numpy()) & (test["y"].to_numpy() <= pred["q95"])).mean()
    assert 0.84 <= cover <= 0.96, cover


def test_cli_sets_priors_and_model_settings(tmp_path, capsys):
    csv = tmp_path / "d.csv"
    _raw(n_tasks=4, rows=10).to_csv(csv, index=False)
    base = ["fit", "--data", str(csv), "--task", "task", "--target", "y", "--method", "map", "--quiet",
            "--option", "steps=200", "--option", "min_steps=100"]
    assert main(base + ["--out", str(tmp_path / "r"), "--set-prior", "tau=HalfNormal(3)",
                        "--set-prior", "noise=HalfNormal(25)"]) == 0
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "HalfNormal(scale=3)" in out and "HalfNormal(scale=25)" in out and "prior.mean" in out
    assert main(base + ["--out", str(tmp_path / "bad"), "--set-prior", "tau=__import__('os')"]) == 2
    assert "is not a prior" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "bad"), "--set-prior", "nope=HalfNormal(1)"]) == 2
    assert "no prior setting 'nope'" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "bad"), "--model-option", "rank=2"]) == 2
    assert "no such setting" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(base + ["--out", str(tmp_path / "tr"), "--model", "task-relationship", "--model-option",
                        "rank=None"]) == 0


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
def test_dp_clustering_picks_its_likelihood_from_the_target_and_says_so(kind):
    import warnings

    from bayesmtl.synthetic import planted_clusters

    df, _ = planted_clusters(tasks_per_cluster=3, rows=20, likelihood=kind, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.DPClustering(prior=bm.priors.DirichletProcess(truncation=6, alpha=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(model, data, method="map", steps=200, min_steps=100, seed=0, progress=False)
    assert post.model.likelihood.kind == kind and post.model.outcome == kind
    assert f"likelihood={kind}" in post.prior_summary().attrs["defaults"]


def test_multitask_gp_default_rank_represents_three_opposed_tasks(tmp_path):
    """One factor plus a diagonal cannot hold +0.8, -0.6, -0.3 (rho01 rho02 / rho12 = 1.6 > 1); the
    default rank is full for few tasks, so `bayesmtl fit --model multitask-gp` with no settings
    (its default method: type-II ML) recovers each latent correlation within 0.15."""
    rng = np.random.default_rng(0)
    C = np.array([[1, 0.8, -0.6], [0.8, 1, -0.3], [-0.6, -0.3, 1]])
    n = 250
    x = np.sort(rng.uniform(0, 10, n))
    K = np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2)
    f = np.linalg.cholesky(np.kron(C, K) + 1e-6 * np.eye(3 * n)) @ rng.standard_normal(3 * n)
    df = pd.DataFrame({"task": np.repeat(["a", "b", "c"], n), "x": np.tile(x, 3),
                       "y": f + 0.3 * rng.standard_normal(3 * n)})
    df.to_csv(tmp_path / "d.csv", index=False)
    assert main(["fit", "--model", "multitask-gp", "--data", str(tmp_path / "d.csv"), "--task", "task",
                 "--target", "y", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    rel = pd.read_csv(tmp_path / "r" / "relations.csv").set_index(["task_a", "task_b"])["mean"]
    for (a, b), truth in {("a", "b"): 0.8, ("a", "c"): -0.6, ("b", "c"): -0.3}.items():
        assert abs(rel[(a, b)] - truth) < 0.15, rel
    run = bm.load(tmp_path / "r")
    assert "rank=3" in run.prior_summary().attrs["defaults"] and run.info["method"] == "map"


def test_multitask_gp_priors_follow_the_targets_and_inputs_units():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 50, 60)
    df = pd.DataFrame({"task": np.repeat(["a", "b"], 30), "x": x, "y": 1000 + 100 * np.sin(x / 5)})
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    bound = bm.models.MultitaskGP().bind(data)
    s, m = df["y"].std(), df["y"].mean()
    assert float(bound.mean_prior.loc) == pytest.approx(m) and float(bound.mean_prior.scale) == pytest.approx(2.5 * s)
    assert float(bound.outputscale_prior.loc) == pytest.approx(np.log(s))
    assert float(bound.noise_prior.loc) == pytest.approx(2 * np.log(s) - 2)
    assert float(bound.lengthscale_prior.loc[0]) == pytest.approx(np.log(df["x"].std()), rel=1e-6)
    assert {"mean_prior", "noise_prior", "rank=2"} <= set(bound.defaults())
    given = bm.models.MultitaskGP(noise_prior=dist.LogNormal(0.0, 1.0)).bind(data)
    assert float(given.noise_prior.loc) == 0.0 and "noise_prior" not in given.defaults()


@pytest.mark.parametrize("n_tasks, rank, mean", [(6, None, "data location"), (12, 3, "learned")])
def test_task_relationship_sizes_its_covariance_and_mean_to_the_number_of_tasks(n_tasks, rank, mean):
    """Up to 10 tasks: full Omega, mean fixed at the data's level (a raw target around 500 is not
    pulled to 0); above: rank 3 (a full Omega of 190 tasks has 17,955 correlations) and a learned mean."""
    df = _raw(n_tasks=n_tasks, rows=12)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.TaskRelationship()
    bound = model.bind(data)
    assert bound.prior.rank == rank and model.prior.rank == "auto"  # the caller's model is unchanged
    assert f"prior.mean={mean}" in bound.defaults()
    assert f"prior.rank={'full' if rank is None else rank}" in bound.defaults()
    post = bm.fit(model, data, method="map", steps=400, min_steps=100, seed=0, progress=False)
    w = post.samples["w"].reshape(-1, n_tasks, 2)[..., 0].mean(0)  # the intercepts, about 500 + 8 * 2
    assert np.all(np.abs(w - 516) < 60), w
    assert ("mu" in post.samples) == (mean == "learned")


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_a_new_task_of_a_rare_binary_target_gets_the_populations_rate():
    """Under a zero-mean prior a new task was predicted at p = 0.5 for a target with 6% positives
    (landmine); with many tasks the learned mean carries the population's level to new tasks."""
    rng = np.random.default_rng(0)
    rows = []
    for t in range(16):
        a = -2.5 + 0.4 * rng.normal()
        for _ in range(60):
            x = rng.normal()
            rows.append({"task": f"t{t}", "x": x, "y": float(rng.random() < 1 / (1 + np.exp(-(a + 0.5 * x))))})
    df = pd.DataFrame(rows)
    train = df[df["task"] != "t15"]
    data = bm.MultiTaskData.from_frame(train, task="task", target="y")
    post = bm.fit(bm.models.TaskRelationship(likelihood="bernoulli"), data, method="svi", steps=1500,
                  min_steps=500, seed=0, progress=False, draws=200)
    p = post.predict(df[df["task"] == "t15"], seed=0)["probability"].mean()
    assert abs(p - train["y"].mean()) < 0.06, (p, train["y"].mean())
