"""Collapsed Gaussian form of a given-tree hierarchy (``priors.TreeHierarchy``).

Given the tree's sites (root, level spreads, node means, ``tau``), each task's coefficients are
w_t ~ N(m_t, diag(tau)^2) with m_t the task's node, so with a Gaussian likelihood they integrate
out (``task_gaussian.TaskGaussian`` with a mean of each task). The sampler then moves the tree
alone; with well-measured tasks the non-centred w of the plain program made a narrow funnel
(NUTS: 30 divergences on issue 20's planted tree). The node means keep the package's automatic
non-centring; afterwards ``conditional`` draws w exactly and its non-centred ``w_decentered``.

Declines (the plain program is used) with shared coefficients or a known per-row noise.
"""

from __future__ import annotations

import math

from pyro import poutine

from ..data import MultiTaskData
from ..likelihoods import Gaussian
from ..priors.tree import TreeHierarchy
from . import register
from .task_gaussian import PopulationGaussian

__all__ = ["TreeGaussian", "tree_gaussian"]


@register(TreeHierarchy, Gaussian, "collapsed")
def tree_gaussian(model, data: MultiTaskData) -> TreeGaussian | None:
    """The collapsed form of ``model`` on ``data``, or None where it does not apply."""
    if model.shared or model.likelihood_for(data).noise == "known":
        return None
    return TreeGaussian(model, data)


class TreeGaussian(PopulationGaussian):
    """Sufficient statistics and the collapsed program of a ``TreeHierarchy`` Gaussian regression."""

    def __init__(self, model, data: MultiTaskData):
        super().__init__(model, data)
        self.config = model.reparam_config(data)  # the node means non-centred as in the plain program

    def _population(self):
        with poutine.reparam(config=self.config):
            return super()._population()

    def _factor(self, pop, sigma):
        """(B, T, D) node mean of each task, (B, T, D) sd, (B, T) noise variance, batch shape."""
        mean, tau = pop
        T, D = self.T, self.D
        batch = tau.shape[:-1]
        B = math.prod(batch)
        mean2 = mean.expand(*batch[:-1], T, D).reshape(B, T, D)
        sd2 = tau.reshape(B, 1, D).expand(B, T, D)
        s2 = (sigma.reshape(B, -1) ** 2).expand(B, T)
        return mean2, sd2, s2, batch

    def _split(self, pop, mean2, sd2, q, samples, generator):
        """``w`` (S, T, D) = m_t + tau q and, where the plain program non-centres w, q itself."""
        out = dict(samples)
        out["w"] = mean2 + sd2 * q
        if "w" in self.config:
            out["w_decentered"] = q
        return out
