"""Reference posteriors (``<data>/posteriordb``): each model written with the bayesmtl API and the
reference's priors; ``nuts`` must match every parameter's mean and sd within 4 combined MCSEs,
with no divergences (every reference reports 0) and max r_hat < 1.01; ``svi`` with a
full-rank (mvn) guide must get every mean within 0.25 reference posterior sd.

Mapping of reference names to our sites (task order = order of first appearance, looked up by
label, so nothing depends on it):

* eight schools: theta[j] = w[j, intercept], mu, tau.
* radon: alpha[j] = w[j, intercept], beta[j] = w[j, floor_measure] (varying slope) or
  beta = coef (shared coefficients), mu_alpha/mu_beta = mu, sigma_alpha/sigma_beta = tau,
  sigma_y = sigma (shared noise).
* seeds: w_i ~ N(alpha0, sigma) is alpha0 + b_i with b_i ~ N(0, sigma), so alpha0 = mu,
  b[i] = w[i] - mu, sigma = tau; alpha1, alpha2, alpha12 = coef on x1, x2, x1x2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro.distributions as dist
import pytest
from reference import (
    EIGHT_SCHOOLS,
    RADON_INTERCEPT,
    RADON_POOLED,
    RADON_SLOPE,
    SEEDS,
    assert_matches,
    compare,
    draws_of,
    load_reference,
    radon_frame,
    reference_dir,
    svi_mean_error,
    task_index,
)

import bayesmtl as bm


def _need(name: str):
    if reference_dir(name) is None:
        pytest.skip(f"reference posterior {name} not found (set BAYESMTL_DATA to the shared data folder)")
    return load_reference(name)


# ---------------------------------------------------------------- models and name mappings
def eight_schools(data: dict):
    df = pd.DataFrame({"school": [str(j + 1) for j in range(data["J"])], "y": data["y"], "sigma": data["sigma"]})
    md = bm.MultiTaskData.from_frame(df, task="school", target="y", features=[], noise="sigma")
    model = bm.models.Hierarchical(prior=bm.priors.Hierarchical(mean=dist.Normal(0.0, 5.0),
                                                                scale=dist.HalfCauchy(5.0)))

    def spec(post):
        s = {f"theta[{j}]": (lambda t: lambda x: x["w"][:, :, t, 0])(task_index(post, j))
             for j in range(1, data["J"] + 1)}
        s["mu"] = lambda x: x["mu"][..., 0]
        s["tau"] = lambda x: x["tau"][..., 0]
        return s

    return model, md, spec


def _radon_alpha(post, J: int, col: int, name: str) -> dict:
    return {f"{name}[{j}]": (lambda t: lambda x: x["w"][:, :, t, col])(task_index(post, j)) for j in range(1, J + 1)}


def radon_pooled(data: dict):
    md = bm.MultiTaskData.from_frame(radon_frame(data), task="county", target="log_radon", features=[])
    model = bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian(noise="shared"),
                                   prior=bm.priors.Hierarchical(mean=dist.Normal(0.0, 10.0),
                                                                scale=dist.HalfNormal(1.0)))

    def spec(post):
        s = _radon_alpha(post, data["J"], 0, "alpha")
        s.update(mu_alpha=lambda x: x["mu"][..., 0], sigma_alpha=lambda x: x["tau"][..., 0],
                 sigma_y=lambda x: x["sigma"])
        return s

    return model, md, spec


def radon_intercept(data: dict):
    md = bm.MultiTaskData.from_frame(radon_frame(data), task="county", target="log_radon",
                                     features=["log_uppm", "floor_measure"])
    model = bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian(noise="shared"),
                                   prior=bm.priors.Hierarchical(mean=dist.Normal(0.0, 10.0),
                                                                scale=dist.HalfNormal(1.0)),
                                   shared=["log_uppm", "floor_measure"], shared_prior=dist.Normal(0.0, 10.0))

    def spec(post):
        s = _radon_alpha(post, data["J"], 0, "alpha")
        s.update({"beta[1]": lambda x: x["coef"][..., 0], "beta[2]": lambda x: x["coef"][..., 1]})
        s.update(mu_alpha=lambda x: x["mu"][..., 0], sigma_alpha=lambda x: x["tau"][..., 0],
                 sigma_y=lambda x: x["sigma"])
        return s

    return model, md, spec


def radon_slope(data: dict):
    md = bm.MultiTaskData.from_frame(radon_frame(data), task="county", target="log_radon",
                                     features=["floor_measure"])
    model = bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian(noise="shared"),
                                   prior=bm.priors.Hierarchical(mean=dist.Normal(0.0, 10.0),
                                                                scale=dist.HalfNormal(1.0)))

    def spec(post):
        s = _radon_alpha(post, data["J"], 0, "alpha")
        s.update(_radon_alpha(post, data["J"], 1, "beta"))
        s.update(mu_alpha=lambda x: x["mu"][..., 0], sigma_alpha=lambda x: x["tau"][..., 0],
                 mu_beta=lambda x: x["mu"][..., 1], sigma_beta=lambda x: x["tau"][..., 1],
                 sigma_y=lambda x: x["sigma"])
        return s

    return model, md, spec


def seeds(data: dict):
    x1, x2 = np.asarray(data["x1"], float), np.asarray(data["x2"], float)
    df = pd.DataFrame({"plate": [str(i + 1) for i in range(data["I"])], "x1": x1, "x2": x2, "x1x2": x1 * x2,
                       "n": data["n"], "N": data["N"]})
    md = bm.MultiTaskData.from_frame(df, task="plate", target="n", features=["x1", "x2", "x1x2"], trials="N")
    model = bm.models.Hierarchical(likelihood="binomial",
                                   prior=bm.priors.Hierarchical(mean=dist.Normal(0.0, 1.0),
                                                                scale=dist.HalfCauchy(1.0)),
                                   shared=["x1", "x2", "x1x2"], shared_prior=dist.Normal(0.0, 1.0))

    def spec(post):
        s = {f"b[{i}]": (lambda t: lambda x: x["w"][:, :, t, 0] - x["mu"][..., 0])(task_index(post, i))
             for i in range(1, data["I"] + 1)}
        s.update(alpha0=lambda x: x["mu"][..., 0], alpha1=lambda x: x["coef"][..., 0],
                 alpha2=lambda x: x["coef"][..., 1], alpha12=lambda x: x["coef"][..., 2],
                 sigma=lambda x: x["tau"][..., 0])
        return s

    return model, md, spec


CASES = {EIGHT_SCHOOLS: eight_schools, RADON_POOLED: radon_pooled, RADON_INTERCEPT: radon_intercept,
         RADON_SLOPE: radon_slope, SEEDS: seeds}


def _check_nuts(name: str, chains: int, warmup: int, draws: int, seed: int = 0, **options):
    data, ref = _need(name)
    model, md, spec = CASES[name](data)
    post = bm.fit(model, md, method="nuts", chains=chains, warmup=warmup, draws=draws, seed=seed,
                  progress=False, **options)
    table = compare(draws_of(post, spec(post)), ref)
    div = int(np.asarray(post.sample_stats["diverging"]).sum())
    assert div == 0, f"{div} divergent transition(s); the reference reports none"
    assert_matches(table, bound=4.0, max_r_hat=1.01)
    problems = post.diagnose()  # every entry, not only the reference's: r_hat, ESS, tree depth, E-BFMI
    assert problems == [], "\n".join(map(str, problems))
    return table


def _check_svi(name: str, bound: float = 0.25, seed: int = 0, **options):
    data, ref = _need(name)
    model, md, spec = CASES[name](data)
    post = bm.fit(model, md, method="svi", draws=1000, seed=seed, progress=False, guide="mvn", **options)
    err = svi_mean_error(draws_of(post, spec(post)), ref)
    print(f"{name}: Pareto k of the mvn guide {post.info['pareto_k']:.2f}")
    assert err.max() < bound, (f"svi (mvn) means off the reference by up to {err.max():.3f} sd "
                               f"({err.idxmax()}); worst:\n{err.sort_values().tail(5).to_string()}")
    return err


# ---------------------------------------------------------------- NUTS
@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_eight_schools_nuts():
    # small enough for the fast tier: 4 chains x (500 + 500)
    _check_nuts(EIGHT_SCHOOLS, chains=4, warmup=500, draws=500)


@pytest.mark.slow
@pytest.mark.parametrize("chains", [4, 64])
@pytest.mark.parametrize("name", [EIGHT_SCHOOLS, RADON_POOLED, RADON_INTERCEPT, RADON_SLOPE, SEEDS])
def test_reference_nuts(name, chains):
    # every reference with the default back end and path (collapsed where the model allows it);
    # 64 chains: shorter per chain, more draws in all. Not much shorter: split r_hat of a
    # stationary chain is about 1 + 1 / (2 ESS per half chain), so at 250 draws the slowest
    # hyperscales (radon sigma_alpha, seeds sigma) sat at 1.011-1.012 with their means on target
    _check_nuts(name, chains=chains, warmup=1000, draws=1000 if chains == 4 else 500, seed=1)


# ---------------------------------------------------------------- SVI with a full-rank guide
@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_eight_schools_svi_mvn():
    _check_svi(EIGHT_SCHOOLS, steps=4000, min_steps=2000)


@pytest.mark.slow
@pytest.mark.parametrize("name", [RADON_POOLED, RADON_INTERCEPT, RADON_SLOPE, SEEDS])
def test_reference_svi_mvn(name):
    # 8 particles (one vectorised pass) and lr 0.003: with one particle the guide's final
    # means scatter by 0.3-0.6 sd of the hyperscales from run to run; with 8 the worst mean
    # error was 0.09-0.12 sd on all four, at about the same wall time
    _check_svi(name, lr=0.003, steps=10000, min_steps=4000, particles=8)


# ---------------------------------------------------------------- the comparison itself
def test_comparison_flags_a_shifted_posterior():
    """The z-test must fail when draws come from a visibly different distribution."""
    _, ref = _need(EIGHT_SCHOOLS)
    rng = np.random.default_rng(0)
    good = {k: rng.normal(r["mean"], r["sd"], size=(4, 1000)) for k, r in ref.iterrows()}
    assert compare(good, ref)[["z_mean", "z_sd"]].abs().max().max() < 5
    bad = dict(good, mu=good["mu"] + 0.5 * ref.loc["mu", "sd"])
    with pytest.raises(AssertionError, match="mu"):
        assert_matches(compare(bad, ref))
    wide = dict(good, tau=good["tau"] * 1.3)
    with pytest.raises(AssertionError, match="tau"):
        assert_matches(compare(wide, ref))
