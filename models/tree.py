"""Tasks at the leaves of a tree (Daumé 2009's latent hierarchy), given by task-level columns or
learned (``tree="learn"``): ``bayesmtl.priors.TreeHierarchy`` under any likelihood."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bayesmtl.data import MultiTaskData
from bayesmtl.likelihoods import Likelihood
from bayesmtl.model import MultiTaskModel
from bayesmtl.priors import tree as tp

__all__ = ["TreeHierarchy"]


class TreeHierarchy(MultiTaskModel):
    """Multi-task regression whose task parameters diffuse down a tree of task-level columns.

    Parameters
    ----------
    tree : str or sequence of str
        Task-level columns, outermost first (``"region/district"``), declared with
        ``MultiTaskData.from_frame(..., task_features=[...])``; or ``"learn"``: the tree is
        learned from the tasks' data before the fit (a nested CRP of ``depth`` levels by
        collapsed Gibbs, ``priors.tree_learn``; Gaussian or Bernoulli likelihood, no shared
        features) and the fit uses its point tree; ``post.tree()`` gives its clades.
    depth, alpha, chains, warmup, draws
        ``tree="learn"`` only (see ``priors.TreeHierarchy``).
    likelihood : "gaussian", "bernoulli", "poisson", ... or a Likelihood
    prior : bayesmtl.priors.TreeHierarchy, optional
        Instead of ``tree``, a prior with its own ``mean`` and ``scale`` settings.
    intercept, shared, shared_prior
        As in ``MultiTaskModel``.
    """

    name = "tree-hierarchy"

    def __init__(self, tree: str | Sequence[str] | None = None, likelihood: str | Likelihood = "gaussian",
                 prior: tp.TreeHierarchy | None = None, intercept: bool = True, shared: Sequence[str] = (),
                 shared_prior=None, depth: int = 2, alpha: float = 1.0, chains: int = 2, warmup: int = 1000,
                 draws: int = 200):
        if prior is not None and not isinstance(prior, tp.TreeHierarchy):
            raise TypeError(f"prior must be bayesmtl.priors.TreeHierarchy; got {type(prior).__name__}")
        if (prior is None) == (tree is None):
            raise ValueError("give the tree (e.g. tree='region/district') or a TreeHierarchy prior, not both"
                             if prior is not None else "TreeHierarchy needs tree=, e.g. tree='region/district'")
        prior = prior or tp.TreeHierarchy(tree, depth=depth, alpha=alpha, chains=chains, warmup=warmup, draws=draws)
        super().__init__(prior, likelihood, intercept, shared, shared_prior)

    def check(self, data: MultiTaskData) -> None:
        super().check(data)
        self.prior.check_learnable(self.likelihood_for(data).kind, self.shared)  # before the fit, not at bind

    def extra_outputs(self, post) -> dict[str, pd.DataFrame]:
        """A learned tree's nodes as ``tree.csv`` in the run directory (tasks joined by ';')."""
        if not self.prior.learn:
            return {}
        table = self.tree(post)
        return {"tree.csv": table.assign(tasks=table["tasks"].map(";".join))}

    def tree(self, post) -> pd.DataFrame:
        """The learned point tree's nodes: level, node, tasks (names), ``probability`` (the
        share of the sampler's draws with exactly these tasks under one node of this level) and
        ``together`` (mean probability that two of its tasks share a node there)."""
        prior = post.model.prior
        if not getattr(prior, "learn", False) or prior.clades is None:
            raise TypeError("tree() reports a learned tree: fit TreeHierarchy(tree='learn'); a given tree is "
                            "its task-level columns")
        names = post.data.task_names
        rows = [{**c, "tasks": [names[t] for t in c["tasks"]], "size": len(c["tasks"])} for c in prior.clades]
        out = pd.DataFrame(rows, columns=["level", "node", "size", "probability", "together", "tasks"])
        out.attrs.update(prior.tree_info or {})
        return out
