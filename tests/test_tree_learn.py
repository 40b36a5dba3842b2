"""The learned tree (``TreeHierarchy(tree="learn")``, ``priors.tree_learn``): exact messages,
the nested CRP prior, recovery of planted groups, and the model end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg as sl
import torch
from scipy.stats import multivariate_normal

import bayesmtl as bm
from bayesmtl import synthetic
from bayesmtl.priors import tree_learn as tl


def _factors(T: int, D: int, seed: int = 0) -> tl.Factor:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(T, D, D))
    return tl.Factor(A @ A.transpose(0, 2, 1) + np.eye(D), rng.normal(size=(T, D)), np.zeros(T))


def test_message_passing_gives_the_dense_gaussian_marginal():
    T, D = 5, 2
    paths = np.array([[0, 0], [0, 0], [0, 1], [1, 2], [1, 2]])
    f = _factors(T, D)
    spreads = np.array([[0.7, 0.4], [0.5, 0.3], [0.2, 0.6]])
    loc, var0 = np.array([0.3, -0.2]), np.array([2.0, 1.5])
    state = tl._State(f, paths, spreads)
    # dense: w (T*D) ~ N(loc, K) with K from the shared path; each factor is N(what_t; w_t, P_t^-1) up to a constant
    K = np.zeros((T * D, T * D))
    for a in range(T):
        for b in range(T):
            v = var0.copy()
            for lev in range(2):
                if (paths[a, : lev + 1] == paths[b, : lev + 1]).all():
                    v = v + spreads[lev] ** 2
            if a == b:
                v = v + spreads[2] ** 2
            K[a * D:(a + 1) * D, b * D:(b + 1) * D] = np.diag(v)
    Pi = np.linalg.inv(f.P)
    what = np.einsum("tij,tj->ti", Pi, f.h).ravel()
    dense = multivariate_normal(np.tile(loc, T), K + sl.block_diag(*Pi)).logpdf(what)
    dense += sum(D / 2 * math.log(2 * math.pi) - 0.5 * np.linalg.slogdet(f.P[t])[1]
                 + 0.5 * f.h[t] @ Pi[t] @ f.h[t] for t in range(T))
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
    ones = np.ones((3, 2))

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


def _planted(seed: int, branching=(4, 3, 4), frame: bool = False, scales=(4.0, 1.0, 0.1)):
    # levels of distinct spreads: groups 4 (or 6) apart, subgroups 1, tasks 0.1 (4 parameters)
    df, truth = synthetic.tree_regression(branching=branching, seed=seed, features=3, scales=scales)
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


def test_a_learned_tree_recovers_planted_groups():
    # one level: 3 groups of 4 tasks, 6 apart, tasks 0.3 around their group (no subgroups)
    data, truth = _planted(seed=0, branching=(3, 2, 2), scales=(6.0, 0.0, 0.3))
    torch.manual_seed(0)  # bind draws the learner's seed from torch's generator (fit seeds it)
    bound = bm.models.TreeHierarchy(tree="learn", depth=1, warmup=40, draws=40).bind(data)
    found = _region_clades(bound.prior, data, truth)
    assert set(found) == {0, 1, 2}, bound.prior.clades  # the point tree's groups are the planted ones
    assert min(found.values()) >= 0.9
    assert bound.prior.problems() == [] and bound.prior.tree_info["chains_apart"] < 0.2  # the chains agree


def _separation(truth) -> float:
    """Closest two planted regions' distance over the widest distance between two districts of
    one region: above 1 the region split is in the data, not only in the planting."""
    w, region = truth["w"], truth["region"]
    means = np.array([w[region == k].mean(0) for k in np.unique(region)])
    between = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(len(means), 1)].min()
    district = w.reshape(-1, 4, w.shape[-1]).mean(1)  # 4 tasks a district
    per = len(district) // len(means)
    within = max(np.linalg.norm(d[:, None] - d[None], axis=-1).max()
                 for d in district.reshape(len(means), per, -1))
    return float(between / within)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 3, 6])
def test_a_learned_tree_recovers_the_planted_regions(seed):
    # issue 20's planted tree: 4 regions > 3 districts > 4 tasks, spreads 6 / 1 / 0.1; each region
    # a clade of the point tree with probability >= 0.8 where the regions stand clear of their own
    # districts' spread (separation 2.17, 1.67, 2.98). With 200 warmup sweeps, seeds 3 and 6 gave
    # 0.69-0.75 and 0.53-0.58: one chain was still in another tree (their clade probabilities
    # 0.14-0.36 against 0.85-0.96), which the sampler's chain check now reports. (At spreads 4 / 1
    # some seeds' closest regions sit nearer than one region's districts; seed 1 here, 1.13, gives
    # two regions 0.26-0.42 in both chains alike: a posterior in doubt, not a stuck chain.)
    data, truth = _planted(seed, scales=(6.0, 1.0, 0.1))
    assert _separation(truth) > 1.5
    torch.manual_seed(0)
    bound = bm.models.TreeHierarchy(tree="learn").bind(data)
    found = _region_clades(bound.prior, data, truth)
    assert set(found) == {0, 1, 2, 3}, bound.prior.clades
    assert min(found.values()) >= 0.8, found
    assert bound.prior.problems() == [], bound.prior.tree_info


def test_chains_that_disagree_on_the_tree_are_reported():
    """Without warmup the chain started from one path is still in another tree: the chain check
    names two tasks, and a fit warns of it (run.json keeps it); chains that agree give none."""
    data, _ = _planted(6, scales=(6.0, 1.0, 0.1))
    torch.manual_seed(0)
    model = bm.models.TreeHierarchy(tree="learn", warmup=0, draws=20)
    (problem,) = model.bind(data).prior.problems()
    assert problem.check == "tree_chains" and problem.value > 0.4, problem
    assert set(problem.entries) <= set(data.task_names) and "raise warmup=" in problem.message
    with pytest.warns(bm.DiagnosticWarning, match="sampler chains disagree"):
        post = bm.fit(model, data, method="map", steps=100, min_steps=100, seed=0, progress=False)
    assert [p.check for p in post.diagnose()][:1] == ["tree_chains"]
    assert post.info["diagnostics"]["problems"][0]["check"] == "tree_chains"


def test_a_learned_tree_fits_predicts_new_tasks_and_saves(tmp_path):
    data, truth, df = _planted(seed=2, branching=(2, 2, 3), frame=True)
    model = bm.models.TreeHierarchy(tree="learn", warmup=20, draws=20)
    post = bm.fit(model, data, method="map", steps=300, min_steps=100, seed=3, progress=False)
    tree = post.tree()
    assert list(tree.columns) == ["level", "node", "size", "probability", "together", "tasks"]
    assert tree.loc[tree.level == "level1", "size"].sum() == data.n_tasks
    assert ((tree.probability >= 0) & (tree.probability <= 1)).all()
    assert model.prior.learned is None  # the caller's model holds no fitted state
    trees = []
    for _ in range(2):
        torch.manual_seed(11)  # fit seeds torch's generator; bind draws the learner's seed from it
        trees.append(model.bind(data).prior.learned)
    assert trees[0] == trees[1]
    new = df[df["task"] == data.task_names[0]].assign(task="unseen")
    pred = post.predict(new)
    assert pred["new_task"].all() and np.isfinite(pred[["mean", "sd"]].to_numpy()).all()
    assert post.to_arviz().posterior["level1_mean"].sizes["level1"] == (tree.level == "level1").sum()
    # the relation plot orders the tasks by the learned tree and draws it: cut below the root,
    # its linkage gives the level-1 groups
    from scipy.cluster.hierarchy import fcluster

    rel = post.relations()
    groups = fcluster(rel.linkage(), 2.5, criterion="distance")
    level1 = np.asarray(post.model.prior.learned)[:, 0]
    assert len(set(zip(groups, level1, strict=True))) == len(set(level1)) == len(set(groups))
    rel.plot(tmp_path / "relations.png")
    assert (tmp_path / "relations.png").stat().st_size > 0
    post.save(tmp_path / "run")
    saved = pd.read_csv(tmp_path / "run" / "tree.csv")  # the tree as data, for the CLI's users
    assert saved["tasks"].str.split(";").map(len).tolist() == tree["size"].tolist()
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


def test_a_new_task_takes_a_path_by_the_nested_crp_rule():
    import pyro

    from bayesmtl.priors.tree import TreeHierarchy
    from bayesmtl.protocol import Tasks

    prior = TreeHierarchy("learn")
    prior.learned = [[0, 0], [0, 0], [0, 1], [1, 2]]  # groups {3 tasks: subgroups of 2 and 1}, {1 task}
    S, tiny = 20000, torch.full((20000, 1), 1e-6)  # spreads ~0: each draw lands on its node's mean
    samples = {"mu": torch.zeros(S, 1), "tau": tiny, "level1_scale": tiny, "level2_scale": tiny,
               "level1_mean": torch.tensor([10.0, 20.0]).reshape(1, 2, 1).expand(S, 2, 1),
               "level2_mean": torch.tensor([11.0, 12.0, 21.0]).reshape(1, 3, 1).expand(S, 3, 1)}
    w = prior.sample_new(samples, Tasks(n=1, dims=1, plate=pyro.plate("task", 1)), torch.Generator().manual_seed(0))
    share = {v: float((w[:, 0, 0].round() == v).float().mean()) for v in (0, 10, 11, 12, 20, 21)}
    # alpha 1: group 1 w.p. 3/5, group 2 1/5, a new group (at the root's mean, 0) 1/5; inside
    # group 1: subgroup 11 w.p. 2/4, 12 1/4, a new one (at the group's mean, 10) 1/4
    expected = {0: 0.2, 10: 0.15, 11: 0.3, 12: 0.15, 20: 0.1, 21: 0.1}
    for v, p in expected.items():
        assert share[v] == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / S)), (v, share)
