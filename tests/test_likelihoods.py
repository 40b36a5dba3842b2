"""Likelihoods beyond the Gaussian: each samples its own parameters, predicts new tasks, gives a
pointwise log likelihood, and recovers what was planted; LOO prefers it where it is right."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesmtl as bm


def _student(seed=0, df=3.0, scale=1.0):
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(6):
        a = 3 + rng.normal()
        for _ in range(40):
            x = rng.normal()
            rows.append({"task": f"t{t}", "x": x, "y": a + 2 * x + scale * rng.standard_t(df)})
    return pd.DataFrame(rows)


def _fit(model, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bm.fit(model, data, progress=False, seed=0, **kw)


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_student_t_by_name_runs_end_to_end_with_new_tasks():
    df = _student()
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.Hierarchical(likelihood="student_t")
    assert isinstance(model.likelihood, bm.likelihoods.StudentT)
    post = _fit(model, data, method="svi", draws=200, steps=1500, min_steps=500)
    assert post.samples["nu"].shape == (1, 200) and post.samples["sigma"].shape == (1, 200, 6)
    assert "nu" in post.summary().index
    new = df.head(5).assign(task="unseen")
    pred = post.predict(pd.concat([df.head(5), new]), seed=0)
    assert pred["new_task"].sum() == 5 and np.isfinite(pred[["mean", "sd", "q05", "q95"]].to_numpy()).all()
    assert post.model.log_likelihood(post.data, post.flat()).shape == (200, len(df))
    table = post.prior_summary().set_index("site")["prior"]
    assert table["nu"] == "Gamma(concentration=2, rate=0.1)"


@pytest.mark.slow
def test_student_t_recovers_its_planted_tails_and_loo_prefers_it_over_gaussian():
    from bayesmtl.convert import az

    data = bm.MultiTaskData.from_frame(_student(), task="task", target="y")
    t = _fit(bm.models.Hierarchical(likelihood=bm.likelihoods.StudentT(noise="shared")), data,
             method="nuts", chains=4, warmup=500, draws=500)
    s = t.summary(["nu", "sigma"])
    assert s.loc["nu", "q05"] < 3.0 < s.loc["nu", "q95"] and s.loc["sigma", "q05"] < 1.0 < s.loc["sigma", "q95"], s
    g = _fit(bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian(noise="shared")), data,
             method="nuts", chains=4, warmup=500, draws=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmp = az.compare({"student_t": t.to_arviz(), "gaussian": g.to_arviz()})
    assert cmp.index[0] == "student_t" and cmp.loc["gaussian", "elpd_diff"] > 2 * cmp.loc["gaussian", "dse"], cmp


# ---------------------------------------------------------------- the families of brms people model with
def _planted(kind: str, seed: int = 0, T: int = 8, n: int = 60):
    """Rows of one family around eta = w_t0 + w_t1 x, with its true extra parameter and a wrong
    family for LOO to reject."""
    rng = np.random.default_rng(seed)
    w = np.array([1.0, 0.5]) + np.array([0.4, 0.3]) * rng.standard_normal((T, 2))
    task = np.repeat(np.arange(T), n)
    x = rng.standard_normal(T * n)
    eta = w[task, 0] + w[task, 1] * x
    if kind == "negative_binomial":
        m = np.exp(eta)
        y, truth, wrong = rng.negative_binomial(2.0, 2.0 / (2.0 + m)), {"phi": 2.0}, "poisson"
    elif kind == "zip":
        y, truth, wrong = np.where(rng.random(T * n) < 0.3, 0, rng.poisson(np.exp(eta))), {"gate": 0.3}, "poisson"
    elif kind == "gamma":
        y, truth, wrong = rng.gamma(4.0, np.exp(eta) / 4.0), {"shape": 4.0}, "lognormal"
    elif kind == "lognormal":
        y, truth, wrong = np.exp(eta + 0.5 * rng.standard_normal(T * n)), {"sigma": 0.5}, "gamma"
    elif kind == "beta":
        m = 1 / (1 + np.exp(-(eta - 1)))
        y, truth, wrong = rng.beta(m * 10.0, (1 - m) * 10.0), {"phi": 10.0}, "gaussian"
    else:  # ordinal
        c = np.array([-1.0, 0.5, 2.0])
        y = ((eta + rng.logistic(size=T * n))[:, None] > c).sum(1)
        truth, wrong = {"cutpoints": c - c.mean()}, "poisson"
    df = pd.DataFrame({"task": [f"t{t}" for t in task], "x": x, "y": y.astype(float)})
    return bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x"]), df, truth, wrong


FAMILIES = {"negative_binomial": bm.likelihoods.NegativeBinomial, "zip": bm.likelihoods.ZeroInflatedPoisson,
            "gamma": bm.likelihoods.Gamma, "lognormal": bm.likelihoods.LogNormal, "beta": bm.likelihoods.Beta,
            "ordinal": bm.likelihoods.Ordinal}


def _family(kind):
    return bm.likelihoods.LogNormal(noise="shared") if kind == "lognormal" else kind


def _z(post, truth):
    """|posterior mean - truth| / posterior sd, largest over the planted entries."""
    out = 0.0
    for k, v in truth.items():
        d = np.asarray(post.samples[k]).reshape(post.num_chains * post.num_draws, -1)
        out = max(out, float(np.max(np.abs(d.mean(0) - np.ravel(v)) / d.std(0))))
    return out


#: families checked in the slow tier only (the fast one stays under 10 minutes; its others share the path)
SLOW_FAMILIES = ("beta", "zip", "lognormal", "ordinal", "gamma")


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow if k in SLOW_FAMILIES else ())
                                  for k in sorted(FAMILIES)])
def test_family_by_name_fits_predicts_new_tasks_and_gives_pointwise_log_likelihood(kind):
    data, df, truth, _ = _planted(kind, n=25)
    model = bm.models.Hierarchical(likelihood=kind)
    assert isinstance(model.likelihood, FAMILIES[kind])
    post = _fit(model, data, method="svi", draws=200, steps=1500, min_steps=500)
    assert _z(post, truth) < 4.0, post.summary(list(truth))
    new = df.head(4).assign(task="unseen")
    pred = post.predict(pd.concat([df.head(4), new]), seed=0)
    assert pred["new_task"].sum() == 4 and np.isfinite(pred[["mean", "sd", "q05", "q95"]].to_numpy()).all()
    assert post.model.log_likelihood(post.data, post.flat()).shape == (200, len(df))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nuts", "svi"])
@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_family_recovers_its_planted_parameter_and_loo_prefers_it_over_the_wrong_one(kind, method):
    from bayesmtl.convert import az

    data, _, truth, wrong = _planted(kind)
    kw = dict(chains=4, warmup=300, draws=300) if method == "nuts" else dict(draws=1000)
    right = _fit(bm.models.Hierarchical(likelihood=_family(kind)), data, method=method, **kw)
    # one planted data set: the truth within 3.5 posterior sds (NUTS and SVI agree on these data)
    assert _z(right, truth) < 3.5, right.summary(list(truth))
    other = _fit(bm.models.Hierarchical(likelihood=_family(wrong)), data, method=method, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = az.loo(right.to_arviz()), az.loo(other.to_arviz())
    assert a.elpd_loo - b.elpd_loo > 4.0, (kind, a.elpd_loo, b.elpd_loo)


def test_a_target_outside_the_family_is_named():
    data, _, _, _ = _planted("gamma", n=5)
    bad = bm.MultiTaskData.from_frame(pd.DataFrame({"task": ["a", "a", "b"], "y": [1.0, -2.0, 3.0]}),
                                      task="task", target="y")
    with pytest.raises(ValueError, match="must be positive.*found -2.*task 'a'"):
        bm.fit(bm.models.Hierarchical(likelihood="gamma"), bad, method="svi")
    counts = bm.MultiTaskData.from_frame(pd.DataFrame({"task": ["a", "b"], "y": [1.5, 2.0]}), task="task", target="y")
    with pytest.raises(ValueError, match="non-negative integer counts.*count likelihood"):
        bm.fit(bm.models.Hierarchical(likelihood="negative_binomial"), counts, method="svi")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        bm.fit(bm.models.Hierarchical(likelihood="beta"), data, method="svi")
    with pytest.raises(ValueError, match="not a likelihood: wrap it.*Custom"):
        bm.models.Hierarchical(likelihood=dist.StudentT(3.0))


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_custom_family_with_a_named_link_recovers_its_parameter():
    data, _, truth, _ = _planted("gamma", n=40)
    lik = bm.likelihoods.Custom(dist.Gamma, mean_arg="rate", link=lambda eta: 4.0 / torch.exp(eta),
                                params={"concentration": dist.Gamma(2.0, 0.1)})
    post = _fit(bm.models.Hierarchical(likelihood=lik), data, method="svi", draws=300, steps=2000, min_steps=500)
    assert _z(post, {"concentration": truth["shape"]}) < 4.0, post.summary(["concentration"])
    with pytest.raises(ValueError, match="outside the support of Gamma"):
        bad = bm.MultiTaskData.from_frame(pd.DataFrame({"task": ["a", "b"], "y": [1.0, -1.0]}), task="task",
                                          target="y")
        bm.fit(bm.models.Hierarchical(likelihood=lik), bad, method="svi")


class _MisBroadcast(bm.likelihoods.Likelihood):
    """sigma (S,) against eta (S, N) without lining it up: right only when S = 1."""

    def sample_params(self, n_tasks, task_plate, like):
        return {"sigma": pyro.sample("sigma", dist.HalfNormal(like.new_tensor(1.0)))}

    def site_dims(self):
        return {"sigma": ()}

    def distribution(self, eta, params, task, noise, trials):
        return dist.Normal(eta, params["sigma"])


class _PerTaskScale(bm.likelihoods.Likelihood):
    """A user's per-task noise with no new-task rule of its own."""

    def sample_params(self, n_tasks, task_plate, like):
        with task_plate:
            return {"s": pyro.sample("s", dist.HalfNormal(like.new_tensor(1.0)))}

    def site_dims(self):
        return {"s": ("task",)}

    def distribution(self, eta, params, task, noise, trials):
        return dist.Normal(eta, params["s"][..., task])


def test_a_parameter_broadcast_along_the_wrong_dim_is_an_error_at_build_time():
    data, _, _, _ = _planted("lognormal", n=5)
    with pytest.raises(ValueError, match="likelihood _MisBroadcast.*broadcast|likelihood _MisBroadcast.*fails"):
        bm.fit(bm.models.Hierarchical(likelihood=_MisBroadcast()), data, method="svi")


def test_a_user_per_task_parameter_reaches_new_tasks():
    data, df, _, _ = _planted("lognormal", n=10)
    post = _fit(bm.models.Hierarchical(likelihood=_PerTaskScale()), data, method="svi", draws=50, steps=300,
                min_steps=100)
    pred = post.predict(df.head(3).assign(task="unseen"), seed=0)
    assert pred["new_task"].all() and np.isfinite(pred["sd"]).all()


def test_ordinal_predicts_expected_category_within_its_levels():
    data, df, _, _ = _planted("ordinal", n=30)
    post = _fit(bm.models.Hierarchical(likelihood="ordinal"), data, method="svi", draws=200, steps=1500,
                min_steps=500)
    pred = post.predict(df.head(20), seed=0)
    assert ((pred["mean"] >= 0) & (pred["mean"] <= 3)).all() and set(pred["q95"]) <= {0.0, 1.0, 2.0, 3.0}
    # a higher linear predictor moves the expected category up: it follows x's planted positive slope
    hi, lo = df.assign(x=2.0).head(1), df.assign(x=-2.0).head(1)
    assert post.predict(hi, seed=0)["mean"].iloc[0] > post.predict(lo, seed=0)["mean"].iloc[0]


def test_cli_fits_a_family_by_name_and_sets_its_parameter_prior(tmp_path, capsys):
    from bayesmtl.cli import main

    _, df, _, _ = _planted("negative_binomial", n=15)
    df.to_csv(tmp_path / "d.csv", index=False)
    assert main(["fit", "--data", str(tmp_path / "d.csv"), "--task", "task", "--target", "y", "--features", "x",
                 "--likelihood", "negative_binomial", "--set-prior", "phi=Gamma(3, 0.5)", "--method", "svi",
                 "--draws", "100", "--option", "steps=1000", "--option", "min_steps=300",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 0
    post = bm.load(tmp_path / "r")
    assert isinstance(post.model.likelihood, bm.likelihoods.NegativeBinomial)
    assert post.prior_summary().set_index("site").loc["phi", "prior"] == "Gamma(concentration=3, rate=0.5)"
