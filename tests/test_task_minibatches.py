"""SVI on task minibatches (``task_batch_size``; ``MultiTaskModel.task_minibatches``)."""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

import bayesmtl as bm
from bayesmtl.synthetic import hierarchical_regression


def _data(n_tasks=30, rows=12, seed=0):
    df, truth = hierarchical_regression(n_tasks=n_tasks, rows=rows, features=2, seed=seed)
    return df, bm.MultiTaskData.from_frame(df, task="task", target="y"), truth


def _log_joint(program, values):
    tr = poutine.trace(poutine.condition(program, data=values)).get_trace()
    return float(tr.log_prob_sum())


def test_the_minibatch_log_density_is_unbiased_for_the_full_one():
    """At fixed latent values, the minibatch program's log density (per-task sites and rows
    scaled by T / batch) averages to the full program's: the ELBO's gradient is unbiased."""
    _, data, _ = _data(n_tasks=12, rows=5)
    model = bm.MultiTaskModel(prior=bm.priors.Hierarchical(centered=True), likelihood="gaussian")
    full = model.pyro_model(data)
    with torch.no_grad():
        values = {k: v["value"] for k, v in poutine.trace(full).get_trace().nodes.items()
                  if v["type"] == "sample" and not v["is_observed"] and not site_is_subsample(v)}
    want = _log_joint(full, values)
    batch = model.task_minibatches(data, 3)

    def one():  # the batch's own slice of every per-task value
        tr = poutine.trace(batch).get_trace()  # draws the batch
        idx = tr.nodes["task"]["value"]
        vals = {k: (v[idx] if k in ("w", "sigma") and v.dim() and v.shape[0] == 12 else v) for k, v in values.items()}
        return _log_joint(poutine.condition(batch, data={"task": idx}), vals)

    pyro.set_rng_seed(0)
    got = np.array([one() for _ in range(600)])
    se = got.std() / np.sqrt(len(got))
    assert abs(got.mean() - want) < 4 * se, (got.mean(), want, se)
    assert got.std() > 0  # different batches, different estimates


def test_the_collapsed_marginal_splits_over_tasks():
    """The collapsed form's log marginal over a partition of the tasks sums to the full one, so
    its task-minibatch program (each batch scaled by T / B) is unbiased."""
    from bayesmtl.marginals import form

    _, data, _ = _data(n_tasks=12, rows=5)
    model = bm.MultiTaskModel(prior=bm.priors.Hierarchical(), likelihood="gaussian").bind(data)
    f = form(model, data, "collapsed")
    gen = torch.Generator().manual_seed(0)
    mu, tau = torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.rand(4, 3, generator=gen,
                                                                                 dtype=torch.float64) + 0.2
    sigma = torch.rand(4, 12, generator=gen, dtype=torch.float64) + 0.5
    whole = f.log_marginal(mu, tau, sigma)
    parts = sum(f.log_marginal_tasks(idx, mu, tau, sigma[:, idx]) for idx in torch.randperm(12).split(5))
    torch.testing.assert_close(parts, whole)


def test_a_fit_on_task_minibatches_gives_every_task_and_new_tasks():
    """Short fit on 3 tasks a step: draws of all tasks, labelled; new tasks predicted; run.json
    says what ran; the default Hierarchical with a Gaussian likelihood takes its collapsed form
    (w integrated out: the per-task sigma are the only per-task sites), w drawn exactly after."""
    df, data, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(bm.models.Hierarchical(), data, method="svi", task_batch_size=3, steps=300, min_steps=100,
                      anneal=50, draws=50, seed=0, progress=False)
    assert post.info["task_batch_size"] == 3 and "skipped" in post.info["psis"]
    assert post.info["average_noise_site"] in ("mu", "tau") and post.info["average_noise"] > 0  # (averaging.py)
    assert np.asarray(post.samples["w"]).shape[-2:] == (30, 3)
    assert post.info["path"] == "collapsed"
    assert post.to_arviz().posterior["w"].sizes["task"] == 30
    new = df[df["task"] == df["task"].iloc[0]].assign(task="brand-new")
    pred = post.predict(new)
    assert pred["new_task"].all() and np.isfinite(pred["sd"]).all()
    again = bm.fit(bm.models.Hierarchical(), data, method="svi", task_batch_size=3, steps=300, min_steps=100,
                   anneal=50, draws=50, seed=0, progress=False)
    np.testing.assert_array_equal(np.asarray(again.samples["mu"]), np.asarray(post.samples["mu"]))


@pytest.mark.parametrize("options, message", [
    (dict(task_batch_size=3, batch_size=10), "both set"),
    (dict(task_batch_size=3, guide="mvn"), "cannot take task minibatches"),
    (dict(task_batch_size=3, validation=0.2), "not supported yet"),
    (dict(task_batch_size=30), "from 1 to 29"),
    (dict(task_batch_size=0), "task_batch_size"),
])
def test_bad_task_minibatch_settings_are_one_clear_error(options, message):
    _, data, _ = _data()
    with pytest.raises(ValueError, match=message):
        bm.fit(bm.models.Hierarchical(), data, method="svi", steps=10, progress=False, **options)


def test_a_prior_that_couples_all_tasks_is_refused():
    """Task relationship on few tasks learns one full covariance across them all (a matrix-normal
    draw outside the task plate): a subset cannot stand in. (Its low-rank form, above 10 tasks,
    has per-task loadings inside the plate and does take minibatches.)"""
    _, data, _ = _data(n_tasks=8)
    with pytest.raises(ValueError, match="minibatch"):
        bm.fit(bm.models.TaskRelationship(), data, method="svi", task_batch_size=5, steps=10, progress=False)


@pytest.mark.slow
def test_minibatch_population_matches_the_full_batch_fit():
    """200 planted tasks, 20 a step: the population's posterior means within 0.3 full-batch sd
    of the full-batch (collapsed) fit's, sds within 25%, planted mu covered. (Before the averaged
    guide and the gradient clip scaled up the largest gaps were 0.4-0.5.)"""
    _, data, truth = _data(n_tasks=200, rows=15, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = bm.fit(bm.models.Hierarchical(), data, method="svi", draws=1000, seed=0, progress=False)
        part = bm.fit(bm.models.Hierarchical(), data, method="svi", task_batch_size=20, draws=1000, seed=0,
                      progress=False)
    for k in ("mu", "tau"):
        f, q = (np.asarray(p.samples[k]).reshape(-1, 3) for p in (full, part))
        assert (np.abs(q.mean(0) - f.mean(0)) / f.std(0)).max() < 0.3, k
        assert np.all(np.abs(q.std(0) / f.std(0) - 1) < 0.25), k
    q = np.asarray(part.samples["mu"]).reshape(-1, 3)
    lo, hi = np.quantile(q, [0.05, 0.95], axis=0)
    assert np.all((lo <= truth["mu"]) & (truth["mu"] <= hi))


def test_the_lazy_optimiser_leaves_entries_without_a_gradient_alone():
    """Entries whose gradient is zero (tasks outside the batch) neither move nor lose momentum;
    entries with a gradient step as pyro's ClippedAdam steps them."""
    from pyro.optim.clipped_adam import ClippedAdam

    from bayesmtl.infer.optim import LazyClippedAdam

    a = torch.linspace(-1, 1, 6, dtype=torch.float64).requires_grad_(True)
    b = a.detach().clone().requires_grad_(True)
    oa, ob = ClippedAdam([a], lr=0.1, lrd=0.99), LazyClippedAdam([b], lr=0.1, lrd=0.99)
    weights = torch.arange(1.0, 7.0, dtype=torch.float64)
    for _ in range(30):
        for p, o in ((a, oa), (b, ob)):
            o.zero_grad()
            ((p - 3) ** 2 * weights).sum().backward()
            o.step()
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    before = b.detach().clone()
    ob.zero_grad()
    (((b - 3) ** 2) * weights)[:3].sum().backward()  # entries 3..5 get an exact zero
    ob.step()
    assert torch.equal(b.detach()[3:], before[3:]) and not torch.equal(b.detach()[:3], before[:3])
    assert torch.equal(ob.state[b]["step"][3:], torch.full((3,), 30.0, dtype=torch.float64))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_task_minibatches_on_cuda():
    """The same short fit with the data on the GPU: every index and the lazy optimiser's state
    live on the data's device."""
    _, data, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(bm.models.Hierarchical(), data, method="svi", task_batch_size=3, steps=200, min_steps=100,
                      anneal=20, draws=20, seed=0, progress=False, device="cuda")
    assert np.asarray(post.samples["w"]).shape[-2:] == (30, 3)
