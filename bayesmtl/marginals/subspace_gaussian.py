"""Collapsed Gaussian form of a shared-subspace multi-task regression.

Given the population (``SharedSubspace.population``: the mean, the loadings and factor scales,
the residual scale and, with sparse codes, each task's code variances), each task's
coefficients are Gaussian,

    w_t = m + diag(d) e_t + G_t s_t,  e_t ~ N(0, I_D), s_t ~ N(0, I_K),

so with a Gaussian likelihood e_t and s_t integrate out together (``task_gaussian``, with
B_t = [diag(d), G_t], D + K columns). The sampler then moves the loadings, the factor scales and
the code variances, not the T x (D + K) draws whose rotation and sign the chains would otherwise
wander through. Afterwards ``conditional`` draws (e_t, s_t) exactly, as the program's
``deviation_raw`` and ``codes`` (``codes_raw`` with sparse codes).

Declines (the plain program is used) with shared coefficients or a known per-row noise.
"""

from __future__ import annotations

import math

from ..data import MultiTaskData
from ..likelihoods import Gaussian
from ..priors.sparsity import _has_intercept
from ..priors.subspace import SharedSubspace
from . import register
from .task_gaussian import PopulationGaussian

__all__ = ["SubspaceGaussian", "subspace_gaussian"]


@register(SharedSubspace, Gaussian, "collapsed")
def subspace_gaussian(model, data: MultiTaskData) -> SubspaceGaussian | None:
    """The collapsed form of ``model`` on ``data``, or None where it does not apply."""
    if model.shared or model.likelihood_for(data).noise == "known":
        return None
    return SubspaceGaussian(model, data)


class SubspaceGaussian(PopulationGaussian):
    """Sufficient statistics and the collapsed program of a ``SharedSubspace`` Gaussian regression."""

    def __init__(self, model, data: MultiTaskData):
        # the row form only below D rows, not D + K: the factor's K columns are cheap in the
        # parameter form (issue 19's planted subspace, 30 rows, D = 26, K = 8: 21 ms a gradient
        # of 4 chains against 26 ms in the row form)
        super().__init__(model, data)
        self.K = self.prior.factors(self.D - int(_has_intercept(self.tasks.feature_names)))
        self.codes = "codes_raw" if self.prior.sparse_codes else "codes"

    def _factor(self, pop, sigma):
        """(S, D) mean, B as (diagonal (S, T, D), factor (S, T, D, K)), (S, T) noise variance, and the
        batch shape."""
        T, D = self.T, self.D
        batch = pop.mean.shape[:-1]
        S = math.prod(batch)
        B = (pop.diag.reshape(S, 1, D).expand(S, T, D), pop.factor.reshape(S, T, D, self.K))
        s2 = (sigma.reshape(S, -1) ** 2).expand(S, T)
        return pop.mean.reshape(S, D), B, s2, batch

    def _split(self, pop, mean, B, q, samples, generator):
        """``deviation_raw`` (S, T, D) and the codes (S, T, K) from q = (e_t, s_t)."""
        return {**samples, "deviation_raw": q[..., :self.D], self.codes: q[..., self.D:]}
