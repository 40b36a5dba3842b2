"""TaskRelations: posterior draws of a T x T task-relation matrix with task names.

What the matrix measures depends on the model family and is stated in ``kind``:
similarity of task deviations (hierarchical), co-clustering probability (Dirichlet process),
task correlation (multi-task GP, task-relationship learning).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["TaskRelations", "TooManyTasks", "adjusted_rand_index", "binder_loss", "MAX_VALUES", "MIN_DRAWS"]

#: numbers of (S, T, T) relation draws held at most (1 GB in float64): more draws are thinned
MAX_VALUES = 2 ** 27
#: fewest draws a relation is summarised from; with fewer fitting, ``Posterior.relations`` refuses
MIN_DRAWS = 100


class TooManyTasks(ValueError):
    """The relations among this many tasks would not fit in memory: name a subset of tasks."""


class TaskRelations:
    """Draws of a task-relation matrix.

    Parameters
    ----------
    draws : array, shape (S, T, T)
        One relation matrix per posterior draw (S = 1 for a point estimate).
    names : list of str, length T
    kind : str
        What the entries measure.
    point_estimate : bool
        True when ``draws`` holds a single point estimate (type-II ML, MAP): intervals are
        then not available rather than invented.
    signed : bool
        True when entries are signed (correlations): ``relations.csv`` then adds ``p_positive``.
    null : array (M,), optional
        Draws of one entry for two unrelated tasks (``TaskPrior.relation_null``): a pair is
        credibly related only when it stands out from these (``credible``). None: the null is 0.
    cluster_counts : array (S,), optional
        Clustering models: the number of occupied clusters in each draw; ``clusters`` then
        returns a partition with the most probable number of clusters.
    tree : array (T - 1, 4), optional
        A tree of the tasks the model holds (a learned tree), as a scipy linkage matrix: the
        plot orders the tasks by it and draws it above the heatmap.
    """

    def __init__(self, draws: np.ndarray, names: list[str], kind: str, point_estimate: bool = False,
                 signed: bool = False, null: np.ndarray | None = None,
                 cluster_counts: np.ndarray | None = None, tree: np.ndarray | None = None):
        draws = np.asarray(draws, dtype=float)
        if draws.ndim == 2:
            draws = draws[None]
        if draws.ndim != 3 or draws.shape[1] != draws.shape[2] or draws.shape[1] != len(names):
            raise ValueError(f"relation draws must have shape (S, {len(names)}, {len(names)}); got {draws.shape}")
        self.draws = draws
        self.names = list(names)
        self.kind = kind
        self.point_estimate = point_estimate
        self.signed = bool(signed)  # entries can be negative (correlations): relations.csv adds p_positive
        self.null = None if null is None else np.asarray(null, dtype=float).ravel()
        self.cluster_counts = None if cluster_counts is None else np.asarray(cluster_counts).ravel()
        self.tree = None if tree is None else np.asarray(tree, dtype=float)

    def __repr__(self) -> str:
        return (f"TaskRelations({len(self.names)} tasks, {self.draws.shape[0]} draws"
                f"{', point estimate' if self.point_estimate else ''}: {self.kind})")

    def _frame(self, m: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(m, index=pd.Index(self.names, name="task_a"),
                            columns=pd.Index(self.names, name="task_b"))

    def mean(self) -> pd.DataFrame:
        """Posterior mean, T x T, labelled."""
        return self._frame(self.draws.mean(0))

    def interval(self, prob: float = 0.9) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Equal-tailed credible interval (lower, upper), each T x T."""
        if self.point_estimate:
            raise ValueError("these relations are a point estimate (no posterior): no intervals; "
                             "fit with method='nuts' or 'svi' for intervals")
        if not 0 < prob < 1:
            raise ValueError(f"prob must lie in (0, 1); got {prob}")
        lo, hi = np.quantile(self.draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        return self._frame(lo), self._frame(hi)

    def prob_positive(self) -> pd.DataFrame:
        """Posterior probability that each entry is > 0."""
        return self._frame((self.draws > 0).mean(0))

    def null_range(self, prob: float = 0.9) -> tuple[float, float]:
        """The central ``prob`` range of an entry for unrelated tasks: (0, 0) without a null."""
        if self.null is None:
            return 0.0, 0.0
        lo, hi = np.quantile(self.null, [(1 - prob) / 2, (1 + prob) / 2])
        return float(lo), float(hi)

    def credible(self, prob: float = 0.9) -> pd.DataFrame:
        """T x T booleans: pairs whose relation stands out from unrelated tasks', i.e. lies
        above the central (1 + prob) / 2 range of the null (or below it) with posterior
        probability at least ``prob``. Without a null (correlations) that is: the ``prob``
        interval excludes 0. For unrelated tasks whose data pin the relation down, about
        (1 - prob) / 2 of the pairs pass (5% at 0.9); fewer where the data leave it uncertain.
        A point estimate has no posterior: nothing passes."""
        if not 0 < prob < 1:
            raise ValueError(f"prob must lie in (0, 1); got {prob}")
        T = len(self.names)
        if self.point_estimate:
            return self._frame(np.zeros((T, T), dtype=bool))
        lo, hi = self.null_range((1 + prob) / 2)
        if self.null is None:
            q_lo, q_hi = np.quantile(self.draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
            out = (q_lo > 0) | (q_hi < 0)
        else:
            out = ((self.draws > hi).mean(0) >= prob) | ((self.draws < lo).mean(0) >= prob)
        np.fill_diagonal(out, False)
        return self._frame(out)

    def to_frame(self, prob: float = 0.9, extra: bool = False) -> pd.DataFrame:
        """Long format, one row per pair a < b: task_a, task_b, mean, q05, q95 (NaN for point
        estimates); with ``extra`` also p_positive."""
        T = len(self.names)
        a, b = np.triu_indices(T, k=1)
        m = self.draws.mean(0)
        lo_name, hi_name = f"q{round(100 * (1 - prob) / 2):02d}", f"q{round(100 * (1 + prob) / 2):02d}"
        if self.point_estimate:
            lo = hi = np.full((T, T), np.nan)
        else:
            lo, hi = np.quantile(self.draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        out = pd.DataFrame({"task_a": np.asarray(self.names, dtype=object)[a],
                            "task_b": np.asarray(self.names, dtype=object)[b],
                            "mean": m[a, b], lo_name: lo[a, b], hi_name: hi[a, b]})
        if extra:
            out["p_positive"] = (self.draws > 0).mean(0)[a, b]
            out["credible"] = self.credible(prob).to_numpy()[a, b]
        return out

    def linkage(self) -> np.ndarray | None:
        """The model's own tree of the tasks where it has one (a learned tree), else
        average-linkage clustering of the tasks on max(mean) - mean (scipy's linkage matrix,
        (T - 1, 4)); None for fewer than 3 tasks."""
        from scipy.cluster.hierarchy import linkage
        from scipy.spatial.distance import squareform

        if self.tree is not None:
            return self.tree
        if len(self.names) < 3:
            return None
        m = self.draws.mean(0)
        d = np.clip(m.max() - (m + m.T) / 2, 0, None)
        np.fill_diagonal(d, 0)
        return linkage(squareform(d, checks=False), method="average")

    def order(self) -> list[int]:
        """Task order that puts related tasks together: the leaves of ``linkage()``."""
        from scipy.cluster.hierarchy import leaves_list

        Z = self.linkage()
        return list(range(len(self.names))) if Z is None else list(leaves_list(Z))

    def blocks(self, max_blocks: int = 12, prob: float = 0.9) -> pd.DataFrame:
        """The heatmap's order cut into at most ``max_blocks`` contiguous blocks (``linkage()``
        cut by scipy's ``fcluster``, criterion maxclust): an overview that names every task
        when there are too many to label the heatmap's axes.

        Returns one row per block, in heatmap order: ``block`` (1, 2, ...), ``size``,
        ``mean_relation`` (mean posterior-mean relation between distinct members; NaN for a
        single task), ``credible_share`` (share of those pairs credibly related at ``prob``),
        ``tasks`` (the members, comma-separated, in heatmap order).
        """
        from scipy.cluster.hierarchy import fcluster, leaves_list

        if max_blocks < 1:
            raise ValueError(f"max_blocks must be at least 1; got {max_blocks!r}")
        T = len(self.names)
        Z = self.linkage()
        labels = np.ones(T, dtype=int) if Z is None else fcluster(Z, t=min(max_blocks, T), criterion="maxclust")
        mean, cred = self.draws.mean(0), self.credible(prob).to_numpy()
        rows, seen = [], {}
        order = range(T) if Z is None else leaves_list(Z)  # order(), from the linkage already made
        for i in order:  # blocks numbered by where they first appear in the heatmap
            seen.setdefault(labels[i], []).append(i)
        for n, members in enumerate(seen.values(), 1):
            m = np.asarray(members)
            off = ~np.eye(len(m), dtype=bool)
            rows.append({"block": n, "size": len(m),
                         "mean_relation": float(mean[np.ix_(m, m)][off].mean()) if len(m) > 1 else float("nan"),
                         "credible_share": float(cred[np.ix_(m, m)][off].mean()) if len(m) > 1 else float("nan"),
                         "tasks": ", ".join(str(self.names[i]) for i in m)})
        return pd.DataFrame(rows)

    def clusters(self, num_clusters: int | None = None, max_sweeps: int = 50) -> pd.DataFrame:
        """A point partition of the tasks minimising the posterior expected Binder loss among
        partitions with ``num_clusters`` clusters.

        ``num_clusters`` None: the most probable number of occupied clusters where the model
        reports it (``cluster_counts``, as ``Posterior.num_clusters()``), so the partition and
        the cluster-count posterior agree by construction; otherwise unconstrained. Binder loss
        with equal costs counts the task pairs clustered together in one partition and apart in
        the other; its posterior expectation depends on the draws only through the mean
        co-clustering matrix P: E[L(c)] = sum_{i<j} [c_i = c_j] (1 - P_ij) + [c_i != c_j] P_ij.
        Unconstrained it tends to split uncertain tasks into singletons. Candidates: average-,
        complete- and single-linkage cuts of 1 - P, and the 0.5-threshold partitions of up to
        200 draws; the best is refined by moving single tasks while the loss falls (keeping the
        number of clusters where it is fixed). Entries must be probabilities (co-clustering).

        Returns a frame task, cluster (0, 1, ... by first appearance), probability (mean
        co-clustering probability with the other members of its cluster; for a singleton, the
        mean probability of being apart from every other task); ``attrs``: ``expected_loss``,
        ``loss`` ("binder", with the number of clusters where fixed) and ``num_clusters``.
        """
        if self.draws.min() < -1e-9 or self.draws.max() > 1 + 1e-9:
            raise ValueError("clusters() needs co-clustering probabilities in [0, 1]; "
                             f"these relations are: {self.kind}")
        P = self.draws.mean(0)
        P = (P + P.T) / 2
        T = len(self.names)
        K = num_clusters
        if K is None and self.cluster_counts is not None:
            vals, n = np.unique(self.cluster_counts, return_counts=True)
            K = int(vals[np.argmax(n)])
        if K is not None and not 1 <= int(K) <= T:
            raise ValueError(f"num_clusters must be between 1 and {T} (the tasks); got {K!r}")
        cands = [np.zeros(T, dtype=int), np.arange(T)]
        if T >= 3:
            from scipy.cluster.hierarchy import fcluster, linkage
            from scipy.spatial.distance import squareform

            d = np.clip(1 - P, 0, None)
            np.fill_diagonal(d, 0)
            cond = squareform(d, checks=False)
            for method in ("average", "complete", "single"):
                link = linkage(cond, method=method)
                cands += [fcluster(link, k, criterion="maxclust") for k in range(1, T + 1)]
        step = max(1, self.draws.shape[0] // 200)
        for R in self.draws[::step]:
            cands.append(_components(R > 0.5))
        if K is not None:
            cands = [c for c in cands if len(np.unique(c)) == K] or cands
        best = min(cands, key=lambda c: binder_loss(c, P))
        fixed = K is not None and len(np.unique(best)) == K
        best = _relabel(_refine(np.asarray(best), P, max_sweeps, keep_count=fixed))
        same = best[:, None] == best[None, :]
        prob = np.empty(T)
        for i in range(T):
            mates = same[i].copy()
            mates[i] = False
            others = np.arange(T) != i
            prob[i] = P[i, mates].mean() if mates.any() else (1 - P[i, others]).mean() if others.any() else 1.0
        out = pd.DataFrame({"task": self.names, "cluster": best, "probability": prob})
        out.attrs["expected_loss"] = binder_loss(best, P)
        out.attrs["num_clusters"] = int(len(np.unique(best)))
        out.attrs["loss"] = f"binder, {len(np.unique(best))} clusters fixed" if fixed else "binder"
        return out

    def plot(self, path: str | Path | None = None, title: str | None = None, prob: float = 0.9):
        """Heatmap ordered so related tasks sit together, coloured only where the pair is
        credibly related (``credible(prob)``; other cells grey); saved as PNG when ``path`` is
        given. Above 60 tasks the labels give way to the ordering; the title counts the pairs."""
        from .plots import heatmap

        return heatmap(self, path=path, title=title, prob=prob)

    def graph(self, threshold: float = 0.5, prob: float = 0.9, path: str | Path | None = None,
              title: str | None = None) -> pd.DataFrame:
        """Credibly related pairs (``credible(prob)``) whose |posterior mean| >= ``threshold``.

        Returns a frame task_a, task_b, mean, interval bounds, p_positive, credible and ``sign``
        (+1 related, -1 negatively related), strongest first; draws a network of those pairs,
        tasks on a circle in ``order()`` (saved as PNG when ``path`` is given; the figure is in
        ``frame.attrs["figure"]``).
        """
        frame = self.to_frame(prob=prob, extra=True)
        keep = frame["credible"] & (frame["mean"].abs() >= threshold)
        out = frame[keep].copy()
        out["sign"] = np.sign(out["mean"]).astype(int)
        out = out.iloc[np.argsort(-out["mean"].abs().to_numpy(), kind="stable")].reset_index(drop=True)
        from .plots import graph

        out.attrs["figure"] = graph(self, out, path=path, title=title)
        return out


def binder_loss(labels: np.ndarray, P: np.ndarray) -> float:
    """Posterior expected Binder loss (equal costs, counted over pairs i < j) of partition
    ``labels`` (T,) given the mean co-clustering matrix ``P`` (T, T)."""
    same = np.asarray(labels)[:, None] == np.asarray(labels)[None, :]
    a, b = np.triu_indices(len(labels), k=1)
    return float(np.where(same[a, b], 1 - P[a, b], P[a, b]).sum())


def _components(adj: np.ndarray) -> np.ndarray:
    """Connected components of a boolean adjacency matrix, as labels (T,)."""
    T = adj.shape[0]
    labels = -np.ones(T, dtype=int)
    c = 0
    for i in range(T):
        if labels[i] >= 0:
            continue
        stack = [i]
        labels[i] = c
        while stack:
            j = stack.pop()
            for k in np.flatnonzero(adj[j] & (labels < 0)):
                labels[k] = c
                stack.append(k)
        c += 1
    return labels


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Cluster labels 0, 1, ... in order of first appearance."""
    seen: dict[int, int] = {}
    return np.array([seen.setdefault(int(x), len(seen)) for x in labels])


def _refine(labels: np.ndarray, P: np.ndarray, max_sweeps: int, keep_count: bool = False) -> np.ndarray:
    """Greedy single-task moves (to another cluster or a new singleton) while the Binder loss
    falls; ``keep_count``: only to another existing cluster, never emptying one."""
    labels = labels.copy()
    T = len(labels)
    Q = P.copy()
    np.fill_diagonal(Q, 0)
    for _ in range(max_sweeps):
        moved = False
        for i in range(T):
            # loss terms involving i when in cluster c: sum_{j in c} (1 - P_ij) + sum_{j not in c} P_ij
            #   = const + sum_{j in c, j != i} (1 - 2 P_ij)
            if keep_count and (labels == labels[i]).sum() == 1:
                continue  # moving the last member would remove a cluster
            options = list(np.unique(labels)) + ([] if keep_count else [labels.max() + 1])
            costs = []
            for c in options:
                members = (labels == c)
                members[i] = False
                costs.append((1 - 2 * Q[i, members]).sum())
            new = options[int(np.argmin(costs))]
            cur = costs[options.index(labels[i])]
            if min(costs) < cur - 1e-12 and new != labels[i]:
                labels[i] = new
                moved = True
        if not moved:
            break
    return labels


def adjusted_rand_index(a, b) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) between two labelings of the same items."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"labelings must be 1-d of equal length; got {a.shape} and {b.shape}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    index = comb(table).sum()
    sa, sb, total = comb(table.sum(1)).sum(), comb(table.sum(0)).sum(), comb(len(a))
    expected = sa * sb / total if total else 0.0
    top = (sa + sb) / 2
    if top == expected:
        return 1.0
    return float((index - expected) / (top - expected))
