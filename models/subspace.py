"""Tasks that share a low-dimensional subspace of predictors (Ando & Zhang 2005), with sparse,
overlapping task codes as an option (Kumar & Daumé 2012): ``bayesmtl.priors.SharedSubspace``.

The number of factors in use is learned (a multiplicative gamma process over the factors); the
run directory holds its posterior in ``factors.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bayesmtl.likelihoods import Likelihood
from bayesmtl.model import MultiTaskModel
from bayesmtl.priors import subspace as ss

__all__ = ["SharedSubspace"]


class SharedSubspace(MultiTaskModel):
    """Multi-task regression whose task coefficients lie near a shared, learned subspace.

    Parameters
    ----------
    likelihood : "gaussian", "bernoulli", "poisson", ... or a Likelihood
    prior : bayesmtl.priors.SharedSubspace, optional
        Default ``SharedSubspace(max_factors=5)``, dense codes.
    intercept, shared, shared_prior
        As in ``MultiTaskModel``; the intercept is hierarchical, outside the subspace.
    """

    name = "shared-subspace"

    def __init__(self, likelihood: str | Likelihood = "gaussian", prior: ss.SharedSubspace | None = None,
                 intercept: bool = True, shared: Sequence[str] = (), shared_prior=None):
        if prior is not None and not isinstance(prior, ss.SharedSubspace):
            raise TypeError(f"prior must be bayesmtl.priors.SharedSubspace; got {type(prior).__name__}")
        super().__init__(prior or ss.SharedSubspace(), likelihood, intercept, shared, shared_prior)

    def num_factors(self, post) -> pd.DataFrame:
        """Posterior of the number of active factors: num_factors, probability."""
        counts = self.prior.factor_counts(post.flat())
        vals, n = np.unique(counts, return_counts=True)
        return pd.DataFrame({"num_factors": vals, "probability": n / n.sum()})

    def extra_outputs(self, post) -> dict[str, pd.DataFrame]:
        """``factors.csv``: the posterior of the number of active factors."""
        return {"factors.csv": self.num_factors(post)}
