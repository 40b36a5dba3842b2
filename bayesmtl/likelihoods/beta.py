"""Proportions strictly between 0 and 1: beta rows with a logit link (brms's ``Beta()``)."""

from __future__ import annotations

import math

import pyro.distributions as dist

from ..data import MultiTaskData
from .base import OneParameter

__all__ = ["Beta"]


class Beta(OneParameter):
    """y ~ Beta(mu phi, (1 - mu) phi), mu = sigmoid(eta): mean mu, variance mu (1 - mu) / (1 + phi).

    Parameters
    ----------
    per_task : bool
        One precision phi per task (a new task borrows a known task's) instead of one for all.
    prior : pyro distribution, default Gamma(2, 0.1)
        Prior of the precision phi (mean 20).
    """

    kind = "proportion"
    param = "phi"
    link = "logit"

    def location_scale(self, data: MultiTaskData):
        m = float(data.y.double().mean()) if data.y is not None and data.y.numel() else 0.5
        return (math.log(m / (1 - m)) if 0 < m < 1 else 0.0), 1.0

    def family(self, mean, value):
        mean = mean.clamp(1e-6, 1 - 1e-6)
        return dist.Beta(mean * value, (1 - mean) * value)
