"""Task clustering with gating by task features (Bakker & Heskes 2003): the DP model's cluster
machinery (assignments summed out exactly, label-free outputs) with each task's cluster
probabilities given by a softmax gate on its task-level features
(``bayesmtl.priors.GatedClusters``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from bayesmtl.data import MultiTaskData
from bayesmtl.likelihoods import Likelihood
from bayesmtl.priors import gating as gp

from .dp_clustering import DPClustering

__all__ = ["GatedClusters"]


class GatedClusters(DPClustering):
    """Multi-task GLM whose tasks fall in clusters, each task's cluster probabilities set by
    its task-level features.

    Parameters
    ----------
    features : str or sequence of str
        Task-level columns the gate reads (``MultiTaskData.from_frame(..., task_features=[...])``).
    clusters : int, default 5
        Upper bound on the number of clusters.
    likelihood : as ``DPClustering`` (None: Bernoulli for a 0/1 target, Gaussian otherwise)
    prior : bayesmtl.priors.GatedClusters, optional
        Instead of ``features`` and ``clusters``, a prior with its own settings.
    intercept, shared, shared_prior
        As in ``MultiTaskModel``.
    """

    name = "gated-clusters"
    unidentified_sites = DPClustering.unidentified_sites + ("gate", "task_weights")

    def __init__(self, features: str | Sequence[str] | None = None, clusters: int = 5,
                 likelihood: str | Likelihood | None = None, prior: gp.GatedClusters | None = None,
                 intercept: bool = True, shared: Sequence[str] = (), shared_prior=None):
        if prior is not None and not isinstance(prior, gp.GatedClusters):
            raise TypeError(f"prior must be bayesmtl.priors.GatedClusters; got {type(prior).__name__}")
        if (prior is None) == (features is None):
            raise ValueError("give the gate's task features (features=[...]) or a GatedClusters prior, not both"
                             if prior is not None else "GatedClusters needs features=, the task-level columns "
                             "the gate reads, e.g. features=['size']")
        super().__init__(likelihood, prior or gp.GatedClusters(features, clusters=clusters), intercept, shared,
                         shared_prior)

    def bind(self, data: MultiTaskData) -> GatedClusters:
        """As ``DPClustering.bind``, and the gate's numeric inputs standardised with the training
        tasks' mean and sd (kept with the model, so new tasks use the same scale)."""
        out = super().bind(data)
        out.prior = out.prior.standardised(self.tasks(data))
        return out

    def gate(self, post, new: pd.DataFrame | None = None, prob: float = 0.9) -> pd.DataFrame:
        """Cluster probabilities the gate gives each task from its features alone (before its
        rows), with a central ``prob`` interval: task, cluster, mean, lower, upper. ``new``: a
        frame of other tasks (their task-level columns) instead of the training tasks.

        Cluster labels are those of the posterior's draws: with several chains they may switch,
        so read the clusters next to ``relations().clusters()``."""
        data = post.data if new is None else post.data.prepare(new)
        start = 0 if new is None else data.n_known_tasks
        tasks = self.tasks(data, start=start, scaled_by=post.data)
        flat = {k: torch.as_tensor(v) for k, v in post.flat().items() if k in ("gate", "weights")}
        p = self.prior.gate_probabilities(flat, tasks).numpy()  # (S, T, K)
        lo, hi = np.quantile(p, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        T, K = p.shape[1:]
        return pd.DataFrame({"task": np.repeat(tasks.names, K), "cluster": np.tile(np.arange(K), T),
                             "mean": p.mean(0).ravel(), "lower": lo.ravel(), "upper": hi.ravel()})
