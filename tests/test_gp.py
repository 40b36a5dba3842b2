"""Multi-task GP (ICM / LMC): planted task correlations, exact paths agree, bad input."""

from __future__ import annotations

import math
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


def planted(n: int, span: float, shared: bool = True, seed: int = 0, noise: float = 0.05,
            dims: int = 1, scatter: float | None = None) -> pd.DataFrame:
    """Rows drawn from an ICM prior: B = diag(s) C diag(s), RBF lengthscale 1, inputs uniform on
    [0, span]^dims (n rows a task; the same inputs for every task when ``shared``; else each
    task's own uniform draw, or with ``scatter`` a common design moved by N(0, scatter^2) per task)."""
    rng = np.random.default_rng(seed)
    T = len(SCALES)
    B = SCALES[:, None] * TRUE_CORR * SCALES[None, :]
    if shared:
        x = rng.uniform(0, span, (n, dims))
        x = x[np.argsort(x[:, 0])]
        xs, task = np.tile(x, (T, 1)), np.repeat(np.arange(T), n)
    else:
        base = rng.uniform(0, span, (n, dims))
        xs = np.concatenate([base + scatter * rng.standard_normal((n, dims)) if scatter is not None
                             else rng.uniform(0, span, (n, dims)) for _ in range(T)])
        task = np.repeat(np.arange(T), n)
    d2 = ((xs[:, None, :] - xs[None, :, :]) ** 2).sum(-1)
    K = np.exp(-0.5 * d2) * B[task][:, task]
    w, U = np.linalg.eigh(K)  # not Cholesky: K is numerically singular at dense inputs
    f = U @ (np.sqrt(np.clip(w, 0, None)) * rng.standard_normal(len(xs)))
    y = f + np.sqrt(noise) * rng.standard_normal(len(xs))
    cols = {"x": xs[:, 0]} if dims == 1 else {f"x{k}": xs[:, k] for k in range(dims)}
    return pd.DataFrame({"task": [f"t{t}" for t in task], **cols, "y": y})


@pytest.fixture(autouse=True)
def one_thread():
    # these problems are small: extra threads only wait on each other (20x slower on a busy machine)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def data_of(df):
    return bm.MultiTaskData.from_frame(df, task="task", target="y")


# ------------------------------------------------------------------------- exact paths agree
@pytest.mark.parametrize("solver", ["cholesky", "eigh"])
def test_kronecker_and_hadamard_marginal_likelihood_agree(solver):
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
        a = icm.kronecker_mll(grid.X, grid.Y, icm.task_covariance(W, v), ls, noise, mean, kern, solver=solver)
        b = icm.hadamard_mll(data.X, data.y, data.task, icm.task_covariance(W, v), ls, noise, mean, kern)
        assert abs(a.item() - b.item()) <= 1e-4 * abs(b.item())
        ga, = torch.autograd.grad(a, W)
        gb, = torch.autograd.grad(b, W)
        assert torch.allclose(ga, gb, rtol=1e-6, atol=1e-8)
    # and batched over a leading dim of hyperparameters, as batched samplers evaluate it
    vb = v.expand(3, 1, 4) * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    Bb = icm.task_covariance(W.detach().expand(3, 1, 4, 2), vb)
    hyper = (ls.expand(3, 1, 1), noise.expand(3, 1, 4), mean.expand(3, 1, 4))
    kb = icm.kronecker_mll(grid.X, grid.Y, Bb, *hyper, solver=solver)
    hb = icm.hadamard_mll(data.X, data.y, data.task, Bb, *hyper)
    assert kb.shape == (3, 1) and torch.allclose(kb, hb, rtol=1e-8)
    # predictions from the cached Kronecker factors equal the Hadamard ones
    B = icm.task_covariance(W.detach(), v)
    Xs, ts = torch.linspace(0, 8, 9, dtype=torch.float64)[:, None], torch.arange(9) % 4
    kc = icm.kronecker_cache(grid.X, grid.Y, B, ls, noise, mean, "rbf", solver=solver)
    hc = icm.hadamard_cache(data.X, data.y, data.task, B, ls, noise, mean, "rbf")
    m1, v1 = icm.kronecker_predict(kc, grid.X, Xs, ts, B, ls, mean, "rbf")
    m2, v2 = icm.hadamard_predict(hc, data.X, data.task, Xs, ts, B, ls, mean, "rbf")
    assert torch.allclose(m1, m2, atol=1e-8) and torch.allclose(v1, v2, atol=1e-8)


@pytest.mark.parametrize("solver", ["cholesky", "eigh"])
def test_closed_form_gradient_matches_finite_differences(solver):
    data = data_of(planted(6, 3.0, seed=11))
    grid = icm.grid_layout(data.X, data.y, data.task, data.n_tasks)
    g = torch.Generator().manual_seed(2)
    W = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    logv = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    ls = torch.tensor([0.8], dtype=torch.float64, requires_grad=True)
    lognz = (torch.randn(4, generator=g, dtype=torch.float64) - 2).requires_grad_()
    mean = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)

    def had(W, logv, ls, lognz, mean):
        B = icm.task_covariance(W, logv.exp())
        return icm.hadamard_mll(data.X, data.y, data.task, B, ls, lognz.exp(), mean, "matern32")

    def kron(W, logv, ls, lognz, mean):
        return icm.kronecker_mll(grid.X, grid.Y, icm.task_covariance(W, logv.exp()), ls, lognz.exp(), mean,
                                 solver=solver)

    assert torch.autograd.gradcheck(had, (W, logv, ls, lognz, mean))
    assert torch.autograd.gradcheck(kron, (W, logv, ls, lognz, mean))


@pytest.mark.parametrize("kind", icm.KERNELS)
def test_hadamard_closed_form_gradient_matches_autograd_through_the_covariance(kind):
    # the fused path (named kernel) against autograd through the explicit covariance matrix,
    # with merged cells, a batch of draws and an input shared by two tasks
    g = torch.Generator().manual_seed(3)
    dt, N, D, T = torch.float64, 30, 3, 4
    X = torch.randn(N, D, generator=g, dtype=dt)
    X[5] = X[4]
    task = torch.randint(0, T, (N,), generator=g)
    task[5] = (task[4] + 1) % T
    y = torch.randn(N, generator=g, dtype=dt)
    count = torch.randint(1, 4, (N,), generator=g).to(dt)
    ss = 0.3 * (count - 1)
    args = [torch.randn(3, T, 2, generator=g, dtype=dt), torch.randn(3, T, generator=g, dtype=dt),
            0.3 * torch.randn(3, D, generator=g, dtype=dt), torch.randn(3, T, generator=g, dtype=dt) - 1,
            torch.randn(3, T, generator=g, dtype=dt), torch.randn(3, T, generator=g, dtype=dt)]
    args = [a.requires_grad_() for a in args]
    same = (task.unsqueeze(-1) == task.unsqueeze(-2)).to(dt)

    # the last argument: log variances of task means integrated out (offset)
    def fused(W, logv, logls, lognz, mean, logoff):
        B = icm.task_covariance(W, logv.exp())
        return icm.hadamard_mll(X, y, task, B, logls.exp(), lognz.exp(), mean, kind, count, ss, offset=logoff.exp())

    def explicit(W, logv, logls, lognz, mean, logoff):
        nz = lognz.exp()
        S = icm._hadamard_cov(X, task, icm.task_covariance(W, logv.exp()), logls.exp(), nz, kind, count)
        S = S + logoff.exp()[..., task].unsqueeze(-1) * same
        v = icm.gaussian_logpdf(S, (y - mean[..., task]).expand(S.shape[:-1]))[0]
        nzr = nz[..., task]
        return v - 0.5 * ((ss / nzr).sum(-1) + ((count - 1) * torch.log(2 * math.pi * nzr)).sum(-1)
                          + count.log().sum(-1))

    a, b = fused(*args), explicit(*args)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)
    ga = torch.autograd.grad(a.sum(), args)
    gb = torch.autograd.grad(b.sum(), args)
    # Matern 1/2's slope at the shared input's rounding-level distance differs between the paths
    tol = 1e-6 if kind == "matern12" else 1e-10
    for x, z in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, z, rtol=tol, atol=tol)


def test_integrated_task_means_are_the_gaussian_conditional():
    # task means mean_t ~ N(m_t, c_t) integrated out: their reported posterior and the prediction
    # at new inputs equal the conditionals of the joint Gaussian (means, f, y), written densely
    g = torch.Generator().manual_seed(5)
    dt, N, D, T = torch.float64, 25, 2, 3
    X = torch.randn(N, D, generator=g, dtype=dt)
    task = torch.arange(N) % T
    y = torch.randn(N, generator=g, dtype=dt)
    W = torch.randn(T, 2, generator=g, dtype=dt)
    B, ls = icm.task_covariance(W, torch.full((T,), 0.2, dtype=dt)), torch.tensor([0.8, 1.5], dtype=dt)
    noise, m = torch.rand(T, generator=g, dtype=dt) + 0.1, torch.randn(T, generator=g, dtype=dt)
    c = torch.rand(T, generator=g, dtype=dt) + 0.5
    cache = icm.hadamard_cache(X, y, task, B, ls, noise, m, "rbf", offset=c)
    post, sd = icm.integrated_means(cache, task, m, c)
    Z = torch.nn.functional.one_hot(task, T).to(dt)
    Syy = icm._hadamard_cov(X, task, B, ls, noise, "rbf") + Z @ torch.diag(c) @ Z.T
    Smy = torch.diag(c) @ Z.T
    torch.testing.assert_close(post, m + Smy @ torch.linalg.solve(Syy, y - Z @ m))
    cov = torch.diag(c) - Smy @ torch.linalg.solve(Syy, Smy.T)
    torch.testing.assert_close(sd, cov.diagonal().sqrt())
    Xs, ts = torch.randn(4, D, generator=g, dtype=dt), torch.tensor([0, 1, 2, 0])
    mu, var = icm.hadamard_predict(cache, X, task, Xs, ts, B, ls, m, "rbf", offset=c)
    Ssy = icm.ard_kernel(Xs, X, ls) * B[ts][:, task] + c[ts].unsqueeze(-1) * (ts.unsqueeze(-1) == task)
    torch.testing.assert_close(mu, m[ts] + Ssy @ torch.linalg.solve(Syy, y - Z @ m))
    torch.testing.assert_close(var, B[ts, ts] + c[ts] - (Ssy @ torch.linalg.solve(Syy, Ssy.T)).diagonal())


def test_map_integrates_the_task_means_out_under_a_normal_prior_only():
    import pyro.distributions as dist

    df = _icm_tasks(4, 30, 0, np.full(4, 0.1), 2)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x"])
    post = bm.fit(MultitaskGP(rank=2), data, method="map", seed=0, progress=False)
    # (their posterior given the hyperparameters: test_integrated_task_means_are_the_gaussian_conditional)
    assert np.all(post.flat()["mean_sd"][0].numpy() > 0)
    assert any(str(i).startswith("mean_sd[") for i in post.summary().index)  # shown, labelled by task
    heavy = bm.fit(MultitaskGP(rank=2, mean_prior=dist.StudentT(3.0, 0.0, 2.0)), data, method="map", seed=0,
                   progress=False)
    assert "mean_sd" not in heavy.samples  # no closed form: the means are maximised, as before
    assert np.isfinite(heavy.predict(df.iloc[:5])["sd"].to_numpy()).all()


def _noisy_tasks(T, n, spread, seed, n_test=0):
    """T linear tasks (2 features, coefficients N(0, 1)), n training rows each (plus ``n_test``),
    noise variances 0.25 exp(spread * N(0, 1))."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(T):
        x = rng.standard_normal((n + n_test, 2))
        sd = np.sqrt(0.25 * np.exp(spread * rng.standard_normal()))
        y = x @ rng.standard_normal(2) + 0.5 * rng.standard_normal() + sd * rng.standard_normal(n + n_test)
        rows.append(pd.DataFrame({"task": f"t{t:02d}", "x0": x[:, 0], "x1": x[:, 1], "y": y,
                                  "test": np.arange(n + n_test) >= n}))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("spread", [0.0, 0.6])
def test_default_noise_spread_estimates_the_planted_spread_of_task_noises(spread):
    from bayesmtl.models.multitask_gp import MIN_SPREAD, noise_spread

    got = [noise_spread(data_of(_noisy_tasks(60, 40, spread, seed))) for seed in range(3)]
    # 60 tasks: the estimate's sd is about 0.1 at 0.6 (sampling sd of a log variance: 0.23)
    assert all(abs(v - max(spread, MIN_SPREAD)) < 0.2 for v in got), got
    post_model = MultitaskGP().bind(data_of(_noisy_tasks(60, 40, spread, 0)))
    assert post_model.noise_spread == got[0] and f"noise_spread={got[0]:.3g}" in post_model.defaults()
    for bad, match in ((0.0, "positive number"), (float("nan"), "positive number"), (True, "positive number")):
        with pytest.raises(ValueError, match=match):
            MultitaskGP(noise_spread=bad)
    with pytest.raises(ValueError, match="kind='icm' only"):
        MultitaskGP(kind="lmc", noise_spread=0.2)


def _icm_tasks(T, n, n_test, noise, seed):
    """T tasks from an ICM (B = W W^T + 0.1 I, W (T, 2) N(0, 1); RBF lengthscale 1 on [0, 5]),
    n training and ``n_test`` held-out rows each, noise variances ``noise`` (T,)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((T, 2))
    B = W @ W.T + 0.1 * np.eye(T)
    x = rng.uniform(0, 5, T * (n + n_test))
    task = np.repeat(np.arange(T), n + n_test)
    K = np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2) * B[task][:, task]
    w, U = np.linalg.eigh(K)
    f = U @ (np.sqrt(np.clip(w, 0, None)) * rng.standard_normal(len(x)))
    y = f + np.sqrt(noise[task]) * rng.standard_normal(len(x))
    return pd.DataFrame({"task": [f"t{t:02d}" for t in task], "x": x, "y": y,
                         "test": np.tile(np.arange(n + n_test) >= n, T)})


def test_pooled_noise_variances_recover_a_shared_noise_from_few_rows_a_task():
    # 30 tasks of 12 rows sharing one noise variance (0.1). Each task's own MAP noise (spread 1:
    # nearly independent) is fitted to 12 rows beside its own loadings and runs low; pooled
    # about a shared level (spread 0.05) the noises sit near the truth and the held-out rows are
    # covered more. (The ICM's MAP is still narrow here, 12 rows a task: see docs/benchmarks.md.)
    df = _icm_tasks(30, 12, 20, np.full(30, 0.1), 11)
    train, test = df[~df.test], df[df.test]
    data = bm.MultiTaskData.from_frame(train, task="task", target="y", features=["x"])
    err, cov = {}, {}
    for spread in (0.05, 1.0):
        post = bm.fit(MultitaskGP(rank=2, noise_spread=spread), data, method="map", seed=0, progress=False)
        err[spread] = float(np.abs(np.log(post.flat()["noise"].numpy() / 0.1)).mean())
        pred = post.predict(test, seed=0)
        cov[spread] = float(((pred["q05"] <= test.y.to_numpy()) & (test.y.to_numpy() <= pred["q95"])).mean())
    assert err[0.05] < 0.6 * err[1.0] and cov[0.05] > cov[1.0] + 0.02, (err, cov)


def _check_recovery(post, tol=0.15):
    rel = post.relations()
    assert rel.point_estimate
    with pytest.raises(ValueError, match="point estimate"):
        rel.interval()
    est = rel.mean().loc[[f"t{i}" for i in range(4)], [f"t{i}" for i in range(4)]].to_numpy()
    err = np.abs(est - TRUE_CORR)
    assert err.max() < tol, f"correlation errors {np.round(err, 3)}; estimate {np.round(est, 2)}"


# Why 2-D inputs: the evidence about B is the number of nearly independent rows a task, not the
# number of rows. On a line, 250 rows over 20 lengthscales hold ~20 such rows (the eigenvalues of K
# above the noise), so even the correlation of the realised functions strays from C by sd ~0.3
# and the type-II ML estimate by sd ~0.2 (1 seed in 8 within 0.15, with the optimum's likelihood
# above the truth's every time: not an optimiser problem). Over 20 x 20 lengthscales the same 250
# rows are nearly independent: sd ~ (1 - rho^2) / sqrt(250) <= 0.06 (10 seeds in 10 within 0.15).
def test_map_recovers_planted_correlations_shared_inputs():
    data = data_of(planted(250, 20.0, seed=0, dims=2))
    post = bm.fit(MultitaskGP(rank=4), data, method="map", seed=0)
    assert post.info["gp_path"] == "kronecker"
    _check_recovery(post)


def _truth_mll(data):
    B = torch.tensor(SCALES[:, None] * TRUE_CORR * SCALES[None, :])
    cells = icm.group_cells(data.X, data.y, data.task)
    return float(icm.hadamard_mll(cells.X, cells.y, cells.task, B, torch.ones(data.n_features, dtype=torch.float64),
                                  torch.full((4,), 0.05, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                                  "rbf", cells.count, cells.ss))


def test_map_different_inputs_reaches_the_optimum_and_predicts():
    df = planted(40, 8.0, shared=False, seed=1)
    data = data_of(df)
    post = bm.fit(MultitaskGP(rank=4), data, method="map", seed=0)
    assert post.info["gp_path"] == "hadamard"
    # type-II ML must reach at least the likelihood of the planted hyperparameters
    assert post.info["log_marginal_likelihood"] >= _truth_mll(data)
    est = post.relations().mean().to_numpy()
    assert est[0, 1] > 0.5 and est[0, 2] < -0.3  # the strong correlations, with their signs
    # prediction: per row, for its task, noise included (a point estimate still gives an sd)
    test = df.iloc[::10]
    pred = post.predict(test)
    assert list(pred.columns[:4]) == ["task", "new_task", "mean", "sd"]
    noise_sd = np.sqrt(post.flat()["noise"][0].numpy())[data.prepare(test).task.numpy()]
    assert np.all(pred["sd"] > 0.85 * noise_sd)  # at least the noise sd, up to Monte-Carlo error (500 draws)
    assert np.all(pred["q05"] < pred["mean"]) and np.all(pred["mean"] < pred["q95"])
    assert np.mean(np.abs(pred["mean"].to_numpy() - test["y"].to_numpy())) < 0.5


def test_type_ii_and_lmc_show_progress_only_when_asked(capfd):
    # a 3,500-row ICM takes most of an hour: the user must see it move (evaluations, objective)
    data = data_of(planted(12, 8.0, seed=2))
    for progress in (True, False):
        bm.fit(MultitaskGP(rank=2), data, method="map", seed=0, progress=progress)
        bm.fit(MultitaskGP(kind="lmc", inducing=8), data, method="map", steps=30, seed=0, progress=progress)
        err = capfd.readouterr().err
        if progress:
            assert "type-II MAP (lbfgs)" in err and "objective=" in err and "LMC (variational, Adam)" in err
        else:
            assert "type-II MAP" not in err and "LMC" not in err


def test_repeated_inputs_are_merged_exactly():
    # categorical inputs repeat (school data): cells of (input, task) give the same likelihood
    rng = np.random.default_rng(0)
    n, T = 90, 3
    X = torch.tensor(rng.integers(0, 4, (n, 2)), dtype=torch.float64)
    task = torch.tensor(rng.integers(0, T, n))
    y = torch.tensor(rng.standard_normal(n))
    cells = icm.group_cells(X, y, task)
    assert cells.X.shape[0] < n and float(cells.count.sum()) == n
    g = torch.Generator().manual_seed(1)
    W = torch.randn(T, 2, generator=g, dtype=torch.float64, requires_grad=True)
    args = (torch.tensor([0.8, 1.5], dtype=torch.float64), torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64),
            torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64), "matern52")
    v = torch.full((T,), 0.2, dtype=torch.float64)
    full = icm.hadamard_mll(X, y, task, icm.task_covariance(W, v), *args)
    merged = icm.hadamard_mll(cells.X, cells.y, cells.task, icm.task_covariance(W, v), *args, cells.count, cells.ss)
    assert abs(full.item() - merged.item()) <= 1e-8 * abs(full.item())
    assert torch.allclose(torch.autograd.grad(full, W)[0], torch.autograd.grad(merged, W)[0], atol=1e-8)


@pytest.mark.slow
def test_map_recovers_planted_correlations_different_inputs():
    # each task at its own inputs (a common 2-D design scattered by 0.3 lengthscales per task)
    data = data_of(planted(250, 20.0, shared=False, seed=0, dims=2, scatter=0.3))
    post = bm.fit(MultitaskGP(rank=4), data, method="map", seed=0)
    assert post.info["gp_path"] == "hadamard"
    _check_recovery(post)


@pytest.mark.slow
def test_nuts_intervals_cover_planted_correlations():
    # the design on 2-D inputs (see above). A 90% interval covers the truth only as often as
    # the realised data let it: at 150 rows (seed 4) type-II ML and NUTS both put C_01 at 0.8 and
    # C_23 at 0.18 (truth 0.9, 0) and 4 of 6 intervals covered
    data = data_of(planted(250, 20.0, seed=3, dims=2))
    post = bm.fit(MultitaskGP(rank=4), data, method="nuts", chains=2, warmup=150, draws=150, seed=0,
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
    tr = batch_condition(fn, vals, n, 1)
    batched = tr.nodes["gp_mll"]["fn"].log_prob(tr.nodes["gp_mll"]["value"]).reshape(-1)
    for i in range(n):
        one = batch_condition(fn, {k: v[i:i + 1] for k, v in vals.items()}, 1, 1)
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


def test_few_inputs_per_lengthscale_default_to_svi_and_say_why(tmp_path):
    few = planted(5, 4.0, seed=6, dims=3)  # 5 distinct inputs for 3 lengthscales
    data = data_of(few)
    method, why = MultitaskGP().method_for(data)
    assert method == "svi" and "5 distinct inputs for 3 ARD lengthscales" in why
    # enough inputs, a given method, and the kinds the rule does not cover keep type-II MAP
    assert MultitaskGP().method_for(data_of(planted(9, 4.0, seed=6, dims=3))) == ("map", "")
    assert MultitaskGP(kind="hierarchical").method_for(data)[0] == "map"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bm.DiagnosticWarning)  # 200 steps: the guide is not the point here
        post = bm.fit(MultitaskGP(rank=2), data, steps=200, min_steps=100, draws=20, seed=0, progress=False)
    assert post.info["method"] == "svi" and post.info["method_chosen"] == why
    given = bm.fit(MultitaskGP(rank=2), data, method="map", steps=5, seed=0, progress=False)
    assert given.info["method"] == "map" and "method_chosen" not in given.info


@pytest.mark.slow
def test_default_icm_on_the_computer_survey_is_calibrated_where_type_ii_map_is_not(shared_data):
    """16 profiles x 13 attributes: type-II MAP overfits (0.84 coverage); the default (SVI) does not."""
    from bayesmtl import datasets

    train, test = datasets.computer_survey()
    data = bm.MultiTaskData.from_frame(train, task="respondent", target="rating",
                                       features=list(datasets.SURVEY_ATTRIBUTES), standardize=True)
    y = test["rating"].to_numpy()
    scores = {}
    for method in (None, "map"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bm.DiagnosticWarning)
            post = bm.fit(MultitaskGP(), data, method=method, seed=0, progress=False)
        pred = post.predict(test, seed=0)
        inside = (pred["q05"].to_numpy() <= y) & (y <= pred["q95"].to_numpy())
        scores[method] = (float(inside.mean()), float(((y - pred["mean"].to_numpy()) ** 2).mean()))
    (cov, mse), (cov_map, mse_map) = scores[None], scores["map"]
    assert post.info["method"] == "map"
    assert 0.87 <= cov <= 0.96, scores  # 760 held-out ratings: a binomial sd of 0.011 at 0.9
    assert cov_map < 0.87 and mse < 0.8 * mse_map, scores


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
    with pytest.raises(ValueError, match="private=True needs kind='icm'"):
        MultitaskGP(kind="lmc", private=True)
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


def test_private_kernels_nest_independent_gps():
    """With B = 0 the ICM + private model's marginal likelihood is the sum of one GP per task."""
    df = planted(25, 6.0, shared=False, seed=4, dims=2)
    data = data_of(df)
    g = torch.Generator().manual_seed(0)
    T, D = 4, 2
    pls = torch.rand(T, D, generator=g, dtype=torch.float64) + 0.5
    pv = torch.rand(T, generator=g, dtype=torch.float64) + 0.5
    noise = torch.rand(T, generator=g, dtype=torch.float64) * 0.2 + 0.05
    mean = torch.randn(T, generator=g, dtype=torch.float64)
    both = icm.hadamard_mll(data.X, data.y, data.task, torch.zeros(T, T, dtype=torch.float64),
                            torch.ones(D, dtype=torch.float64), noise, mean, "matern52", private=(pls, pv))
    each = sum(icm.kronecker_mll(data.X[data.task == t], data.y[data.task == t, None], pv[t].reshape(1, 1),
                                 pls[t], noise[t:t + 1], mean[t:t + 1], "matern52") for t in range(T))
    assert abs(float(both) - float(each)) < 1e-8 * abs(float(each))


def test_private_kernels_fit_tasks_of_different_smoothness():
    """Two tasks share a smooth signal; one also has a wiggly part of its own. ICM + private
    kernels reaches a higher marginal likelihood than ICM, still finds the shared signal
    (correlation), and predicts held-out rows better."""
    rng = np.random.default_rng(5)
    x = np.sort(rng.uniform(0, 10, 120))
    smooth, wiggle = np.sin(x / 1.5), 0.6 * np.sin(4 * x)
    y = np.stack([smooth, smooth + wiggle]) + 0.1 * rng.standard_normal((2, len(x)))
    df = pd.DataFrame({"task": np.repeat(["a", "b"], len(x)), "x": np.tile(x, 2), "y": y.reshape(-1)})
    train, test = df[np.tile(np.arange(len(x)) % 3 > 0, 2)], df[np.tile(np.arange(len(x)) % 3 == 0, 2)]
    data = data_of(train)
    fits = {p: bm.fit(MultitaskGP(rank=1, private=p), data, method="map", seed=0, restarts=2) for p in (False, True)}
    assert fits[True].info["gp_path"] == "hadamard"
    assert fits[True].info["log_marginal_likelihood"] > fits[False].info["log_marginal_likelihood"] + 5
    mse = {p: float(np.mean((f.predict(test)["mean"].to_numpy() - test["y"].to_numpy()) ** 2)) for p, f in fits.items()}
    assert mse[True] < mse[False]
    assert fits[True].relations().mean().to_numpy()[0, 1] > 0.5
    assert fits[True].samples["private_lengthscale"].shape == (1, 1, 2, 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_icm_and_lmc_on_cuda_match_the_cpu():
    """Exact ICM on the GPU reaches the CPU's marginal likelihood and predictions; LMC trains there."""
    df = planted(60, 10.0, seed=2)
    data = data_of(df)
    fits = {d: bm.fit(MultitaskGP(rank=2), data, method="map", seed=0, steps=60, device=d) for d in ("cpu", "cuda")}
    ml = {d: p.info["log_marginal_likelihood"] for d, p in fits.items()}
    assert fits["cuda"].info["device"].startswith("cuda")
    assert abs(ml["cuda"] - ml["cpu"]) < 1e-6 * abs(ml["cpu"]) + 1e-6
    pc, pg = (fits[d].predict(df.iloc[::9]) for d in ("cpu", "cuda"))
    np.testing.assert_allclose(pg["mean"], pc["mean"], rtol=1e-5, atol=1e-6)
    post = bm.fit(MultitaskGP(kind="lmc", num_latents=2, inducing=32), data_of(planted(60, 12.0, shared=False)),
                  method="map", seed=0, steps=100, batch_size=64, lr=0.05, device="cuda")
    assert post.info["device"].startswith("cuda") and np.isfinite(post.predict(df.iloc[::9])["mean"]).all()


def test_cli_fit_writes_a_run_directory_and_predicts(tmp_path, capsys):
    import json

    from bayesmtl.cli import main

    df = planted(15, 5.0, shared=False, seed=10)
    df.to_csv(tmp_path / "d.csv", index=False)
    rc = main(["fit", "--model", "multitask-gp", "--data", str(tmp_path / "d.csv"), "--task", "task",
               "--target", "y", "--method", "map", "--seed", "0", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["model"] == "MultitaskGP" and info["gp_path"] == "hadamard" and info["method"] == "map"
    rel = pd.read_csv(tmp_path / "run" / "relations.csv")
    assert len(rel) > 0
    rc = main(["predict", str(tmp_path / "run"), "--data", str(tmp_path / "d.csv"), "--out", str(tmp_path / "p.csv")])
    assert rc == 0
    pred = pd.read_csv(tmp_path / "p.csv")
    assert len(pred) == len(df) and (pred["sd"] > 0).all() and (pred["q05"] < pred["q95"]).all()
    # the reloaded run predicts what the fitted posterior does
    post = bm.load(tmp_path / "run")
    assert np.allclose(post.predict(df)["mean"], pred["mean"])


# ------------------------------------------------------------------------- model contract
def _lmc(df, seed=0, model=None):
    """A short LMC fit on tiny data (about a second)."""
    model = model or MultitaskGP(kind="lmc", num_latents=2, inducing=8)
    return bm.fit(model, data_of(df), method="map", seed=seed, steps=40, batch_size=32, lr=0.05)


@pytest.mark.parametrize("kind", ["icm", "lmc"])
def test_to_arviz_of_a_map_fit_has_one_predictive_draw_per_posterior_draw(kind):
    df = planted(10, 4.0, shared=False, seed=12)
    post = (bm.fit(MultitaskGP(rank=2), data_of(df), method="map", seed=0, steps=5) if kind == "icm"
            else _lmc(df))
    idata = post.to_arviz()
    y = idata.posterior_predictive["y"]
    assert y.dims == ("chain", "draw", "row") and y.shape == (1, 1, len(df))
    assert np.isfinite(y.values).all()
    for name, dims in post.dims().items():  # every site labelled as site_dims says
        if name in post.samples:
            assert idata.posterior[name].dims == ("chain", "draw", *dims), name
    if kind == "lmc":
        assert idata.posterior["lmc_var_chol"].shape == (1, 1, 2, 8, 8)
        assert idata.posterior["lmc_inducing"].shape == (1, 1, 2, 8, 1)


def test_predict_gives_draws_per_sample_draws_of_y_for_each_posterior_draw():
    df = planted(10, 4.0, shared=False, seed=13)
    data = data_of(df)
    model = MultitaskGP(rank=2)
    post = bm.fit(model, data, method="map", seed=0, steps=5)
    new = data.prepare(df.iloc[::4])
    N, flat = new.n_rows, post.flat()

    def gen():
        return torch.Generator().manual_seed(0)

    one = model.predict(data, new, flat, gen())
    assert one["mean"].shape == (1, N) and one["y"].shape == (1, N)
    mu, var = model.predictive_moments(data, new, flat)
    K = 4000
    out = model.predict(data, new, flat, gen(), draws_per_sample=K)
    assert out["y"].shape == (K, N)
    torch.testing.assert_close(out["mean"], mu)
    sd = var[0].sqrt()
    # Monte-Carlo error of an sd from K draws: relative sd 1 / sqrt(2K) = 1.1%
    assert torch.allclose(out["y"].std(0), sd, rtol=0.06)
    assert ((out["y"].mean(0) - mu[0]).abs() < 5 * sd / K**0.5).all()
    # two posterior draws, the second with 10^4 times the noise: draw s owns rows s*K .. s*K+K-1
    two = {k: torch.cat([v, v]) for k, v in flat.items()}
    two["noise"] = two["noise"] * torch.tensor([[1.0], [1e4]], dtype=two["noise"].dtype)
    mu2, var2 = model.predictive_moments(data, new, two)
    K = 300
    y = model.predict(data, new, two, gen(), draws_per_sample=K)["y"]
    assert y.shape == (2 * K, N)
    for s in range(2):
        z = (y[s * K:(s + 1) * K] - mu2[s]) / var2[s].sqrt()
        assert torch.allclose(z.std(0), torch.ones(N, dtype=z.dtype), atol=0.25)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="draws_per_sample"):
            model.predict(data, new, flat, gen(), draws_per_sample=bad)


def test_refitting_an_lmc_model_object_leaves_earlier_posteriors_alone():
    df = planted(10, 4.0, shared=False, seed=14)
    model = MultitaskGP(kind="lmc", num_latents=2, inducing=8)
    settings = dict(vars(model))
    post = _lmc(df, model=model)
    # settings only on the model: the fit added and replaced nothing
    assert vars(model).keys() == settings.keys() and all(vars(model)[k] is v for k, v in settings.items())
    test = df.iloc[::3]
    new = post.data.prepare(test)

    def draws():
        return model.predict(post.data, new, post.flat(), torch.Generator().manual_seed(0), draws_per_sample=5)

    before, frame = draws(), post.predict(test)
    assert before["y"].shape == (5, len(test))
    _lmc(planted(12, 6.0, shared=False, seed=15), seed=1, model=model)  # other data, other seed
    after = draws()
    assert torch.equal(before["mean"], after["mean"]) and torch.equal(before["y"], after["y"])
    pd.testing.assert_frame_equal(post.predict(test), frame, check_exact=True)


def test_lmc_posterior_saves_and_loads_with_its_fitted_state(tmp_path):
    df = planted(10, 4.0, shared=False, seed=16)
    post = _lmc(df)
    post.save(tmp_path / "run")
    loaded = bm.load(tmp_path / "run")
    assert loaded.samples.keys() == post.samples.keys()
    for k, v in post.samples.items():
        np.testing.assert_array_equal(loaded.samples[k], v)
    test = df.iloc[::3]
    pd.testing.assert_frame_equal(loaded.predict(test), post.predict(test), check_exact=True)
    # the variational state is left out of the summary (thousands of entries), the hyperparameters not
    index = pd.read_csv(tmp_path / "run" / "summary.csv")["parameter"]
    assert index.str.startswith("lmc_coef[").any() and not index.str.startswith("lmc_var").any()


def test_lmc_module_round_trips_through_one_draw():
    from bayesmtl.gp import lmc

    g = torch.Generator().manual_seed(0)
    m = lmc.LMCModule(torch.randn(2, 6, 3, generator=g), 4, "matern32").double()
    base = m.variational_strategy.base_variational_strategy
    with torch.no_grad():
        base.variational_params_initialized.fill_(1)  # else the first call resets the distribution
        for p in m.parameters():  # every parameter away from its initial value
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    m.eval()
    back = lmc.module_from_draw(lmc.draw_of_module(m), "matern32")
    chol = "variational_strategy.base_variational_strategy._variational_distribution.chol_variational_covar"
    theirs = dict(back.named_parameters())
    for name, p in m.named_parameters():  # nothing learned is left behind
        torch.testing.assert_close(theirs[name], p.tril() if name == chol else p)
    X, task = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.arange(7) % 4
    with torch.no_grad():
        for a, b in zip(m.moments(X, task), back.moments(X, task), strict=True):
            torch.testing.assert_close(a, b)


def test_a_gpytorch_kernel_object_is_trained_as_a_copy():
    import gpytorch

    df = planted(10, 4.0, seed=17)
    k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=1))
    untrained = {n: p.detach().clone() for n, p in k.named_parameters()}
    model = MultitaskGP(rank=2, kernel=k)
    settings = dict(vars(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(model, data_of(df), method="map", seed=0, steps=10)
        test = df.iloc[::4]
        frame = post.predict(test)
        bm.fit(model, data_of(planted(12, 5.0, seed=18)), method="map", seed=1, steps=10)
        assert vars(model).keys() == settings.keys() and all(vars(model)[k] is v for k, v in settings.items())
        assert all(torch.equal(p, untrained[n]) for n, p in k.named_parameters())
        assert post.samples["kernel.base_kernel.raw_lengthscale"].shape == (1, 1, 1, 1)
        assert not np.allclose(post.samples["kernel.raw_outputscale"], untrained["raw_outputscale"].numpy())
        pd.testing.assert_frame_equal(post.predict(test), frame, check_exact=True)


def test_fitting_and_algebra_live_in_bayesmtl_gp_the_model_holds_settings():
    from bayesmtl.gp import predict, program, typeii
    from bayesmtl.infer.base import Settings

    df = planted(8, 4.0, shared=False, seed=19)
    data = data_of(df)
    model = MultitaskGP(rank=2)
    settings = dict(vars(model))
    assert not hasattr(model, "map_estimate")  # fitting lives outside the model
    # type-II MAP called directly on the model bound to the data (its priors scaled) is what
    # method="map" runs (same seed, same draws)
    draws = typeii.fit_type_ii(model.bind(data), data, Settings(seed=0, options={"steps": 5}))
    post = bm.fit(model, data, method="map", seed=0, steps=5)
    # Hadamard path: the task means integrated out (their posterior mean and sd are reported)
    assert draws.samples.keys() == {"lengthscale", "task_W", "task_v", "noise", "noise_level", "mean", "mean_sd"}
    for k, v in draws.samples.items():
        np.testing.assert_array_equal(post.samples[k], v.numpy(), err_msg=k)
    assert vars(model).keys() == settings.keys() and all(vars(model)[k] is v for k, v in settings.items())
    # its options are checked in one place, for ICM and LMC alike
    for m in (model, MultitaskGP(kind="lmc")):
        with pytest.raises(ValueError, match=r"unknown option\(s\) for method 'map' with MultitaskGP: \['bogus'\]"):
            bm.fit(m, data, method="map", bogus=1)
    with pytest.raises(ValueError, match="optimizer must be 'lbfgs' or 'adam'; got 'sgd'"):
        bm.fit(model, data, method="map", optimizer="sgd")
    # the program and the predictive algebra are the gp modules' (the model delegates)
    fn = program.icm_program(model, data)
    assert callable(fn) and set(typeii.OPTIONS) >= {"optimizer", "restarts", "threads"}
    new = data.prepare(df.iloc[::3])
    flat = post.flat()
    for a, b in zip(predict.moments(model, data, new, flat), model.predictive_moments(data, new, flat), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(model.complete(data, flat)["task_corr"], predict.with_task_cov(flat)["task_corr"])


def test_a_failed_task_rotation_loses_only_its_own_chain():
    """A sampler far in a tail can make one chain's task covariance non-finite: its rotation is NaN
    (its proposal is rejected), the other chains' are exact."""
    from bayesmtl.gp.icm import _safe_eigh

    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64).repeat(3, 1, 1)
    A[1, 0, 0] = float("inf")
    U = _safe_eigh(A)[1]
    assert torch.isnan(U[1]).all() and torch.isfinite(U[[0, 2]]).all()
    torch.testing.assert_close(U[0], torch.linalg.eigh(A[0])[1])


def test_a_chain_whose_input_kernel_fails_loses_only_its_own_density():
    """NUTS on the computer survey stopped when one chain's lengthscale made the input kernel NaN
    (eigh raised for the whole batch): that chain's log density is NaN, the others' exact."""
    x, Y = torch.linspace(0, 1, 6, dtype=torch.float64)[:, None], torch.randn(6, 4, dtype=torch.float64)
    B = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    ls = torch.tensor([[0.3], [float("nan")], [0.5]], dtype=torch.float64)
    noise, mean = torch.full((3, 4), 0.1, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64)
    out = icm.kronecker_mll(x, Y, B, ls, noise, mean, solver="eigh")
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    torch.testing.assert_close(out[2], icm.kronecker_mll(x, Y, B[2], ls[2], noise[2], mean[2], solver="eigh"))


def test_a_non_finite_covariance_gives_a_nan_factor_not_an_error():
    A = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    A[0, 1, 1] = float("nan")
    L = icm.robust_cholesky(A, "test matrix")
    assert torch.isnan(L[0]).all() and torch.equal(L[1], torch.eye(3, dtype=torch.float64))


def test_a_batch_keeps_the_factors_it_can_and_rejects_the_rest():
    A = torch.stack([-torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)])
    L = icm.robust_cholesky(A, "test matrix")
    assert torch.isnan(L[0]).all() and torch.equal(L[1], torch.eye(3, dtype=torch.float64))


# ---------------------------------------------------------------------- the hierarchical GP
def _hierarchical_frame(n_tasks=8, rows=30, seed=0, new_tasks=0):
    """f_t(x) = sin(1.5 x) (shared) + 0.4 sin(0.7 x + phase_t) + a_t, a_t ~ N(0, 0.4), y = 3 + f_t + N(0, 0.2)."""
    rng = np.random.default_rng(seed)
    parts = []
    for t in range(n_tasks + new_tasks):
        x = rng.uniform(-3, 3, rows)
        f = np.sin(1.5 * x) + 0.4 * np.sin(0.7 * x + rng.uniform(0, 6)) + rng.normal(0, 0.4)
        parts.append(pd.DataFrame({"task": f"t{t}", "x": x, "y": 3 + f + rng.normal(0, 0.2, rows)}))
    return pd.concat(parts, ignore_index=True)


def test_hierarchical_gp_marginal_likelihood_is_the_dense_gaussian():
    """The ICM form (B = s_g^2 1 1^T, each task's own kernel plus a constant) with repeated inputs
    merged into cells equals log N(y; m, s_g^2 K_g + [t = t'] (s_h^2 K_h + c^2) + diag(noise))."""
    from bayesmtl.gp import hierarchical

    df = _hierarchical_frame(n_tasks=3, rows=5)
    df = pd.concat([df, df.iloc[[0, 3, 7]].assign(y=lambda d: d["y"] + 0.3)], ignore_index=True)  # repeats
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    d = torch.float64
    h = {"lengthscale": torch.tensor([0.8], dtype=d), "shared_scale": torch.tensor(1.3, dtype=d),
         "deviation_lengthscale": torch.tensor([2.0], dtype=d), "deviation_scale": torch.tensor(0.5, dtype=d),
         "offset_scale": torch.tensor(0.7, dtype=d), "noise": torch.tensor([0.05, 0.1, 0.2], dtype=d),
         "mean": torch.tensor(2.5, dtype=d)}
    _, cells = icm.training_layout(data.X, data.y, data.task, 3, private=True)
    B, priv, mean, noise = hierarchical.parts(h, 3)
    got = icm.hadamard_mll(cells.X, cells.y, cells.task, B, h["lengthscale"], noise, mean, "rbf", cells.count,
                           cells.ss, priv)
    X, t = data.X, data.task
    same = (t[:, None] == t[None, :]).to(d)
    own = 0.25 * icm.ard_kernel(X, X, torch.tensor([2.0], dtype=d)) + 0.49
    K = 1.3**2 * icm.ard_kernel(X, X, h["lengthscale"]) + same * own + torch.diag(h["noise"][t])
    want = torch.distributions.MultivariateNormal(torch.full_like(data.y, 2.5), K).log_prob(data.y)
    torch.testing.assert_close(got, want)


def test_hierarchical_gp_recovers_the_shared_function_and_predicts_new_tasks():
    """Fitted on 8 tasks, a new task's predictive mean is the shared function (3 + sin 1.5x: the
    deviations and constants average out), and its 90% intervals cover 30 unseen tasks' rows."""
    df = _hierarchical_frame(n_tasks=8, rows=30, new_tasks=30)
    fitted = [f"t{t}" for t in range(8)]
    train, unseen = df[df["task"].isin(fitted)], df[~df["task"].isin(fitted)]
    data = bm.MultiTaskData.from_frame(train, task="task", target="y")
    post = bm.fit(MultitaskGP(kind="hierarchical"), data, method="map", seed=0, progress=False)
    grid = pd.DataFrame({"task": "brand_new", "x": np.linspace(-2.5, 2.5, 41), "y": 0.0})
    p = post.predict(grid)
    assert p["new_task"].all()
    err = p["mean"].to_numpy() - (3 + np.sin(1.5 * grid["x"].to_numpy()))
    assert np.sqrt((err**2).mean()) < 0.3, err  # the constants a_t (sd 0.4) over 8 tasks leave about 0.15
    q = post.predict(unseen)
    inside = (unseen["y"].to_numpy() >= q["q05"].to_numpy()) & (unseen["y"].to_numpy() <= q["q95"].to_numpy())
    assert 0.82 <= inside.mean() <= 0.97, inside.mean()
    # a known task's rows are predicted far better than a new task's: its deviation is learned
    known = post.predict(train)
    assert (known["sd"] < 0.6 * q["sd"].mean()).mean() > 0.9
    # the share of a task's function that is shared: one value for every pair
    corr = post.relations().mean()
    off = corr.to_numpy()[~np.eye(8, dtype=bool)]
    assert np.allclose(off, off[0]) and 0.3 < off[0] < 0.95


def test_hierarchical_gp_settings_are_checked():
    with pytest.raises(ValueError, match="kind must be 'icm', 'hierarchical' or 'lmc'"):
        MultitaskGP(kind="tree")
    with pytest.raises(ValueError, match="has each task's own kernel already"):
        MultitaskGP(kind="hierarchical", private=True)
    import gpytorch

    with pytest.raises(ValueError, match="kind='hierarchical' takes a kernel given by name"):
        MultitaskGP(kind="hierarchical", kernel=gpytorch.kernels.RBFKernel())
    data = bm.MultiTaskData.from_frame(_hierarchical_frame(n_tasks=2, rows=5), task="task", target="y")
    with pytest.raises(ValueError, match="hyperprior must be True or False; got 'yes'"):
        bm.fit(MultitaskGP(kind="hierarchical"), data, method="map", hyperprior="yes")


def test_hierarchical_gp_grid_path_is_the_hadamard_path():
    """Every task at every input: the grid path's marginal likelihood, gradient and predictions
    (known and new tasks) equal the Hadamard path's."""
    from bayesmtl.gp import hierarchical

    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, (12, 2))
    df = pd.DataFrame([{"task": f"t{t}", "x1": a, "x2": b, "y": np.sin(a) + 0.3 * t + rng.normal(0, 0.3)}
                       for t in range(4) for a, b in x])
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    grid, _ = icm.training_layout(data.X, data.y, data.task, 4)
    _, cells = icm.training_layout(data.X, data.y, data.task, 4, private=True)
    assert grid is not None
    d = torch.float64
    h = {"lengthscale": torch.tensor([0.9, 1.4], dtype=d, requires_grad=True),
         "shared_scale": torch.tensor(1.1, dtype=d, requires_grad=True),
         "deviation_lengthscale": torch.tensor([1.7, 0.8], dtype=d), "deviation_scale": torch.tensor(0.4, dtype=d),
         "offset_scale": torch.tensor(0.5, dtype=d, requires_grad=True),
         "noise": torch.tensor([0.05, 0.1, 0.08, 0.2], dtype=d, requires_grad=True), "mean": torch.tensor(0.2, dtype=d)}
    a, b = hierarchical.mll(grid, None, h), hierarchical.mll(None, cells, h)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    ga = torch.autograd.grad(a, [h["shared_scale"], h["offset_scale"], h["noise"]])
    gb = torch.autograd.grad(b, [h["shared_scale"], h["offset_scale"], h["noise"]])
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-8)
    h = {k: v.detach() for k, v in h.items()}
    Xs = torch.tensor(rng.uniform(-2, 2, (7, 2)), dtype=d)
    ts = torch.tensor([0, 1, 2, 3, 4, 4, 0])  # 4: a new task
    mu_g, var_g = hierarchical.grid_predict(hierarchical.grid_cache(grid.X, grid.Y, h), grid.X, Xs, ts, h)
    B, priv, mean, noise = hierarchical.parts(h, 5)
    c = icm.hadamard_cache(cells.X, cells.y, cells.task, B, h["lengthscale"], noise, mean, "rbf", cells.count, priv)
    mu_h, var_h = icm.hadamard_predict(c, cells.X, cells.task, Xs, ts, B, h["lengthscale"], mean, "rbf", priv)
    torch.testing.assert_close(mu_g, mu_h, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(var_g, var_h, rtol=1e-5, atol=1e-6)
    post = bm.fit(MultitaskGP(kind="hierarchical"), data, method="map", seed=0, steps=5, progress=False)
    assert post.info["gp_path"] == "grid"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short chain
        post = bm.fit(MultitaskGP(kind="hierarchical"), data, method="nuts", chains=2, warmup=20, draws=10, seed=0,
                      progress=False)  # chains batched through the grid path
    assert post.info["gp_path"] == "grid"
    assert np.isfinite(post.predict(df.head(3).assign(task="new"))[["mean", "sd"]].to_numpy()).all()


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_type_ii_backs_off_points_where_the_likelihood_is_not_finite(optimizer):
    """L-BFGS's step toward the optimum lands where the marginal likelihood is NaN (the survey's
    190-task ICM reached NaN parameters that way): the point scores badly, the search backs off,
    and the best finite point is kept."""
    from bayesmtl.gp.typeii import _optimise

    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)

    def mll_of(raw):  # its maximum (x = 5) lies beyond the NaN wall at x = 4
        v = raw["x"]
        return torch.where(v < 4, -(v - 5) ** 2, torch.full_like(v, float("nan"))).sum()

    final, iters, _ = _optimise({"x": x}, [x], mll_of, 1, optimizer, {"steps": 200, "lr": 1.0 if optimizer == "lbfgs"
                                                                       else 0.5})
    x = float(x.detach())
    assert np.isfinite(final) and 3.0 < x < 4, (x, final)
