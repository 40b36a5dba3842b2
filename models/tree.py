"""Tasks at the leaves of a given tree (Daumé 2009's latent hierarchy, tree known):
``bayesmtl.priors.TreeHierarchy`` under any likelihood."""

from __future__ import annotations

from collections.abc import Sequence

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
        ``MultiTaskData.from_frame(..., task_features=[...])``.
    likelihood : "gaussian", "bernoulli", "poisson", ... or a Likelihood
    prior : bayesmtl.priors.TreeHierarchy, optional
        Instead of ``tree``, a prior with its own ``mean`` and ``scale`` settings.
    intercept, shared, shared_prior
        As in ``MultiTaskModel``.
    """

    name = "tree-hierarchy"

    def __init__(self, tree: str | Sequence[str] | None = None, likelihood: str | Likelihood = "gaussian",
                 prior: tp.TreeHierarchy | None = None, intercept: bool = True, shared: Sequence[str] = (),
                 shared_prior=None):
        if prior is not None and not isinstance(prior, tp.TreeHierarchy):
            raise TypeError(f"prior must be bayesmtl.priors.TreeHierarchy; got {type(prior).__name__}")
        if (prior is None) == (tree is None):
            raise ValueError("give the tree (e.g. tree='region/district') or a TreeHierarchy prior, not both"
                             if prior is not None else "TreeHierarchy needs tree=, e.g. tree='region/district'")
        super().__init__(prior or tp.TreeHierarchy(tree), likelihood, intercept, shared, shared_prior)
