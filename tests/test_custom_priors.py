"""A task prior written once, in plain Pyro, works everywhere: every back end, new tasks, ArviZ,
save/load, task-level features, device/dtype; and its mistakes get one clear line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesmtl as bm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from custom_priors import PRIORS, build, covers, planted  # noqa: E402

FAST = {"nuts": dict(chains=2, warmup=100, draws=100, max_tree_depth=6), "chees": dict(chains=4, warmup=150, draws=150),
        "svi": dict(draws=200, steps=1500, min_steps=500), "map": dict(steps=800, min_steps=300)}
#: in the fast tier: each prior once (test_conformance runs each with nuts and chees too)
QUICK = {("student-t", "svi"), ("covariates", "svi"), ("three-level", "map")}
CASES = [pytest.param(k, m, id=f"{m}-{k}", marks=() if (k, m) in QUICK else pytest.mark.slow)
         for k in sorted(PRIORS) for m in sorted(FAST)]


@pytest.mark.parametrize("kind,method", CASES)
def test_user_prior_runs_end_to_end(kind, method, tmp_path):
    train, new, _ = planted(kind, n_tasks=6, rows=8, seed=1, new_tasks=2)
    model, data = build(kind, train)
    post = bm.fit(model, data, method=method, seed=0, progress=False, **FAST[method])
    C, S = post.num_chains, post.num_draws
    assert post.samples["w"].shape == (C, S, 6, 2)
    if method in ("nuts", "chees"):
        assert post.info["reparam"]["non_centred"], post.info  # the package chose the parametrisation
    idata = post.to_arviz()
    assert idata.posterior["w"].dims == ("chain", "draw", "task", "feature")
    assert list(idata.posterior["w"].coords["task"].values) == data.task_names
    assert idata.log_likelihood["y"].shape == (C, S, data.n_rows)
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "row")
    if kind == "three-level":
        assert list(idata.posterior["group_mean"].coords["group"].values) == ["g0", "g1", "g2", "g3"]
    pred = post.predict(new, seed=0)  # tasks never seen in training, with their task-level features
    assert len(pred) == len(new) and pred["new_task"].all()
    assert np.isfinite(pred[["mean", "sd", "q05", "q95"]].to_numpy()).all() and (pred["sd"] > 0).all()
    rel = post.relations()
    assert rel.draws.shape == (C * S, 6, 6)
    post.save(tmp_path / "run")
    back = bm.load(tmp_path / "run")
    np.testing.assert_allclose(back.predict(new, seed=3)["mean"], post.predict(new, seed=3)["mean"])


@pytest.mark.parametrize("method,path", [("map", "plain"), ("svi", "centred")])
def test_new_tasks_come_from_the_population_the_prior_learned(method, path):
    """Derived new-task draws (the prior rerun with its hyperparameters fixed) match the closed form:
    for the three-level prior, a new task in group g has parameters N(group_mean[g], tau) per draw,
    from draws of the non-centred program (MAP) and of the prior as written (SVI's path)."""
    train, new, _ = planted("three-level", n_tasks=8, rows=8, seed=2, new_tasks=4)  # (informative: SVI centres)
    model, data = build("three-level", train)
    post = bm.fit(model, data, method=method, seed=0, progress=False, steps=600, min_steps=300, draws=5)
    assert post.info["path"] == path
    assert any(k.endswith("_decentered") for k in post.samples) == (path == "plain")
    flat = {k: v[:1] for k, v in post.flat().items()}
    S = 20000
    rep = {k: v.expand((S,) + v.shape[1:]) for k, v in flat.items()}
    newdata = data.prepare(new)
    w = model.new_task_params(data, newdata, rep, torch.Generator().manual_seed(0))
    g = newdata.task_features["group"][newdata.n_known_tasks:]
    m, tau = flat["group_mean"][0][g], flat["tau"][0]
    assert w.shape == (S, 4, 2)
    np.testing.assert_allclose(w.mean(0), m, atol=4 * float(tau.max()) / S ** 0.5)
    np.testing.assert_allclose(w.std(0), tau.expand_as(m), rtol=0.04)


def test_prior_with_python_numbers_runs_in_float32():
    train, _, _ = planted("student-t", n_tasks=5, rows=6, seed=0)
    data = bm.MultiTaskData.from_frame(train, task="task", target="y", features=["x"], dtype=torch.float32)
    model = bm.MultiTaskModel(PRIORS["student-t"]())
    post = bm.fit(model, data, method="svi", steps=300, min_steps=100, draws=50, seed=0, progress=False)
    assert post.samples["mu"].dtype == np.float32


def test_prior_with_python_numbers_samples_in_the_dtype_asked_of_the_sampler():
    """nuts(dtype="float32") on float64 data: the data are cast, and the prior's Python numbers
    (dist.Normal(0.0, 5.0)) follow them (it stopped with "expected scalar type Float but found
    Double" inside the task-rows product)."""
    train, _, _ = planted("student-t", n_tasks=5, rows=6, seed=0)
    model, data = build("student-t", train)
    post = bm.fit(model, data, method="nuts", chains=2, warmup=20, draws=10, seed=0, progress=False,
                  dtype="float32", max_tree_depth=5)
    assert post.info["dtype"] == "float32" and np.isfinite(post.samples["mu"]).all()


def test_site_dims_are_derived_and_a_prior_may_name_its_own():
    class Named(bm.priors.TaskPrior):
        def sample(self, tasks):
            s = pyro.sample("spread", dist.HalfNormal(1.0).expand([3]).to_event(1))
            with tasks.plate:
                return pyro.sample("w", dist.Normal(0.0, s[..., :1]).expand([tasks.dims]).to_event(1))

        def site_dims(self):
            return {"spread": ("component",)}

    train, _, _ = planted("student-t", n_tasks=4, rows=5, seed=0)
    model, data = bm.MultiTaskModel(Named()), bm.MultiTaskData.from_frame(train, task="task", target="y")
    dims = model.site_dims(data)
    assert dims["spread"] == ("component",)
    assert dims["w"] == ("task", "feature") and dims["w_decentered"] == ("task", "feature")


# ---------------------------------------------------------------------- mistakes get one clear line
def _data(**kw):
    train, _, _ = planted("three-level", n_tasks=6, rows=4, seed=0)
    return train, bm.MultiTaskData.from_frame(train, task="task", target="y", features=["x"], **kw)


def test_wrong_return_shape_names_the_prior_and_the_shape():
    class Flat(bm.priors.TaskPrior):
        def sample(self, tasks):
            with tasks.plate:
                return pyro.sample("w", dist.Normal(0.0, 1.0))

    _, data = _data()
    with pytest.raises(ValueError, match=r"Flat.sample must return the task parameters, shape \(\.\.\., 6, 2\)"):
        bm.fit(bm.MultiTaskModel(Flat()), data, method="svi")


def test_missing_task_feature_is_named():
    _, data = _data()
    with pytest.raises(ValueError, match=r"no task feature 'group'.*task_features="):
        bm.fit(bm.MultiTaskModel(PRIORS["three-level"]("group")), data, method="svi")


def test_task_feature_must_be_constant_within_a_task():
    train, _ = _data()
    train.loc[1, "group"] = "other"
    with pytest.raises(ValueError, match=r"task feature 'group' must be constant within each task; task 't00'"):
        bm.MultiTaskData.from_frame(train, task="task", target="y", task_features=["group"])


def test_new_task_in_an_unseen_category_is_named():
    train, data = _data(task_features=["group"])
    new = train[train["task"] == "t00"].assign(task="fresh", group="g9")
    with pytest.raises(ValueError, match=r"task 'fresh' has group 'g9', a category not seen in training"):
        data.prepare(new)


def test_task_features_reach_new_tasks_and_round_trip_the_frame():
    train, data = _data(task_features=["group"])
    assert data.task_levels["group"] == ["g0", "g1", "g2", "g3"]
    assert data.task_features["group"].tolist() == [0, 1, 2, 3, 0, 1]
    new = train[train["task"] == "t01"].assign(task="fresh")
    out = data.prepare(new)
    assert out.task_features["group"].tolist() == [0, 1, 2, 3, 0, 1, 1]
    assert (data.to_frame()["group"] == train["group"]).all()


# ---------------------------------------------------------------------- right, not just running
def _z_scores(post, truth: dict) -> np.ndarray:
    """|posterior mean - planted value| / posterior sd for every entry of every planted site."""
    out = []
    for name, value in truth.items():
        d = post.samples[name].reshape((-1,) + np.shape(value))
        out.append((np.abs(d.mean(0) - value) / d.std(0)).ravel())
    return np.concatenate(out)


@pytest.mark.slow
def test_student_t_prior_recovers_planted_population_and_covers_new_tasks():
    """40 tasks (one 8 scales out): 90% intervals cover mu and tau; new-task 90% predictive intervals
    cover about 90% of 30 new tasks' rows; nuts and chees agree within 4 combined MCSE."""
    train, new, truth = planted("student-t", n_tasks=40, rows=10, seed=0, new_tasks=30)
    model, data = build("student-t", train)
    nuts = bm.fit(model, data, method="nuts", chains=4, warmup=500, draws=500, seed=0, progress=False)
    assert _z_scores(nuts, truth).max() < 3
    pred = nuts.predict(new, seed=0)
    inside = np.mean((pred["q05"] <= new["y"]) & (new["y"] <= pred["q95"]))
    assert 0.84 <= inside <= 0.96, inside
    chees = bm.fit(model, data, method="chees", chains=8, warmup=500, draws=500, seed=1, progress=False)
    a, b = nuts.summary(["mu", "tau"]), chees.summary(["mu", "tau"])
    z = (a["mean"] - b["mean"]).abs() / np.hypot(a["mcse_mean"], b["mcse_mean"])
    assert (z < 4).all(), z


@pytest.mark.slow
def test_three_level_prior_recovers_planted_group_means():
    train, _, truth = planted("three-level", n_tasks=40, rows=10, seed=1)
    model, data = build("three-level", train)
    post = bm.fit(model, data, method="nuts", chains=4, warmup=1000, draws=1000, seed=0, progress=False)
    assert covers(post, {"group_mean": truth["group_mean"]})["group_mean"] >= 0.75
    assert _z_scores(post, {"group_mean": truth["group_mean"]}).max() < 3.5
    assert post.diagnostics()["max_r_hat"] < 1.05


@pytest.mark.slow
def test_student_t_prior_svi_mvn_agrees_with_nuts():
    """The same user prior under SVI with a full-rank guide: population means within 0.25 posterior sd
    of NUTS's (the auto non-centring serves the guide too). Eight ELBO particles: with one, the
    guide where the convergence check stops still wanders by about 0.3 sd in tau (0.648 against
    0.615 with eight, 0.620 from 16 ChEES chains x 1000)."""
    train, _, _ = planted("student-t", n_tasks=40, rows=10, seed=0)
    model, data = build("student-t", train)
    nuts = bm.fit(model, data, method="nuts", chains=4, warmup=500, draws=500, seed=0, progress=False)
    svi = bm.fit(model, data, method="svi", guide="mvn", steps=20000, particles=8, draws=2000, seed=0,
                 progress=False)
    a, b = nuts.summary(["mu", "tau"]), svi.summary(["mu", "tau"])
    assert ((a["mean"] - b["mean"]).abs() < 0.25 * a["sd"]).all(), (a[["mean", "sd"]], b[["mean", "sd"]])


def test_point_estimate_still_shows_the_spread_between_tasks_for_a_new_task():
    """MAP has one draw: a new task's parameters are drawn per predictive draw, so its interval holds
    the population's spread (sd ~ sqrt(tau^2 + sigma^2)) and its mean does not jump with the seed."""
    from bayesmtl.synthetic import hierarchical_regression

    df, _ = hierarchical_regression(n_tasks=8, rows=20, features=1, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.MultiTaskModel(bm.priors.Hierarchical(), likelihood=bm.likelihoods.Gaussian(noise="shared"))
    post = bm.fit(model, data, method="map", steps=1000, min_steps=500, seed=0, progress=False)
    new = df.head(1).assign(task="fresh", x1=0.0)
    preds = [post.predict(new, seed=s) for s in range(4)]
    tau0, sigma = post.samples["tau"].reshape(-1)[0], post.samples["sigma"].reshape(-1)[0]
    expected = np.hypot(tau0, sigma)
    for p in preds:
        assert abs(p["sd"].iloc[0] - expected) < 0.15 * expected, (p, expected)
    means = [p["mean"].iloc[0] for p in preds]
    assert np.ptp(means) < 0.3 * expected, means


def test_a_likelihood_samples_its_parameters_in_the_data_dtype():
    class Noise(bm.likelihoods.Gaussian):
        def sample_params(self, n_tasks, task_plate, like):
            return {"sigma": pyro.sample("sigma", dist.HalfNormal(1.0))}  # Python numbers, no `like`

    train, _, _ = planted("student-t", n_tasks=4, rows=5, seed=0)
    data = bm.MultiTaskData.from_frame(train, task="task", target="y")
    post = bm.fit(bm.MultiTaskModel(PRIORS["student-t"](), likelihood=Noise(noise="shared")), data,
                  method="svi", steps=200, min_steps=100, draws=10, seed=0, progress=False)
    assert post.samples["sigma"].dtype == np.float64


@pytest.mark.parametrize("method", ["svi", "nuts"])
def test_a_prior_that_does_not_broadcast_over_chains_is_named(method):
    class MatrixEvent(bm.priors.TaskPrior):
        def sample(self, tasks):
            z = torch.zeros(tasks.n, 1)  # a default-dtype factory: runs in the data's dtype
            mu = pyro.sample("mu", dist.Normal(0.0, 5.0).expand([tasks.dims]).to_event(1))
            beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([tasks.dims, 1]).to_event(2))  # not in a plate
            with tasks.plate:
                return pyro.sample("w", dist.Normal(mu + z @ beta.transpose(-1, -2), 1.0).to_event(1))

    _, data = _data()
    options = {"steps": 20, "min_steps": 10} if method == "svi" else {"chains": 2, "warmup": 3, "draws": 3}
    with pytest.raises(ValueError, match=r"MatrixEvent.sample returned task parameters of shape .* under a batch"):
        bm.fit(bm.MultiTaskModel(MatrixEvent()), data, method=method, progress=False, **options)


def _compiled_and_plain(n_tasks: int, rows: int, C: int):
    """The student-t prior's batched potential on planted data: (gradient compiled by inductor,
    the same op by op, a start (C, P), a generator, the data)."""
    from bayesmtl.infer import driver
    from bayesmtl.infer.potential import BatchedPotential

    train, _, _ = planted("student-t", n_tasks=n_tasks, rows=rows, seed=0)
    model, data = build("student-t", train)
    target = model.targets(data)[-1]
    gen = torch.Generator().manual_seed(0)
    pot = BatchedPotential(target.pyro_model(), target.max_plate_nesting)
    z = 0.3 * torch.randn(C, pot.dim, generator=gen, dtype=torch.float64)
    return driver._make_gradient(pot, "inductor", z), driver._make_gradient(pot, None, z), z, gen, (model, data)


def test_nuts_compiled_as_one_call_per_transition_makes_the_op_by_op_transitions():
    """compile="inductor" on a CPU: a whole NUTS transition is one compiled call (the leaves in a
    compiled loop), and it makes the transitions the kernel run op by op makes from the same
    random numbers: the same trees, the same draws (a fit on it: the slow sibling below)."""
    from bayesmtl.infer import hmc_util, nuts

    C = 2
    with pyro.validation_enabled(False), bm.protocol.data_context(torch.float64, "cpu"):
        vg, plain, z, gen, _ = _compiled_and_plain(4, 5, C)
        a = b = start = hmc_util.HMCState(z, *plain(z))
        eps = torch.full((C,), 0.05, dtype=torch.float64)
        inv_mass = torch.rand(C, z.shape[1], generator=gen, dtype=torch.float64) + 0.5
        tree = nuts.CompiledTree(vg, start, eps, inv_mass, 6, 1000.0)
        assert tree.fn is not None  # the whole transition compiled
        sizes = set()
        for i in range(4):
            g1, g2 = torch.Generator().manual_seed(i), torch.Generator().manual_seed(i)
            a, ia = nuts.nuts_step(plain, a, eps, inv_mass, g1, 6, 1000.0)
            b, ib = nuts.nuts_step(vg, b, eps, inv_mass, g2, 6, 1000.0, tree)
            torch.testing.assert_close(b.z, a.z, rtol=1e-8, atol=1e-9)
            assert torch.equal(ia.n_steps, ib.n_steps) and torch.equal(ia.diverging, ib.diverging)
            sizes |= set(ia.n_steps.tolist())
        assert len(sizes) > 1 and not torch.equal(a.z, start.z)  # trees of several sizes; the chains moved


@pytest.mark.slow  # trimmed from the fast tier (10-min budget)
def test_compiled_steps_match_the_steps_run_op_by_op(monkeypatch):
    """compile="inductor": the NUTS transition as one compiled call (the leaves in a compiled
    loop) and built from one compiled call per leaf (potential, gradient, tree bookkeeping and
    merge), and ChEES's compiled leapfrog, give the trajectories the same steps run op by op
    give, for a per-chain and a shared metric; fits run on them."""
    from bayesmtl.infer import chees, hmc_util, nuts

    C = 3
    with pyro.validation_enabled(False), bm.protocol.data_context(torch.float64, "cpu"):
        vg, plain, z, gen, (model, data) = _compiled_and_plain(5, 6, C)
        P = z.shape[1]
        state = hmc_util.HMCState(z, *plain(z))
        eps = torch.full((C,), 0.05, dtype=torch.float64)
        step = tree = lf = whole = None
        for inv_mass in (torch.rand(C, P, generator=gen, dtype=torch.float64) + 0.5,
                         (torch.rand(1, P, generator=gen, dtype=torch.float64) + 0.5).expand(C, -1)):
            step = step or nuts.compiled_leaf(vg, state, eps, inv_mass, 10, 1000.0)  # same shapes: compiled once
            tree = tree or nuts.CompiledTree(vg, state, eps, inv_mass, 10, 1000.0)
            assert step is not None and tree.fn is not None
            a, b, c = state, state, state
            for i in range(5):  # same generator state on every side: same momenta, directions, u
                g1, g2, g3 = (torch.Generator().manual_seed(7 + i) for _ in range(3))
                a, ia = nuts.nuts_step(plain, a, eps, inv_mass, g1, 10, 1000.0)
                b, ib = nuts.nuts_step(vg, b, eps, inv_mass, g2, 10, 1000.0, step)
                c, ic = nuts.nuts_step(vg, c, eps, inv_mass, g3, 10, 1000.0, tree)
                for x, info in ((b, ib), (c, ic)):
                    torch.testing.assert_close(x.z, a.z, rtol=1e-8, atol=1e-9)
                    assert torch.equal(ia.n_steps, info.n_steps) and torch.equal(ia.depth, info.depth)
            assert not torch.equal(a.z, state.z)  # the chains moved
            lf = lf or vg.compile(hmc_util.leapfrog, z, z, state.g, eps[:, None], inv_mass)
            r = torch.randn(C, P, generator=gen, dtype=torch.float64)
            for x, y in zip(lf(z, r, state.g, eps[:, None], inv_mass),
                            hmc_util.leapfrog(plain, z, r, state.g, eps[:, None], inv_mass), strict=True):
                torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
            whole = whole or chees.compiled_trajectory(vg, state, eps[:, None], inv_mass)
            assert whole is not None
            want = (z, r, state.U, state.g)
            for _ in range(7):  # ChEES's trajectory of 7 leapfrogs as one call
                want = hmc_util.leapfrog(plain, want[0], want[1], want[3], eps[:, None], inv_mass)
            for x, y in zip(whole(z, r, state.U, state.g, eps[:, None], inv_mass, torch.tensor(7)), want, strict=True):
                torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-9)
    monkeypatch.setattr(nuts, "TREE_CHECK", 5)  # a run this short never pays for the whole transition:
    monkeypatch.setattr(nuts, "_tree_pays", lambda *a: True)  # switch to it after 5 iterations all the same
    for method in ("nuts", "chees"):  # the graphs above, so inductor's cache serves them
        post = bm.fit(model, data, method=method, chains=C, warmup=30, draws=20, seed=0, progress=False,
                      compile="inductor")
        assert post.info["compile"] == "inductor" and post.info["seconds_compile"] > 0
        assert post.info["compiled"] == {"nuts": "whole transition", "chees": "whole trajectory"}[method]
        again = bm.fit(model, data, method=method, chains=C, warmup=30, draws=20, seed=0, progress=False,
                       compile="inductor")
        np.testing.assert_array_equal(again.samples["mu"], post.samples["mu"])  # same seed, same draws


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_a_step_that_does_not_compile_runs_op_by_op_with_a_warning(monkeypatch):
    """compile="inductor" where the compiler fails: one warning naming the failure, the same
    sampler op by op, and info["compile"] says so."""
    from bayesmtl.infer import driver

    def broken(*args):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(driver, "_compile", broken)
    monkeypatch.setattr(driver, "_compile_loop", broken)
    train, _, _ = planted("student-t", n_tasks=5, rows=6, seed=0)
    model, data = build("student-t", train)
    for method in ("nuts", "chees"):
        with pytest.warns(RuntimeWarning, match="compile='inductor' failed .*no C\\+\\+ compiler here"):
            post = bm.fit(model, data, method=method, chains=2, warmup=20, draws=10, seed=0, progress=False,
                          compile="inductor")
        assert post.info["compile"] is None and np.isfinite(post.samples["mu"]).all()
        assert post.info.get("compiled", "nothing") == "nothing"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["student-t", "covariates"])  # (three-level: 4x the CPU half's time)
def test_user_prior_on_cuda_agrees_with_the_cpu(kind, tmp_path):
    """A user's prior written with Python numbers runs on the GPU under ChEES with no device code:
    the population mean agrees with the same run on the CPU within 4 combined MCSE, and labels,
    new-task prediction and save/load work from a CUDA fit."""
    train, new, _ = planted(kind, n_tasks=20, rows=10, seed=0, new_tasks=3)
    model, data = build(kind, train)
    # short: a GPU leapfrog is launch-bound (~5 ms); the H200 ran student-t at 250 + 250 but not both
    kw = dict(method="chees", chains=16, warmup=150, draws=150, seed=0, progress=False)
    gpu = bm.fit(model, data, device="cuda", **kw)
    cpu = bm.fit(model, data, device="cpu", **kw)
    assert gpu.info["device"].startswith("cuda") and gpu.info["reparam"]["non_centred"], gpu.info
    a, b = gpu.summary(["mu"]), cpu.summary(["mu"])
    z = (a["mean"] - b["mean"]).abs() / np.hypot(a["mcse_mean"], b["mcse_mean"])
    assert (z < 4).all(), (a, b)
    assert gpu.diagnostics()["max_r_hat"] < 1.05
    assert list(gpu.to_arviz().posterior["w"].coords["task"].values) == data.task_names
    pred = gpu.predict(new, seed=0)
    assert pred["new_task"].all() and np.isfinite(pred[["mean", "sd"]].to_numpy()).all()
    gpu.save(tmp_path / "run")
    np.testing.assert_allclose(bm.load(tmp_path / "run").predict(new, seed=3)["mean"], gpu.predict(new, seed=3)["mean"])


def test_prior_summary_names_the_sites_a_conditional_prior_draws_from():
    """A conditional prior is described by its parents, not by one prior draw's numbers (which
    read as the prior's own: group_mean ~ Normal(3.202, 0.0054) before); fixed numbers stay
    (StudentT's df)."""
    rows = {}
    for kind in ("three-level", "student-t"):
        train, _, _ = planted(kind, n_tasks=6, rows=8, seed=1)
        model, data = build(kind, train)
        post = bm.fit(model, data, method="map", steps=50, min_steps=10, seed=0, progress=False)
        table = post.prior_summary()
        rows.update({(kind, s): list(t["prior"]) for s, t in table.groupby("site")})
    assert rows[("three-level", "group_mean")] == ["Normal(loc, scale from mu, tau_group)"]
    assert rows[("three-level", "w")] == ["Normal(loc, scale from group_mean, tau)"]
    assert rows[("student-t", "w")] == ["StudentT(df=3; loc, scale from mu, tau)"]
    assert rows[("three-level", "mu")] == ["Normal(loc=0, scale=5)"]
