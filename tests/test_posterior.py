"""The spine end to end: fit -> Posterior -> summary / ArviZ / predict / relations / save-load."""

import warnings

import numpy as np
import pandas as pd
import pyro.distributions as dist
import pytest
import torch

import bayesmtl as bm

FAST_SVI = {"method": "svi", "draws": 200, "steps": 1500, "min_steps": 1500, "progress": False}


@pytest.fixture(scope="module")
def fitted():
    from bayesmtl.synthetic import hierarchical_regression

    df, truth = hierarchical_regression(n_tasks=6, rows=15, features=2, seed=1)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        post = bm.fit(bm.models.Hierarchical(), data, seed=3, **FAST_SVI)
    return df, data, post


@pytest.mark.parametrize("kwargs,match", [
    ({"chains": 0}, "chains must be an integer >= 1"),
    ({"warmup": -1}, "warmup must be an integer >= 0"),
    ({"draws": 0}, "draws must be an integer >= 1"),
    ({"method": "gibbs"}, "unknown method 'gibbs'"),
    ({"method": "svi", "guide": "flow"}, "guide must be one of"),
    ({"method": "svi", "learning_rate": 0.1}, r"unknown option\(s\) for method 'svi': \['learning_rate'\]"),
    ({"device": "mps"}, "device 'mps' is not supported; use 'cpu', 'cuda', 'cuda:N' or 'auto'"),
    ({"device": "meta"}, "device 'meta' is not supported"),
    ({"seed": 2**64}, "seed must be below 2\\*\\*63; got 18446744073709551616"),
])
def test_bad_settings_raise_clear_errors(fitted, kwargs, match):
    _, data, _ = fitted
    with pytest.raises(ValueError, match=match):
        bm.fit(bm.models.Hierarchical(), data, **{"progress": False, **kwargs})


def test_data_must_be_multitask_data(fitted):
    with pytest.raises(TypeError, match="data must be a bayesmtl.MultiTaskData .*got DataFrame"):
        bm.fit(bm.models.Hierarchical(), fitted[0], progress=False)


@pytest.mark.parametrize("model,kwargs,match", [
    (None, {}, "model must be a bayesmtl model .*got NoneType"),
    (bm.models.Hierarchical, {}, r"model must be a model instance, e.g. Hierarchical\(\); got the class itself"),
    (bm.models.Hierarchical(), {"collapse": "no"}, "collapse must be bool or None; got 'no'"),
    (bm.models.Hierarchical(), {"progress": "no"}, "progress must be bool; got 'no'"),
])
def test_a_wrong_kind_of_argument_is_one_type_error(fitted, model, kwargs, match):
    with pytest.raises(TypeError, match=match):
        bm.fit(model, fitted[1], **kwargs)


def test_a_column_the_likelihood_ignores_is_refused(fitted):
    df = fitted[0].assign(n=10.0, se=1.0, y=(fitted[0]["y"] > 0).astype(float))
    with pytest.raises(ValueError, match="the trials column 'n' is not used by a Bernoulli likelihood"):
        bm.fit(bm.models.Hierarchical(likelihood="bernoulli"),
               bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x1"], trials="n"))
    with pytest.raises(ValueError, match="the noise column 'se' .* is not used by a Bernoulli likelihood"):
        bm.fit(bm.models.Hierarchical(likelihood="bernoulli"),
               bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x1"], noise="se"))


@pytest.mark.parametrize("kwargs,match", [
    ({"prob": 1.5}, "prob .* must lie strictly between 0 and 1; got 1.5"),
    ({"prob": 0}, "prob .* must lie strictly between 0 and 1; got 0"),
    ({"seed": 2**64}, "seed must be below 2\\*\\*63"),
    ({"seed": -1}, "seed must be an integer >= 0"),
])
def test_predict_settings_out_of_range(fitted, kwargs, match):
    df, _, post = fitted
    with pytest.raises(ValueError, match=match):
        post.predict(df.head(3), **kwargs)


def test_predict_refuses_data_of_another_schema_and_no_rows(fitted):
    df, _, post = fitted
    other = bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x1"])
    with pytest.raises(ValueError, match=r"the new data have features \['x1'\], the model was fitted on"):
        post.predict(other)
    with pytest.raises(ValueError, match="the new data have no rows"):
        post.predict(df.head(0))
    with pytest.raises(ValueError, match="prob .* must lie strictly between 0 and 1"):
        post.summary(prob=1.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_requested_without_cuda(fitted):
    with pytest.raises(ValueError, match="CUDA is not available"):
        bm.fit(bm.models.Hierarchical(), fitted[1], device="cuda", progress=False)


def test_shared_feature_must_exist(fitted):
    with pytest.raises(ValueError, match="shared feature 'age' is not a feature"):
        bm.fit(bm.models.Hierarchical(shared=["age"]), fitted[1], progress=False)


def test_summary_is_labelled_by_task_and_feature(fitted):
    _, data, post = fitted
    s = post.summary()
    assert "w[task_03, x2]" in s.index and "mu[intercept]" in s.index and "sigma[task_05]" in s.index
    assert {"mean", "sd", "q05", "q95", "ess_bulk", "ess_tail", "r_hat"} <= set(s.columns)
    assert not any(i.startswith("w_raw") for i in s.index)


def test_arviz_has_task_coordinate_and_groups(fitted):
    _, data, post = fitted
    idata = post.to_arviz()
    assert list(idata.posterior["w"].coords["task"].values) == data.task_names
    assert list(idata.posterior["w"].coords["feature"].values) == ["intercept", "x1", "x2"]
    for g in ("posterior", "observed_data", "posterior_predictive", "log_likelihood"):
        assert g in idata.groups()
    assert idata.posterior_predictive["y"].shape == (1, 200, data.n_rows)


def test_predict_known_and_new_tasks(fitted):
    df, data, post = fitted
    new = df.iloc[:10].copy()
    unseen = new.assign(task="never_seen")
    pred = post.predict(pd.concat([new, unseen], ignore_index=True), seed=0)
    assert list(pred.columns[:6]) == ["task", "new_task", "mean", "sd", "q05", "q95"]
    assert pred["new_task"].tolist() == [False] * 10 + [True] * 10
    # a task never seen is drawn from the population: wider than the known task it copies
    assert (pred["sd"][10:].to_numpy() > pred["sd"][:10].to_numpy()).all()
    # known-task predictions track the observed values
    assert np.corrcoef(pred["mean"][:10], new["y"])[0, 1] > 0.8
    again = post.predict(pd.concat([new, unseen], ignore_index=True), seed=0)
    pd.testing.assert_frame_equal(pred, again)


def test_relations_object(fitted, tmp_path):
    _, data, post = fitted
    rel = post.relations()
    assert rel.draws.shape == (200, 6, 6) and rel.names == data.task_names
    assert np.allclose(np.diagonal(rel.draws, axis1=1, axis2=2), 1.0)
    lo, hi = rel.interval(0.9)
    assert (lo.values <= rel.mean().values + 1e-12).all() and (rel.mean().values <= hi.values + 1e-12).all()
    f = rel.to_frame()
    assert list(f.columns) == ["task_a", "task_b", "mean", "q05", "q95"] and len(f) == 15
    rel.plot(tmp_path / "rel.png")
    assert (tmp_path / "rel.png").stat().st_size > 1000


def test_save_load_round_trip(fitted, tmp_path):
    df, data, post = fitted
    run = post.save(tmp_path / "run")
    for f in ("posterior.nc", "summary.csv", "relations.csv", "run.json", "model.json", "data.nc"):
        assert (run / f).exists(), f
    assert not (run / "model.pt").exists()  # nothing in a run is a pickle
    back = bm.load(run)
    pd.testing.assert_frame_equal(back.summary(), post.summary())
    pd.testing.assert_frame_equal(back.predict(df.iloc[:5], seed=1), post.predict(df.iloc[:5], seed=1))
    rel = pd.read_csv(run / "relations.csv")
    assert list(rel.columns) == ["task_a", "task_b", "mean", "q05", "q95"]


def test_failed_save_leaves_nothing(fitted, tmp_path, monkeypatch):
    _, _, post = fitted
    monkeypatch.setattr(type(post), "diagnostics", lambda self: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        post.save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_same_seed_same_result_different_seed_differs(fitted):
    _, data, _ = fitted
    kw = dict(FAST_SVI, steps=300, min_steps=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        a = bm.fit(bm.models.Hierarchical(), data, seed=7, **kw)
        b = bm.fit(bm.models.Hierarchical(), data, seed=7, **kw)
        c = bm.fit(bm.models.Hierarchical(), data, seed=8, **kw)
    assert np.array_equal(a.samples["mu"], b.samples["mu"])
    assert not np.array_equal(a.samples["mu"], c.samples["mu"])


@pytest.mark.parametrize("prior", [
    bm.priors.Hierarchical(covariance="lkj", eta=2.0),
    pytest.param(bm.priors.Hierarchical(centered=True), marks=pytest.mark.slow),
    pytest.param(bm.priors.Hierarchical(mean=dist.Normal(0, 3), scale=dist.HalfCauchy(2)), marks=pytest.mark.slow),
    pytest.param(bm.priors.Independent(), marks=pytest.mark.slow),
    bm.priors.Pooled(),
])
def test_every_prior_runs_through_fit_and_predict(fitted, prior):
    df, data, _ = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        post = bm.fit(bm.MultiTaskModel(prior), data, seed=0, **dict(FAST_SVI, steps=300, min_steps=300))
    assert post.samples["w"].shape == (1, 200, 6, 3)
    pred = post.predict(df.iloc[:4].assign(task="new"))
    assert np.isfinite(pred[["mean", "sd"]].to_numpy()).all()
    assert post.relations().draws.shape == (200, 6, 6)


@pytest.mark.parametrize("lik", ["bernoulli", "poisson"])
def test_glm_likelihoods(lik):
    from bayesmtl.synthetic import hierarchical_regression

    df, _ = hierarchical_regression(n_tasks=5, rows=40, features=2, seed=2, likelihood=lik)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        post = bm.fit(bm.models.Hierarchical(likelihood=lik), data, seed=0,
                      **dict(FAST_SVI, steps=800, min_steps=800))
    pred = post.predict(df)
    if lik == "bernoulli":
        assert "probability" in pred and pred["probability"].between(0, 1).all()
        # the model separates the classes it was fitted on
        assert pred.loc[df["y"] == 1, "probability"].mean() > pred.loc[df["y"] == 0, "probability"].mean() + 0.2
    else:
        assert np.corrcoef(np.log1p(pred["mean"]), np.log1p(df["y"]))[0, 1] > 0.6


def test_bernoulli_rejects_non_binary_target(fitted):
    with pytest.raises(ValueError, match="0/1 for a Bernoulli"):
        bm.fit(bm.models.Hierarchical(likelihood="bernoulli"), fitted[1], progress=False)


def test_svi_minibatches(fitted):
    _, data, _ = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        post = bm.fit(bm.models.Hierarchical(), data, seed=0, batch_size=32,
                      **dict(FAST_SVI, steps=300, min_steps=300))
    assert post.info["batch_size"] == 32 and post.info["jit"] is False


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_matches_cpu_shapes(fitted):
    _, data, _ = fitted
    post = bm.fit(bm.models.Hierarchical(), data, device="cuda", seed=0, **dict(FAST_SVI, steps=300, min_steps=300))
    assert post.info["device"].startswith("cuda") and post.samples["w"].shape == (1, 200, 6, 3)


def test_reading_a_posterior_leaves_the_global_random_state(fitted):
    """Reading a fit takes no random numbers from the caller (explicit random state): summary,
    prior_summary and to_arviz trace the prior's program, which draws; predict and relations
    take their own seeds."""
    df, _, post = fitted
    new = df.assign(task=df["task"].astype(str) + "_new")
    for name, read in [("summary", post.summary), ("prior_summary", post.prior_summary),
                       ("to_arviz", lambda: post.to_arviz(predictive=False)), ("dims", post.dims),
                       ("predict", lambda: post.predict(df)), ("predict, new tasks", lambda: post.predict(new)),
                       ("relations", post.relations)]:
        before = torch.get_rng_state()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read()
        assert torch.equal(before, torch.get_rng_state()), f"{name} moved torch's global random state"
