"""Every model honours the written contract (``bayesmtl.protocol.Model``) with every back end that
accepts it: the published models of ``models.REGISTRY`` and the extending guide's user priors.

Checked on tiny data: ArviZ conversion with the right dims, predictions of the same shape for
known and new tasks, relations, a save/load round trip with identical predictions, and a refit of
the same model object that leaves an earlier Posterior unchanged.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import bayesmtl as bm
from bayesmtl.protocol import Model, RelationDraws
from bayesmtl.synthetic import gated_clusters, hierarchical_regression, tree_regression

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from custom_priors import PRIORS, build, planted  # noqa: E402

REGISTRY, get_model_class = bm.models.REGISTRY, bm.models.get_model_class

SETTINGS = {"nuts": dict(chains=2, warmup=40, draws=30, max_tree_depth=5),
            "chees": dict(chains=4, warmup=40, draws=30, max_steps=32),
            "svi": dict(steps=200, min_steps=100, draws=30), "map": dict(steps=150, min_steps=100)}
#: back ends a model family cannot use, and why
UNSUPPORTED = {("multitask-gp", "chees"): "checked in test_gp (slow on a GP marginal)",
               ("neural", "nuts"): "samplers cannot train a trunk (refused; the frozen trunk: test_neural)",
               ("neural", "chees"): "samplers cannot train a trunk (refused; the frozen trunk: test_neural)"}
#: the fast tier checks each model with one back end and each back end several times; the rest is -m slow
FAST = {("hierarchical", "nuts"), ("independent", "svi"), ("pooled", "map"), ("dp-clustering", "chees"),
        ("multitask-gp", "map"), ("task-relationship", "nuts"), ("student-t", "chees"),
        ("tree-hierarchy", "chees"), ("gated-clusters", "chees"), ("hierarchical-gp", "map"),
        ("neural", "svi"), ("bayesian-trunk", "svi")}
# (learned-tree: tests/test_tree_learn.py fits, predicts and saves one)


def _settings(name: str, method: str) -> dict:
    gp = name in ("multitask-gp", "hierarchical-gp")
    return {"steps": 10} if gp and method == "map" else SETTINGS[method]  # L-BFGS steps


def _case(name: str, seed: int = 0):
    """(model, train frame, new-task frame, data) for a registry name or an extending-guide prior."""
    if name in PRIORS:
        train, new, _ = planted(name, n_tasks=5, rows=6, seed=seed, new_tasks=1)
        model, data = build(name, train)
        return model, train, new, data
    if name == "tree-hierarchy":  # tasks under a tree of task-level columns; a new task in a known district
        df, _ = tree_regression(branching=(2, 2, 2), rows=6, seed=seed)
        new = df[df["task"] == df["task"].iloc[0]].assign(task="brand_new")
        data = bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x1"],
                                           task_features=["region", "district"])
        return get_model_class(name)("region/district"), df, new, data
    if name == "learned-tree":  # the tree learned from the tasks' data; a new task takes a nested-CRP path
        df, _ = tree_regression(branching=(2, 2, 2), rows=6, seed=seed)
        new = df[df["task"] == df["task"].iloc[0]].assign(task="brand_new")
        data = bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x1"])
        return bm.models.TreeHierarchy(tree="learn", warmup=10, draws=10), df, new, data
    if name == "gated-clusters":  # the gate reads two task-level features; a new task brings its own
        df, _, _ = gated_clusters(n_tasks=5, few_tasks=0, rows=6, test_rows=1, seed=seed)
        new = df[df["task"] == df["task"].iloc[0]].assign(task="brand_new", f1=0.5)
        data = bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x1"], task_features=["f1", "f2"])
        return get_model_class(name)(["f1", "f2"], clusters=3, likelihood="gaussian"), df, new, data
    features = 3 if name in ("shared-subspace", "neural", "bayesian-trunk") else 1  # a subspace needs features
    df, _ = hierarchical_regression(n_tasks=5, rows=6, features=features, seed=seed)
    new = df[df["task"] == df["task"].iloc[0]].assign(task="brand_new")
    if name == "hierarchical-gp":  # a kind of multitask-gp that predicts new tasks
        return bm.models.MultitaskGP(kind="hierarchical"), df, new, bm.MultiTaskData.from_frame(df, task="task",
                                                                                              target="y")
    cls = get_model_class("neural" if name == "bayesian-trunk" else name)
    if name in ("neural", "bayesian-trunk"):  # Bayesian heads on a small trunk (a posterior over it too)
        torch.manual_seed(seed)
        trunk = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        return cls(trunk, trunk_prior=1.0 if name == "bayesian-trunk" else None), df, new, \
            bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = cls(likelihood="gaussian") if name == "dp-clustering" else cls()
    return model, df, new, bm.MultiTaskData.from_frame(df, task="task", target="y")


CASES = [pytest.param(n, m, id=f"{n}-{m}", marks=() if (n, m) in FAST else pytest.mark.slow)
         for n in list(REGISTRY) + ["hierarchical-gp", "learned-tree", "bayesian-trunk"] + list(PRIORS)
         for m in SETTINGS
         if (n if n != "hierarchical-gp" else "multitask-gp", m) not in UNSUPPORTED]


@pytest.mark.parametrize("name,method", CASES)
def test_model_contract(name, method, tmp_path):
    model, train, new, data = _case(name)
    assert isinstance(model, Model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short runs: convergence warnings are expected here
        post = bm.fit(model, data, method=method, seed=0, progress=False, **_settings(name, method))
    C, S, N = post.num_chains, post.num_draws, post.data.n_rows  # (rows a validation split held out are not)
    assert post.info["path"] in ("plain", "centred", "collapsed")

    idata = post.to_arviz()
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "row")
    assert idata.posterior_predictive["y"].shape == (C, S, N)
    assert idata.log_likelihood["y"].shape == (C, S, N)
    assert np.isfinite(idata.log_likelihood["y"].values).all()
    for site, dims in post.dims().items():
        if site in idata.posterior:
            assert idata.posterior[site].dims == ("chain", "draw", *dims), site

    known = post.predict(train.head(4), seed=1)
    assert len(known) == 4 and not known["new_task"].any()
    assert np.isfinite(known[["mean", "sd", "q05", "q95"]].to_numpy()).all()
    if name == "multitask-gp":
        with pytest.raises(ValueError, match="predicts only for tasks it was trained on"):
            post.predict(new, seed=1)
    else:
        fresh = post.predict(new, seed=1)
        assert list(fresh.columns) == list(known.columns) and fresh["new_task"].all()
        assert np.isfinite(fresh[["mean", "sd", "q05", "q95"]].to_numpy()).all()

    rel = model.relations(post.flat())
    assert isinstance(rel, RelationDraws) and rel.draws.shape == (C * S, data.n_tasks, data.n_tasks)
    assert post.relations().names == data.task_names

    post.save(tmp_path / "run")
    back = bm.load(tmp_path / "run")
    pd.testing.assert_frame_equal(back.predict(train.head(4), seed=2), post.predict(train.head(4), seed=2))

    # the same model object fitted again, to other data: the first Posterior must not move
    before = post.predict(train.head(4), seed=3)
    other_model_data = _case(name, seed=5)[3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bm.fit(model, other_model_data, method=method, seed=1, progress=False, **_settings(name, method))
    pd.testing.assert_frame_equal(post.predict(train.head(4), seed=3), before)


def test_same_seed_same_result_without_touching_global_state():
    """A fit is reproducible from its seed alone, whatever the global RNG state before it."""
    model, _, _, data = _case("hierarchical")
    torch.manual_seed(123)
    a = bm.fit(model, data, method="nuts", chains=2, warmup=30, draws=20, seed=4, progress=False)
    torch.manual_seed(999)
    np.random.seed(7)
    b = bm.fit(model, data, method="nuts", chains=2, warmup=30, draws=20, seed=4, progress=False)
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k])
    after = (torch.rand(1).item(), np.random.rand())  # the caller's RNG streams carry on untouched
    torch.manual_seed(999)
    np.random.seed(7)
    assert after == (torch.rand(1).item(), np.random.rand())


#: float32 data through every model and back end (a dtype slip in one model's fast path: the
#: SharedSubspace fit once stopped at SVI's batch check); the fast tier runs the model with one
FLOAT32_FAST = {("shared-subspace", "svi"), ("hierarchical", "svi")}
FLOAT32 = [pytest.param(*p.values, id=p.id, marks=() if tuple(p.values) in FLOAT32_FAST else pytest.mark.slow)
           for p in CASES if p.values[0] not in ("learned-tree",)]


@pytest.mark.parametrize("name,method", FLOAT32)
def test_float32_data_fit_and_predict(name, method):
    model, train, new, data = _case(name)
    data = data.to(dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(model, data, method=method, seed=0, progress=False, **_settings(name, method))
    known = post.predict(train.head(4), seed=1)
    assert np.isfinite(known[["mean", "sd", "q05", "q95"]].to_numpy()).all()
    assert np.isfinite(post.to_arviz().log_likelihood["y"].values).all()
