"""SVI as one compiled step on the flat potential (``infer/flat_svi.py``, ``compile=``)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesmtl as bm
from bayesmtl.infer import flat_svi
from bayesmtl.infer.flat_svi import FlatSVI, start

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from custom_priors import build, planted  # noqa: E402


@pytest.mark.parametrize("guide, noise", [("structured", 0.05), ("mvn", 0.5)])
def test_the_compiled_step_finds_a_gaussian_posterior_of_the_guides_family(guide, noise):
    """a ~ N(0, diag(2, 0.2, 3)), s_t | a ~ N(0.1 a_0 + 1, noise), no data: the posterior lies
    in both guides' family, so the fitted guide must have its means, sds and the correlation
    of each s_t with a_0 (0.97 at noise 0.05, 0.37 at 0.5): a wrong sign or factor anywhere in
    the ELBO's gradient, the entropy or Adam moves one of them. (At 0.05 the full-rank guide,
    Pyro's as well as this one, is still far off after 6000 steps: a_0's sd 1.3-1.4, not 2;
    ``guides.py`` says why.)"""
    T, scales = 8, torch.tensor([2.0, 0.2, 3.0], dtype=torch.float64)

    def model():
        a = pyro.sample("a", dist.Normal(torch.zeros(3, dtype=torch.float64), scales).to_event(1))
        with pyro.plate("task", T):
            pyro.sample("s", dist.Normal(0.1 * a[..., :1] + 1.0, noise))

    pyro.set_rng_seed(0)
    pot, g = start(model, 1, (None, None), guide, None)
    engine = FlatSVI(pot, g, 0.01, 1, torch.Generator().manual_seed(0), "inductor")
    for _ in range(5000):
        engine.step()
    engine.decay(0.01 ** (1 / 1000))
    for _ in range(1000):
        engine.step()
    assert engine.mode == "inductor"
    z, _ = engine.sample(40000)
    sd_s = (0.01 * 4 + noise ** 2) ** 0.5
    np.testing.assert_allclose(z.std(0)[:3], scales, rtol=0.1)
    np.testing.assert_allclose(z.std(0)[3:], torch.full((T,), sd_s, dtype=torch.float64), rtol=0.15)
    np.testing.assert_allclose(z.mean(0)[3:], torch.ones(T, dtype=torch.float64), atol=0.05)
    corr = np.corrcoef(z[:, [0, 3]].T.numpy())[0, 1]
    assert abs(corr - 0.2 / sd_s) < 0.05, corr


@pytest.mark.parametrize("seed", [0, 1])
def test_averaging_the_annealing_steps_quiets_the_final_guide(seed):
    """s_t ~ N(1, 0.01), no data: the guide's means should sit at 1. Adam's steps are about
    lr / 100 = 1e-4 at the end of the decay, 0.01 posterior sds each, and the last iterate is
    still 0.07-0.09 sd off on average (up to 0.3); the mean over the annealing steps must be
    closer, on every seed."""

    def model():
        with pyro.plate("task", 20):
            pyro.sample("s", dist.Normal(torch.tensor(1.0, dtype=torch.float64), 0.01))

    error = {}
    for average in (False, True):
        pyro.set_rng_seed(seed)
        pot, g = start(model, 1, (None, None), "normal", None)
        engine = FlatSVI(pot, g, 0.01, 1, torch.Generator().manual_seed(seed), None)
        for _ in range(2000):
            engine.step()
        engine.decay(0.01 ** (1 / 1000), average)
        for _ in range(1000):
            engine.step()
        engine.finish()
        error[average] = (engine.theta[:20] - 1.0).abs() / 0.01  # in posterior sds
        np.testing.assert_allclose(torch.nn.functional.softplus(engine.theta[20:]), 0.01, rtol=0.1)
    assert error[True].mean() < 0.06 and error[True].max() < 0.2, error[True]
    assert error[True].mean() < 0.75 * error[False].mean(), (error[True].mean(), error[False].mean())


def test_a_user_prior_compiled_matches_pyros_svi():
    """A prior written in plain Pyro (three levels, autograd through the program inside the
    compiled graph): the population's posterior means within 0.5 sd of Pyro's SVI fit (each
    fit's last iterate carries its own optimiser noise) and its sds within 25%, both with the
    default guide."""
    train, _, _ = planted("three-level", n_tasks=12, rows=10, seed=0)
    model, data = build("three-level", train)
    kw = dict(method="svi", draws=1000, seed=0, progress=False, steps=3000, min_steps=3000, anneal=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = bm.fit(model, data, compile="inductor", **kw)
        slow = bm.fit(model, data, compile=None, **kw)
    assert fast.info["compile"] == "inductor" and fast.info["gradient"] == "autograd"
    assert slow.info.get("compile") is None and fast.info["path"] == slow.info["path"]
    # both engines estimate their averaged guide's noise, of the same posterior at the same settings
    a, b = fast.info["average_noise"], slow.info["average_noise"]
    assert 0 < a < 3 * b and 0 < b < 3 * a, (a, b)
    for site in ("group_mean", "tau"):
        a, b = np.asarray(fast.samples[site]), np.asarray(slow.samples[site])
        sd = b.std((0, 1))
        assert (np.abs(a.mean((0, 1)) - b.mean((0, 1))) < 0.5 * sd).all(), (site, a.mean((0, 1)), b.mean((0, 1)), sd)
        np.testing.assert_allclose(a.std((0, 1)), sd, rtol=0.25)


@pytest.mark.slow  # three compiled fits (about 25 s); Pyro's engine resumes in the fast tier
@pytest.mark.parametrize("stop", [300, 800])  # main steps; annealing, with the parameters' running mean
def test_compiled_svi_resumes_to_the_uninterrupted_draws_and_repeats_with_its_seed(monkeypatch, tmp_path, stop):
    from test_checkpoint import _resumed

    train, _, _ = planted("student-t", n_tasks=6, rows=8, seed=1)
    model, data = build("student-t", train)
    kw = dict(method="svi", draws=100, seed=2, progress=False, steps=600, min_steps=600, window=100, anneal=400,
              compile="inductor")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = bm.fit(model, data, **kw)
        again = bm.fit(model, data, **kw)
        post, meta = _resumed(monkeypatch, tmp_path, model, data, stop, **kw)
    assert whole.info["compile"] == "inductor" and meta["steps"] == stop and meta["engine"] == "flat"
    for site in ("mu", "tau", "w"):
        np.testing.assert_array_equal(again.samples[site], whole.samples[site])
        np.testing.assert_array_equal(post.samples[site], whole.samples[site])
    assert post.info["average_noise"] == whole.info["average_noise"]  # (the loc's block means kept)


@pytest.mark.parametrize("options, message", [
    (dict(batch_size=10), r"row minibatches \(batch_size\)"),
    (dict(task_batch_size=3), r"task minibatches \(task_batch_size\)"),
    (dict(guide="lowrank"), "guide='lowrank'"),
    (dict(validation=0.2), "validation="),
    (dict(compile="fast"), "compile must be one of"),
])
def test_compile_says_what_blocks_it(options, message):
    train, _, _ = planted("student-t", n_tasks=6, rows=8, seed=1)
    model, data = build("student-t", train)
    with pytest.raises(ValueError, match=message):
        bm.fit(model, data, method="svi", steps=10, progress=False, **{"compile": "inductor", **options})


def test_a_failed_compile_runs_the_step_op_by_op_with_a_warning(monkeypatch):
    def broken(fn, example, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(flat_svi, "_compile", broken)
    train, _, _ = planted("student-t", n_tasks=6, rows=8, seed=1)
    model, data = build("student-t", train)
    with pytest.warns(RuntimeWarning, match="compile='inductor' failed .*no compiler here.*op by op"):
        post = bm.fit(model, data, method="svi", steps=200, min_steps=100, anneal=50, draws=50, seed=0,
                      progress=False, compile="inductor")
    assert post.info["compile"] is None and np.isfinite(post.info["final_loss"])


def test_the_compile_check_takes_float32_rounding_and_refuses_a_wrong_step():
    """A float32 step summed over many rows differs from the op-by-op one in its last bits
    (measured: 0.46% of the largest gradient entry at 400k rows), and must stay compiled; a
    wrong entry must not pass, nor float32-sized errors in float64."""
    from bayesmtl.infer.driver import _check

    gen = torch.Generator().manual_seed(0)
    want = torch.randn(2000, generator=gen)
    _check((want + 0.005 * want.abs().max() * torch.randn(2000, generator=gen).clamp(-1, 1),), (want,))
    wrong = want.clone()
    wrong[7] += 0.5 * want.abs().max()
    with pytest.raises(ValueError, match="disagrees"):
        _check((wrong,), (want,))
    with pytest.raises(ValueError, match="disagrees"):
        _check((want.double() * (1 + 1e-3),), (want.double(),))
    with pytest.raises(ValueError, match="disagrees"):
        _check((torch.tensor([1, 2]),), (torch.tensor([1, 3]),))


def test_float32_data_keep_the_compiled_step():
    """The default (collapsed) fit on float32 data compiles and stays compiled: its first step
    once failed the float64 tolerance and ran op by op, 4x slower."""
    rng = np.random.default_rng(0)
    T, R, F = 100, 50, 5
    task = np.repeat(np.arange(T), R)
    X = rng.normal(size=(T * R, F))
    W = rng.normal(size=(T, F)) * 0.5 + 1.0
    y = (X * W[task]).sum(1) + rng.normal(size=T * R)
    data = bm.MultiTaskData.from_arrays(X, y, task, dtype=torch.float32)
    model = bm.MultiTaskModel(prior=bm.priors.Hierarchical(), likelihood="gaussian")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        post = bm.fit(model, data, method="svi", steps=200, min_steps=200, anneal=0, draws=20, seed=0,
                      progress=False, psis=False, compile="inductor")
    assert post.info["compile"] == "inductor" and post.info["path"] == "collapsed"


def test_auto_compiles_long_runs_only():
    """Under "auto" a short run keeps Pyro's SVI (no compile to win back)."""
    train, _, _ = planted("student-t", n_tasks=6, rows=8, seed=1)
    model, data = build("student-t", train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(model, data, method="svi", steps=300, min_steps=100, draws=20, seed=0, progress=False)
    assert "compile" not in post.info and post.info["jit"] is True


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_svi_on_cuda(dtype):
    """Compiled on the GPU, and still compiled on float32 data (it once fell back op by op)."""
    train, _, _ = planted("student-t", n_tasks=6, rows=8, seed=1)
    model, _ = build("student-t", train)
    data = bm.MultiTaskData.from_frame(train, task="task", target="y", features=["x"], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("error", RuntimeWarning)
        post = bm.fit(model, data, method="svi", device="cuda", steps=600, min_steps=300, anneal=100, draws=50,
                      seed=0, progress=False, compile="inductor")
    assert post.info["device"].startswith("cuda") and np.isfinite(post.info["final_loss"])
    assert post.info["compile"] == "inductor"
