"""Written-out densities and gradients: priors, the collapsed form, the plain hierarchical GLM.

Each is checked against autograd through the Pyro program at many random points; where a part
has no written-out gradient the back end must fall back to autograd, not guess.
"""

import pyro.distributions as dist
import pytest
import torch

import bayesmtl as bm
from bayesmtl.infer.potential import BatchedPotential
from bayesmtl.marginals import form as marginal_form
from bayesmtl.marginals.prior_terms import log_prob_and_grad
from bayesmtl.priors.base import move_distribution
from bayesmtl.synthetic import hierarchical_regression

PRIORS = [dist.Normal(1.0, 2.0), dist.HalfNormal(1.5), dist.HalfCauchy(5.0), dist.Cauchy(-1.0, 0.5),
          dist.LogNormal(0.3, 0.7), dist.Gamma(2.0, 3.0), dist.InverseGamma(3.0, 2.0), dist.Exponential(0.5),
          dist.Normal(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])).to_event(1)]


@pytest.mark.parametrize("d", PRIORS, ids=lambda d: type(d).__name__)
def test_prior_log_prob_and_grad_match_torch(d):
    g = torch.Generator().manual_seed(0)
    shape = (50,) + tuple(d.event_shape or (3,))
    x = torch.rand(shape, generator=g, dtype=torch.float64) * 5 + 0.01
    if not isinstance(d, (dist.HalfNormal, dist.HalfCauchy, dist.LogNormal, dist.Gamma, dist.InverseGamma,
                          dist.Exponential)):
        x = x - 2.5  # real support: both signs
    x.requires_grad_(True)
    d = move_distribution(d.base_dist, x).to_event(1) if isinstance(d, dist.Independent) else move_distribution(d, x)
    base = d.base_dist if isinstance(d, dist.Independent) else d
    ref = base.log_prob(x)
    (ref_g,) = torch.autograd.grad(ref.sum(), x)
    lp, grad = log_prob_and_grad(d, x.detach())
    assert torch.allclose(lp, ref.detach(), rtol=1e-10, atol=1e-10)
    assert torch.allclose(grad, ref_g, rtol=1e-9, atol=1e-10)


def test_prior_without_written_gradient_is_declined():
    assert log_prob_and_grad(dist.Weibull(1.0, 1.5), torch.ones(3)) is None


def _assert_written_matches_autograd(model, data, written):
    pot = BatchedPotential(model.pyro_model(data) if written is None else written.pyro_model(), 1,
                           getattr(written, "log_density", None), written_obj(model, data, written))
    assert pot.direct_grad is not None
    z = torch.rand(200, pot.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 6 - 3
    U1, g1 = pot.value_and_grad(z)
    with torch.no_grad():
        U0 = pot(z)  # (the value alone, as SVI's PSIS ratios ask: from the written form too)
    pot.direct_grad = None
    U2, g2 = pot.value_and_grad(z)
    with torch.no_grad():
        U3 = pot(z)  # through the program
    assert torch.allclose(U1, U2, rtol=1e-9, atol=1e-8)
    assert torch.allclose(g1, g2, rtol=1e-7, atol=1e-8)
    assert torch.allclose(U0, U3, rtol=1e-9, atol=1e-8, equal_nan=True)


def written_obj(model, data, written):
    return (written if written is not None else marginal_form(model, data, "written")).log_density_and_grad


@pytest.mark.parametrize("noise", ["per_task", "shared", "known"])
def test_collapsed_written_gradient_matches_autograd(noise):
    df, _ = hierarchical_regression(n_tasks=6, rows=8, features=2, seed=1)
    df["sd"] = 0.5
    data = bm.MultiTaskData.from_frame(df, task="task", target="y", noise="sd" if noise == "known" else None)
    model = bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian(noise))
    _assert_written_matches_autograd(model, data, marginal_form(model, data, "collapsed"))


@pytest.mark.parametrize("lik", ["bernoulli", "poisson", "binomial"])
@pytest.mark.parametrize("centered", [False, True])
def test_plain_glm_written_gradient_matches_autograd(lik, centered):
    df, _ = hierarchical_regression(n_tasks=5, rows=12, features=2, seed=2,
                                    likelihood="bernoulli" if lik == "binomial" else lik)
    trials = None
    if lik == "binomial":
        df["n"] = 3
        trials = "n"
    data = bm.MultiTaskData.from_frame(df, task="task", target="y", trials=trials)
    prior = bm.priors.Hierarchical(mean=0.5 if centered else None, centered=centered)
    _assert_written_matches_autograd(bm.MultiTaskModel(prior, lik), data, None)


@pytest.mark.parametrize("noise", ["per_task", "shared", "known"])
@pytest.mark.parametrize("centered", [False, True])
def test_plain_gaussian_written_gradient_matches_autograd(noise, centered):
    """The plain program's density from per-task sufficient statistics (``hierarchical_gaussian_rows``)."""
    df, _ = hierarchical_regression(n_tasks=6, rows=8, features=2, seed=1)
    df["sd"] = 0.3 + 0.1 * (df.index % 4)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y", noise="sd" if noise == "known" else None)
    prior = bm.priors.Hierarchical(mean=dist.Normal(0.0, 2.0), scale=dist.HalfNormal(1.0), centered=centered)
    lik = bm.likelihoods.Gaussian(noise, noise_prior=dist.HalfNormal(1.5))
    _assert_written_matches_autograd(bm.MultiTaskModel(prior, lik), data, None)


def test_svis_centred_path_has_the_written_gradient():
    """SVI fits informative Gaussian tasks centred; that path takes the sufficient-statistics
    density too (without it a step on 400k rows ran autograd over every row, 8x slower)."""
    df, _ = hierarchical_regression(n_tasks=8, rows=12, features=2, seed=3)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.MultiTaskModel(bm.priors.Hierarchical(mean=dist.Normal(0.0, 2.0), scale=dist.HalfNormal(1.0)),
                              bm.likelihoods.Gaussian("per_task", noise_prior=dist.HalfNormal(1.5)))
    centred = {t.path: t for t in model.bind(data).targets(data)}["centred"]
    assert centred.log_density_grad is not None
    post = bm.fit(model, data, method="svi", collapse=False, guide="normal", compile="inductor", steps=200,
                  min_steps=200, anneal=0, draws=20, seed=0, progress=False, psis=False)
    assert (post.info["path"], post.info["gradient"]) == ("centred", "written out")


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_nuts_reports_which_gradient_ran():
    df, _ = hierarchical_regression(n_tasks=4, rows=10, features=1, seed=0, likelihood="bernoulli")
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    kw = dict(method="nuts", chains=2, warmup=30, draws=20, seed=0, progress=False)
    assert bm.fit(bm.models.Hierarchical("bernoulli"), data, **kw).info["gradient"] == "written out"
    odd = bm.MultiTaskModel(bm.priors.Hierarchical(scale=dist.Weibull(1.0, 1.5)), "bernoulli")
    assert bm.fit(odd, data, **kw).info["gradient"] == "autograd"
