"""Built-in synthetic data with planted truth: the demo's data and the tests' ground truth."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["hierarchical_regression", "planted_clusters", "sparse_regression", "subspace_regression",
           "tree_regression", "gated_clusters"]


def hierarchical_regression(n_tasks: int = 12, rows: int = 30, features: int = 3, noise: float = 0.5,
                            seed: int = 0, likelihood: str = "gaussian", groups: int = 2,
                            ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Long-format data from a population of tasks, with groups of tasks that deviate alike.

    Task t's coefficients (intercept first) are ``mu + tau * (2 g_t + e_t) / sqrt(5)`` where
    ``g_t`` is its group's shared deviation and ``e_t`` its own, so tasks of one group are
    related and each coefficient has population sd tau. Group deviations are +-1 per
    coefficient; with two groups the second is minus the first, so the groups sit on opposite
    sides of mu.

    Returns the frame (columns ``task``, ``x1..xD``, ``y``) and the truth: ``mu`` (D+1,),
    ``tau`` (D+1,), ``w`` (T, D+1), ``group`` (T,), ``noise``.
    """
    rng = np.random.default_rng(seed)
    D = features
    mu = np.linspace(1.0, -1.0, D + 1)
    tau = np.full(D + 1, 0.8)
    group = np.arange(n_tasks) % max(groups, 1)
    # unit group deviations with random signs: the planted spread then really is tau
    g = rng.choice([-1.0, 1.0], size=(max(groups, 1), D + 1))
    if groups == 2:
        g[1] = -g[0]
    w = mu + tau * (2 * g[group] + rng.standard_normal((n_tasks, D + 1))) / np.sqrt(5)
    X = rng.standard_normal((n_tasks * rows, D))
    task = np.repeat(np.arange(n_tasks), rows)
    eta = w[task, 0] + (X * w[task, 1:]).sum(1)
    if likelihood == "gaussian":
        y = eta + noise * rng.standard_normal(len(eta))
    elif likelihood == "bernoulli":
        y = (rng.random(len(eta)) < 1 / (1 + np.exp(-eta))).astype(float)
    elif likelihood == "poisson":
        y = rng.poisson(np.exp(np.clip(eta, None, 5))).astype(float)
    else:
        raise ValueError(f"likelihood must be gaussian, bernoulli or poisson; got {likelihood!r}")
    df = pd.DataFrame(X, columns=[f"x{j + 1}" for j in range(D)])
    df.insert(0, "task", [f"task_{t:02d}" for t in task])
    df["y"] = y
    return df, {"mu": mu, "tau": tau, "w": w, "group": group, "noise": np.array(noise)}


def planted_clusters(clusters: int = 3, tasks_per_cluster: int = 10, rows: int = 60, features: int = 2,
                     likelihood: str = "bernoulli", noise: float = 0.5, seed: int = 0,
                     ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Tasks in planted clusters: every task of cluster c has the same coefficients ``theta_c``.

    Cluster centres (intercept first) are well separated: coordinates +-2 (logistic) or +-1.5
    (Gaussian), +-0.7 (Poisson), with random signs, distinct between clusters. Returns the frame (columns
    ``task``, ``x1..xD``, ``y``; tasks ``c<c>_t<j>``) and the truth: ``theta`` (C, D+1),
    ``cluster`` (T,) and ``w`` (T, D+1).
    """
    rng = np.random.default_rng(seed)
    D = features
    scale = {"bernoulli": 2.0, "gaussian": 1.5, "poisson": 0.7}.get(likelihood, 1.0)
    signs: list[tuple] = []
    while len(signs) < clusters:  # distinct sign patterns keep the clusters apart
        s = tuple(rng.choice([-1.0, 1.0], size=D + 1))
        if s not in signs or len(signs) >= 2 ** (D + 1):
            signs.append(s)
    theta = scale * np.array(signs)
    cluster = np.repeat(np.arange(clusters), tasks_per_cluster)
    w = theta[cluster]
    T = len(cluster)
    X = rng.standard_normal((T * rows, D))
    task = np.repeat(np.arange(T), rows)
    eta = w[task, 0] + (X * w[task, 1:]).sum(1)
    if likelihood == "gaussian":
        y = eta + noise * rng.standard_normal(len(eta))
    elif likelihood == "bernoulli":
        y = (rng.random(len(eta)) < 1 / (1 + np.exp(-eta))).astype(float)
    elif likelihood == "poisson":
        y = rng.poisson(np.exp(np.clip(eta, None, 5))).astype(float)
    else:
        raise ValueError(f"likelihood must be gaussian, bernoulli or poisson; got {likelihood!r}")
    names = [f"c{cluster[t]}_t{t % tasks_per_cluster:02d}" for t in range(T)]
    df = pd.DataFrame(X, columns=[f"x{j + 1}" for j in range(D)])
    df.insert(0, "task", [names[t] for t in task])
    df["y"] = y
    return df, {"theta": theta, "cluster": cluster, "w": w}


def sparse_regression(n_tasks: int = 20, features: int = 60, rows: int = 40, shared: int = 5,
                      private_tasks: int = 6, effect: float = 1.0, private_effect: float = 1.5,
                      noise: float = 1.0, test_rows: int = 0, seed: int = 0,
                      ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Joint sparsity with task-private features (issue 19's planted problem: p > n per task).

    Features x0..x{shared-1} matter in every task, with coefficients effect * sign_j * (1 + 0.3 e_tj)
    (a shared sign and size per feature, a task spread); task t < ``private_tasks`` also has
    feature ``shared + t`` with coefficient ``private_effect`` in it alone. Features are standard
    normal, the intercept is 2. Returns the training frame (``rows`` per task), a test frame
    (``test_rows`` per task, same tasks) and the truth: ``w`` (T, features), ``shared`` (features,)
    bool, ``private`` (T, features) bool.
    """
    rng = np.random.default_rng(seed)
    n = rows + test_rows
    X = rng.normal(size=(n_tasks, n, features))
    w = np.zeros((n_tasks, features))
    sign = np.where(rng.random(shared) < 0.5, -1.0, 1.0)
    w[:, :shared] = effect * sign * (1 + 0.3 * rng.normal(size=(n_tasks, shared)))
    private = np.zeros((n_tasks, features), bool)
    for t in range(min(private_tasks, n_tasks, features - shared)):
        w[t, shared + t] = private_effect
        private[t, shared + t] = True
    y = 2.0 + np.einsum("tnf,tf->tn", X, w) + noise * rng.normal(size=(n_tasks, n))
    frames = [pd.DataFrame(X[t], columns=[f"x{j}" for j in range(features)]).assign(task=f"task{t}", y=y[t])
              for t in range(n_tasks)]
    train = pd.concat([f.iloc[:rows] for f in frames], ignore_index=True)
    test = pd.concat([f.iloc[rows:] for f in frames], ignore_index=True)
    return train, test, {"w": w, "shared": np.arange(features) < shared, "private": private}


def subspace_regression(n_tasks: int = 30, features: int = 25, factors: int = 3, rows: int = 30,
                        overlap: float = 0.2, noise: float = 1.0, test_rows: int = 0, seed: int = 0,
                        ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Task coefficients that are sparse combinations of a few basis vectors (issue 19's planted
    subspace): task t belongs to group t mod ``factors`` and uses that group's basis vector with
    a code of size 1-2; a share ``overlap`` of the tasks also uses the next group's vector.
    Basis vectors are N(0, 1) entries scaled to norm 2.5 over the features. Returns the training
    frame, a test frame (``test_rows`` per task) and the truth: ``w`` (T, features),
    ``basis`` (factors, features), ``codes`` (T, factors), ``group`` (T,).
    """
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(factors, features))
    basis *= 2.5 / np.linalg.norm(basis, axis=1, keepdims=True)
    group = np.arange(n_tasks) % factors
    codes = np.zeros((n_tasks, factors))
    codes[np.arange(n_tasks), group] = rng.uniform(1.0, 2.0, n_tasks) * np.where(rng.random(n_tasks) < 0.5, -1, 1)
    both = rng.random(n_tasks) < overlap
    codes[both, (group[both] + 1) % factors] = rng.uniform(0.5, 1.0, both.sum())
    w = codes @ basis
    n = rows + test_rows
    X = rng.normal(size=(n_tasks, n, features))
    y = 1.0 + np.einsum("tnf,tf->tn", X, w) + noise * rng.normal(size=(n_tasks, n))
    frames = [pd.DataFrame(X[t], columns=[f"x{j}" for j in range(features)]).assign(task=f"task{t}", y=y[t])
              for t in range(n_tasks)]
    train = pd.concat([f.iloc[:rows] for f in frames], ignore_index=True)
    test = pd.concat([f.iloc[rows:] for f in frames], ignore_index=True)
    return train, test, {"w": w, "basis": basis, "codes": codes, "group": group}


def tree_regression(branching: Sequence[int] = (4, 3, 4), scales: Sequence[float] = (1.0, 0.6, 0.3),
                    rows: int = 20, features: int = 1, noise: float = 0.5, seed: int = 0,
                    ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Tasks at the leaves of a planted tree: 4 regions > 3 districts each > 4 tasks each by
    default (48 tasks). Every coefficient (intercept first) steps from its parent by Normal(0,
    scale) at each level: ``scales`` are the region, district and task spreads.

    Returns the frame (columns ``task``, ``region``, ``district``, ``x1..xD``, ``y``; district
    names are unique, ``r1-d2``) and the truth: ``mu`` (D+1,), ``region_scale``,
    ``district_scale``, ``tau`` (each a float), ``w`` (T, D+1), ``region`` (T,).
    """
    if len(branching) != 3 or len(scales) != 3:
        raise ValueError("branching and scales need three entries: regions, districts, tasks")
    rng = np.random.default_rng(seed)
    D = features + 1
    mu = np.linspace(1.0, -0.5, D)
    n_r, n_d, n_t = branching
    region = mu + scales[0] * rng.standard_normal((n_r, D))
    district = np.repeat(region, n_d, 0) + scales[1] * rng.standard_normal((n_r * n_d, D))
    w = np.repeat(district, n_t, 0) + scales[2] * rng.standard_normal((n_r * n_d * n_t, D))
    T = len(w)
    r_of, d_of = np.arange(T) // (n_d * n_t), np.arange(T) // n_t
    X = rng.standard_normal((T * rows, features))
    task = np.repeat(np.arange(T), rows)
    y = w[task, 0] + (X * w[task, 1:]).sum(1) + noise * rng.standard_normal(len(task))
    df = pd.DataFrame(X, columns=[f"x{j + 1}" for j in range(features)])
    df.insert(0, "task", [f"t{t:02d}" for t in task])
    df.insert(1, "region", [f"r{r_of[t]}" for t in task])
    df.insert(2, "district", [f"r{r_of[t]}-d{d_of[t] % n_d}" for t in task])
    df["y"] = y
    return df, {"mu": mu, "region_scale": scales[0], "district_scale": scales[1], "tau": scales[2], "w": w,
                "region": r_of}


def gated_clusters(n_tasks: int = 40, clusters: int = 3, rows: int = 20, few_tasks: int = 20, few_rows: int = 5,
                   test_rows: int = 20, flip: float = 0.1, noise: float = 0.5, seed: int = 0,
                   ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Tasks in planted clusters whose cluster is a noisy function of two task features.

    Task features ``f1``, ``f2`` ~ N(0, 1); the cluster is the sector of (f1, f2) (three
    120-degree sectors for 3 clusters), changed to a random other cluster with probability
    ``flip``. Each cluster has one coefficient vector (intercept, slope; coordinates +-1.5).
    ``n_tasks`` tasks have ``rows`` training rows; ``few_tasks`` more have ``few_rows``
    (where the gate has to place them). Every task has ``test_rows`` test rows.

    Returns (train, test, truth): frames with columns ``task``, ``f1``, ``f2``, ``x1``, ``y``; the
    truth has ``theta`` (K, 2), ``cluster`` (T,) and ``few`` (T,) bool.
    """
    rng = np.random.default_rng(seed)
    T = n_tasks + few_tasks
    f = rng.standard_normal((T, 2))
    angle = np.mod(np.arctan2(f[:, 1], f[:, 0]), 2 * np.pi)
    cluster = np.floor(angle / (2 * np.pi / clusters)).astype(int)
    flipped = rng.random(T) < flip
    cluster[flipped] = (cluster[flipped] + rng.integers(1, clusters, flipped.sum())) % clusters
    theta = 1.5 * np.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])[:clusters]
    few = np.arange(T) >= n_tasks
    frames = {"train": [], "test": []}
    for t in range(T):
        for part, n in (("train", few_rows if few[t] else rows), ("test", test_rows)):
            x = rng.standard_normal(n)
            y = theta[cluster[t], 0] + theta[cluster[t], 1] * x + noise * rng.standard_normal(n)
            frames[part].append(pd.DataFrame({"task": f"t{t:02d}", "f1": f[t, 0], "f2": f[t, 1], "x1": x, "y": y}))
    return (pd.concat(frames["train"], ignore_index=True), pd.concat(frames["test"], ignore_index=True),
            {"theta": theta, "cluster": cluster, "few": few})
