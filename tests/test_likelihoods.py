"""Likelihoods beyond the Gaussian: each samples its own parameters, predicts new tasks, gives a
pointwise log likelihood, and recovers what was planted; LOO prefers it where it is right."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

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
