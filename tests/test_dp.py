"""Dirichlet-process task clustering: planted clusters recovered, label-invariant outputs, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyro.distributions as dist
import pytest
import torch

import bayesmtl as bm
from bayesmtl.relations import TaskRelations, adjusted_rand_index, binder_loss
from bayesmtl.synthetic import planted_clusters

SVI_FAST = dict(steps=1200, min_steps=600, lr=0.05, window=150)


def _fit_planted(likelihood, method, tasks_per_cluster, rows, truncation, seed=0, **kw):
    df, truth = planted_clusters(tasks_per_cluster=tasks_per_cluster, rows=rows, likelihood=likelihood, seed=seed)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.DPClustering(likelihood=likelihood, prior=bm.priors.DirichletProcess(truncation=truncation))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # SVI convergence notice on short runs
        post = bm.fit(model, data, method=method, seed=seed, progress=False, **kw)
    return post, truth["cluster"], df


def _check_recovery(post, truth):
    rel = post.relations()
    part = rel.clusters()
    assert adjusted_rand_index(part["cluster"].to_numpy(), truth) >= 0.9
    P = rel.draws.mean(0)
    same = truth[:, None] == truth[None, :]
    off = ~np.eye(len(truth), dtype=bool)
    assert P[same & off].mean() >= 0.8
    assert P[~same].mean() <= 0.2
    nc = post.num_clusters()
    assert int(nc.loc[nc["probability"].idxmax(), "num_clusters"]) == 3
    assert part["cluster"].nunique() == 3  # the point partition agrees with the count's posterior
    return rel


@pytest.fixture(scope="module")
def logistic_svi():
    torch.set_num_threads(1)
    return _fit_planted("bernoulli", "svi", tasks_per_cluster=5, rows=50, truncation=10, draws=200, **SVI_FAST)


# ---------------------------------------------------------------------- planted clusters, fast tier
def test_planted_logistic_svi(logistic_svi):
    post, truth, _ = logistic_svi
    _check_recovery(post, truth)
    assert post.samples["z_prob"].shape[-2:] == (len(truth), 10)
    assert np.allclose(post.samples["z_prob"].sum(-1), 1, atol=1e-6)


@pytest.mark.slow  # trimmed from the fast tier (10-min budget)
def test_planted_gaussian_svi():
    post, truth, _ = _fit_planted("gaussian", "svi", tasks_per_cluster=4, rows=30, truncation=10, draws=100,
                                  **SVI_FAST)
    _check_recovery(post, truth)


@pytest.mark.slow  # trimmed from the fast tier (10-min budget)
def test_planted_poisson_svi():
    post, truth, _ = _fit_planted("poisson", "svi", tasks_per_cluster=3, rows=40, truncation=10, draws=100,
                                  **SVI_FAST)
    _check_recovery(post, truth)


def test_outputs_and_run_directory(logistic_svi, tmp_path):
    post, truth, df = logistic_svi
    # w of a known task is the atom of its drawn cluster
    w, atoms, z = post.samples["w"], post.samples["atom_w"], post.samples["z"]
    np.testing.assert_allclose(w[0, 5], atoms[0, 5][z[0, 5]])
    # new tasks: a mixture over clusters, so the predictive mean sits between the clusters' predictions
    rows = df[df.task == df.task.iloc[0]].head(5)
    known = post.predict(rows)
    new = post.predict(rows.assign(task="brand_new"))
    assert new["new_task"].all() and not known["new_task"].any()
    assert np.all((new["probability"] > 0) & (new["probability"] < 1))
    path = post.save(tmp_path / "run")
    clusters = pd.read_csv(path / "clusters.csv")
    assert list(clusters.columns) == ["task", "cluster", "probability"]
    assert adjusted_rand_index(clusters["cluster"], truth) >= 0.9
    assert (path / "relations.csv").exists()


def test_cluster_loglik_shared_and_per_task_noise_agree():
    from bayesmtl.models.dp_clustering import cluster_loglik

    df, _ = planted_clusters(tasks_per_cluster=2, rows=7, likelihood="gaussian")
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    shared = bm.models.DPClustering(likelihood=bm.likelihoods.Gaussian(noise="shared"))
    per_task = bm.models.DPClustering(likelihood=bm.likelihoods.Gaussian(noise="per_task"))
    Xv, Xs = shared.design(data)
    atoms = torch.randn(4, 10, 3, dtype=torch.float64)  # (S, K, D)
    sigma = torch.rand(4, dtype=torch.float64) + 0.5
    a = cluster_loglik(shared, data, atoms, None, {"sigma": sigma}, Xv, Xs)
    b = cluster_loglik(per_task, data, atoms, None, {"sigma": sigma[:, None].expand(4, data.n_tasks)}, Xv, Xs)
    assert a.shape == (4, data.n_tasks, 10)
    torch.testing.assert_close(a, b)
    # brute force for one draw, task and cluster
    rows = (data.task == 1).nonzero().squeeze(-1)
    eta = Xv[rows] @ atoms[2, 7]
    ref = torch.distributions.Normal(eta, sigma[2]).log_prob(data.y[rows]).sum()
    torch.testing.assert_close(a[2, 1, 7], ref)


@pytest.mark.parametrize("noise", ["shared", "per_task"])
def test_gaussian_cluster_loglik_from_sufficient_statistics_equals_the_rows(noise):
    """The Gaussian's per-task sufficient statistics give the rows' sum, with shared coefficients,
    for flat draws and for the model's own layout (a scalar sigma)."""
    from bayesmtl.models.dp_clustering import _by_rows, gaussian_by_task, task_statistics

    df, _ = planted_clusters(tasks_per_cluster=2, rows=7, likelihood="gaussian")
    df["s1"] = np.random.default_rng(0).normal(size=len(df))
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.DPClustering(likelihood=bm.likelihoods.Gaussian(noise=noise), shared=["s1"])
    lik = model.likelihood_for(data)
    Xv, Xs = model.design(data)
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(6, 4, Xv.shape[-1], generator=g, dtype=torch.float64)
    c = torch.randn(6, Xs.shape[-1], generator=g, dtype=torch.float64)
    shape = (6,) if noise == "shared" else (6, data.n_tasks)
    params = {"sigma": torch.rand(shape, generator=g, dtype=torch.float64) + 0.3}
    stats = task_statistics(model, data, Xv, Xs)
    torch.testing.assert_close(gaussian_by_task(lik, data, atoms, c, params, stats),
                               _by_rows(lik, data, atoms, c, params, Xv, Xs))
    if noise == "shared":  # inside the model: one sigma, (), and no draw dim
        one = {"sigma": params["sigma"][0]}
        torch.testing.assert_close(gaussian_by_task(lik, data, atoms[0], c[0], one, stats),
                                   _by_rows(lik, data, atoms[0], c[0], one, Xv, Xs))


def test_cluster_loglik_lines_up_a_per_draw_parameter_with_the_rows():
    """A Student-t's nu is one value per draw, (S,); with the clusters stacked on the left of the
    rows it broadcast against the rows instead (an error, or a silent result when S = N)."""
    from bayesmtl.models.dp_clustering import cluster_loglik

    df, _ = planted_clusters(tasks_per_cluster=2, rows=7, likelihood="gaussian")
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.DPClustering(likelihood=bm.likelihoods.StudentT(noise="per_task"))
    Xv, Xs = model.design(data)
    S = data.n_rows  # the case where a wrong broadcast would pass silently
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(S, 5, 3, generator=g, dtype=torch.float64)
    params = {"sigma": torch.rand(S, data.n_tasks, generator=g, dtype=torch.float64) + 0.5,
              "nu": torch.rand(S, generator=g, dtype=torch.float64) * 10 + 1}
    out = cluster_loglik(model, data, atoms, None, params, Xv, Xs)
    assert out.shape == (S, data.n_tasks, 5)
    rows = (data.task == 2).nonzero().squeeze(-1)
    ref = torch.distributions.StudentT(params["nu"][3], Xv[rows] @ atoms[3, 4], params["sigma"][3, 2])
    torch.testing.assert_close(out[3, 2, 4], ref.log_prob(data.y[rows]).sum())


def test_marginal_matches_enumeration():
    """The closed-form marginal (collapsed form, for samplers without enumeration) has the same
    potential as Pyro's enumeration of z."""
    from pyro.infer.mcmc.util import initialize_model

    df, _ = planted_clusters(tasks_per_cluster=2, rows=8, likelihood="gaussian")
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.DPClustering(likelihood="gaussian", prior=bm.priors.DirichletProcess(truncation=5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.check(data)
    _, enum_pot, _, _ = initialize_model(model.pyro_model(data), max_plate_nesting=1)
    init, marg_pot, _, _ = initialize_model(model.targets(data)[0].pyro_model(), max_plate_nesting=1)
    for scale in (0.0, 0.7):
        params = {k: v + scale * torch.randn_like(v) for k, v in init.items()}
        torch.testing.assert_close(enum_pot(params), marg_pot(params))


def test_num_clusters_needs_a_clustering_model(small_frame):
    df, _ = small_frame
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    post = bm.Posterior(bm.models.Hierarchical(), data, {"w": np.zeros((1, 2, data.n_tasks, 3))}, {}, {})
    with pytest.raises(TypeError, match="no task clusters"):
        post.num_clusters()


# ---------------------------------------------------------------------- point partition and ARI
def test_adjusted_rand_index():
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 2, 2]) == pytest.approx(1.0)
    # sklearn's reference value for this pair
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(0.2424242424)
    with pytest.raises(ValueError, match="equal length"):
        adjusted_rand_index([0, 1], [0, 1, 2])


def test_clusters_minimise_binder_loss():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 4)
    # draws: the truth, with one random task moved in 20% of draws
    draws = []
    for _ in range(300):
        lab = truth.copy()
        if rng.random() < 0.2:
            lab[rng.integers(12)] = rng.integers(3)
        draws.append((lab[:, None] == lab[None, :]).astype(float))
    rel = TaskRelations(np.array(draws), [f"t{i}" for i in range(12)], "co-clustering")
    part = rel.clusters()
    P = rel.draws.mean(0)
    assert adjusted_rand_index(part["cluster"], truth) == pytest.approx(1.0)
    assert part.attrs["expected_loss"] == pytest.approx(binder_loss(truth, P))
    # no single-task move improves it, and the all-in-one / all-apart partitions are worse
    assert binder_loss(np.zeros(12), P) > part.attrs["expected_loss"]
    assert binder_loss(np.arange(12), P) > part.attrs["expected_loss"]
    assert (part["probability"] > 0.8).all()
    with pytest.raises(ValueError, match="co-clustering probabilities"):
        TaskRelations(-np.array(draws), rel.names, "correlation").clusters()


# ---------------------------------------------------------------------- bad input
def test_bad_truncation():
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="truncation"):
            bm.priors.DirichletProcess(truncation=bad)


def test_bad_concentration():
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            bm.priors.DirichletProcess(alpha=bad)
    with pytest.raises(ValueError, match="alpha"):
        bm.priors.DirichletProcess(alpha=dist.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="alpha"):
        bm.priors.DirichletProcess(alpha="big")


def test_bad_base_dimension():
    df, _ = planted_clusters(tasks_per_cluster=2, rows=10, features=2)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    base = bm.priors.Hierarchical(mean=dist.Normal(torch.zeros(5), 1.0))  # 5-dim, the model has 3
    model = bm.models.DPClustering(prior=bm.priors.DirichletProcess(base=base))
    with pytest.raises(ValueError, match="base measure"):
        bm.fit(model, data, method="svi", progress=False)
    with pytest.raises(TypeError, match="base"):
        bm.priors.DirichletProcess(base=dist.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="DirichletProcess"):
        bm.models.DPClustering(prior=bm.priors.Hierarchical())


def test_truncation_warning_names_the_figure():
    df, _ = planted_clusters(tasks_per_cluster=2, rows=10, features=1)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    prior = bm.priors.DirichletProcess(alpha=20.0, truncation=5)
    expected = (20 / 21) ** 5
    assert prior.expected_tail_weight() == pytest.approx(expected)
    with pytest.warns(UserWarning, match=f"truncation=5.*{expected:.3f}"):
        bm.models.DPClustering(prior=prior).check(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        bm.models.DPClustering(prior=bm.priors.DirichletProcess(truncation=20)).check(data)  # default: no warning


def test_minibatches_refused():
    df, _ = planted_clusters(tasks_per_cluster=2, rows=10, features=1)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    with pytest.raises(ValueError, match="minibatch"):
        bm.fit(bm.models.DPClustering(), data, method="svi", batch_size=5, progress=False)


def test_prior_cannot_serve_other_models():
    df, _ = planted_clusters(tasks_per_cluster=2, rows=10, features=1)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = bm.models.Hierarchical(likelihood="bernoulli")
    model.prior = bm.priors.DirichletProcess()
    with pytest.raises(TypeError, match="DPClustering"):
        bm.fit(model, data, method="svi", steps=2, progress=False)


# ---------------------------------------------------------------------- full size, both back ends (slow)
@pytest.fixture(scope="module")
def full_svi():
    return _fit_planted("bernoulli", "svi", tasks_per_cluster=10, rows=60, truncation=10, draws=400,
                        steps=5000, min_steps=1000, lr=0.05, window=200)


@pytest.fixture(scope="module")
def full_nuts():
    # the batched NUTS samples the continuous marginal: z summed out in closed form (test_marginal_matches_enumeration)
    return _fit_planted("bernoulli", "nuts", tasks_per_cluster=10, rows=60, truncation=10,
                        chains=2, warmup=300, draws=300)


@pytest.mark.slow
def test_full_planted_logistic_svi(full_svi):
    _check_recovery(*full_svi[:2])


@pytest.mark.slow
def test_full_planted_gaussian_svi():
    post, truth, _ = _fit_planted("gaussian", "svi", tasks_per_cluster=10, rows=60, truncation=10, draws=400,
                                  steps=5000, min_steps=1000, lr=0.05, window=200)
    _check_recovery(post, truth)


@pytest.mark.slow
def test_full_planted_logistic_nuts(full_nuts):
    _check_recovery(*full_nuts[:2])


@pytest.mark.slow
def test_full_planted_gaussian_nuts():
    post, truth, _ = _fit_planted("gaussian", "nuts", tasks_per_cluster=10, rows=60, truncation=10,
                                  chains=2, warmup=200, draws=200)
    _check_recovery(post, truth)


@pytest.mark.slow
def test_planted_logistic_pyro_nuts_enumerated():
    """Pyro's NUTS with z enumerated by Pyro itself (collapse=False) rather than the closed-form marginal."""
    post, truth, _ = _fit_planted("bernoulli", "pyro_nuts", tasks_per_cluster=4, rows=50, truncation=8,
                                  chains=1, warmup=150, draws=150, collapse=False)
    _check_recovery(post, truth)


@pytest.mark.slow
def test_svi_and_nuts_agree(full_svi, full_nuts):
    a = full_svi[0].relations().draws.mean(0)
    b = full_nuts[0].relations().draws.mean(0)
    assert np.abs(a - b).mean() <= 0.15


# ---------------------------------------------------------------------- command line
@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cli_fit_writes_clusters(tmp_path):
    from bayesmtl.cli import main

    df, truth = planted_clusters(tasks_per_cluster=4, rows=40, likelihood="bernoulli", seed=1)
    df.to_csv(tmp_path / "train.csv", index=False)
    run = tmp_path / "run"
    assert main(["fit", "--model", "dp-clustering", "--data", str(tmp_path / "train.csv"), "--task", "task",
                 "--target", "y", "--likelihood", "bernoulli", "--out", str(run), "--method", "svi",
                 "--draws", "100", "--seed", "0", "--quiet", "--option", "steps=1000", "--option", "min_steps=600",
                 "--option", "lr=0.05", "--option", "window=150"]) == 0
    assert {p.name for p in run.iterdir()} >= {"posterior.nc", "summary.csv", "relations.csv", "run.json",
                                               "model.json", "data.nc", "clusters.csv"}
    clusters = pd.read_csv(run / "clusters.csv")
    assert list(clusters.columns) == ["task", "cluster", "probability"]
    assert clusters["task"].tolist() == list(dict.fromkeys(df["task"]))
    assert adjusted_rand_index(clusters["cluster"], truth["cluster"]) >= 0.9
    relations = pd.read_csv(run / "relations.csv")
    assert len(relations) == 12 * 11 // 2 and relations["mean"].between(0, 1).all()
    # the run directory loads back with the same co-clustering
    post = bm.load(run)
    np.testing.assert_allclose(post.relations().mean().to_numpy()[np.triu_indices(12, 1)], relations["mean"])


def test_batched_nuts_never_samples_assignments():
    """Without the closed-form marginal the batched NUTS would meet the discrete z: it must refuse."""
    df, _ = planted_clusters(tasks_per_cluster=2, rows=10, features=1)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    with pytest.raises(ValueError, match="'z' has discrete support"):
        bm.fit(bm.models.DPClustering(), data, method="nuts", collapse=False, chains=1, warmup=1, draws=1,
               progress=False)


def test_point_partition_has_the_most_probable_number_of_clusters():
    """Three stable clusters and two tasks that join one of them at random in each draw: every
    draw has 3 clusters, yet unconstrained Binder splits the two off as singletons (5 clusters).
    With the draws' cluster counts the partition keeps 3, the clusters themselves intact."""
    rng = np.random.default_rng(1)
    base = np.repeat([0, 1, 2], 4)
    draws, counts = [], []
    for _ in range(600):
        lab = np.concatenate([base, rng.integers(3, size=2)])
        draws.append((lab[:, None] == lab[None, :]).astype(float))
        counts.append(len(np.unique(lab)))
    names = [f"t{i}" for i in range(14)]
    free = TaskRelations(np.array(draws), names, "co-clustering").clusters()
    assert free.attrs["num_clusters"] == 5 and free.attrs["loss"] == "binder"
    rel = TaskRelations(np.array(draws), names, "co-clustering", cluster_counts=np.array(counts))
    part = rel.clusters()
    assert part.attrs["num_clusters"] == 3 and part.attrs["loss"] == "binder, 3 clusters fixed"
    assert adjusted_rand_index(part["cluster"].to_numpy()[:12], base) == pytest.approx(1.0)
    assert rel.clusters(num_clusters=4).attrs["num_clusters"] == 4
    with pytest.raises(ValueError, match="num_clusters must be between 1 and 14"):
        rel.clusters(num_clusters=20)
