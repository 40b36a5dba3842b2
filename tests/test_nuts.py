"""The batched NUTS back end (``method="nuts"``), its potential, and the collapsed Gaussian form."""

import math

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from reference import EIGHT_SCHOOLS, assert_matches, compare, load_reference, reference_dir

import bayesmtl as bm
from bayesmtl.infer.hmc_util import HMCState, adaptation_schedule, da_init, da_update, find_step_size
from bayesmtl.infer.nuts import nuts_step, run_nuts
from bayesmtl.infer.potential import BatchedPotential
from bayesmtl.marginals import form as marginal_form
from bayesmtl.synthetic import hierarchical_regression


# ---------------------------------------------------------------------- the kernel alone
def test_nuts_kernel_samples_an_ill_scaled_gaussian():
    """Without Pyro: a Gaussian with sds 0.1..10 and correlation; per-chain step sizes tuned."""
    torch.manual_seed(0)
    sd = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    prec = torch.diag(1 / sd**2)

    def vg(z):
        return 0.5 * ((z @ prec) * z).sum(-1), z @ prec

    C = 32
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(C, 3, dtype=torch.float64, generator=gen)
    U, g = vg(z)
    state = HMCState(z, U, g)
    inv_mass = (sd**2).expand(C, 3).clone()  # the right metric: step size ~ 1
    eps = find_step_size(vg, state, torch.full((C,), 0.01, dtype=torch.float64), inv_mass, gen)
    da = da_init(eps)
    for _ in range(150):
        state, info = nuts_step(vg, state, eps, inv_mass, gen)
        da = da_update(da, info.accept, 0.8)
        eps = da.log_eps.exp()
    eps = da.log_eps_bar.exp()
    draws, acc = [], []
    for _ in range(200):
        state, info = nuts_step(vg, state, eps, inv_mass, gen)
        draws.append(state.z)
        acc.append(info.accept)
    x = torch.stack(draws).reshape(-1, 3)
    n_eff = x.shape[0] / 3  # NUTS on this target is near-independent; be conservative
    assert torch.all((x.mean(0) / sd).abs() < 5 / math.sqrt(n_eff)), x.mean(0)
    assert torch.all((x.std(0) / sd - 1).abs() < 0.08), x.std(0)
    assert 0.65 < float(torch.stack(acc).mean()) < 0.95


@pytest.mark.parametrize("metric", ["fisher", pytest.param("stan", marks=pytest.mark.slow)])
def test_adapted_metric_is_the_posterior_variance(metric):
    """Both diagonal adaptations learn an ill-scaled Gaussian's variances (sds 0.01..100);
    with the learned metric, trees stay short and the draws have the right spread."""
    sd = torch.logspace(-2, 2, 8, dtype=torch.float64)

    def vg(z):
        return 0.5 * ((z / sd) ** 2).sum(-1), z / sd**2

    gen = torch.Generator().manual_seed(2)
    z = torch.randn(4, 8, dtype=torch.float64, generator=gen) * sd
    stats, extra = run_nuts(vg, HMCState(z, *vg(z)), 300, 200, gen, metric=metric)
    ratio = extra["inv_mass"] / sd**2
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio
    assert float(stats["tree_depth"].mean()) < 3.5
    x = torch.as_tensor(extra["z"]).reshape(-1, 8)
    assert ((x.std(0) / sd - 1).abs() < 0.2).all()


def test_adaptation_schedule_is_stans():
    assert adaptation_schedule(1000) == [(0, 74), (75, 99), (100, 149), (150, 249), (250, 449), (450, 949),
                                         (950, 999)]
    w = adaptation_schedule(100)
    assert w[0][0] == 0 and w[-1][1] == 99 and all(a[1] + 1 == b[0] for a, b in zip(w[:-1], w[1:], strict=True))


# ---------------------------------------------------------------------- potential
def test_batched_potential_matches_pyro_log_density():
    """U(z) for C chains in one call equals Pyro's own potential chain by chain."""
    from pyro.infer.mcmc.util import initialize_model

    df, _ = hierarchical_regression(n_tasks=4, rows=6, features=2, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.Hierarchical()
    fn = model.pyro_model(data)
    pot = BatchedPotential(fn, model.nesting(data))
    z = torch.randn(5, pot.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    U, g = pot.value_and_grad(z)
    _, pe_fn, _, _ = initialize_model(fn, max_plate_nesting=1)
    for c in range(5):
        vals = {s.name: z[c, s.start:s.stop].reshape(s.ushape) for s in pot.sites}
        assert float(pe_fn(vals)) == pytest.approx(float(U[c]), rel=1e-10)
    # gradient by finite differences on one coordinate
    h = 1e-6
    e = torch.zeros_like(z)
    e[:, 3] = h
    fd = (pot(z + e) - pot(z - e)) / (2 * h)
    assert torch.allclose(fd, g[:, 3], rtol=1e-5, atol=1e-6)


def test_discrete_latent_site_raises():
    def model():
        pyro.sample("k", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'k' has discrete support"):
        BatchedPotential(model, 0)


# ---------------------------------------------------------------------- collapsed form
def _brute_force(data, mu, tau, sigma):
    """log N(y_t | X_t mu, X_t diag(tau^2) X_t' + sigma_t^2 I) summed over tasks, dense."""
    Xv = torch.cat([torch.ones(data.n_rows, 1, dtype=data.dtype), data.X], -1)
    total = 0.0
    for t in range(data.n_tasks):
        rows = data.task == t
        X, y = Xv[rows], data.y[rows]
        cov = X @ torch.diag(tau**2) @ X.T + sigma[t] ** 2 * torch.eye(len(y), dtype=data.dtype)
        total += float(dist.MultivariateNormal(X @ mu, cov).log_prob(y))
    return total


def test_collapsed_marginal_and_conditional_are_exact():
    df, _ = hierarchical_regression(n_tasks=5, rows=7, features=2, seed=3)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.Hierarchical()
    col = marginal_form(model, data, "collapsed")
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, dtype=torch.float64, generator=g)
    tau = torch.rand(3, dtype=torch.float64, generator=g) + 0.1
    sigma = torch.rand(5, dtype=torch.float64, generator=g) + 0.3
    assert float(col.log_marginal(mu, tau, sigma)) == pytest.approx(_brute_force(data, mu, tau, sigma), rel=1e-10)
    # conditional: mean of many exact draws equals the Gaussian posterior mean of each w_t
    S = 4000
    out = col.conditional({"mu": mu.expand(S, 3), "tau": tau.expand(S, 3), "sigma": sigma.expand(S, 5)}, g)
    assert out["w"].shape == (S, 5, 3) and out["w_raw"].shape == (S, 5, 3)
    assert torch.allclose(out["w"], mu + tau * out["w_raw"])
    Xv = torch.cat([torch.ones(data.n_rows, 1, dtype=data.dtype), data.X], -1)
    for t in range(5):
        rows = data.task == t
        X, y = Xv[rows], data.y[rows]
        A = X.T @ X / sigma[t] ** 2 + torch.diag(1 / tau**2)
        cov = torch.linalg.inv(A)
        mean = cov @ (X.T @ y / sigma[t] ** 2 + mu / tau**2)
        se = cov.diagonal().sqrt() / math.sqrt(S)
        assert torch.all((out["w"][:, t].mean(0) - mean).abs() < 4.5 * se)
        assert torch.allclose(out["w"][:, t].std(0), cov.diagonal().sqrt(), rtol=0.06)


def test_collapsed_gradient_is_exact():
    """The hand-written backward of the marginal equals finite differences, also at tau = 0."""
    from bayesmtl.marginals.hierarchical_gaussian import _LogMarginal

    df, _ = hierarchical_regression(n_tasks=5, rows=7, features=2, seed=3)
    col = marginal_form(bm.models.Hierarchical(), bm.MultiTaskData.from_frame(df, task="task", target="y"), "collapsed")
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 3, dtype=torch.float64, generator=g).requires_grad_()
    tau = (torch.rand(3, 3, dtype=torch.float64, generator=g) + 0.1)
    tau[0, 1] = 0.0
    s2 = (torch.rand(3, 5, dtype=torch.float64, generator=g) + 0.3).requires_grad_()

    def f(m, t, s):
        return _LogMarginal.apply(m, t, s, col.XX, col.Xy, col.yy, col.n)

    assert torch.autograd.gradcheck(f, (mu, tau.requires_grad_(), s2))


def test_collapsed_form_with_shared_features_is_exact():
    """Shared coefficients enter the collapsed form through the residual: the marginal equals the
    dense Gaussian, and both written gradients (autograd's backward and ``log_density_and_grad``)
    equal autograd through the dense form."""
    from bayesmtl.marginals.hierarchical_gaussian import _LogMarginal

    df, _ = hierarchical_regression(n_tasks=5, rows=9, features=3, seed=4)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    col = marginal_form(bm.models.Hierarchical(shared=["x2", "x3"]), data, "collapsed")
    assert col is not None and col.D == 2 and col.Ds == 2
    g = torch.Generator().manual_seed(1)
    mu, coef = torch.randn(2, dtype=torch.float64, generator=g), torch.randn(2, dtype=torch.float64, generator=g)
    tau = torch.rand(2, dtype=torch.float64, generator=g) + 0.1
    sigma = torch.rand(5, dtype=torch.float64, generator=g) + 0.3
    X = torch.cat([torch.ones(data.n_rows, 1, dtype=data.dtype), data.X], -1)  # intercept, x1 | x2, x3
    Xv, Xs = X[:, :2], X[:, 2:]

    def dense(mu, tau, sigma, coef):
        total = 0.0
        for t in range(data.n_tasks):
            rows = data.task == t
            eye = torch.eye(int(rows.sum()), dtype=data.dtype)
            cov = Xv[rows] @ torch.diag(tau**2) @ Xv[rows].T + sigma[t] ** 2 * eye
            total = total + dist.MultivariateNormal(Xv[rows] @ mu + Xs[rows] @ coef, cov).log_prob(data.y[rows])
        return total

    assert float(col.log_marginal(mu, tau, sigma, coef)) == pytest.approx(float(dense(mu, tau, sigma, coef)), rel=1e-10)
    # autograd through the written backward (X'r and r'r carry coef's gradient)
    args = [a.clone().requires_grad_() for a in (mu, tau, sigma, coef)]
    ref = torch.autograd.grad(dense(*args), args)
    args2 = [a.clone().unsqueeze(0).requires_grad_() for a in (mu, tau, sigma, coef)]
    got = torch.autograd.grad(col.log_marginal(*args2).sum(), args2)
    for r, a in zip(ref, got, strict=True):
        assert torch.allclose(a.squeeze(0), r, rtol=1e-8, atol=1e-10)
    # the direct density's written gradient, priors included, against autograd through it
    values = {"mu": mu[None], "tau": tau[None], "sigma": sigma[None], "coef": coef[None]}
    lp, grads = col.log_density_and_grad(values)
    leaves = {k: v.clone().requires_grad_() for k, v in values.items()}
    auto = torch.autograd.grad(col.log_density(leaves).sum(), list(leaves.values()))
    assert torch.allclose(lp, col.log_density(values))
    for k, a in zip(leaves, auto, strict=True):
        assert torch.allclose(grads[k], a, rtol=1e-8, atol=1e-10), k
    # conditional: w's exact posterior mean given coef
    S = 4000
    out = col.conditional({"mu": mu.expand(S, 2), "tau": tau.expand(S, 2), "sigma": sigma.expand(S, 5),
                           "coef": coef.expand(S, 2)}, g)
    for t in range(5):
        rows = data.task == t
        A = Xv[rows].T @ Xv[rows] / sigma[t] ** 2 + torch.diag(1 / tau**2)
        cov = torch.linalg.inv(A)
        mean = cov @ (Xv[rows].T @ (data.y[rows] - Xs[rows] @ coef) / sigma[t] ** 2 + mu / tau**2)
        assert torch.all((out["w"][:, t].mean(0) - mean).abs() < 4.5 * cov.diagonal().sqrt() / math.sqrt(S))
    # the batched autograd Function, with coef's residuals batched
    Xy, yy = col._residual(coef[None])
    Xy, yy = Xy.detach().requires_grad_(), yy.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: _LogMarginal.apply(mu[None], tau[None], (sigma**2)[None], col.XX, a, b,
                                                                    col.n), (Xy, yy))


def test_collapsed_direct_density_matches_its_pyro_program():
    df, _ = hierarchical_regression(n_tasks=4, rows=5, features=1, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    for noise in ("per_task", "shared"):
        col = marginal_form(bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian(noise)), data, "collapsed")
        # the constructor checks direct == traced at random points and raises otherwise
        pot = BatchedPotential(col.pyro_model(), 1, col.log_density)
        assert pot.direct is not None


def test_collapsed_not_offered_where_invalid():
    df, _ = hierarchical_regression(n_tasks=4, rows=5, features=2, seed=0, likelihood="bernoulli")
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    assert marginal_form(bm.models.Hierarchical("bernoulli"), data, "collapsed") is None
    lkj = bm.models.Hierarchical(prior=bm.priors.Hierarchical(covariance="lkj"))
    assert marginal_form(lkj, data, "collapsed") is None
    with pytest.raises(ValueError, match="no collapsed form"):
        bm.fit(bm.models.Hierarchical("bernoulli"), data, method="nuts", collapse=True, chains=1, warmup=1, draws=1)


# ---------------------------------------------------------------------- the back end
def _eight_schools():
    d, ref = load_reference(EIGHT_SCHOOLS)
    df = pd.DataFrame({"school": [str(i + 1) for i in range(d["J"])], "y": d["y"], "sigma": d["sigma"]})
    data = bm.MultiTaskData.from_frame(df, task="school", target="y", features=[], noise="sigma")
    model = bm.models.Hierarchical(prior=bm.priors.Hierarchical(mean=dist.Normal(0, 5), scale=dist.HalfCauchy(5)))
    return model, data, ref


def _eight_schools_table(post, ref):
    s = post.samples
    ours = {f"theta[{i + 1}]": s["w"][:, :, i, 0] for i in range(8)}
    ours["mu"], ours["tau"] = s["mu"][..., 0], s["tau"][..., 0]
    return compare(ours, ref)


needs_ref = pytest.mark.skipif(reference_dir(EIGHT_SCHOOLS) is None,
                               reason="posteriordb eight schools reference not in the data folder")


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
@needs_ref
def test_eight_schools_4_chains_collapsed():
    model, data, ref = _eight_schools()
    # 1000 draws: at 500 the MCSE of this funnel-shaped posterior is itself noisy enough that a
    # sound sampler drifted past 4 MCSE for one seed in twenty
    post = bm.fit(model, data, method="nuts", chains=4, warmup=500, draws=1000, seed=0, progress=False)
    assert post.info["path"] == "collapsed" and post.info["backend"] == "nuts"
    assert post.info["gradient"] == "written out"
    assert_matches(_eight_schools_table(post, ref), max_r_hat=1.02)
    st = post.sample_stats
    for k in ("diverging", "tree_depth", "n_steps", "energy", "step_size", "acceptance_rate"):
        assert st[k].shape == (4, 1000), k
    assert st["diverging"].sum() == 0


@needs_ref
@pytest.mark.slow
@pytest.mark.parametrize("chains,collapse", [(4, False), (64, None), (64, False)])
def test_eight_schools_reference(chains, collapse):
    model, data, ref = _eight_schools()
    draws = 1000 if chains == 4 else 200
    post = bm.fit(model, data, method="nuts", chains=chains, warmup=1000, draws=draws, seed=1, progress=False,
                  collapse=collapse, target_accept=0.9)
    assert post.info["path"] == ("plain" if collapse is False else "collapsed")
    assert_matches(_eight_schools_table(post, ref), max_r_hat=1.02)


@needs_ref
@pytest.mark.parametrize("collapse", [False, None])
def test_chees_matches_the_eight_schools_reference(collapse):
    """ChEES-HMC, 64 chains sharing one step size and trajectory length, plain (a funnel) and
    collapsed: every mean and sd within 4 MCSE of posteriordb's reference."""
    model, data, ref = _eight_schools()
    post = bm.fit(model, data, method="chees", chains=64, warmup=500, draws=300, seed=2, progress=False,
                  collapse=collapse)
    assert post.info["backend"] == "chees" and post.info["sampler"] == "ChEES-HMC"
    assert post.info["path"] == ("plain" if collapse is False else "collapsed")
    assert_matches(_eight_schools_table(post, ref), max_r_hat=1.02)
    st = post.sample_stats
    assert st["n_steps"].shape == (64, 300) and (st["n_steps"] == st["n_steps"][:1]).all()  # shared length
    assert st["diverging"].mean() < 0.01 and 0.4 < post.info["trajectory_length"] < 20


@pytest.mark.parametrize("seed", [0, 1, 3, 6])
def test_chees_trajectory_adapts_from_a_wild_start(seed):
    """Small hierarchical data sets whose first proposals fly far off: the trajectory length still
    adapts past one leapfrog step (an early far-off rejected proposal used to set the gradient's
    running scale so high that T froze at its starting value, one step, for the whole run)."""
    df, _ = hierarchical_regression(n_tasks=6, rows=5, features=1, seed=seed)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    post = bm.fit(bm.models.Hierarchical(), data, method="chees", chains=8, warmup=300, draws=200, seed=seed,
                  progress=False)
    assert post.sample_stats["n_steps"].mean() > 1.5


@pytest.mark.parametrize("seed", [0, 1])
def test_chees_short_warmup_still_learns_a_trajectory(seed):
    """Hierarchical logistic regression, 150 warmup iterations: the initial step size (found
    under the starting metric) can be 50x below the one the first metric allows, and T, which
    starts at that step, moves 0.025 in log a step at most; each metric update now lifts T to at
    least one step of the new step size (it used to reach one step only after ~600 iterations,
    so a short warmup sampled one leapfrog per draw)."""
    df, _ = hierarchical_regression(n_tasks=20, rows=30, features=2, seed=seed, likelihood="bernoulli")
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    post = bm.fit(bm.models.Hierarchical("bernoulli"), data, method="chees", chains=8, warmup=150, draws=200,
                  seed=seed, progress=False)
    assert post.sample_stats["n_steps"].mean() > 2.5


def test_chees_gradient_ignores_rejected_far_off_proposals():
    from bayesmtl.infer.chees import chees_gradient

    gen = torch.Generator().manual_seed(0)
    z0, z1, v1 = (torch.randn(8, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    accept = 0.5 + 0.5 * torch.rand(8, generator=gen, dtype=torch.float64)
    accept[7] = 1e-30
    inv_mass = torch.full((8, 3), 2.0, dtype=torch.float64)
    g = chees_gradient(z0, z1, v1, accept, 0.7, inv_mass)
    far, fast = z1.clone(), v1.clone()
    far[7], fast[7] = 1e30, 1e30
    assert g is not None and math.isfinite(g)
    assert chees_gradient(z0, far, fast, accept, 0.7, inv_mass) == pytest.approx(g, rel=1e-12)
    assert chees_gradient(z0, z1, v1, torch.zeros(8, dtype=torch.float64), 0.7, inv_mass) is None


def test_chees_jitter_and_settings():
    from bayesmtl.infer.chees import van_der_corput

    assert [van_der_corput(i) for i in (1, 2, 3, 4, 5)] == [0.5, 0.25, 0.75, 0.125, 0.625]
    df, _ = hierarchical_regression(n_tasks=3, rows=4, features=1, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    kw = dict(method="chees", warmup=2, draws=2, progress=False)
    with pytest.raises(ValueError, match="chains >= 2"):
        bm.fit(bm.models.Hierarchical(), data, chains=1, **kw)
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1"):
        bm.fit(bm.models.Hierarchical(), data, chains=4, max_steps=0, **kw)
    with pytest.raises(ValueError, match="unknown option.*max_tree_depth"):
        bm.fit(bm.models.Hierarchical(), data, chains=4, max_tree_depth=5, **kw)
    a = bm.fit(bm.models.Hierarchical(), data, chains=4, warmup=30, draws=10, seed=1, method="chees", progress=False)
    b = bm.fit(bm.models.Hierarchical(), data, chains=4, warmup=30, draws=10, seed=1, method="chees", progress=False)
    assert np.array_equal(a.samples["tau"], b.samples["tau"])


@pytest.mark.slow
def test_collapsed_and_plain_paths_agree():
    df, _ = hierarchical_regression(n_tasks=6, rows=15, features=2, seed=1)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.Hierarchical()
    a = bm.fit(model, data, method="nuts", chains=8, warmup=500, draws=500, seed=0, progress=False)
    b = bm.fit(model, data, method="nuts", chains=8, warmup=500, draws=500, seed=1, progress=False,
               collapse=False)
    assert a.info["path"] == "collapsed" and b.info["path"] == "plain"
    import arviz as az
    for site in ("mu", "tau", "w", "sigma"):
        xa, xb = a.samples[site], b.samples[site]
        ma = az.mcse(az.convert_to_dataset({"x": xa}), method="mean")["x"].values
        mb = az.mcse(az.convert_to_dataset({"x": xb}), method="mean")["x"].values
        z = (xa.mean((0, 1)) - xb.mean((0, 1))) / np.hypot(ma, mb)
        assert np.abs(z).max() < 4.5, (site, z)


def test_same_seed_reproduces_draws():
    model, data, _ = _eight_schools() if reference_dir(EIGHT_SCHOOLS) else (None, None, None)
    if model is None:
        df, _ = hierarchical_regression(n_tasks=3, rows=4, features=0, seed=0)
        data, model = bm.MultiTaskData.from_frame(df, task="task", target="y"), bm.models.Hierarchical()
    kw = dict(method="nuts", chains=2, warmup=30, draws=20, progress=False, collapse=False)
    a, b = bm.fit(model, data, seed=3, **kw), bm.fit(model, data, seed=3, **kw)
    c = bm.fit(model, data, seed=4, **kw)
    assert np.array_equal(a.samples["tau"], b.samples["tau"])
    assert np.array_equal(a.sample_stats["n_steps"], b.sample_stats["n_steps"])
    assert not np.array_equal(a.samples["tau"], c.samples["tau"])


def test_chain_groups_in_processes_are_the_groups_run_alone():
    """processes=2: each forked worker runs its chain group exactly as a one-process run of
    that group with the group's seed would, and the merged result labels all chains."""
    from bayesmtl.infer.groups import group_seeds

    df, _ = hierarchical_regression(n_tasks=6, rows=8, features=1, seed=1, likelihood="bernoulli")
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    kw = dict(method="nuts", warmup=40, draws=30, progress=False)
    both = bm.fit(bm.models.Hierarchical("bernoulli"), data, chains=3, seed=5, processes=2, **kw)
    assert both.info["chain_groups"] == [2, 1] and both.samples["tau"].shape[:2] == (3, 30)
    seeds = group_seeds(5, 2)
    assert both.info["group_seeds"] == seeds and seeds[0] == 5 and seeds[1] != 5
    first = bm.fit(bm.models.Hierarchical("bernoulli"), data, chains=2, seed=seeds[0], **kw)
    second = bm.fit(bm.models.Hierarchical("bernoulli"), data, chains=1, seed=seeds[1], **kw)
    for site in ("tau", "w"):
        assert np.array_equal(both.samples[site][:2], first.samples[site])
        assert np.array_equal(both.samples[site][2:], second.samples[site])
    assert np.array_equal(both.sample_stats["n_steps"][2:], second.sample_stats["n_steps"])
    assert both.info["leapfrog_steps"] == first.info["leapfrog_steps"] + second.info["leapfrog_steps"]
    assert len(both.info["step_size"]) == 3


def test_failure_in_a_chain_group_reaches_the_caller(monkeypatch):
    """A worker's exception is raised in the parent, naming the chain group; no worker is left."""
    import multiprocessing as mp

    import bayesmtl.infer.driver as driver

    def broken(*args, **kwargs):
        raise RuntimeError("no finite starting point (planted)")

    monkeypatch.setattr(driver, "_init", broken)  # forked workers inherit the patch
    df, _ = hierarchical_regression(n_tasks=3, rows=4, features=1, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    with pytest.raises(RuntimeError, match="planted") as err:
        bm.fit(bm.models.Hierarchical(), data, method="nuts", chains=2, warmup=5, draws=5, progress=False,
               processes=2, collapse=False)
    assert any("chain group" in n for n in getattr(err.value, "__notes__", []))
    assert not mp.active_children()


@pytest.mark.parametrize("kwargs,match", [
    (dict(chains=0), "chains must be an integer >= 1"),
    (dict(warmup=-1), "warmup must be an integer >= 0"),
    (dict(bogus=1), "unknown option.*bogus"),
    (dict(target_accept=1.5), "target_accept"),
    (dict(dtype="float16"), "dtype"),
    (dict(dense_mass="yes"), "dense_mass must be True or False"),
    (dict(metric="euclid"), "metric must be 'fisher' or 'stan'"),
    (dict(processes=0), "processes must be an integer >= 1"),
])
def test_bad_settings_raise(kwargs, match):
    df, _ = hierarchical_regression(n_tasks=3, rows=4, features=1, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    args = dict(method="nuts", chains=1, warmup=2, draws=2, progress=False) | kwargs
    with pytest.raises(ValueError, match=match):
        bm.fit(bm.models.Hierarchical(), data, **args)


def test_discrete_site_through_fit_raises():
    """A model with a latent discrete site that is not enumerated: the error names the site."""

    class WithDiscrete(bm.models.Hierarchical):
        def pyro_model(self, data, subsample_size=None, observe=True):
            inner = super().pyro_model(data, subsample_size, observe)

            def model():
                pyro.sample("cluster", dist.Categorical(torch.ones(3, dtype=data.dtype) / 3))
                inner()
            return model

    df, _ = hierarchical_regression(n_tasks=3, rows=4, features=1, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    with pytest.raises(ValueError, match="'cluster' has discrete support.*not enumerated"):
        bm.fit(WithDiscrete(), data, method="nuts", chains=2, warmup=2, draws=2, progress=False, collapse=False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("collapse", [None, False])
def test_nuts_on_cuda(collapse):
    """Both paths run on the GPU; draws land on the host with the usual shapes and recover the truth."""
    df, truth = hierarchical_regression(n_tasks=6, rows=20, features=1, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    # the plain path's funnel runs deep trees, and each GPU leapfrog is launch-bound (~5 ms): cap the depth
    post = bm.fit(bm.models.Hierarchical(), data, method="nuts", chains=16, warmup=200, draws=100, seed=0,
                  device="cuda", progress=False, collapse=collapse, max_tree_depth=5 if collapse is False else 10)
    assert post.samples["w"].shape == (16, 100, 6, 2)
    assert post.info["path"] == ("plain" if collapse is False else "collapsed")
    assert int(np.asarray(post.sample_stats["diverging"]).sum()) < 16
    w = np.asarray(post.samples["w"]).reshape(-1, 6, 2)
    assert np.abs(w.mean(0) - np.asarray(truth["w"])).max() < 4 * w.std(0).max() + 0.1


@needs_ref
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chees_on_cuda_matches_the_reference():
    """ChEES with 256 chains on the GPU (plain path): the eight schools reference, same seed same draws."""
    model, data, ref = _eight_schools()
    kw = dict(method="chees", chains=256, warmup=500, draws=100, seed=3, device="cuda", progress=False,
              collapse=False)
    a, b = bm.fit(model, data, **kw), bm.fit(model, data, **kw)
    assert a.info["device"].startswith("cuda")
    assert_matches(_eight_schools_table(a, ref), max_r_hat=1.02)
    assert np.array_equal(a.samples["tau"], b.samples["tau"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_logistic_on_cuda_written_gradient_and_same_seed():
    """The hierarchical logistic model runs on the GPU with its written-out gradient, recovers the
    planted population mean, and the same seed gives the same draws on the same device."""
    df, truth = hierarchical_regression(n_tasks=8, rows=60, features=1, seed=1, likelihood="bernoulli")
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    run = dict(method="nuts", chains=16, warmup=150, draws=100, seed=3, device="cuda", progress=False,
               max_tree_depth=5)
    post = bm.fit(bm.models.Hierarchical("bernoulli"), data, **run)
    again = bm.fit(bm.models.Hierarchical("bernoulli"), data, **run)
    assert post.info["gradient"] == "written out" and post.info["device"].startswith("cuda")
    np.testing.assert_array_equal(np.asarray(post.samples["w"]), np.asarray(again.samples["w"]))
    w = np.asarray(post.samples["w"]).reshape(-1, 8, 2)
    err = np.abs(w.mean(0) - np.asarray(truth["w"]))
    assert (err < 4 * w.std(0) + 0.05).all()


def test_pyro_nuts_stays_available():
    from bayesmtl.infer import METHODS, get_backend

    assert get_backend("nuts").name == "nuts" and get_backend("pyro_nuts").name == "pyro_nuts"
    assert "nuts" in METHODS


def test_nuts_stops_at_the_first_u_turn():
    """Near-iid Gaussian at a step size where the plain criterion misses U-turns (Stan PR 2800):
    without the checks across subtree halves some trajectories ran 79 steps; with them none
    exceeds one doubling past the half period (15 steps)."""
    P, C = 100, 16
    sd = torch.exp(0.1 * torch.randn(P, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))

    def vg(z):
        return 0.5 * ((z / sd) ** 2).sum(-1), z / sd**2

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(C, P, dtype=torch.float64, generator=gen) * sd
    state = HMCState(z, *vg(z))
    eps, inv_mass = torch.full((C,), 0.42, dtype=torch.float64), torch.ones(C, P, dtype=torch.float64)
    steps = []
    for _ in range(60):
        state, info = nuts_step(vg, state, eps, inv_mass, gen)
        steps.append(info.n_steps)
    assert int(torch.stack(steps).max()) <= 15


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_dense_mass_learns_a_correlated_gaussian():
    """sd 0.5..2 with correlations 0.95 and -0.2: the dense metric recovers the covariance, so
    trajectories are far shorter than with the diagonal one, and the draws have the right moments."""
    sd = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    corr = torch.tensor([[1.0, 0.95, 0.0], [0.95, 1.0, -0.2], [0.0, -0.2, 1.0]], dtype=torch.float64)
    cov = sd[:, None] * corr * sd[None, :]
    prec = torch.linalg.inv(cov)

    def vg(z):
        return 0.5 * ((z @ prec) * z).sum(-1), z @ prec

    C = 4
    steps = {}
    for dense in (True, False):
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(C, 3, dtype=torch.float64, generator=gen)
        stats, extra = run_nuts(vg, HMCState(z, *vg(z)), 400, 400, gen, dense=dense)
        steps[dense] = stats["n_steps"].mean()
        if dense:
            assert extra["inv_mass"].shape == (C, 3, 3)
            rel = (extra["inv_mass"] - cov).abs() / (sd[:, None] * sd[None, :])
            assert float(rel.max()) < 0.5  # each chain's metric: the covariance, to sampling error (I: off by 3)
            x = torch.as_tensor(extra["z"]).reshape(-1, 3)
            est = torch.cov(x.T)
            assert float(((est - cov).abs() / (sd[:, None] * sd[None, :])).max()) < 0.1
            assert float((x.mean(0) / sd).abs().max()) < 0.1
    assert steps[True] < 0.5 * steps[False], steps


def test_initialisation_shrinks_its_radius_when_no_start_is_finite():
    """A density finite only near 0 in every one of 50 dims (as an LKJ factor over many tasks
    overflows far out): uniform starts in (-2, 2) never land there; the radius halves until they do."""
    from bayesmtl.infer.driver import _init

    class NearZero:
        dim = 50

        def value_and_grad(self, z):
            inside = (z.abs() < 0.3).all(-1)
            return torch.where(inside, 0.5 * (z * z).sum(-1), torch.nan), z

    gen = torch.Generator().manual_seed(0)
    state = _init(NearZero(), 4, gen, 2.0, torch.device("cpu"), torch.float64)
    assert torch.isfinite(state.U).all() and (state.z.abs() < 0.3).all()
