"""Multi-task GP (ICM / LMC): planted task correlations, exact paths agree, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from bayesmtl.models.multitask_gp import MultitaskGP

import bayesmtl as bm
from bayesmtl.gp import icm

TRUE_CORR = np.array([[1.0, 0.9, -0.7, 0.3],
                      [0.9, 1.0, -0.6, 0.2],
                      [-0.7, -0.6, 1.0, 0.0],
                      [0.3, 0.2, 0.0, 1.0]])
SCALES = np.array([1.0, 0.8, 1.2, 1.0])


def planted(n: int, span: float, shared: bool = True, seed: int = 0, noise: float = 0.05) -> pd.DataFrame:
    """Rows drawn from an ICM prior: B = diag(s) C diag(s), RBF lengthscale 1 on [0, span]."""
    rng = np.random.default_rng(seed)
    T = len(SCALES)
    B = SCALES[:, None] * TRUE_CORR * SCALES[None, :]
    if shared:
        x = np.sort(rng.uniform(0, span, n))
        xs, task = np.tile(x, T), np.repeat(np.arange(T), n)
    else:
        xs = np.concatenate([np.sort(rng.uniform(0, span, n)) for _ in range(T)])
        task = np.repeat(np.arange(T), n)
    K = np.exp(-0.5 * (xs[:, None] - xs[None, :]) ** 2) * B[task][:, task]
    w, U = np.linalg.eigh(K)  # not Cholesky: K is numerically singular at dense inputs
    f = U @ (np.sqrt(np.clip(w, 0, None)) * rng.standard_normal(len(xs)))
    y = f + np.sqrt(noise) * rng.standard_normal(len(xs))
    return pd.DataFrame({"task": [f"t{t}" for t in task], "x": xs, "y": y})


def data_of(df):
    return bm.MultiTaskData.from_frame(df, task="task", target="y")


# ------------------------------------------------------------------------- exact paths agree
def test_kronecker_and_hadamard_marginal_likelihood_agree():
    df = planted(40, 8.0, seed=3)
    data = data_of(df)
    grid = icm.grid_layout(data.X, data.y, data.task, data.n_tasks)
    assert grid is not None and MultitaskGP().gp_path(data) == "kronecker"
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.rand(4, generator=g, dtype=torch.float64) + 0.1
    ls = torch.tensor([0.7], dtype=torch.float64)
    noise = torch.rand(4, generator=g, dtype=torch.float64) * 0.1 + 0.01
    mean = torch.randn(4, generator=g, dtype=torch.float64)
    for kern in ("rbf", "matern52"):
        a = icm.kronecker_mll(grid.X, grid.Y, icm.task_covariance(W, v), ls, noise, mean, kern)
        b = icm.hadamard_mll(data.X, data.y, data.task, icm.task_covariance(W, v), ls, noise, mean, kern)
        assert abs(a.item() - b.item()) <= 1e-4 * abs(b.item())
        ga, = torch.autograd.grad(a, W)
        gb, = torch.autograd.grad(b, W)
        assert torch.allclose(ga, gb, rtol=1e-6, atol=1e-8)
    # and batched over a leading dim of hyperparameters, as batched samplers evaluate it
    vb = v.expand(3, 1, 4) * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    Bb = icm.task_covariance(W.detach().expand(3, 1, 4, 2), vb)
    hyper = (ls.expand(3, 1, 1), noise.expand(3, 1, 4), mean.expand(3, 1, 4))
    kb = icm.kronecker_mll(grid.X, grid.Y, Bb, *hyper)
    hb = icm.hadamard_mll(data.X, data.y, data.task, Bb, *hyper)
    assert kb.shape == (3, 1) and torch.allclose(kb, hb, rtol=1e-8)
    # predictions from the cached Kronecker factors equal the Hadamard ones
    B = icm.task_covariance(W.detach(), v)
    Xs, ts = torch.linspace(0, 8, 9, dtype=torch.float64)[:, None], torch.arange(9) % 4
    kc = icm.kronecker_cache(grid.X, grid.Y, B, ls, noise, mean, "rbf")
    hc = icm.hadamard_cache(data.X, data.y, data.task, B, ls, noise, mean, "rbf")
    m1, v1 = icm.kronecker_predict(kc, grid.X, Xs, ts, B, ls, mean, "rbf")
    m2, v2 = icm.hadamard_predict(hc, data.X, data.task, Xs, ts, B, ls, mean, "rbf")
    assert torch.allclose(m1, m2, atol=1e-8) and torch.allclose(v1, v2, atol=1e-8)


def _check_recovery(post, tol=0.15):
    rel = post.relations()
    assert rel.point_estimate
    with pytest.raises(ValueError, match="point estimate"):
        rel.interval()
    est = rel.mean().loc[[f"t{i}" for i in range(4)], [f"t{i}" for i in range(4)]].to_numpy()
    err = np.abs(est - TRUE_CORR)
    assert err.max() < tol, f"correlation errors {np.round(err, 3)}; estimate {np.round(est, 2)}"


def test_map_recovers_planted_correlations_shared_inputs():
    data = data_of(planted(100, 20.0, seed=0))
    post = bm.fit(MultitaskGP(rank=4), data, method="map", seed=0)
    assert post.info["gp_path"] == "kronecker"
    _check_recovery(post)


def test_map_recovers_planted_correlations_different_inputs():
    data = data_of(planted(80, 16.0, shared=False, seed=1))
    post = bm.fit(MultitaskGP(rank=4), data, method="map", seed=0)
    assert post.info["gp_path"] == "hadamard"
    _check_recovery(post)
    # prediction: per row, for its task, noise included, close to the held-out truth
    test = planted(80, 16.0, shared=False, seed=1)
    pred = post.predict(test.iloc[::10])
    assert list(pred.columns[:4]) == ["task", "new_task", "mean", "sd"]
    assert np.all(pred["sd"] > 0.2)  # at least the noise sd (0.22)
    assert np.mean(np.abs(pred["mean"].to_numpy() - test.iloc[::10]["y"].to_numpy())) < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
def test_map_recovers_planted_correlations_full_design(shared):
    # the design: 250 rows a task over 20 lengthscales
    data = data_of(planted(250, 20.0, shared=shared, seed=2))
    _check_recovery(bm.fit(MultitaskGP(rank=4), data, method="map", seed=0))


@pytest.mark.slow
def test_nuts_intervals_cover_planted_correlations():
    data = data_of(planted(60, 15.0, seed=4))
    post = bm.fit(MultitaskGP(rank=4), data, method="nuts", chains=2, warmup=200, draws=200, seed=0,
                  progress=False)
    rel = post.relations()
    assert not rel.point_estimate
    lo, hi = rel.interval(0.9)
    names = [f"t{i}" for i in range(4)]
    lo, hi = lo.loc[names, names].to_numpy(), hi.loc[names, names].to_numpy()
    iu = np.triu_indices(4, 1)
    inside = (lo[iu] <= TRUE_CORR[iu]) & (TRUE_CORR[iu] <= hi[iu])
    assert inside.sum() >= 5, f"90% intervals {np.round(lo[iu], 2)}..{np.round(hi[iu], 2)} vs {TRUE_CORR[iu]}"


def test_pyro_model_broadcasts_over_a_leading_batch_dim():
    from bayesmtl.pyro_util import batch_condition

    data = data_of(planted(15, 5.0, shared=False, seed=5))
    model = MultitaskGP(rank=2)
    fn = model.pyro_model(data)
    n = 3
    vals = {"lengthscale": torch.full((n, 1), 1.0, dtype=torch.float64),
            "task_W": torch.randn(n, 4, 2, dtype=torch.float64), "task_v": torch.ones(n, 4, dtype=torch.float64),
            "noise": torch.full((n, 4), 0.1, dtype=torch.float64), "mean": torch.zeros(n, 4, dtype=torch.float64)}
    tr = batch_condition(fn, vals, n, model.max_plate_nesting)
    batched = tr.nodes["gp_mll"]["fn"].log_prob(tr.nodes["gp_mll"]["value"]).reshape(-1)
    for i in range(n):
        one = batch_condition(fn, {k: v[i:i + 1] for k, v in vals.items()}, 1, model.max_plate_nesting)
        single = one.nodes["gp_mll"]["fn"].log_prob(one.nodes["gp_mll"]["value"]).reshape(-1)
        assert torch.allclose(batched[i], single[0])


def test_svi_and_short_nuts_run_end_to_end(tmp_path):
    data = data_of(planted(12, 4.0, seed=6))
    post = bm.fit(MultitaskGP(rank=4), data, method="nuts", chains=1, warmup=20, draws=10, seed=0,
                  progress=False)
    assert post.samples["task_corr"].shape == (1, 10, 4, 4)
    assert post.info["gp_path"] == "kronecker"
    pred = post.predict(planted(12, 4.0, seed=6).iloc[:5])
    assert np.isfinite(pred["mean"]).all()
    out = post.save(tmp_path / "run")
    import json
    assert json.loads((out / "run.json").read_text())["gp_path"] == "kronecker"
    post2 = bm.fit(MultitaskGP(rank=1), data, method="svi", steps=200, min_steps=100, draws=20, seed=0,
                   progress=False)
    assert post2.samples["task_corr"].shape == (1, 20, 4, 4)


# ------------------------------------------------------------------------- numerics
def test_cholesky_retries_with_jitter_and_names_it():
    A = torch.ones(5, 5, dtype=torch.float64)  # rank 1: PSD, not PD
    with pytest.warns(RuntimeWarning, match="jitter"):
        L = icm.robust_cholesky(A, "test matrix")
    assert torch.isfinite(L).all()
    with pytest.raises(icm.GPNumericalError, match="failed even with jitter"):
        icm.robust_cholesky(-torch.eye(3, dtype=torch.float64), "test matrix")


# ------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_naming_the_culprit():
    df = planted(10, 4.0, seed=7)
    data = data_of(df)
    with pytest.raises(ValueError, match="rank 5 exceeds the number of tasks"):
        bm.fit(MultitaskGP(rank=5), data, method="map")
    one = pd.concat([df[df.task != "t3"], df[df.task == "t3"].iloc[:1]])
    with pytest.raises(ValueError, match="task 't3' has 1 row"):
        bm.fit(MultitaskGP(), data_of(one), method="map")
    bad = df.copy()
    bad.loc[3, "x"] = np.nan
    with pytest.raises(ValueError, match="'x' has 1 NaN"):
        data_of(bad)
    import gpytorch

    k = gpytorch.kernels.RBFKernel(ard_num_dims=3)
    with pytest.raises(ValueError, match="ard_num_dims=3 but the data have 1 input feature"):
        bm.fit(MultitaskGP(kernel=k), data, method="map")
    with pytest.raises(ValueError, match="kernel must be one of"):
        MultitaskGP(kernel="cosine")
    with pytest.raises(ValueError, match="at least one input feature"):
        MultitaskGP().check(bm.MultiTaskData.from_frame(df[["task", "y"]], task="task", target="y"))
    with pytest.raises(ValueError, match="rank must be"):
        MultitaskGP(rank=0)
    post = bm.fit(MultitaskGP(rank=1), data, method="map", seed=0, steps=5)
    with pytest.raises(ValueError, match="task 'zz' was not in the training data"):
        post.predict(pd.DataFrame({"task": ["zz"], "x": [0.0]}))


def test_gpytorch_kernel_object_with_map():
    import gpytorch

    data = data_of(planted(30, 6.0, seed=8))
    k = gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(MultitaskGP(rank=2, kernel=k), data, method="map", seed=0, steps=20)
    assert np.isfinite(post.info["log_marginal_likelihood"])
    assert np.isfinite(post.predict(planted(30, 6.0, seed=8).iloc[:4])["mean"]).all()


def test_lmc_fits_minibatched_and_predicts():
    df = planted(60, 12.0, shared=False, seed=9)
    data = data_of(df)
    post = bm.fit(MultitaskGP(kind="lmc", num_latents=2, inducing=32), data, method="map", seed=0,
                  steps=150, batch_size=64, lr=0.05)
    assert post.info["gp_path"] == "lmc-variational" and post.info["batch_size"] == 64
    assert post.samples["task_corr"].shape == (1, 1, 4, 4)
    pred = post.predict(df.iloc[::7])
    # better than predicting each task's mean
    resid = np.mean((pred["mean"].to_numpy() - df.iloc[::7]["y"].to_numpy()) ** 2)
    base = np.mean((df.groupby("task")["y"].transform("mean").iloc[::7] - df.iloc[::7]["y"]) ** 2)
    assert resid < 0.5 * base
    with pytest.raises(NotImplementedError, match="method='map'"):
        bm.fit(MultitaskGP(kind="lmc"), data, method="nuts", chains=1, warmup=2, draws=2)
