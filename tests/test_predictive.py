"""Predictive checks: prior predictive draws on the data's scale, labelled predictive draws, and a
posterior predictive check that tells a fitting model from a misfitting one."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bayesmtl as bm
from bayesmtl.synthetic import hierarchical_regression


@pytest.fixture(scope="module")
def raw_scale():
    df, _ = hierarchical_regression(n_tasks=6, rows=20, features=1, noise=0.5, seed=1)
    df["y"] = df["y"] * 10 + 50  # a target far from unit scale
    return df, bm.MultiTaskData.from_frame(df, task="task", target="y")


def _svi(model, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bm.fit(model, data, method="svi", draws=300, steps=1500, min_steps=500, seed=0, progress=False)


def test_prior_predictive_sits_on_the_targets_scale_and_is_reproducible(raw_scale):
    df, data = raw_scale
    sites, y = bm.prior_predictive(bm.models.Hierarchical(), data, draws=200, seed=0)
    assert y.shape == (200, len(df)) and list(y["task"].values[:2]) == [df["task"].iloc[0]] * 2
    assert sites["w"].shape == (200, 6, 2) and sites["tau"].shape == (200, 2)
    # weakly informative on the data's own scale: centred near the target, a few sds wide, not 100s
    assert abs(float(y.mean()) - df["y"].mean()) < df["y"].std()
    assert df["y"].std() < float(y.std()) < 10 * df["y"].std()
    _, again = bm.prior_predictive(bm.models.Hierarchical(), data, draws=200, seed=0)
    assert np.array_equal(y.values, again.values)
    with pytest.raises(ValueError, match="draws must be an integer >= 1"):
        bm.prior_predictive(bm.models.Hierarchical(), data, draws=0)


def test_predict_draws_are_labelled_by_row_and_task(raw_scale):
    df, data = raw_scale
    post = _svi(bm.models.Hierarchical(), data)
    rows = df.head(3).assign(task=["task_00", "task_01", "unseen"])
    d = post.predict(rows, draws=True)
    assert d.dims == ("draw", "row") and list(d["task"].values) == ["task_00", "task_01", "unseen"]
    summary = post.predict(rows, seed=1)  # the same rows and tasks, other draws: the same sds within MC error
    assert np.allclose(d.values.std(0), summary["sd"].to_numpy(), rtol=0.2)


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_ppc_passes_a_fitting_model_and_flags_the_tasks_a_pooled_model_misses(raw_scale):
    _, data = raw_scale
    good = _svi(bm.models.Hierarchical(), data).ppc()
    assert 0.8 <= good.attrs["coverage"] <= 1.0
    assert good["p_mean"].between(0.05, 0.95).all(), good
    bad = _svi(bm.models.Pooled(), data).ppc()
    # one population line for tasks whose means differ by 20: the outer tasks' means fall outside
    assert ((bad["p_mean"] < 0.05) | (bad["p_mean"] > 0.95)).sum() >= 2, bad
