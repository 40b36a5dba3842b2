"""Diagnostics speak: a fit that should not be trusted warns, naming the parameters and the fix;
a healthy one is quiet; the checks are recorded in run.json and shown by the CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pyro.distributions as dist
import pytest

import bayesmtl as bm
from bayesmtl.diagnostics import DiagnosticWarning, e_bfmi, mcmc_problems


def _summary(draws: np.ndarray, labels: list[str]) -> pd.DataFrame:
    from bayesmtl.convert import az, summary

    idata = az.from_dict(posterior={"x": draws}, coords={"k": labels}, dims={"x": ["k"]})
    out = summary(idata, ["x"])
    out.index = labels
    return out


def _fit(*args, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = bm.fit(*args, progress=False, **kw)
    return post, [str(w.message) for w in caught if issubclass(w.category, DiagnosticWarning)]


# ---------------------------------------------------------------- the checks on planted draws
def test_chains_that_disagree_are_named_by_r_hat_and_ess():
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(4, 500, 3))
    draws[2:, :, 1] += 3.0  # entry "b": two chains sit elsewhere
    problems = mcmc_problems(_summary(draws, ["a", "b", "c"]), draws, {}, {})
    by = {p.check: p for p in problems}
    assert {"r_hat", "ess_bulk"} <= set(by) and all(p.entries == ("b",) for p in problems), problems
    assert by["r_hat"].entries == ("b",) and by["r_hat"].value > 1.5
    assert "r_hat up to" in by["r_hat"].message and "b" in by["r_hat"].message


def test_independent_well_mixed_draws_pass_every_check():
    rng = np.random.default_rng(1)
    draws = rng.normal(size=(4, 500, 20))
    energy = rng.normal(size=(4, 500))
    stats = {"diverging": np.zeros((4, 500), bool), "tree_depth": np.full((4, 500), 3), "energy": energy}
    assert mcmc_problems(_summary(draws, [f"x{i}" for i in range(20)]), draws, stats, {"max_tree_depth": 10}) == []


def test_divergences_are_located_at_the_parameter_whose_tail_they_sit_in():
    rng = np.random.default_rng(2)
    draws = rng.normal(size=(4, 500, 3))
    div = np.zeros((4, 500), bool)
    low_tau = draws[..., 1] < np.quantile(draws[..., 1], 0.05)
    div[low_tau & (rng.uniform(size=(4, 500)) < 0.5)] = True
    stats = {"diverging": div}
    problems = mcmc_problems(_summary(draws, ["mu", "tau", "z"]), draws, stats, {})
    p = next(p for p in problems if p.check == "divergences")
    assert p.value == div.sum() and p.entries == ("tau",)
    assert "low values of tau" in p.message and "target_accept" in p.message


def test_tree_depth_saturation_and_low_e_bfmi_warn():
    rng = np.random.default_rng(3)
    draws = rng.normal(size=(2, 400, 2))
    walk = np.cumsum(rng.normal(size=(2, 400)), axis=1)  # energy that barely moves between draws
    assert (e_bfmi(walk) < 0.3).all() and (e_bfmi(rng.normal(size=(2, 400))) > 0.3).all()
    depth = np.full((2, 400), 4)
    depth[0, :7] = 6
    stats = {"tree_depth": depth, "energy": walk}
    by = {p.check: p for p in mcmc_problems(_summary(draws, ["a", "b"]), draws, stats, {"max_tree_depth": 6})}
    assert by["tree_depth"].value == 7 and "max_tree_depth" in by["tree_depth"].message
    assert by["e_bfmi"].value < 0.3


# ---------------------------------------------------------------- fits
def _eight_schools():
    y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
    se = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
    df = pd.DataFrame({"school": list("ABCDEFGH"), "y": y, "se": se})
    return bm.MultiTaskData.from_frame(df, task="school", target="y", features=[], noise="se")


def test_a_fit_cut_short_warns_naming_its_parameters_and_records_it(tmp_path):
    data = _eight_schools()
    model = bm.models.Hierarchical(prior=bm.priors.Hierarchical(mean=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0)))
    post, msgs = _fit(model, data, method="nuts", chains=4, warmup=10, draws=40, seed=0)
    assert any(m.startswith("r_hat up to") for m in msgs) and any(m.startswith("ess_bulk") for m in msgs), msgs
    problems = post.diagnose()
    assert [p.message for p in problems] == msgs
    assert all(set(p.entries) <= set(post.summary().index) for p in problems)
    post.save(tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [p["check"] for p in run["diagnostics"]["problems"]] == [p.check for p in problems]
    assert [p.check for p in bm.load(tmp_path / "run").diagnose()] == [p.check for p in problems]


@pytest.mark.slow
def test_a_centred_funnel_warns_with_its_divergences_at_low_tau():
    """Eight schools, centred (the classic funnel), default lengths: NUTS diverges at small tau, and says so."""
    data = _eight_schools()
    model = bm.models.Hierarchical(prior=bm.priors.Hierarchical(mean=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0),
                                                                centered=True))
    post, msgs = _fit(model, data, method="nuts", seed=0, collapse=False)
    div = [m for m in msgs if "divergent" in m]
    assert div and "low values of tau[intercept]" in div[0], msgs


def test_the_same_funnel_non_centred_fits_quietly():
    data = _eight_schools()
    model = bm.models.Hierarchical(prior=bm.priors.Hierarchical(mean=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0)))
    post, msgs = _fit(model, data, method="nuts", chains=4, warmup=300, draws=500, seed=0, target_accept=0.9)
    assert msgs == [] and post.diagnose() == [] and post.info["diagnostics"]["problems"] == []


def test_svi_reports_its_draws_as_independent_and_its_guide():
    from bayesmtl.synthetic import hierarchical_regression

    df, _ = hierarchical_regression(n_tasks=6, rows=20, features=1, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    post, _ = _fit(bm.models.Hierarchical(), data, method="svi", draws=400, steps=1500, min_steps=500, seed=0,
                   guide="normal", psis=False)
    s = post.summary(prob=0.95)
    assert s[["ess_bulk", "ess_tail", "r_hat"]].isna().all().all()  # no MCMC ESS for independent draws
    np.testing.assert_allclose(s["mcse_mean"], s["sd"] / np.sqrt(400))
    assert "independent draws" in s.attrs["draws"] and "normal guide" in s.attrs["draws"]
    assert {"q2.5", "q50", "q97.5"} <= set(s.columns)
    assert np.isfinite(post.info["pareto_k"])


@pytest.mark.slow
def test_the_pareto_k_check_flags_a_mean_field_guide_on_a_three_level_prior():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from custom_priors import build, planted

    train, _, _ = planted("three-level", n_tasks=40, rows=10, seed=1)
    model, data = build("three-level", train)
    post, msgs = _fit(model, data, method="svi", draws=500, seed=0)
    assert post.info["pareto_k"] > 0.7
    assert any("Pareto k" in m and "normal guide" in m for m in msgs), msgs


def test_svi_that_stops_short_warns_once():
    from bayesmtl.synthetic import hierarchical_regression

    df, _ = hierarchical_regression(n_tasks=4, rows=10, features=1, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    post, msgs = _fit(bm.models.Hierarchical(), data, method="svi", draws=50, steps=200, min_steps=100, lr=1e-4,
                      window=50, seed=0)
    assert [m for m in msgs if "did not converge" in m] and len(msgs) == len(post.diagnose())
