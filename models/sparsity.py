"""Joint feature selection across tasks (group sparsity: Yuan & Lin 2006; Argyriou, Evgeniou &
Pontil 2007; Lounici et al. 2009) and its "dirty" form with task-private features (Jalali,
Ravikumar, Sanghavi & Ruan 2010), as Bayesian regressions with a regularised horseshoe
(Piironen & Vehtari 2017): ``bayesmtl.priors.SharedSparsity``.

What the point estimates (scikit-learn's ``MultiTaskLasso``, MALSAR) do not give: a posterior
inclusion probability for every feature, shared and per task (``Posterior.inclusion()``,
``inclusion.csv`` in the run directory).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pandas as pd

from bayesmtl.likelihoods import Likelihood
from bayesmtl.model import MultiTaskModel
from bayesmtl.priors import sparsity as sp

__all__ = ["SharedSparsity", "Dirty"]


class SharedSparsity(MultiTaskModel):
    """Multi-task regression whose tasks share which features matter (joint sparsity).

    Parameters
    ----------
    likelihood : "gaussian", "bernoulli", "poisson", ... or a Likelihood
    prior : bayesmtl.priors.SharedSparsity, optional
        Default ``SharedSparsity()``: a data-scaled regularised horseshoe, slab scale 2.
    intercept, shared, shared_prior
        As in ``MultiTaskModel``; the intercept is hierarchical, not sparse.
    """

    name = "shared-sparsity"

    def __init__(self, likelihood: str | Likelihood = "gaussian", prior: sp.SharedSparsity | None = None,
                 intercept: bool = True, shared: Sequence[str] = (), shared_prior=None):
        if prior is not None and not isinstance(prior, sp.SharedSparsity):
            raise TypeError(f"prior must be bayesmtl.priors.SharedSparsity; got {type(prior).__name__}")
        super().__init__(prior or sp.SharedSparsity(), likelihood, intercept, shared, shared_prior)

    def extra_outputs(self, post) -> dict[str, pd.DataFrame]:
        """``inclusion.csv``: the posterior inclusion probabilities."""
        return {"inclusion.csv": post.inclusion().reset_index()}


class Dirty(SharedSparsity):
    """Shared plus task-private sparse coefficients (a "dirty" model): a feature may matter in
    every task or in one task alone. The prior's ``private`` setting is always on.

    The parameters are those of ``SharedSparsity``; the default prior is
    ``SharedSparsity(private=True)``.
    """

    name = "dirty"

    def __init__(self, likelihood: str | Likelihood = "gaussian", prior: sp.SharedSparsity | None = None,
                 intercept: bool = True, shared: Sequence[str] = (), shared_prior=None):
        if prior is not None and isinstance(prior, sp.SharedSparsity) and not prior.private:
            prior = copy.copy(prior)
            prior.private = True
        super().__init__(likelihood, prior or sp.SharedSparsity(private=True), intercept, shared, shared_prior)
