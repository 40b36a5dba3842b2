"""The learned tree (``TreeHierarchy(tree="learn")``, ``priors.tree_learn``): exact messages,
the nested CRP prior, recovery of planted groups, and the model end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sl
import torch
from scipy.stats import multivariate_normal

import bayesmtl as bm
from bayesmtl import synthetic
from bayesmtl.priors import tree_learn as tl

F64 = torch.float64


def _factors(T: int, D: int, seed: int = 0) -> tl.Factor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(T, D, D, generator=g, dtype=F64)
    P = A @ A.transpose(-1, -2) + torch.eye(D, dtype=F64)
    return tl.Factor(P, torch.randn(T, D, generator=g, dtype=F64), torch.zeros(T, dtype=F64))


def test_message_passing_gives_the_dense_gaussian_marginal():
    T, D = 5, 2
    paths = np.array([[0, 0], [0, 0], [0, 1], [1, 2], [1, 2]])
    f = _factors(T, D)
    spreads = torch.tensor([[0.7, 0.4], [0.5, 0.3], [0.2, 0.6]], dtype=F64)
    loc, var0 = torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([2.0, 1.5], dtype=F64)
    state = tl._State(f, paths, spreads)
    # dense: w (T*D) ~ N(loc, K) with K from the shared path; each factor is N(what_t; w_t, P_t^-1) up to a constant
    K = np.zeros((T * D, T * D))
    for a in range(T):
        for b in range(T):
            v = var0.numpy().copy()
            for lev in range(2):
                if (paths[a, : lev + 1] == paths[b, : lev + 1]).all():
                    v = v + spreads[lev].numpy() ** 2
            if a == b:
                v = v + spreads[2].numpy() ** 2
            K[a * D:(a + 1) * D, b * D:(b + 1) * D] = np.diag(v)
    Pi = np.linalg.inv(f.P.numpy())
    what = np.einsum("tij,tj->ti", Pi, f.h.numpy()).ravel()
    dense = multivariate_normal(np.tile(loc.numpy(), T), K + sl.block_diag(*Pi)).logpdf(what)
    dense += sum(D / 2 * math.log(2 * math.pi) - 0.5 * np.linalg.slogdet(f.P[t].numpy())[1]
                 + 0.5 * f.h[t].numpy() @ Pi[t] @ f.h[t].numpy() for t in range(T))
    assert state.log_marginal(loc, var0) == pytest.approx(dense, abs=1e-9)
    # taking a task out and putting it back leaves the incremental sums where they were
    leaf = tl._row(state.leaf, 2)
    state.propagate([0, 1], tl.Factor(-leaf.P, -leaf.h, -leaf.c), -1)
    state.propagate([0, 1], leaf, 1)
    assert state.log_marginal(loc, var0) == pytest.approx(dense, abs=1e-9)


def test_the_prior_gain_of_a_move_is_the_change_in_the_nested_crp_prior():
    T, D, alpha = 12, 2, 0.7
    f = _factors(T, D, seed=1)
    paths = np.array([[0, 0], [0, 0], [0, 1], [0, 1], [0, 1], [1, 2], [1, 2], [1, 3], [2, 4], [2, 4], [2, 4], [2, 5]])
    ones = torch.ones(3, 2, dtype=F64)

    def full(p):
        return tl._State(f, p, ones).log_prior(alpha)

    checked = 0
    for members, depth, node in [(np.array([4]), 2, None), (np.flatnonzero(paths[:, 1] == 1), 1, 1),
                                 (np.flatnonzero(paths[:, 1] == 3), 1, 3)]:
        state = tl._State(f, paths, ones)
        old = [int(v) for v in paths[members[0], :depth]]
        delta = tl._row(state.leaf, int(members[0])) if node is None else tl._row(state.msg[depth], node)
        state.propagate(old, tl.Factor(-delta.P, -delta.h, -delta.c), -len(members))
        base = tl._prior_gain(state, old, len(members), alpha, node is not None)
        for pre in tl._prefixes(state, depth):
            moved = paths.copy()
            moved[members, :depth] = pre
            gain = tl._prior_gain(state, pre, len(members), alpha, node is not None) - base
            assert gain == pytest.approx(full(moved) - full(paths), abs=1e-9)
            checked += 1
    assert checked >= 10


def _planted(seed: int, branching=(4, 3, 4), frame: bool = False):
    # well-separated levels: groups 4 apart, subgroups 1, tasks 0.1 (4 parameters)
    df, truth = synthetic.tree_regression(branching=branching, seed=seed, features=3, scales=(4.0, 1.0, 0.1))
    data = bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x1", "x2", "x3"])
    return (data, truth, df) if frame else (data, truth)


def _region_clades(prior, data, truth) -> dict[int, float]:
    """Planted region -> clade probability of the learned level-1 node holding exactly it."""
    out = {}
    for c in prior.clades:
        if c["level"] == "level1":
            regions = {int(truth["region"][t]) for t in c["tasks"]}  # tasks t00.. sort in the planted order
            planted = set(np.flatnonzero(truth["region"] == next(iter(regions))).tolist())
            if len(regions) == 1 and set(c["tasks"]) == planted:
                out[next(iter(regions))] = c["probability"]
    return out


def test_a_learned_tree_recovers_two_planted_groups():
    data, truth = _planted(seed=0, branching=(2, 2, 3))
    bound = bm.models.TreeHierarchy(tree="learn", warmup=40, draws=40).bind(data)
    found = _region_clades(bound.prior, data, truth)
    assert set(found) == {0, 1}, bound.prior.clades  # the point tree's groups are the planted ones
    assert min(found.values()) > 0.5  # and each is the posterior's majority (2 chains x (40 + 40) sweeps here)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_a_learned_tree_recovers_the_planted_regions(seed):
    # issue 20's planted tree: 4 regions > 3 districts > 4 tasks; each region a clade, probability >= 0.8
    data, truth = _planted(seed)
    bound = bm.models.TreeHierarchy(tree="learn").bind(data)
    found = _region_clades(bound.prior, data, truth)
    assert set(found) == {0, 1, 2, 3}, bound.prior.clades
    assert min(found.values()) >= 0.8


def test_a_learned_tree_fits_predicts_new_tasks_and_saves(tmp_path):
    data, truth, df = _planted(seed=2, branching=(2, 2, 3), frame=True)
    model = bm.models.TreeHierarchy(tree="learn", warmup=20, draws=20)
    post = bm.fit(model, data, method="map", steps=300, min_steps=100, seed=3, progress=False)
    tree = post.tree()
    assert list(tree.columns) == ["level", "node", "size", "probability", "together", "tasks"]
    assert tree.loc[tree.level == "level1", "size"].sum() == data.n_tasks
    assert ((tree.probability >= 0) & (tree.probability <= 1)).all()
    assert model.prior.learned is None  # the caller's model holds no fitted state
    again = bm.fit(model, data, method="map", steps=300, min_steps=100, seed=3, progress=False)
    assert again.model.prior.learned == post.model.prior.learned  # same seed, same tree
    new = df[df["task"] == data.task_names[0]].assign(task="unseen")
    pred = post.predict(new)
    assert pred["new_task"].all() and np.isfinite(pred[["mean", "sd"]].to_numpy()).all()
    assert post.to_arviz().posterior["level1_mean"].sizes["level1"] == (tree.level == "level1").sum()
    post.save(tmp_path / "run")
    loaded = bm.load(tmp_path / "run")
    assert loaded.model.prior.learned == post.model.prior.learned
    assert loaded.tree()["probability"].tolist() == tree["probability"].tolist()


def test_bad_learned_tree_settings_name_the_problem():
    data, _, df = _planted(seed=0, branching=(2, 2, 3), frame=True)
    with pytest.raises(ValueError, match="depth"):
        bm.models.TreeHierarchy(tree="learn", depth=0)
    with pytest.raises(ValueError, match="alpha"):
        bm.models.TreeHierarchy(tree="learn", alpha=-1.0)
    with pytest.raises(ValueError, match="gaussian or bernoulli"):
        counts = bm.MultiTaskData.from_frame(df.assign(y=df["y"].abs().round()), task="task", target="y",
                                             features=["x1", "x2", "x3"])
        bm.fit(bm.models.TreeHierarchy(tree="learn", likelihood="poisson"), counts, method="map", progress=False)
    with pytest.raises(ValueError, match="shared"):
        bm.fit(bm.models.TreeHierarchy(tree="learn", shared=["x1"]), data, method="map", progress=False)
    post = bm.fit(bm.models.Hierarchical(), data, method="map", steps=100, min_steps=50, progress=False)
    with pytest.raises(TypeError, match="learns no tree"):
        post.tree()
