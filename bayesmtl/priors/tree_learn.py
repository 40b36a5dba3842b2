"""Learning the tree of a task hierarchy: a nested Chinese restaurant process (Blei, Griffiths &
Jordan 2010) over fixed-depth paths, sampled by collapsed Gibbs (Daumé 2009 learns the tree of
his latent hierarchy; he uses Kingman's coalescent, this module the nCRP).

The model: each task picks a path root -> level 1 node -> ... -> level L node by a CRP at every
node (concentration ``alpha``); the root mean mu ~ N(loc, (2.5 scale)^2), each node's mean
N(parent's, diag(s_l^2)), each task's parameters w_t ~ N(its level-L node, diag(tau^2)). Each
task enters through a Gaussian factor of w_t (``task_factors``: its exact likelihood with a
Gaussian target and a pooled noise variance, a Laplace approximation with a binary one), so
every node mean integrates out by message passing up the tree and a task's path is drawn given
the others' exactly. The spreads move by Metropolis steps on their logs.

Messages are Gaussian factors exp(-x'Px/2 + h'x + c) in information form; an empty node's
message is exactly zero, so a new node is an empty slot. Shapes: D parameters, T tasks,
L levels. Cost: per sweep T x (candidate paths) small D x D solves; meant for tens to a few
hundred tasks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Factor", "TreeDraws", "task_factors", "sample_trees", "clade_table", "together", "consensus"]


class Factor(NamedTuple):
    """exp(-x'Px/2 + h'x + c): P (..., D, D), h (..., D), c (...)."""

    P: np.ndarray
    h: np.ndarray
    c: np.ndarray

    def __add__(self, other):  # sums of factors, not tuple concatenation
        return Factor(self.P + other.P, self.h + other.h, self.c + other.c)

    def __sub__(self, other):
        return Factor(self.P - other.P, self.h - other.h, self.c - other.c)


class TreeDraws(NamedTuple):
    """Draws of the learned tree: ``paths`` (S, T, L) node of each task at each level (labels
    renumbered by first appearance), ``spreads`` (S, L + 1, D) sds of the L levels and of the
    tasks (tau), ``log_marginal`` (S,) of the tasks' factors given each draw's tree."""

    paths: np.ndarray
    spreads: np.ndarray
    log_marginal: np.ndarray


def up(f: Factor, var: np.ndarray) -> Factor:
    """The factor of a parent theta from a child's factor f(x) and x ~ N(theta, diag(var)):
    integral f(x) N(x; theta, var) dx. f (..., D, D) etc.; var (D,). NumPy: these are many
    tiny solves, where torch's per-call cost dominates."""
    a = 1.0 / var
    M = f.P + np.diag(a)
    L = np.linalg.cholesky(M)
    Minv = np.linalg.inv(M)
    Mh = np.einsum("...ij,...j->...i", Minv, f.h)
    P = np.diag(a) - a[:, None] * Minv * a[None, :]
    logdet = 2 * np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(-1)
    c = f.c - 0.5 * np.log(var).sum() - 0.5 * logdet + 0.5 * (f.h * Mh).sum(-1)
    return Factor(0.5 * (P + np.swapaxes(P, -1, -2)), a * Mh, c)


def at_root(f: Factor, loc: np.ndarray, var: np.ndarray) -> np.ndarray:
    """log integral f(mu) N(mu; loc, diag(var)) dmu, batched over f's leading dims."""
    g = up(f, var)
    return g.c + g.h @ loc - 0.5 * np.einsum("i,...ij,j->...", loc, g.P, loc)


def task_factors(X: torch.Tensor, y: torch.Tensor, task: torch.Tensor, n_tasks: int, kind: str,
                 prior_sd: torch.Tensor) -> Factor:
    """Each task's Gaussian factor of its parameters w_t, (T, D, D) etc. (NumPy float64).

    ``kind="gaussian"``: the exact likelihood given one pooled noise variance (the residual
    variance of per-task ridge fits with ``prior_sd``, pooled over tasks' residual degrees of
    freedom); ``"bernoulli"``: a Laplace approximation at each task's mode under N(0, prior_sd^2)
    (so a separable task stays finite), with that prior divided back out. X (N, D) with the
    intercept column, y (N,), task (N,) long."""
    X, y, task = X.double().cpu(), y.double().cpu(), task.cpu()
    D = X.shape[1]
    ridge = torch.diag(1.0 / prior_sd.double().cpu() ** 2)
    P = X.new_zeros(n_tasks, D, D)
    h = X.new_zeros(n_tasks, D)
    if kind == "gaussian":
        rss, df = 0.0, 0.0
        for t in range(n_tasks):
            m = task == t
            Xt, yt = X[m], y[m]
            G = Xt.T @ Xt
            w = torch.linalg.solve(G + ridge, Xt.T @ yt)
            rss += float(((yt - Xt @ w) ** 2).sum())
            df += max(int(m.sum()) - D, 0)
            P[t], h[t] = G, Xt.T @ yt
        s2 = rss / df if df > 0 else float(y.var()) / 4
        return Factor((P / s2).numpy(), (h / s2).numpy(), np.zeros(n_tasks))
    if kind == "bernoulli":
        for t in range(n_tasks):
            m = task == t
            Xt, yt = X[m], y[m]
            w = X.new_zeros(D)
            for _ in range(50):  # Newton on the penalised log likelihood
                p = torch.sigmoid(Xt @ w)
                H = Xt.T @ (Xt * (p * (1 - p)).unsqueeze(-1)) + ridge
                step = torch.linalg.solve(H, Xt.T @ (yt - p) - ridge @ w)
                w = w + step
                if float(step.abs().max()) < 1e-8:
                    break
            p = torch.sigmoid(Xt @ w)
            G = Xt.T @ (Xt * (p * (1 - p)).unsqueeze(-1))
            # N(w; mode, H^-1) / N(w; 0, ridge^-1): the likelihood's quadratic around the mode
            P[t], h[t] = G, (G + ridge) @ w
        return Factor(P.numpy(), h.numpy(), np.zeros(n_tasks))
    raise ValueError(f"a learned tree takes a gaussian or bernoulli likelihood; got {kind!r}")


class _State:
    """One chain's tree: per level l (0-based, L levels) node slots with aggregate factors of
    their children's messages, their own messages up, task counts and parents."""

    def __init__(self, leaf: Factor, paths: np.ndarray, spreads: np.ndarray):
        self.leaf_raw = leaf
        self.T, self.L = paths.shape
        self.D = leaf.h.shape[-1]
        self.paths = paths.copy()
        self.spreads = np.array(spreads, dtype=np.float64)
        self.rebuild()

    def rebuild(self) -> None:
        """Counts, parents, aggregates and messages from ``paths`` and ``spreads``."""
        T, L, D = self.T, self.L, self.D
        self.leaf = up(self.leaf_raw, self.spreads[L] ** 2)
        self.count = np.zeros((L, T), dtype=np.int64)
        self.parent = np.full((L, T), -1, dtype=np.int64)
        for lev in range(L):
            np.add.at(self.count[lev], self.paths[:, lev], 1)
            if lev:
                self.parent[lev, self.paths[:, lev]] = self.paths[:, lev - 1]
        self.agg = [Factor(np.zeros((T, D, D)), np.zeros((T, D)), np.zeros(T)) for _ in range(L)]
        self.agg[L - 1] = _scatter(self.agg[L - 1], self.paths[:, L - 1], self.leaf)
        self.msg = [None] * L
        for lev in range(L - 1, -1, -1):
            live = (self.count[lev] > 0).astype(np.float64)
            self.msg[lev] = _mask(up(self.agg[lev], self.spreads[lev] ** 2), live)  # empty slots: exactly 0
            if lev:
                kids = np.maximum(self.parent[lev], 0)
                self.agg[lev - 1] = _scatter(_zeros_like(self.agg[lev - 1]), kids, self.msg[lev])
        self.root = _sum(self.msg[0])

    def snapshot(self) -> tuple:
        return self.leaf, list(self.agg), list(self.msg), self.root

    def restore(self, snap: tuple) -> None:
        self.leaf, self.agg, self.msg, self.root = snap[0], list(snap[1]), list(snap[2]), snap[3]

    def propagate(self, prefix: list[int], delta: Factor, m: int) -> None:
        """Add ``delta`` (a child's message change) and ``m`` tasks to the nodes of ``prefix``
        (levels 0 .. len(prefix) - 1), recomputing their messages and the root."""
        for lev in range(len(prefix) - 1, -1, -1):
            node = prefix[lev]
            self.count[lev, node] += m
            old = _row(self.msg[lev], node)
            old = Factor(old.P.copy(), old.h.copy(), np.copy(old.c))  # _set below overwrites the row
            if self.count[lev, node] == 0:  # an empty node's factor is exactly zero
                agg, new = _zeros_like(old), _zeros_like(old)
                self.parent[lev, node] = -1
            else:
                agg = _row(self.agg[lev], node) + delta
                new = up(agg, self.spreads[lev] ** 2)
            _set(self.agg[lev], node, agg)
            _set(self.msg[lev], node, new)
            delta = new - old
        self.root = self.root + delta

    def log_marginal(self, loc: np.ndarray, var0: np.ndarray) -> float:
        return float(at_root(self.root, loc, var0))

    def log_prior(self, alpha: float) -> float:
        """nCRP log prior of the tree: a CRP(alpha) partition (EPPF) at the root and under
        every node above the last level."""
        out = 0.0
        for lev in range(self.L):
            live = np.flatnonzero(self.count[lev] > 0)
            owners = self.parent[lev, live] if lev else np.zeros(len(live), dtype=np.int64)
            for owner in np.unique(owners):
                kids = live[owners == owner]
                n = int(self.count[lev, kids].sum())
                out += len(kids) * math.log(alpha) + math.lgamma(alpha) - math.lgamma(alpha + n)
                out += sum(math.lgamma(int(c)) for c in self.count[lev, kids])
        return out


def _row(f: Factor, i: int) -> Factor:
    return Factor(f.P[i], f.h[i], f.c[i])


def _set(f: Factor, i: int, g: Factor) -> None:
    f.P[i], f.h[i], f.c[i] = g.P, g.h, g.c


def _zeros_like(f: Factor) -> Factor:
    return Factor(np.zeros_like(f.P), np.zeros_like(f.h), np.zeros_like(f.c))


def _mask(f: Factor, m: np.ndarray) -> Factor:
    return Factor(f.P * m[:, None, None], f.h * m[:, None], f.c * m)


def _sum(f: Factor) -> Factor:
    return Factor(f.P.sum(0), f.h.sum(0), f.c.sum(0))


def _scatter(base: Factor, idx: np.ndarray, src: Factor) -> Factor:
    out = Factor(base.P.copy(), base.h.copy(), base.c.copy())
    for a, b in zip(out, src, strict=True):
        np.add.at(a, idx, b)
    return out


def _prefixes(state: _State, depth: int) -> list[list[int]]:
    """Where a subtree whose top is at level ``depth`` may hang: every live node path down to
    level depth - 1, and at each level a new node (empty slot) under every live node above,
    with new nodes below it. depth = L for a task."""
    count, parent = state.count, state.parent
    free = [list(np.flatnonzero(count[lev] == 0)) for lev in range(state.L)]
    out: list[list[int]] = []

    def walk(lev: int, prefix: list[int]) -> None:
        if lev == depth:
            out.append(prefix)
            return
        live = count[lev] > 0
        kids = np.flatnonzero(live & (parent[lev] == prefix[-1])) if lev else np.flatnonzero(live)
        for k in kids:
            walk(lev + 1, prefix + [int(k)])
        out.append(prefix + [int(free[j][0]) for j in range(lev, depth)])

    walk(0, [])
    return out


def _scores(state: _State, prefixes: list[list[int]], delta: Factor, loc, var0) -> np.ndarray:
    """log marginal of all tasks with a subtree whose message is ``delta`` hung under each
    prefix, (C,), batched over the candidates."""
    idx = np.asarray(prefixes)  # (C, depth)
    C = idx.shape[0]
    d = Factor(np.broadcast_to(delta.P, (C,) + delta.P.shape), np.broadcast_to(delta.h, (C,) + delta.h.shape),
               np.broadcast_to(delta.c, (C,)))
    for lev in range(idx.shape[1] - 1, -1, -1):
        node = idx[:, lev]
        old = Factor(state.msg[lev].P[node], state.msg[lev].h[node], state.msg[lev].c[node])
        agg = Factor(state.agg[lev].P[node], state.agg[lev].h[node], state.agg[lev].c[node]) + d
        d = up(agg, state.spreads[lev] ** 2) - old
    return at_root(Factor(state.root.P + d.P, state.root.h + d.h, state.root.c + d.c), loc, var0)


def _regraft(state: _State, members: np.ndarray, depth: int, node: int | None, alpha: float, loc, var0,
             rng: np.random.Generator) -> None:
    """Gibbs step for one subtree: the tasks ``members`` under ``node`` at level ``depth`` (a
    single task when depth = L, node None), moved to a prefix drawn from its conditional."""
    m = len(members)
    old = [int(v) for v in state.paths[members[0], :depth]]
    delta = _row(state.leaf, int(members[0])) if node is None else _row(state.msg[depth], node)
    state.propagate(old, Factor(-delta.P, -delta.h, -delta.c), -m)
    prefixes = _prefixes(state, depth)
    lik = _scores(state, prefixes, delta, loc, var0)
    prior = np.array([_prior_gain(state, pre, m, alpha, node is not None) for pre in prefixes])
    score = lik + prior
    p = np.exp(score - score.max())
    new = prefixes[rng.choice(len(prefixes), p=p / p.sum())]
    for lev in range(1, depth):
        if state.count[lev, new[lev]] == 0:
            state.parent[lev, new[lev]] = new[lev - 1]
    if node is not None:
        state.parent[depth, node] = new[-1]
    state.paths[np.asarray(members)[:, None], np.arange(depth)] = new
    state.propagate(new, delta, m)


def _prior_gain(state: _State, prefix: list[int], m: int, alpha: float, subtree: bool) -> float:
    """log nCRP prior gained by seating m tasks along ``prefix`` (a subtree's own partition
    below its top node is unchanged): at each level the m tasks join a table of the restaurant
    above (an existing node with c tasks, or a new one), EPPF ratios of the CRP(alpha); a
    subtree's top node is a new table of the last restaurant."""
    out, n = 0.0, int(state.count[0].sum())
    for lev, v in enumerate(prefix):
        c = int(state.count[lev, v])
        out += math.lgamma(alpha + n) - math.lgamma(alpha + n + m)
        out += math.lgamma(c + m) - math.lgamma(c) if c else math.log(alpha) + math.lgamma(m)
        n = c
    if subtree:
        out += math.lgamma(alpha + n) - math.lgamma(alpha + n + m) + math.log(alpha) + math.lgamma(m)
    return out


def _relabel(paths: np.ndarray) -> np.ndarray:
    """Node labels renumbered per level by first appearance (so equal trees compare equal)."""
    out = np.empty_like(paths)
    for lev in range(paths.shape[1]):
        seen: dict[tuple, int] = {}
        for t in range(paths.shape[0]):
            key = tuple(paths[t, : lev + 1])
            out[t, lev] = seen.setdefault(key, len(seen))
    return out


def sample_trees(factors: Factor, loc: np.ndarray, scale: np.ndarray, depth: int = 2, alpha: float = 1.0,
                 chains: int = 2, warmup: int = 100, draws: int = 200, seed: int = 0) -> TreeDraws:
    """Collapsed Gibbs over nCRP paths of fixed ``depth``: each sweep moves every task, then
    every subtree (a node with all its tasks, so whole districts change region), then takes a
    Metropolis step on the log of each level's (and the tasks') spread per parameter.

    factors: each task's Factor (T, D, D), (T, D), (T,); loc, scale (D,): the data-scaled
    location and scale of the task parameters (root prior N(loc, (2.5 scale)^2); each spread's
    prior HalfNormal(scale / sqrt(depth + 1)), as for a given tree). Returns ``chains * draws``
    draws."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1; got {depth}")
    if alpha <= 0:
        raise ValueError(f"alpha (the nCRP concentration) must be positive; got {alpha}")
    T, D = factors.h.shape
    loc, scale = np.asarray(loc, dtype=np.float64), np.asarray(scale, dtype=np.float64)
    var0 = (2.5 * scale) ** 2
    prior_sd = scale / math.sqrt(depth + 1)
    rng = np.random.default_rng(seed)
    out_paths, out_spreads, out_lm = [], [], []
    first = ward_start(factors, scale, depth)
    for chain in range(chains):
        # the first chain starts from Ward's tree of the tasks' estimates, the others from one
        # path (which the sampler splits): chains that disagree show as clades they weigh apart
        start = first if chain == 0 else np.zeros((T, depth), dtype=np.int64)
        spreads = np.linspace(0.8, 0.3, depth + 1)[:, None] * prior_sd  # decreasing down the tree (``_ordered``)
        state = _State(factors, start, spreads)
        step = np.full((depth + 1, D), 0.3)
        for sweep in range(warmup + draws):
            for t in rng.permutation(T):
                _regraft(state, np.array([t]), depth, None, alpha, loc, var0, rng)
            for lev in range(depth - 1, 0, -1):
                for node in rng.permutation(np.flatnonzero(state.count[lev] > 0)):
                    if state.count[lev, node] == 0:
                        continue
                    members = np.flatnonzero(state.paths[:, lev] == node)
                    _regraft(state, members, lev, int(node), alpha, loc, var0, rng)
            accepted = _move_spreads(state, loc, var0, prior_sd, step, rng)
            if sweep < warmup:  # adapt each proposal towards ~0.4 acceptance
                step *= np.exp(0.1 * (accepted - 0.4))
            else:
                out_paths.append(_relabel(state.paths))
                out_spreads.append(state.spreads.copy())
                out_lm.append(state.log_marginal(loc, var0))
    return TreeDraws(np.stack(out_paths), np.stack(out_spreads), np.asarray(out_lm))


def ward_start(factors: Factor, scale: np.ndarray, depth: int) -> np.ndarray:
    """A starting tree (T, depth): Ward's agglomerative tree of each task's estimate P^-1 h (in
    units of ``scale``; a small ridge keeps it finite), cut at its ``depth`` largest jumps in
    merge height (the largest gives level 1)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    T, D = factors.h.shape
    if T < 3:
        return np.zeros((T, depth), dtype=np.int64)
    ridge = 1e-6 * np.eye(D) * np.diagonal(factors.P, axis1=-2, axis2=-1).mean()
    est = np.linalg.solve(factors.P + ridge, factors.h[..., None])[..., 0] / scale
    Z = linkage(est, method="ward")
    heights = Z[:, 2]
    jumps = np.diff(heights)  # cutting between merges i and i+1 leaves T - 1 - i clusters
    cuts = np.sort(np.argsort(jumps)[::-1][:depth])[::-1]  # fewest clusters (latest cut) first
    out = np.zeros((T, depth), dtype=np.int64)
    for lev, i in enumerate(cuts):
        labels = fcluster(Z, t=0.5 * (heights[i] + heights[i + 1]), criterion="distance")
        out[:, lev] = labels - 1
    for lev in range(1, depth):  # make deeper levels nest in the ones above (Ward's cuts do)
        out[:, lev] = np.unique(out[:, : lev + 1], axis=0, return_inverse=True)[1].ravel()
    return out


def _move_spreads(state: _State, loc, var0, prior_sd, step, rng) -> np.ndarray:
    """One Metropolis step on log(spread) for every (level, parameter); returns acceptances."""
    L1, D = step.shape
    accepted = np.zeros((L1, D))
    current = state.log_marginal(loc, var0)
    for lev in range(L1):
        for d in range(D):
            old = float(state.spreads[lev, d])
            new = old * math.exp(step[lev, d] * rng.normal())
            sd0 = float(prior_sd[d])
            snap = state.snapshot()
            state.spreads[lev, d] = new
            if not _ordered(state.spreads, prior_sd):
                state.spreads[lev, d] = old
                continue
            state.rebuild()
            proposed = state.log_marginal(loc, var0)
            if math.log(rng.uniform()) < proposed + _log_half_normal(new, sd0) - current - _log_half_normal(old, sd0):
                current, accepted[lev, d] = proposed, 1.0
            else:
                state.spreads[lev, d] = old
                state.restore(snap)
    return accepted


def _ordered(spreads: np.ndarray, unit: np.ndarray) -> bool:
    """Whether each level's total spread (summed over parameters in units of ``unit``) is at
    least the next one's: the prior's order constraint, which makes the levels identifiable
    (without it a level of single-child nodes lets the spreads swap levels)."""
    total = ((spreads / unit) ** 2).sum(-1)
    return bool((total[:-1] >= total[1:]).all())


def _log_half_normal(s: float, sd: float) -> float:
    """HalfNormal(sd) log density of a spread s plus log s (the Jacobian of moving log s)."""
    return -0.5 * (s / sd) ** 2 + math.log(s)


def clade_table(paths: np.ndarray) -> dict[tuple[int, frozenset], float]:
    """Posterior probability of each clade: (level, set of tasks under one node) -> share of
    draws in which exactly that set sits under one node of that level. paths (S, T, L)."""
    S, T, L = paths.shape
    counts: dict[tuple[int, frozenset], int] = {}
    for s in range(S):
        for lev in range(L):
            groups: dict[int, list[int]] = {}
            for t in range(T):
                groups.setdefault(int(paths[s, t, lev]), []).append(t)
            for members in groups.values():
                key = (lev, frozenset(members))
                counts[key] = counts.get(key, 0) + 1
    return {k: v / S for k, v in counts.items()}


def together(paths: np.ndarray) -> np.ndarray:
    """Posterior probability that two tasks share a node, per level: (L, T, T). paths (S, T, L)."""
    same = paths[:, :, None, :] == paths[:, None, :, :]  # (S, T, T, L); labels nest, so equal = shared path
    return same.mean(0).transpose(2, 0, 1)


def chains_apart(paths: np.ndarray, chains: int) -> tuple[float, int, tuple[int, int]]:
    """How far the sampler's chains disagree: the largest gap, between two chains, in the
    probability that two tasks share a node of a level (``together`` per chain; draws (S, T, L)
    in chain order, S / chains each). Returns (gap, level, (task, task)); 0 for one chain. A
    chain still stuck in another tree puts that gap near 1; chains drawing one posterior keep it
    at their Monte Carlo error."""
    if chains < 2:
        return 0.0, 0, (0, 0)
    per = np.stack([together(c) for c in np.split(paths, chains)])  # (C, L, T, T)
    gap = per.max(0) - per.min(0)
    lev, i, j = np.unravel_index(int(gap.argmax()), gap.shape)
    return float(gap[lev, i, j]), int(lev), (int(i), int(j))


def consensus(paths: np.ndarray) -> tuple[np.ndarray, float]:
    """The point tree: the sampled tree with the least posterior expected Binder loss summed
    over levels (pairs of tasks together or apart at each level, equal costs; as
    ``TaskRelations.clusters`` for a flat partition). Returns its paths (T, L) and that loss."""
    P = together(paths)
    T = paths.shape[1]
    iu = np.triu_indices(T, 1)
    best, best_loss = 0, math.inf
    for s in np.unique(paths.reshape(len(paths), -1), axis=0, return_index=True)[1]:
        same = paths[s][:, None, :] == paths[s][None, :, :]  # (T, T, L)
        loss = sum(float(np.abs(same[..., lev][iu] - P[lev][iu]).sum()) for lev in range(paths.shape[2]))
        if loss < best_loss:
            best, best_loss = int(s), loss
    return paths[best], best_loss
