"""Typed back-end options (``bm.infer.NUTS(...)`` and the rest): checked in one place, and the
same fit whether given as an object or as keywords to ``fit``."""

import numpy as np
import pytest

import bayesmtl as bm
from bayesmtl.infer import MAP, METHODS, NUTS, OPTIONS, SVI, ChEES, PyroNUTS, get_backend
from bayesmtl.synthetic import hierarchical_regression


@pytest.fixture(scope="module")
def data():
    """Bernoulli rows: no collapsed form, a written-out gradient, quick to sample."""
    df, _ = hierarchical_regression(n_tasks=3, rows=8, features=1, seed=0, likelihood="bernoulli")
    return bm.MultiTaskData.from_frame(df, task="task", target="y")


def model():
    return bm.models.Hierarchical("bernoulli")


@pytest.mark.parametrize("cls,kwargs,match", [
    (NUTS, dict(target_accept=1.5), r"target_accept must lie in \(0, 1\); got 1.5"),
    (NUTS, dict(max_tree_depth=0), "max_tree_depth must be an integer >= 1; got 0"),
    (NUTS, dict(dense_mass="yes"), "dense_mass must be True or False; got 'yes'"),
    (NUTS, dict(metric="euclid"), "metric must be 'fisher' or 'stan'; got 'euclid'"),
    (NUTS, dict(compile="fast"), "compile must be 'auto', 'jit', 'inductor' or None; got 'fast'"),
    (NUTS, dict(dtype="float16"), "dtype must be 'float64', 'float32' or None; got 'float16'"),
    (NUTS, dict(threads=0), "threads must be None or an integer >= 1; got 0"),
    (NUTS, dict(chunk=2.5), "chunk must be an integer >= 1; got 2.5"),
    (NUTS, dict(init_radius=-1.0), "init_radius must be a number > 0; got -1.0"),
    (NUTS, dict(max_delta_energy=float("nan")), "max_delta_energy must be a number > 0; got nan"),
    (NUTS, dict(processes=True), "processes must be an integer >= 1; got True"),
    (ChEES, dict(target_accept=0.0), r"target_accept must lie in \(0, 1\)"),
    (ChEES, dict(max_steps=0), "max_steps must be an integer >= 1; got 0"),
    (ChEES, dict(processes=0), "processes must be an integer >= 1"),
    (PyroNUTS, dict(jit="no"), "jit must be True or False"),
    (PyroNUTS, dict(target_accept=2), r"target_accept must lie in \(0, 1\)"),
    (PyroNUTS, dict(max_tree_depth=-3), "max_tree_depth must be an integer >= 1"),
    (SVI, dict(guide="flow"), "guide must be one of 'structured', 'normal', 'mvn', 'lowrank' or 'delta'; got 'flow'"),
    (SVI, dict(lr=0), "lr must be a number > 0; got 0"),
    (SVI, dict(steps=0), "steps must be an integer >= 1"),
    (SVI, dict(anneal=-1), "anneal must be None or an integer >= 0"),
    (SVI, dict(batch_size=0), "batch_size must be None or an integer >= 1"),
    (SVI, dict(particles=0), "particles must be None or an integer >= 1"),
    (SVI, dict(rank=0, guide="lowrank"), "rank must be None or an integer >= 1"),
    (SVI, dict(rank=2), "rank applies to guide='lowrank' only; the guide is 'structured'"),
    (SVI, dict(steps=200, min_steps=5000), r"min_steps \(5000\) exceeds steps \(200\)"),
    (MAP, dict(steps=200, min_steps=5000), r"min_steps \(5000\) exceeds steps \(200\)"),
    (MAP, dict(steps=0), "steps must be an integer >= 1"),
    (MAP, dict(lr=-0.1), "lr must be a number > 0"),
    (MAP, dict(model_options=3), "model_options must be a mapping"),
])
def test_bad_values_raise_naming_the_option(cls, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        cls(**kwargs)
    assert "\n" not in str(err.value)


def test_values_are_normalised_and_round_trip():
    import dataclasses

    import torch

    o = NUTS(compile="none", dtype=torch.float32, max_tree_depth=6.0, target_accept=0.9)
    assert (o.compile, o.dtype, o.max_tree_depth) == (None, "float32", 6)
    assert isinstance(o.max_tree_depth, int)
    assert o.given() == {"target_accept": 0.9, "max_tree_depth": 6, "compile": None, "dtype": "float32"}
    assert NUTS.from_dict(o.given()) == o
    assert NUTS() == NUTS.from_dict({}) and hash(NUTS()) == hash(NUTS.from_dict({}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.target_accept = 0.5
    assert set(OPTIONS) == {"nuts", "chees", "pyro_nuts", "svi", "map"} and set(OPTIONS) <= set(METHODS)
    assert all(OPTIONS[m].method == m for m in OPTIONS)


def test_map_routes_other_keywords_to_the_models_optimiser():
    o = MAP.from_dict({"steps": 5, "restarts": 2, "optimizer": "adam"})
    assert o.steps == 5 and o.model_options == {"restarts": 2, "optimizer": "adam"}
    assert o.given() == {"steps": 5, "restarts": 2, "optimizer": "adam"}
    assert MAP(steps=300, anneal=100).svi() == SVI(guide="delta", steps=300, anneal=100)
    with pytest.raises(ValueError, match=r"unknown option\(s\) for method 'map': \['optimizer', 'restarts'\]"):
        o.svi()


def test_get_backend_takes_a_name_or_an_options_object():
    for name in OPTIONS:  # METHODS may hold more (a user's back end registered without options)
        assert get_backend(name).name == name
        b = get_backend(OPTIONS[name]())
        assert b.name == name and b.paths == get_backend(name).paths
    assert get_backend(NUTS(target_accept=0.9)).options == NUTS(target_accept=0.9)
    with pytest.raises(ValueError, match="unknown method 'gibbs'"):
        get_backend("gibbs")
    with pytest.raises(ValueError, match="method 'nuts' was given the options of method 'chees'"):
        NUTS.of(ChEES())


@pytest.mark.parametrize("method,option", [("nuts", "max_steps"), ("chees", "max_tree_depth"),
                                           ("pyro_nuts", "metric"), ("svi", "learning_rate"),
                                           ("map", "restarts")])
def test_unknown_keyword_option_names_the_method(data, method, option):
    with pytest.raises(ValueError, match=rf"unknown option\(s\) for method '{method}': \['{option}'\]; known: "):
        bm.fit(model(), data, method=method, chains=2, warmup=2, draws=2, progress=False,
               **{option: 1})


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_options_object_fits_as_the_keywords_do(data):
    kw = dict(chains=2, warmup=30, draws=20, seed=3, progress=False)
    a = bm.fit(model(), data, method=NUTS(target_accept=0.9), **kw)
    b = bm.fit(model(), data, method="nuts", target_accept=0.9, **kw)
    for site in b.samples:
        np.testing.assert_array_equal(a.samples[site], b.samples[site])
    np.testing.assert_array_equal(a.sample_stats["n_steps"], b.sample_stats["n_steps"])
    assert a.info["method"] == b.info["method"] == "nuts" and a.info["backend"] == "nuts"
    assert a.info["options"] == b.info["options"] == {"target_accept": 0.9}
    assert a.info["target_accept"] == 0.9
    with pytest.raises(ValueError, match="options given twice"):
        bm.fit(model(), data, method=NUTS(), target_accept=0.9, **kw)


def test_options_object_in_chain_groups(data):
    """ChEES in two worker processes: the object reaches each group as the keywords do."""
    kw = dict(chains=4, warmup=20, draws=10, seed=1, progress=False)
    a = bm.fit(model(), data, method=ChEES(max_steps=20, processes=2), **kw)
    b = bm.fit(model(), data, method="chees", max_steps=20, processes=2, **kw)
    np.testing.assert_array_equal(a.samples["w"], b.samples["w"])
    assert a.info["chain_groups"] == [2, 2] and a.info["method"] == "chees"
    assert a.info["options"] == b.info["options"] == {"max_steps": 20, "processes": 2}


class _Funnel(bm.priors.Hierarchical):
    """A user prior whose posterior wants a higher acceptance target than NUTS's default."""

    sampler_defaults = {"target_accept": 0.93}


@pytest.mark.parametrize("method,given,expect,filled", [
    ("nuts", {}, 0.93, {"target_accept": 0.93}),
    ("nuts", {"target_accept": 0.85}, 0.85, None),              # the user's setting wins
    (NUTS(max_tree_depth=6), {}, 0.93, {"target_accept": 0.93}),  # an options object is filled too
    (NUTS(target_accept=0.85), {}, 0.85, None),
    ("chees", {}, 0.93, {"target_accept": 0.93}),
])
def test_a_priors_sampler_defaults_fill_unset_options(data, method, given, expect, filled):
    funnel = bm.MultiTaskModel(prior=_Funnel(), likelihood="bernoulli")
    post = bm.fit(funnel, data, method=method, chains=2, warmup=4, draws=2, progress=False, **given)
    assert post.info["target_accept"] == expect
    assert post.info.get("model_options") == filled


@pytest.mark.filterwarnings("ignore::bayesmtl.diagnostics.DiagnosticWarning")  # 20 SVI steps
def test_sampler_defaults_skip_back_ends_without_the_option(data):
    funnel = bm.MultiTaskModel(prior=_Funnel(), likelihood="bernoulli")
    post = bm.fit(funnel, data, method="svi", steps=20, draws=10, progress=False)
    assert "model_options" not in post.info and "target_accept" not in post.info["options"]
    sparse = bm.MultiTaskModel(prior=bm.priors.SharedSparsity())
    assert sparse.sampler_defaults() == {"target_accept": 0.9}
    assert bm.models.Hierarchical().sampler_defaults() == {}
