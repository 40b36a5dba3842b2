"""Hierarchical (partial pooling), independent and pooled multi-task regression.

Heskes (2000), Bakker & Heskes (2003), Gelman & Hill (2007): each task's coefficients are
drawn from a population whose mean and scales are learned; a new task's coefficients are drawn
from that population. ``Independent`` and ``Pooled`` are the two limits, as baselines.
"""

from __future__ import annotations

from collections.abc import Sequence

from bayesmtl.likelihoods import Likelihood
from bayesmtl.model import MultiTaskModel
from bayesmtl.priors import hierarchical as hp

__all__ = ["Hierarchical", "Independent", "Pooled"]


class Hierarchical(MultiTaskModel):
    """Partial pooling: w_t ~ N(mu, diag(tau)^2) (or a full LKJ covariance).

    Parameters
    ----------
    likelihood : "gaussian", "bernoulli", "poisson", "binomial" or a Likelihood
    prior : bayesmtl.priors.Hierarchical, optional
        Overrides the default ``Hierarchical(mean=Normal(0, 10), scale=HalfNormal(1))``,
        non-centred with per-dimension scales.
    intercept, shared, shared_prior
        As in ``MultiTaskModel``.
    """

    name = "hierarchical"

    def __init__(self, likelihood: str | Likelihood = "gaussian", prior: hp.Hierarchical | None = None,
                 intercept: bool = True, shared: Sequence[str] = (), shared_prior=None):
        super().__init__(prior or hp.Hierarchical(), likelihood, intercept, shared, shared_prior)


class Independent(MultiTaskModel):
    """No pooling: each task fitted on its own data, w_t ~ prior i.i.d."""

    name = "independent"

    def __init__(self, likelihood: str | Likelihood = "gaussian", prior: hp.Independent | None = None,
                 intercept: bool = True, shared: Sequence[str] = (), shared_prior=None):
        super().__init__(prior or hp.Independent(), likelihood, intercept, shared, shared_prior)


class Pooled(MultiTaskModel):
    """Complete pooling: one coefficient vector for all tasks."""

    name = "pooled"

    def __init__(self, likelihood: str | Likelihood = "gaussian", prior: hp.Pooled | None = None,
                 intercept: bool = True, shared: Sequence[str] = (), shared_prior=None):
        super().__init__(prior or hp.Pooled(), likelihood, intercept, shared, shared_prior)
