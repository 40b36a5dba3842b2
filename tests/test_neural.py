"""NeuralMultiTask: Bayesian heads on a shared trunk (models/neural.py), a likelihood per task
(likelihoods/per_task.py), wide data, and the trunk's weights in a run directory."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import bayesmtl as bm
from bayesmtl.data import wide_to_long

SVI = dict(method="svi", progress=False)


def _trunk(F: int, H: int = 4, seed: int = 0, width: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(F, width), torch.nn.SiLU(), torch.nn.Linear(width, H), torch.nn.SiLU())


def _features(X: np.ndarray) -> np.ndarray:
    """The planted nonlinear map the tasks share (3 features)."""
    return np.stack([np.sin(2 * X[:, 0]), X[:, 1] * X[:, 2], np.tanh(X[:, 3] - X[:, 0])], 1)


def _wide(n: int, heads: np.ndarray, noise, classify=(), seed: int = 0) -> pd.DataFrame:
    """One row per input x (4 features), one column per task: f(x) . heads[t] + noise[t] eps
    (regression) or a Bernoulli draw of sigmoid(2 f(x) . heads[t]) for tasks in ``classify``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    f = _features(X)
    out = pd.DataFrame(X, columns=[f"x{j}" for j in range(4)])
    for t in range(heads.shape[0]):
        eta = f @ heads[t]
        if t in classify:
            out[f"c{t}"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-2 * eta))).astype(float)
        else:
            out[f"r{t}"] = eta + noise[t] * rng.normal(size=n)
    return out


def _small(seed: int = 0, tasks: int = 3, rows: int = 60):
    heads = np.random.default_rng(seed + 100).normal(size=(tasks, 3))
    wide = _wide(rows, heads, [0.3] * tasks, seed=seed)
    return wide, bm.MultiTaskData.from_wide(wide, targets=[f"r{t}" for t in range(tasks)])


def _fit(model, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short runs: convergence warnings are expected here
        return bm.fit(model, data, **{**SVI, "steps": 100, "min_steps": 100, "draws": 50, "seed": 0, **kw})


# ---------------------------------------------------------------------- the model
@pytest.mark.slow
def test_heads_fit_a_shared_nonlinear_map_and_predict_calibrated():
    """Bayesian heads on a learned trunk fit what no linear model can: test-row RMSE near the
    noise, 90% intervals near 90%, and a new task's intervals wider than a known task's."""
    heads = np.random.default_rng(3).normal(size=(4, 3))
    wide = _wide(500, heads, [0.3] * 4, seed=0)
    test = _wide(300, heads, [0.3] * 4, seed=1)
    targets = [f"r{t}" for t in range(4)]
    data = bm.MultiTaskData.from_wide(wide, targets=targets)
    post = _fit(bm.models.NeuralMultiTask(_trunk(4, 6)), data, steps=2500, min_steps=2500, draws=200)
    long = wide_to_long(test, targets)
    pred = post.predict(long, seed=0)
    y = long["y"].to_numpy()
    rmse = float(np.sqrt(np.mean((pred["mean"] - y) ** 2)))
    cover = float(np.mean((y > pred["q05"]) & (y < pred["q95"])))
    lin = _fit(bm.models.Hierarchical(), data, steps=1500, min_steps=1500, draws=200)
    rmse_lin = float(np.sqrt(np.mean((lin.predict(long, seed=0)["mean"] - y) ** 2)))
    assert rmse < 0.45 and rmse < 0.6 * rmse_lin, (rmse, rmse_lin)
    assert 0.8 <= cover <= 0.97, cover
    new = post.predict(long.assign(task=long["task"] + "_new").head(100), seed=0)
    assert new["new_task"].all() and float(new["sd"].mean()) > 1.5 * float(pred["sd"].head(100).mean())


@pytest.mark.slow
def test_planted_task_correlations_are_recovered():
    """Heads drawn from a known task covariance (+0.9 for tasks 0-1, -0.9 for 2-3, 0 across) on 8
    shared nonlinear features: the relations (the correlation of the tasks' functions over the
    inputs) cover each planted one with their 90% intervals, and the two correlated pairs exclude 0
    with the planted sign (Long et al. 2017's DRN: a TaskRelationship prior over the heads)."""
    rng = np.random.default_rng(0)
    A, b = rng.normal(size=(4, 8)), rng.normal(size=8)
    C = np.eye(4)
    C[0, 1] = C[1, 0] = 0.9
    C[2, 3] = C[3, 2] = -0.9
    heads = rng.multivariate_normal(np.zeros(4), C, size=8).T  # (4 tasks, 8 features)
    X = rng.normal(size=(600, 4))
    f = np.tanh(X @ A / 2 + b) @ heads.T  # (rows, tasks): the planted functions
    truth = np.corrcoef(f.T)
    wide = pd.DataFrame(X, columns=[f"x{j}" for j in range(4)])
    for t in range(4):
        wide[f"r{t}"] = f[:, t] + 0.2 * rng.normal(size=len(X))
    data = bm.MultiTaskData.from_wide(wide, targets=[f"r{t}" for t in range(4)])
    model = bm.models.NeuralMultiTask(_trunk(4, 8, width=32), prior=bm.priors.TaskRelationship())
    post = _fit(model, data, steps=4000, min_steps=4000, draws=400)
    rel = post.relations()
    assert rel.signed and "functions" in rel.kind
    table = rel.to_frame().set_index(["task_a", "task_b"])
    for a, b_ in [(0, 1), (2, 3), (0, 2), (1, 3), (0, 3), (1, 2)]:
        row = table.loc[(f"r{a}", f"r{b_}")]
        assert row["q05"] <= truth[a, b_] <= row["q95"], (a, b_, truth[a, b_], row.to_dict())
    assert table.loc[("r0", "r1"), "q05"] > 0 and table.loc[("r2", "r3"), "q95"] < 0


@pytest.mark.slow
def test_per_task_noise_recovers_the_planted_ordering_with_mixed_task_types():
    """3 regression tasks (noise 0.1, 0.3, 0.6) and 2 classification tasks on one trunk: each
    regression task's learned sigma (Kendall et al.'s weight) is within 20% of its planted value."""
    heads = np.random.default_rng(1).normal(size=(5, 3))
    wide = _wide(400, heads, [0.1, 0.3, 0.6, 0, 0], classify=(3, 4), seed=1)
    targets = ["r0", "r1", "r2", "c3", "c4"]
    lik = {"r0": "gaussian", "r1": "gaussian", "r2": "gaussian", "c3": "bernoulli", "c4": "bernoulli"}
    data = bm.MultiTaskData.from_wide(wide, targets=targets)
    post = _fit(bm.models.NeuralMultiTask(_trunk(4, 8, width=32), likelihood=lik), data, steps=4000,
                min_steps=4000, draws=200, batch_size=512)
    sigma = post.summary().loc[["sigma_gaussian[r0]", "sigma_gaussian[r1]", "sigma_gaussian[r2]"], "mean"].to_numpy()
    assert np.all(np.diff(sigma) > 0), sigma
    np.testing.assert_allclose(sigma, [0.1, 0.3, 0.6], rtol=0.2)
    pred = post.predict(wide_to_long(wide.head(50), targets), seed=0)
    cls = pred[pred["task"].isin(["c3", "c4"])]
    assert cls["mean"].between(0, 1).all()


def test_trunk_trains_on_a_copy_and_the_fit_is_reproducible():
    """The trunk passed in is not changed; the fitted one is post.model.trunk; same seed, same draws."""
    _, data = _small()
    trunk = _trunk(4)
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    a = _fit(bm.models.NeuralMultiTask(trunk), data)
    b = _fit(bm.models.NeuralMultiTask(trunk), data)
    for k, v in trunk.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(a.model.trunk[0].weight.detach().float(), before["0.weight"])
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k])


def test_mixed_precision_runs_the_trunk_in_bfloat16_and_fits_as_well(tmp_path):
    """precision="bf16": the trunk's layers compute in bfloat16 in training and prediction, the
    heads and the trunk's weights stay float32, the fit predicts held-out rows about as well as
    full precision, and the setting survives save/load."""
    heads = np.random.default_rng(3).normal(size=(3, 3))
    targets = ["r0", "r1", "r2"]
    data = bm.MultiTaskData.from_wide(_wide(300, heads, [0.3] * 3, seed=0), targets=targets, dtype=torch.float32)
    test = wide_to_long(_wide(300, heads, [0.3] * 3, seed=1), targets)
    rmse, seen = {}, []
    for precision in (None, "bf16"):
        trunk = _trunk(4, 6)
        trunk[0].register_forward_hook(lambda mod, i, out, p=precision: seen.append((p, out.dtype)))
        post = _fit(bm.models.NeuralMultiTask(trunk, precision=precision), data, steps=800, min_steps=800)
        assert post.model.trunk[0].weight.dtype == torch.float32 and post.samples["w"].dtype == np.float32
        pred = post.predict(test, seed=0)
        rmse[precision] = float(np.sqrt(np.mean((pred["mean"] - test["y"].to_numpy()) ** 2)))
    assert {d for p, d in seen if p is None} == {torch.float32}
    assert {d for p, d in seen if p == "bf16"} == {torch.bfloat16}  # fitting and predicting alike
    assert rmse["bf16"] < 0.75 and rmse["bf16"] < 1.15 * rmse[None], rmse  # noise sd 0.3; linear ~1
    post.save(tmp_path / "run")
    loaded = bm.load(tmp_path / "run")
    assert loaded.model.precision == "bf16"
    pd.testing.assert_frame_equal(loaded.predict(test.head(20), seed=1), post.predict(test.head(20), seed=1))
    with pytest.raises(ValueError, match="precision must be"):
        bm.models.NeuralMultiTask(_trunk(4), precision="fp16")


def test_samplers_refuse_a_trained_trunk_and_draw_the_heads_of_a_frozen_one():
    """NUTS cannot train a trunk: refused with the way out; post.model.frozen() is a linear model
    on the trunk's features, which NUTS samples through the collapsed form."""
    wide, data = _small()
    model = bm.models.NeuralMultiTask(_trunk(4))
    with pytest.raises(ValueError, match=r"trains trunk by optimisation.*frozen\(\)"):
        bm.fit(model, data, method="nuts", progress=False)
    assert model.default_method == "svi"
    post = _fit(model, data, method="map")
    frozen = post.model.frozen()
    assert frozen.default_method == "nuts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short run: convergence warnings are expected
        nuts = bm.fit(frozen, data, method="nuts", chains=2, warmup=50, draws=50, seed=0, progress=False)
    assert nuts.info["path"] == "collapsed"
    np.testing.assert_allclose(frozen.design(data)[0].numpy(), post.model.design(data)[0].numpy())
    assert nuts.predict(wide_to_long(wide.head(5), ["r0", "r1", "r2"]))["sd"].gt(0).all()


# ---------------------------------------------------------------------- a Bayesian trunk
def test_bayesian_trunk_draws_every_weight_reproducibly_and_saves_them_as_data(tmp_path):
    """trunk_prior: each trunk weight is a site with a draw per posterior draw, spread by a
    mean-field guide (not a point), labelled in ArviZ and kept out of the summary (hidden units
    permute); same seed, same draws; a run directory brings the same predictions back."""
    wide, data = _small()
    long = wide_to_long(wide.head(6), ["r0", "r1", "r2"])
    model = bm.models.NeuralMultiTask(_trunk(4), trunk_prior=1.0)
    a, b = _fit(model, data), _fit(model, data)
    first = a.samples["trunk.0.weight"]
    assert first.shape[-2:] == (16, 4) and float(first.reshape(-1, 64).std(0).min()) > 0
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k])
    assert not a.summary().index.str.startswith("trunk").any()
    assert a.to_arviz().posterior["trunk.0.weight"].dims[2:] == ("trunk.0.weight_dim_0", "trunk.0.weight_dim_1")
    a.save(tmp_path / "run")
    pd.testing.assert_frame_equal(bm.load(tmp_path / "run").predict(long, seed=1), a.predict(long, seed=1))


@pytest.mark.slow
def test_bayesian_trunk_widens_intervals_away_from_the_training_inputs():
    """A point trunk extrapolates with the confidence it has inside the data; a posterior over
    its weights (trunk_prior) does not: on inputs 4x the training range its intervals widen
    far more than the point trunk's, while near the data its test RMSE and coverage stay good."""
    heads = np.random.default_rng(3).normal(size=(4, 3))
    targets = [f"r{t}" for t in range(4)]
    data = bm.MultiTaskData.from_wide(_wide(300, heads, [0.3] * 4, seed=0), targets=targets)
    near = _wide(200, heads, [0.3] * 4, seed=1)
    far = near.assign(**{f"x{j}": near[f"x{j}"] * 4 for j in range(4)})
    out = {}
    for prior in (None, 1.0):
        post = _fit(bm.models.NeuralMultiTask(_trunk(4, 6), trunk_prior=prior), data, steps=1500, min_steps=1500,
                    draws=200)
        pred = [post.predict(wide_to_long(df, targets), seed=0) for df in (near, far)]
        y = wide_to_long(near, targets)["y"].to_numpy()
        out[prior] = dict(widen=float(pred[1]["sd"].mean() / pred[0]["sd"].mean()),
                          rmse=float(np.sqrt(np.mean((pred[0]["mean"] - y) ** 2))),
                          cover=float(np.mean((y > pred[0]["q05"]) & (y < pred[0]["q95"]))))
    assert out[1.0]["widen"] > 1.5 * out[None]["widen"], out
    assert out[1.0]["rmse"] < 0.45 and 0.85 <= out[1.0]["cover"] <= 0.97, out


# ---------------------------------------------------------------------- save and load
def test_run_directory_holds_weights_as_data(tmp_path):
    """A trunk of standard layers comes back from the run alone; one of the user's own classes
    needs its architecture (modules=) and refuses without it, naming the way."""
    wide, data = _small()
    long = wide_to_long(wide.head(6), ["r0", "r1", "r2"])
    post = _fit(bm.models.NeuralMultiTask(_trunk(4)), data)
    post.save(tmp_path / "std")
    assert not list((tmp_path / "std").glob("*.pt"))
    pd.testing.assert_frame_equal(bm.load(tmp_path / "std").predict(long, seed=1), post.predict(long, seed=1))

    class Mine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return torch.tanh(self.lin(x))

    torch.manual_seed(0)
    own = _fit(bm.models.NeuralMultiTask(Mine()), data)
    own.save(tmp_path / "own")
    with pytest.raises(ValueError, match=r"modules=\{'trunk': net\}"):
        bm.load(tmp_path / "own")
    back = bm.load(tmp_path / "own", modules={"trunk": Mine()})
    pd.testing.assert_frame_equal(back.predict(long, seed=1), own.predict(long, seed=1))
    with pytest.raises(ValueError, match="do not fit the module given"):
        bm.load(tmp_path / "own", modules={"trunk": torch.nn.Linear(4, 5)})


# ---------------------------------------------------------------------- bad input
def test_bad_trunks_and_settings_are_named():
    _, data = _small()
    for bad in (0, -1.0, True, "wide", float("inf")):
        with pytest.raises(ValueError, match="trunk_prior must be None .* or a scale > 0"):
            bm.models.NeuralMultiTask(_trunk(4), trunk_prior=bad)
    with pytest.raises(ValueError, match="train_trunk=False fixes them"):
        bm.models.NeuralMultiTask(_trunk(4), trunk_prior=1.0, train_trunk=False)
    with pytest.raises(ValueError, match="no parameters to put a prior on"):
        bm.models.NeuralMultiTask(torch.nn.Tanh(), trunk_prior=1.0)
    with pytest.raises(ValueError, match="cannot run under a JIT trace: pass jit=False"):
        _fit(bm.models.NeuralMultiTask(_trunk(4), trunk_prior=1.0), data, jit=True)
    with pytest.raises(ValueError, match="not one set of weights to fix"):
        bm.models.NeuralMultiTask(_trunk(4), trunk_prior=1.0).frozen()
    with pytest.raises(TypeError, match="trunk must be a torch.nn.Module instance"):
        bm.models.NeuralMultiTask(torch.nn.Linear)
    with pytest.raises(ValueError, match="the trunk failed on the data's 4 features"):
        bm.fit(bm.models.NeuralMultiTask(torch.nn.Linear(7, 3)), data, **SVI)
    with pytest.raises(ValueError, match=r"must map features \(N, 4\) to \(N, H\)"):
        bm.fit(bm.models.NeuralMultiTask(torch.nn.Flatten(0)), data, **SVI)
    nofeat = bm.MultiTaskData.from_frame(pd.DataFrame({"task": ["a", "b"] * 3, "y": np.arange(6.0)}), "task", "y")
    with pytest.raises(ValueError, match="needs features for its trunk"):
        bm.fit(bm.models.NeuralMultiTask(torch.nn.Linear(1, 2)), nofeat, **SVI)


def test_per_task_likelihood_checks_each_group():
    wide, data = _small()
    with pytest.raises(ValueError, match="task 'r2' has no likelihood in the per-task mapping"):
        _fit(bm.models.NeuralMultiTask(_trunk(4), likelihood={"r0": "gaussian", "r1": "gaussian"}), data)
    with pytest.raises(ValueError, match="tasks with the bernoulli likelihood"):
        _fit(bm.models.NeuralMultiTask(_trunk(4), likelihood={"r0": "gaussian", "r1": "gaussian",
                                                               "r2": "bernoulli"}), data)
    post = _fit(bm.MultiTaskModel(bm.priors.Hierarchical(), likelihood={"r0": "gaussian", "r1": "student_t",
                                                                        "r2": "gaussian"}), data)
    assert post.dims()["sigma_gaussian"] == ("task_gaussian",)
    assert post.to_arviz().posterior["sigma_gaussian"].coords["task_gaussian"].values.tolist() == ["r0", "r2"]
    with pytest.raises(ValueError, match="per-task likelihoods predict the tasks they name"):
        post.predict(wide_to_long(wide.head(3), ["r0"]).assign(task="brand_new"))
    # a program whose shapes follow the rows a batch holds cannot run under a JIT trace: one clear line
    picky = bm.models.NeuralMultiTask(_trunk(4), likelihood=_RowPicking())
    with pytest.raises(ValueError, match=r"jit=True failed under minibatches \(batch_size=32\).*pass jit=False"):
        _fit(picky, data, batch_size=32, jit=True, validation=None)


def test_minibatch_steps_are_traced_where_every_likelihood_is_builtin():
    """Under row minibatches a network's SVI runs Pyro's traced ELBO by default, unless a
    likelihood is the user's own (it may select rows by the batch) or the trunk has a prior."""
    _, data = _small()
    mixed = {"r0": "gaussian", "r1": "student_t", "r2": "gaussian"}
    for kw, traced in ((dict(), True), (dict(likelihood=mixed), True), (dict(likelihood=_RowPicking()), False),
                       (dict(trunk_prior=1.0), False)):
        post = _fit(bm.models.NeuralMultiTask(_trunk(4), **kw), data, batch_size=32, steps=30, min_steps=30)
        assert post.info["jit"] is traced, kw
        assert np.isfinite(post.info["final_loss"])


@pytest.mark.parametrize("family", ["gaussian", "student_t", "bernoulli", "poisson", "negative_binomial",
                                    "zero_inflated_poisson", "gamma", "lognormal", "beta", "ordinal", "binomial"])
def test_every_builtin_likelihood_runs_traced_under_minibatches(family):
    """The traced default holds for every built-in family: a trace replays on each new batch (a
    family that selected rows by the batch would stop at the second) and the fit predicts."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 4))
    f = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    p, rate = 1 / (1 + np.exp(-f)), np.exp(f)
    y = {"gaussian": f + 0.3 * rng.normal(size=240), "student_t": f + 0.3 * rng.standard_t(3, size=240),
         "bernoulli": rng.random(240) < p, "poisson": rng.poisson(rate), "negative_binomial": rng.poisson(rate),
         "zero_inflated_poisson": rng.poisson(rate), "gamma": rate * rng.gamma(5, 0.2, size=240),
         "lognormal": np.exp(f + 0.3 * rng.normal(size=240)),
         "beta": np.clip(p + 0.05 * rng.normal(size=240), 0.01, 0.99),
         "ordinal": np.digitize(f, [-0.5, 0.5]), "binomial": rng.binomial(5, p)}[family]
    df = pd.DataFrame(X, columns=[f"x{j}" for j in range(4)]).assign(task=np.repeat(["a", "b", "c"], 80),
                                                                     y=np.asarray(y, dtype=float), n=5.0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y", features=[f"x{j}" for j in range(4)],
                                       trials="n" if family == "binomial" else None)
    post = _fit(bm.models.NeuralMultiTask(_trunk(4), likelihood=family), data, batch_size=32, steps=60, min_steps=60)
    assert post.info["jit"] is True and np.isfinite(post.info["final_loss"])
    assert np.isfinite(post.predict(df)["mean"].to_numpy()).all()


class _RowPicking(bm.likelihoods.Gaussian):
    """A Gaussian that handles task 0's rows apart, by their count in the batch."""

    def distribution(self, eta, params, task, noise, trials):
        idx = torch.nonzero(task == 0).flatten()
        eta = eta.index_copy(-1, idx, eta[..., idx].expand(eta.shape[:-1] + (len(idx),)))
        return super().distribution(eta, params, task, noise, trials)


def test_per_task_likelihood_runs_under_the_jit_with_minibatches():
    """Each family is evaluated on every row of a batch and kept by a mask, so a JIT trace
    replays on batches that hold other rows of each family: the fit learns the same noise sds
    as without the JIT."""
    heads = np.random.default_rng(5).normal(size=(3, 3))
    wide = _wide(300, heads, [0.3, 0.3, 0.3], classify=(2,), seed=0)
    data = bm.MultiTaskData.from_wide(wide, targets=["r0", "r1", "c2"])
    kinds = {"r0": "gaussian", "r1": "gaussian", "c2": "bernoulli"}
    sigma = {}
    for jit in (False, True):
        post = _fit(bm.models.NeuralMultiTask(_trunk(4), likelihood=kinds), data, batch_size=32, jit=jit,
                    validation=None, steps=600, min_steps=600, seed=1)
        assert post.info["jit"] is jit
        sigma[jit] = post.summary().loc[["sigma_gaussian[r0]", "sigma_gaussian[r1]"], "mean"].to_numpy()
    np.testing.assert_allclose(sigma[True], sigma[False], rtol=0.1)


def test_wide_frames_become_long_tasks():
    wide = pd.DataFrame({"x": [1.0, 2.0, 3.0], "a": [0.1, np.nan, 0.3], "b": [1.0, 0.0, 1.0]})
    data = bm.MultiTaskData.from_wide(wide, targets=["a", "b"])
    assert data.task_names == ["a", "b"] and data.n_rows == 5 and data.feature_names == ["x"]
    with pytest.raises(ValueError, match="target column 'c' not found"):
        bm.MultiTaskData.from_wide(wide, targets=["a", "c"])
    with pytest.raises(TypeError, match="targets must be a list"):
        bm.MultiTaskData.from_wide(wide, targets="a")
    with pytest.raises(ValueError, match="'a' has no values"):
        bm.MultiTaskData.from_wide(wide.assign(a=np.nan), targets=["a", "b"])
    with pytest.raises(ValueError, match="cannot be both a feature and a target"):
        bm.MultiTaskData.from_wide(wide, targets=["a", "b"], features=["x", "a"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("trunk_prior,precision,batch", [(None, None, None), (1.0, None, None), (None, "bf16", None),
                                                          (None, None, 32)])
def test_cuda_fit_matches_the_cpu_path(trunk_prior, precision, batch):
    """A fit on CUDA (a point or a Bayesian trunk, full or mixed precision, a traced minibatch
    step) predicts finite values and the relations run."""
    wide, data = _small()
    model = bm.models.NeuralMultiTask(_trunk(4), trunk_prior=trunk_prior, precision=precision)
    post = _fit(model, data, device="cuda", batch_size=batch)
    assert post.info["jit"] is (trunk_prior is None)
    assert post.info["device"].startswith("cuda")
    pred = post.predict(wide_to_long(wide.head(5), ["r0", "r1", "r2"]))
    assert np.isfinite(pred[["mean", "sd"]].to_numpy()).all()
    assert np.isfinite(post.relations().draws).all()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["sarcos", "parkinsons", "mixed"])
def test_benchmark_smoke_runs(case, tmp_path, shared_data):
    """benchmarks/neural.py --smoke: every method of the case runs and scores each task."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import neural

    table = neural.main(["--case", case, "--smoke", "--out", str(tmp_path)])
    assert len(table) >= 3 and np.isfinite(table.to_numpy(dtype=float)).any()


def test_cli_fits_a_trunk_from_a_file_and_loads_it_back(tmp_path, capsys):
    """--trunk FILE.py:function builds the network (given the number of features); the run
    predicts in a fresh load; a trunk of the user's own layer class loads with --trust-code only."""
    from bayesmtl.cli import main

    wide, _ = _small(rows=40)
    wide_to_long(wide, ["r0", "r1", "r2"]).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "net.py").write_text(
        "import torch\n"
        "def make(n):\n    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(n, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))\n"
        "class Mine(torch.nn.Module):\n    def __init__(self, n):\n"
        "        super().__init__(); self.a = torch.nn.Linear(n, 3)\n"
        "    def forward(self, x):\n        return torch.tanh(self.a(x))\n"
        "def mine(n):\n    torch.manual_seed(0); return Mine(n)\n")
    common = ["fit", "--data", str(tmp_path / "d.csv"), "--task", "task", "--target", "y", "--quiet",
              "--option", "steps=60", "--option", "min_steps=60", "--draws", "30"]
    assert main([*common, "--trunk", f"{tmp_path / 'net.py'}:make", "--out", str(tmp_path / "a")]) == 0
    assert main(["predict", str(tmp_path / "a"), "--data", str(tmp_path / "d.csv"),
                 "--out", str(tmp_path / "p.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 120
    assert main([*common, "--trunk", f"{tmp_path / 'net.py'}:mine", "--model-option", "prior=task-relationship",
                 "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "b")]) == 2
    assert "--trust-code" in capsys.readouterr().err
    assert main(["summary", str(tmp_path / "b"), "--trust-code"]) == 0
    assert main([*common, "--trunk", f"{tmp_path / 'net.py'}:make", "--model-option", "trunk_prior=1.0",
                 "--out", str(tmp_path / "d")]) == 0
    back = bm.load(tmp_path / "d")
    assert back.model.trunk_prior == 1.0 and back.samples["trunk.0.weight"].shape[-2:] == (8, 4)
    assert main([*common, "--trunk", f"{tmp_path / 'net.py'}:make", "--model-option", "precision=bf16",
                 "--out", str(tmp_path / "e")]) == 0
    assert bm.load(tmp_path / "e").model.precision == "bf16"
    capsys.readouterr()
    assert main([*common, "--trunk", f"{tmp_path / 'net.py'}:make", "--model-option", "precision=fp16",
                 "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "precision must be" in err and "Traceback" not in err and not (tmp_path / "f").exists()
    capsys.readouterr()
    assert main([*common, "--trunk", f"{tmp_path / 'net.py'}:make", "--model-option", "trunk_prior=-1",
                 "--out", str(tmp_path / "c")]) == 2
    assert "trunk_prior must be None" in capsys.readouterr().err
    assert main([*common, "--model", "neural", "--out", str(tmp_path / "c")]) == 2
    assert "--model neural needs --trunk" in capsys.readouterr().err
    assert main([*common, "--trunk", f"{tmp_path / 'net.py'}:nothing", "--out", str(tmp_path / "c")]) == 2
    assert "has no function 'nothing'" in capsys.readouterr().err
