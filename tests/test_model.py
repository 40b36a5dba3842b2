"""Models accept a leading batch dim (chains, particles) through an outer plate: the batched
log joint equals the per-draw log joints."""

import pyro
import pytest
import torch
from pyro import poutine

import bayesmtl as bm
from bayesmtl.pyro_util import batch_condition, site_shapes
from bayesmtl.synthetic import hierarchical_regression

PRIORS = {
    "hier": bm.priors.Hierarchical(),
    "hier_centred": bm.priors.Hierarchical(centered=True),
    "hier_lkj": bm.priors.Hierarchical(covariance="lkj"),
    "hier_fixed_mean": bm.priors.Hierarchical(mean=0.0),
    "independent": bm.priors.Independent(),
    "pooled": bm.priors.Pooled(),
}


def _draws(fn, n):
    out = {}
    for _ in range(n):
        tr = poutine.trace(fn).get_trace()
        for k, s in tr.nodes.items():
            if s["type"] == "sample" and not s["is_observed"] and not k.startswith("_") and "fn" in s \
                    and hasattr(s["fn"], "batch_shape"):
                out.setdefault(k, []).append(s["value"])
    return {k: torch.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("name", sorted(PRIORS))
@pytest.mark.parametrize("lik", ["gaussian", "bernoulli", "shared_noise"])
def test_batched_log_joint_matches_loop(name, lik):
    df, _ = hierarchical_regression(n_tasks=4, rows=6, features=2, seed=0,
                                    likelihood="bernoulli" if lik == "bernoulli" else "gaussian")
    df["z"] = df["x1"] ** 2
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    likelihood = bm.likelihoods.Gaussian(noise="shared") if lik == "shared_noise" else lik
    model = bm.MultiTaskModel(PRIORS[name], likelihood, shared=["z"])
    model.check(data)
    fn = model.pyro_model(data)
    pyro.set_rng_seed(0)
    draws = {k: v for k, v in _draws(fn, 3).items() if k in site_shapes(fn)}
    tr = batch_condition(fn, draws, 3, model.nesting(data))
    sites = site_shapes(fn)
    batched = sum(s["fn"].log_prob(s["value"]).reshape(3, -1).sum(-1)
                  for k, s in tr.nodes.items() if k in sites)
    single = torch.stack([
        poutine.trace(poutine.condition(fn, data={k: v[i] for k, v in draws.items()})).get_trace().log_prob_sum()
        for i in range(3)])
    assert torch.allclose(batched, single, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("tasks", ["every task", "skewed, one empty"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_sparse_task_rows_match_the_gather_in_value_and_gradient(deterministic, tasks):
    """Both adjoints (CSR, and the blocked one CUDA uses for repeatable sums) give the gather's
    value and gradient, with tasks of very different sizes and a task without rows."""
    from bayesmtl.design import TaskRows

    g = torch.Generator().manual_seed(0)
    T, D, N = 7, 3, 40
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    task = torch.randint(T, (N,), generator=g)
    task[:T] = torch.arange(T)  # every task present, rows in no particular order
    if tasks != "every task":
        task[torch.rand(N, generator=g) < 0.6] = 2    # one task holds most rows (several blocks)
        task[task == 4] = 5
    rows = TaskRows(X, task, T, deterministic=deterministic)
    assert (rows.blocks is not None) == deterministic
    for batch in ((), (5,), (4, 1)):
        w = torch.randn(*batch, T, D, generator=g, dtype=torch.float64, requires_grad=True)
        weights = torch.randn(*batch, N, generator=g, dtype=torch.float64)
        dense = (X * w[..., task, :]).sum(-1)
        sparse = rows(w)
        assert sparse.shape == dense.shape == (*batch, N)
        assert torch.allclose(sparse, dense)
        (gd,) = torch.autograd.grad((dense * weights).sum(), w)
        (gs,) = torch.autograd.grad((sparse * weights).sum(), w)
        assert torch.allclose(gs, gd)
    # a traced graph replays it (the NUTS back end traces the model)
    w0 = torch.randn(2, T, D, generator=g, dtype=torch.float64)
    traced = torch.jit.trace(lambda w: rows(w).square().sum(-1), (w0,), check_trace=False)
    w1 = torch.randn(2, T, D, generator=g, dtype=torch.float64)
    assert torch.allclose(traced(w1), (X * w1[..., task, :]).sum(-1).square().sum(-1))


@pytest.mark.parametrize("dim", [0, -1, -2])
def test_sorted_add_is_index_add(dim):
    """The repeatable per-task sum CUDA uses (a sorted index_put) adds what index_add_ adds."""
    from bayesmtl.design import _sorted_add

    g = torch.Generator().manual_seed(1)
    shape = [4, 5, 6]
    source = torch.randn(*shape, generator=g, dtype=torch.float64)
    index = torch.randint(3, (shape[dim],), generator=g)
    out = torch.randn(*[shape[i] if i != dim % 3 else 3 for i in range(3)], generator=g, dtype=torch.float64)
    expected = out.clone().index_add_(dim, index, source)
    assert torch.allclose(_sorted_add(out, dim, index, source), expected)


def test_a_task_fitted_exactly_with_its_own_noise_is_named():
    """A task with more rows than parameters whose target its design fits exactly makes the
    per-task noise posterior improper (the survey data hold four): one warning names it, and
    shared noise or ordinary data give none."""
    import warnings

    df, _ = hierarchical_regression(n_tasks=4, rows=10, features=2, seed=0)
    exact = df["task"] == df["task"].iloc[0]
    df.loc[exact, "y"] = 1.0 + 2.0 * df.loc[exact, "x1"] - df.loc[exact, "x2"]
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    with pytest.warns(UserWarning, match=r"1 task\(s\) \('task_00'\) have more rows than free parameters.*"
                                         r"default noise is therefore one sigma for all tasks"):
        bm.models.Hierarchical().check(data)
    assert bm.models.Hierarchical().bind(data).likelihood.noise == "shared"  # the default avoids the trap
    with pytest.warns(UserWarning, match=r"1 task\(s\) \('task_00'\).*Use Gaussian\(noise='shared'\)"):
        bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian(noise="per_task")).check(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bm.models.Hierarchical(likelihood=bm.likelihoods.Gaussian(noise="shared")).check(data)
        clean = bm.MultiTaskData.from_frame(hierarchical_regression(n_tasks=4, rows=10, features=2, seed=0)[0],
                                            task="task", target="y")
        bm.models.Hierarchical().check(clean)
