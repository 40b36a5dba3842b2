"""The given-tree hierarchy (``bm.priors.TreeHierarchy``, issue 20): planted level scales are
recovered, new tasks come from their node, and a tree the data cannot carry is one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bayesmtl as bm
from bayesmtl.marginals import form
from bayesmtl.synthetic import tree_regression


def _data(df, task_features=("region", "district")):
    return bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x1"],
                                       task_features=list(task_features))


@pytest.fixture(scope="module")
def small():
    df, truth = tree_regression(branching=(2, 2, 3), rows=8, seed=1)
    return df, truth


@pytest.mark.parametrize("tree,match", [
    ("", "tree must name task-level columns"),
    (["region", "region"], "tree names a column twice"),
    ("region/task", "clashes with a dim the model names"),
    (3, "tree must name task-level columns"),
])
def test_bad_tree_settings_raise(tree, match):
    with pytest.raises(ValueError, match=match):
        bm.priors.TreeHierarchy(tree)


def test_model_needs_a_tree_or_a_prior():
    with pytest.raises(ValueError, match="TreeHierarchy needs tree="):
        bm.models.TreeHierarchy()
    with pytest.raises(ValueError, match="not both"):
        bm.models.TreeHierarchy("region", prior=bm.priors.TreeHierarchy("region"))


@pytest.mark.parametrize("change,match", [
    (lambda df: (df, ("region",)), r"no task feature 'district'; the data have task features \['region'\]"),
    (lambda df: (df.assign(district=df["district"].str[-2:]), ("region", "district")),
     r"tree: district 'd0' lies in two regions \('r0' and 'r1'\)"),
    (lambda df: (df.assign(region=df["region"].str[1:].astype(int)), ("region", "district")),
     "tree level 'region' is numeric"),
])
def test_a_tree_the_data_cannot_carry_is_one_clear_error(small, change, match):
    df, tf = change(small[0])
    with pytest.raises(ValueError, match=match):
        bm.fit(bm.models.TreeHierarchy("region/district"), _data(df, tf), method="svi", steps=5, progress=False)


def test_new_task_draws_come_from_its_district(small):
    """A new task in district d has parameters N(district_mean[d], tau), draw by draw."""
    df, _ = small
    data = _data(df)
    model = bm.models.TreeHierarchy("region/district")
    post = bm.fit(model, data, method="map", steps=300, min_steps=100, seed=0, progress=False)
    new = df[df["task"] == df["task"].iloc[-1]].assign(task="new_one")
    newdata = data.prepare(new)
    flat = {k: v[:1] for k, v in post.flat().items()}
    S = 20000
    rep = {k: v.expand((S,) + v.shape[1:]) for k, v in flat.items()}
    w = model.new_task_params(data, newdata, rep, torch.Generator().manual_seed(0))
    d = int(newdata.task_features["district"][-1])
    m, tau = flat["district_mean"][0][d], flat["tau"][0]
    np.testing.assert_allclose(w[:, 0].mean(0), m, atol=4 * float(tau.max()) / S ** 0.5)
    np.testing.assert_allclose(w[:, 0].std(0), tau, rtol=0.04)
    idata = post.to_arviz()
    assert list(idata.posterior["region_mean"].coords["region"].values) == ["r0", "r1"]


@pytest.mark.parametrize("rows", [8, 1])
def test_collapsed_density_is_the_marginal_of_the_program(small, rows):
    """For fixed tree values, the collapsed log density is sum_t log N(y_t | X_t m_t, X_t diag(tau^2)
    X_t' + sigma_t^2 I) with m_t the task's own node mean, computed directly; one row a task uses
    the padded row form."""
    df = small[0].groupby("task").head(rows)
    data = _data(df)
    model = bm.models.TreeHierarchy("region/district").bind(data)
    f = form(model, data, "collapsed")
    assert f is not None and (f.stats.rows is not None) == (rows < 2)
    g = torch.Generator().manual_seed(0)
    T, D = f.T, f.D
    mean = torch.randn(2, T, D, generator=g, dtype=torch.float64)
    sd = (torch.rand(2, 1, D, generator=g, dtype=torch.float64) + 0.1).expand(2, T, D)
    s2 = torch.rand(2, T, generator=g, dtype=torch.float64) + 0.5
    got = f.stats.log_marginal(mean, sd, s2)
    Xv, _ = model.design(data)
    want = torch.zeros(2, dtype=torch.float64)
    for b in range(2):
        for t in range(T):
            X, y = Xv[data.task == t], data.y[data.task == t]
            cov = X @ torch.diag(sd[b, t] ** 2) @ X.T + s2[b, t] * torch.eye(len(y), dtype=X.dtype)
            want[b] += torch.distributions.MultivariateNormal(X @ mean[b, t], cov).log_prob(y)
    torch.testing.assert_close(got, want)


def test_collapsed_draws_rebuild_w_through_the_program(small):
    """NUTS runs the collapsed tree; its exact draws of w and w_decentered give back w through
    the plain (non-centred) program, so prediction and saved draws see one posterior."""
    data = _data(small[0])
    post = bm.fit(bm.models.TreeHierarchy("region/district"), data, method="nuts", chains=2, warmup=30,
                  draws=10, max_tree_depth=4, seed=0, progress=False)
    assert post.info["path"] == "collapsed"
    flat = post.flat()
    assert "district_mean_decentered" in flat and "w_decentered" in flat
    rebuilt = post.model.complete(data, {k: v for k, v in flat.items() if k != "w"})
    torch.testing.assert_close(rebuilt["w"], flat["w"])


@pytest.mark.slow
def test_planted_level_scales_are_covered_by_nuts():
    """Issue 20's planted tree (4 regions > 3 districts > 4 tasks, scales 1.0 / 0.6 / 0.3): each
    level's scale has its planted value inside a 90% interval for most parameters (the region
    scale rests on 4 regions), and the chains agree."""
    df, truth = tree_regression(seed=0)
    post = bm.fit(bm.models.TreeHierarchy("region/district"), _data(df), method="nuts", chains=4,
                  warmup=500, draws=500, seed=0, progress=False)
    inside = []
    for site in ("region_scale", "district_scale", "tau"):
        d = post.flat()[site].numpy()
        lo, hi = np.quantile(d, [0.05, 0.95], axis=0)
        inside += list((lo <= truth[site]) & (truth[site] <= hi))
    assert np.mean(inside) >= 5 / 6, inside
    assert post.diagnostics()["max_r_hat"] < 1.05


def test_cli_fits_a_tree_and_the_run_loads(small, tmp_path, capsys):
    from bayesmtl.cli import main

    df, _ = small
    path = tmp_path / "train.csv"
    df.to_csv(path, index=False)
    run = tmp_path / "run"
    base = ["fit", "--model", "tree-hierarchy", "--data", str(path), "--task", "task", "--target", "y",
            "--features", "x1", "--task-features", "region,district", "--method", "map"]
    assert main(base + ["--model-option", "tree=region/district", "--option", "steps=200", "--out", str(run)]) == 0
    loaded = bm.load(run)
    assert loaded.model.prior.tree == ["region", "district"]
    new = df[df["task"] == df["task"].iloc[0]].assign(task="brand_new")
    assert np.isfinite(loaded.predict(new)["mean"]).all()
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TreeHierarchy needs tree=" in err[0], err
