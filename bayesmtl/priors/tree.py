"""Tasks at the leaves of a given tree (Daumé 2009, with the tree known): parameters diffuse
from the root down, so tasks under one node are closer than tasks under different ones.

The tree comes from task-level columns, outermost first (``tree="region/district"``: each
district lies in one region, each task in one district). Sites (D task-varying parameters,
T tasks, n_l nodes at level l):

- ``mu`` (D,): the root;
- for each level column ``c``: ``c_scale`` (D,), how far its nodes stray from their parents,
  and ``c_mean`` (n_l, D) in a plate named ``c`` (labelled by the column's categories);
- ``tau`` (D,), how far tasks stray from their node, and ``w`` (T, D).

The package non-centres ``c_mean`` and ``w`` for the samplers (``reparam``), as for a user's
prior. A new task must sit under a node seen in training; its parameters are drawn from that
node (derived by rerunning ``sample`` with the tree's sites fixed to each draw).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from ..diagnostics import Problem
from ..protocol import Tasks
from .base import TaskPrior, as_distribution
from .hierarchical import _bound, _vec, location_default, spread_default

__all__ = ["TreeHierarchy", "TreePopulation"]

#: a learned tree's chains disagree (``TreeHierarchy.problems``) when two of them put a pair of
#: tasks under one node in shares of their draws this far apart (``tree_learn.chains_apart``)
CHAINS_APART = 0.4


def _levels(tree: str | Sequence[str]) -> list[str]:
    """Column names from ``"region/district"`` or a sequence, checked."""
    cols = tree.split("/") if isinstance(tree, str) else list(tree) if isinstance(tree, Sequence) else None
    if not cols or not all(isinstance(c, str) and c.strip() for c in cols):
        raise ValueError(f"tree must name task-level columns, outermost first, e.g. 'region/district' or "
                         f"['region', 'district']; got {tree!r}")
    cols = [c.strip() for c in cols]
    if len(set(cols)) < len(cols):
        raise ValueError(f"tree names a column twice: {tree!r}")
    reserved = {"task", "feature"} & set(cols)
    if reserved:
        raise ValueError(f"tree level {sorted(reserved)[0]!r} clashes with a dim the model names; rename the column")
    return cols


class TreePopulation(NamedTuple):
    """The prior of every task's parameters given the tree: w_t ~ N(mean_t, diag(tau)^2)."""

    mean: torch.Tensor  # (..., T, D): each task's node
    tau: torch.Tensor   # (..., D)


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class TreeHierarchy(TaskPrior):
    """Task parameters that diffuse down a given tree: root ``mu`` -> one mean per node of each
    level -> tasks.

    Parameters
    ----------
    tree : str or sequence of str
        Task-level columns, outermost first: ``"region/district"`` or ``["region", "district"]``.
        Declare them with ``MultiTaskData.from_frame(..., task_features=[...])``; each must be
        categorical and nested (a node lies under one parent). ``"learn"``: the tree is learned
        from the tasks' data (``priors.tree_learn``: a nested Chinese restaurant process of
        ``depth`` levels sampled by collapsed Gibbs); the fit then uses its point tree, whose
        levels are named ``level1``, ``level2``, ... and whose clade probabilities
        ``post.tree()`` reports.
    mean : pyro distribution, default data-scaled
        Prior of each entry of the root ``mu`` (D,); default Normal(loc, 2.5 scale) as for
        ``Hierarchical``.
    scale : pyro distribution, default data-scaled
        Prior of every level's spread (each ``<column>_scale`` and ``tau``, (D,) each). Default:
        HalfNormal(scale / sqrt(L + 1)) for L levels, so that the spreads of the L + 1 steps from
        the root to a task add up to the hierarchical model's default spread.
    depth, alpha, chains, warmup, draws
        ``tree="learn"`` only: levels of the learned tree (2: groups and subgroups of tasks),
        the nested CRP's concentration, and the Gibbs sampler's chains and sweeps. The chains
        start far apart (see ``tree_learn.sample_trees``) and need the warmup: with 200 sweeps
        one chain was still in another tree on two of four planted seeds (``problems`` says so
        after a fit: ``CHAINS_APART``).
    """

    relation_kind = ("cosine similarity of task parameter vectors, centred and scaled across tasks "
                     "(tasks under one node should come out alike)")

    def __init__(self, tree: str | Sequence[str], mean=None, scale=None, depth: int = 2, alpha: float = 1.0,
                 chains: int = 2, warmup: int = 1000, draws: int = 200):
        self.learn = isinstance(tree, str) and tree.strip() == "learn"
        if self.learn:
            if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
                raise ValueError(f"depth must be an integer >= 1; got {depth!r}")
            if not float(alpha) > 0:
                raise ValueError(f"alpha (the nested CRP's concentration) must be positive; got {alpha!r}")
            for name, v in (("chains", chains), ("warmup", warmup), ("draws", draws)):
                if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "warmup" else 1):
                    raise ValueError(f"{name} must be an integer >= {0 if name == 'warmup' else 1}; got {v!r}")
        self.tree = [f"level{k + 1}" for k in range(depth)] if self.learn else _levels(tree)
        self.mean = None if mean is None else as_distribution(mean, "mean")
        self.scale = None if scale is None else as_distribution(scale, "scale")
        self.depth, self.alpha = int(depth), float(alpha)
        self.chains, self.warmup, self.draws = chains, warmup, draws
        #: a learned tree, set by ``learn_structure``: the point tree's node of each
        #: task per level (T lists of L ints), and the clades' posterior probabilities
        self.learned: list[list[int]] | None = None
        self.clades: list[dict] | None = None
        self.tree_info: dict | None = None

    def bind(self, loc, scale):
        per_step = spread_default(scale / math.sqrt(len(self.tree) + 1))
        return _bound(self, {"mean": location_default(loc, scale), "scale": per_step})

    def defaults(self):
        return [k for k in ("mean", "scale") if getattr(self, k) is None]

    def _parents(self, tasks: Tasks) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """Per level: (each task's node code (T,), each node's parent code (n_l,), n_l)."""
        if self.learn:
            return self._learned_parents(tasks)
        out, above = [], None
        for col in self.tree:
            codes = tasks.features[col].long()  # a column not declared: one error naming those that are
            if col not in tasks.levels:
                raise ValueError(f"tree level {col!r} is numeric; the tree needs categories (e.g. "
                                 f"df[{col!r}] = df[{col!r}].astype(str))")
            n = len(tasks.levels[col])
            parent = codes.new_zeros(n)
            if above is not None:
                parent[codes] = above
                if not _tracing():  # one comparison, not a loop: sample runs at every untraced evaluation
                    self._check_nested(col, codes, above, parent, tasks)
            out.append((codes, parent, n))
            above = codes
        return out

    def _learned_parents(self, tasks: Tasks) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """``_parents`` of the learned point tree (before learning, for checks: one path)."""
        codes = torch.zeros(tasks.n, self.depth, dtype=torch.long) if self.learned is None else \
            torch.as_tensor(self.learned, dtype=torch.long)
        if codes.shape[0] != tasks.n:
            raise ValueError(f"the learned tree places {codes.shape[0]} tasks; this program has {tasks.n}")
        codes = codes.to(tasks.like.device if tasks.like is not None else "cpu")
        out = []
        for lev in range(self.depth):
            n = int(codes[:, lev].max()) + 1
            parent = codes.new_zeros(n)
            if lev:
                parent[codes[:, lev]] = codes[:, lev - 1]
            out.append((codes[:, lev], parent, n))
        return out

    def check_learnable(self, kind: str, shared) -> None:
        """Raise ValueError when a tree cannot be learned for this likelihood ``kind`` or with
        shared features (a given tree takes any)."""
        if not self.learn:
            return
        if kind not in ("gaussian", "bernoulli"):
            raise ValueError(f"tree='learn' takes a gaussian or bernoulli likelihood; this one is {kind!r}")
        if shared:
            raise ValueError("tree='learn' does not take shared features yet; drop shared= or give the tree")

    def learn_structure(self, model, data) -> TreeHierarchy:
        """With ``tree="learn"`` (and no tree yet), a copy holding the tree learned from the
        tasks' data: nested CRP draws by collapsed Gibbs (``tree_learn.sample_trees``, seeded
        from torch's generator, which ``fit`` seeds), their point tree (least expected Binder
        loss over levels) and each clade's posterior probability."""
        if not self.learn or self.learned is not None:
            return self
        from . import tree_learn as tl

        self.check_learnable(model.likelihood.kind, getattr(model, "shared", ()))
        X, kind = model.design(data)[0], model.likelihood.kind
        loc, scale, _ = model.scaling(data)
        seed = int(torch.randint(2**31, (1,)))
        factors = tl.task_factors(X, data.y, data.task, data.n_tasks, kind, 2.5 * scale.double())
        draws = tl.sample_trees(factors, loc.double().cpu().numpy(), scale.double().cpu().numpy(), depth=self.depth,
                                alpha=self.alpha, chains=self.chains, warmup=self.warmup, draws=self.draws, seed=seed)
        point, loss = tl.consensus(draws.paths)
        probs = tl.clade_table(draws.paths)
        together = tl.together(draws.paths)
        out = copy.copy(self)
        out.learned = point.tolist()
        out.clades = []
        for lev in range(self.depth):
            for k in range(int(point[:, lev].max()) + 1):
                members = np.flatnonzero(point[:, lev] == k)
                pairs = together[lev][np.ix_(members, members)]
                within = float(pairs[np.triu_indices(len(members), 1)].mean()) if len(members) > 1 else 1.0
                clade = probs.get((lev, frozenset(members.tolist())), 0.0)
                out.clades.append({"level": self.tree[lev], "node": f"{self.tree[lev]}-{k + 1}",
                                   "tasks": members.tolist(), "probability": clade, "together": within})
        gap, lev, pair = tl.chains_apart(draws.paths, self.chains)
        out.tree_info = {"draws": int(len(draws.paths)), "binder_loss": float(loss),
                         "spreads": draws.spreads.mean(0).tolist(), "chains_apart": gap,
                         "chains_apart_at": [self.tree[lev], *(data.task_names[t] for t in pair)]}
        return out

    def problems(self) -> list:
        """A learned tree whose sampler chains disagree (``tree_learn.chains_apart`` above
        ``CHAINS_APART``): its clade probabilities mix trees the chains have not left."""
        info = self.tree_info or {}
        gap = info.get("chains_apart", 0.0)
        if gap <= CHAINS_APART:
            return []
        level, a, b = info["chains_apart_at"]
        return [Problem("tree_chains", gap, CHAINS_APART, (a, b),
                        f"the learned tree's {self.chains} sampler chains disagree: the share of draws with tasks "
                        f"{a} and {b} under one {level} node differs by {gap:.2f} between two chains, so the clade "
                        f"probabilities mix trees a chain has not left; raise warmup= (now {self.warmup}) or "
                        f"draws= (now {self.draws})")]

    def sample_new(self, samples, tasks, generator):
        """Given tree: None (the program reruns with the tree's sites fixed). Learned tree: each
        new task takes a path by the nested CRP's predictive rule on the point tree (an
        existing node with probability proportional to its tasks, a new one with ``alpha``),
        its node mean from the draw (or, for a new node, drawn from its parent), then w."""
        if not self.learn:
            return None
        codes = np.asarray(self.learned)
        mu = samples["mu"]
        S, D = mu.shape[0], mu.shape[-1]
        seed = int(torch.randint(2**31, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            z = torch.randn(S, tasks.n, self.depth + 1, D, dtype=mu.dtype).to(mu.device)
        means = [samples[f"{col}_mean"] for col in self.tree]
        spreads = [samples[f"{col}_scale"] for col in self.tree] + [samples["tau"]]
        # each level's children of every node (the root is -1) and their sizes, for the CRP's rule
        children = [{-1: np.unique(codes[:, 0], return_counts=True)}]
        children += [{int(p): np.unique(codes[codes[:, lev - 1] == p, lev], return_counts=True)
                      for p in np.unique(codes[:, lev - 1])} for lev in range(1, self.depth)]
        out = mu.new_empty(S, tasks.n, D)
        rows = torch.arange(S, device=mu.device)
        for i in range(tasks.n):  # vectorised over the S draws: each draw walks its own path
            node, fresh, loc = np.full(S, -1), np.zeros(S, dtype=bool), mu.clone()
            for lev in range(self.depth):
                u, choice = rng.uniform(size=S), np.full(S, -1)
                for parent, (kids, n) in children[lev].items():
                    sel = ~fresh & (node == parent)
                    if sel.any():
                        k = np.searchsorted(np.cumsum(np.append(n, self.alpha)) / (n.sum() + self.alpha), u[sel])
                        choice[sel] = np.where(k < len(kids), kids[np.minimum(k, len(kids) - 1)], -1)
                fresh |= choice < 0  # a new node here: it and every node below it drawn from the parent
                old = torch.as_tensor(~fresh, device=mu.device)
                pick = torch.as_tensor(np.maximum(choice, 0), device=mu.device)
                loc = torch.where(old.unsqueeze(-1), means[lev][rows, pick], loc + spreads[lev] * z[:, i, lev])
                node = choice
            out[:, i] = loc + spreads[-1] * z[:, i, -1]
        return out

    def relation_tree(self):
        """The learned point tree as a scipy linkage matrix (T - 1, 4): tasks join within their
        deepest node at height 1, nodes within their parent at the next height, the top level
        at the root (depth + 1). None for a given tree, or fewer than 2 tasks."""
        if not self.learn or self.learned is None or len(self.learned) < 2:
            return None
        codes = np.asarray(self.learned)
        T, rows = len(codes), []

        def merge(ids: list[int], height: float) -> int:
            acc = ids[0]
            for other in ids[1:]:
                size = sizes[acc] + sizes[other]
                rows.append([acc, other, height, size])
                acc = T + len(rows) - 1
                sizes[acc] = size
            return acc

        sizes = {t: 1 for t in range(T)}
        current = {t: t for t in range(T)}  # task -> its cluster id
        for lev in range(self.depth - 1, -2, -1):  # deepest nodes first, the root (-1) last
            keys = [tuple(codes[t, : lev + 1]) for t in range(T)]
            for key in dict.fromkeys(keys):
                ids = list(dict.fromkeys(current[t] for t in range(T) if keys[t] == key))
                top = merge(ids, float(self.depth - lev))
                for t in range(T):
                    if keys[t] == key:
                        current[t] = top
        return np.asarray(rows, dtype=float)

    def coords(self, feature_names=()):
        if not self.learn or self.learned is None:
            return {}
        codes = np.asarray(self.learned)
        return {col: [f"{col}-{k + 1}" for k in range(int(codes[:, lev].max()) + 1)]
                for lev, col in enumerate(self.tree)}

    def _check_nested(self, col: str, codes: torch.Tensor, above: torch.Tensor, parent: torch.Tensor,
                      tasks: Tasks) -> None:
        """Raise when a node of ``col`` has tasks under two parents (``parent[codes]`` then
        differs from some task's own parent ``above``)."""
        bad = torch.nonzero(parent[codes] != above).flatten()
        if bad.numel():
            i = int(bad[0])
            child = int(codes[i])
            outer = self.tree[self.tree.index(col) - 1]
            names = tasks.levels[outer]
            a, b = sorted((int(parent[child]), int(above[i])))
            raise ValueError(f"tree: {col} {tasks.levels[col][child]!r} lies in two {outer}s "
                             f"({names[a]!r} and {names[b]!r}); a node needs one parent "
                             f"(give nodes unique names, e.g. '{outer}-{col}')")

    def sample(self, tasks: Tasks) -> torch.Tensor:
        pop = self.population(tasks)
        with tasks.plate:
            return pyro.sample("w", dist.Normal(pop.mean, pop.tau).to_event(1))

    def population(self, tasks: Tasks) -> TreePopulation:
        """Sample the root, the level spreads, the node means and ``tau``; returns the prior of
        ``w``: w_t ~ N(mean_t, diag(tau)^2), mean (..., T, D) each task's node, tau (..., D).
        Given these each task's w is Gaussian, which the collapsed Gaussian form integrates out
        (``marginals.tree_gaussian``)."""
        like, D = tasks.like, tasks.dims
        bound = self.bind(tasks.loc, tasks.scale) if self.defaults() else self  # fit binds once, up front
        levels = self._parents(tasks)
        # sites outside a plate broadcast against one (their batch dims end in a 1 under a batch of
        # chains); nodes inside one are gathered by their children's parent codes
        loc = pyro.sample("mu", _vec(bound.mean, D, like))
        for depth, (col, (_, parent, n)) in enumerate(zip(self.tree, levels, strict=True)):
            spread = pyro.sample(f"{col}_scale", _vec(bound.scale, D, like))
            with pyro.plate(col, n):
                node = pyro.sample(f"{col}_mean", dist.Normal(loc if depth == 0 else loc[..., parent, :], spread)
                                   .to_event(1))
            loc = node
        tau = pyro.sample("tau", _vec(bound.scale, D, like))
        return TreePopulation(loc[..., levels[-1][0], :], tau)

    def __repr__(self):
        mean = "data-scaled" if self.mean is None else self.mean
        scale = "data-scaled" if self.scale is None else self.scale
        tree = f"'learn', depth={self.depth}, alpha={self.alpha}" if self.learn else repr("/".join(self.tree))
        return f"TreeHierarchy(tree={tree}, mean={mean}, scale={scale})"
