"""Counts beyond the Poisson: negative binomial (overdispersed) and zero-inflated Poisson rows,
both with a log link (E[y] = exp(eta) for the negative binomial)."""

from __future__ import annotations

import math

import pyro.distributions as dist

from ..data import MultiTaskData
from .base import LINKS, OneParameter

__all__ = ["NegativeBinomial", "ZeroInflatedPoisson"]


def _log_mean(data: MultiTaskData) -> tuple[float, float]:
    """The log of the target's mean (where a log-link intercept sits) and a unit scale."""
    m = float(data.y.double().mean()) if data.y is not None and data.y.numel() else 1.0
    return (math.log(m) if m > 0 else 0.0), 1.0


class NegativeBinomial(OneParameter):
    """y ~ NegativeBinomial with mean exp(eta) and concentration phi: variance mu + mu^2 / phi
    (``GammaPoisson(phi, phi / mu)``; brms's ``negbinomial()``).

    Parameters
    ----------
    per_task : bool
        One phi per task (a new task borrows a known task's) instead of one for all.
    prior : pyro distribution, default Gamma(2, 0.1)
        Prior of phi: mean 20, keeping away from 0 (all overdispersion) without ruling out
        strong overdispersion (phi of 0.5-2) or near-Poisson counts.
    """

    kind = "counts"
    param = "phi"
    link = "log"

    def location_scale(self, data):
        return _log_mean(data)

    def family(self, mean, value):
        return dist.GammaPoisson(value, value / mean.clamp_min(1e-30))


class ZeroInflatedPoisson(OneParameter):
    """y = 0 with probability ``gate``, else y ~ Poisson(exp(eta)): counts with more zeros
    than a Poisson allows. E[y] = (1 - gate) exp(eta).

    Parameters
    ----------
    per_task : bool
        One gate per task (a new task borrows a known task's) instead of one for all.
    prior : pyro distribution, default Beta(1, 1)
        Prior of the gate.
    """

    kind = "counts"
    param = "gate"
    link = "log"

    def default_prior(self):
        return dist.Beta(1.0, 1.0)

    def location_scale(self, data):
        return _log_mean(data)

    def family(self, mean, value):
        return dist.ZeroInflatedPoisson(mean, gate=value)

    def mean(self, eta, params, task, trials=None):
        return (1.0 - self.value(eta, params, task)) * LINKS["log"](eta)


