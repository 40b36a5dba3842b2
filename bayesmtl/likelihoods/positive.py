"""Positive targets (durations, amounts, concentrations): Gamma rows with a log link and
log-normal rows (log y Gaussian)."""

from __future__ import annotations

import pyro.distributions as dist
import torch

from ..data import MultiTaskData
from .base import LocationScale, OneParameter, learned_noise
from .counts import _log_mean

__all__ = ["Gamma", "LogNormal"]


class Gamma(OneParameter):
    """y ~ Gamma(shape, shape / mu), mu = exp(eta): mean mu, variance mu^2 / shape (brms's
    ``Gamma(link = "log")``).

    Parameters
    ----------
    per_task : bool
        One shape per task (a new task borrows a known task's) instead of one for all.
    prior : pyro distribution, default Gamma(2, 0.1)
        Prior of the shape (mean 20; coefficients of variation from about 0.2 to above 1).
    """

    kind = "positive"
    param = "shape"
    link = "log"

    def location_scale(self, data: MultiTaskData):
        return _log_mean(data)

    def family(self, mean, value):
        return dist.Gamma(value, value / mean.clamp_min(1e-30))


class LogNormal(LocationScale):
    """log y ~ Normal(eta, sigma): E[y] = exp(eta + sigma^2 / 2). Default priors scale with the
    mean and sd of log y.

    Parameters
    ----------
    noise : {"per_task", "shared", None}
        One sigma per task (None: the default) or one for all.
    noise_prior : pyro distribution, default HalfNormal(sd of log y)
    """

    kind = "positive"

    def __init__(self, noise: str | None = None, noise_prior=None):
        if noise == "known":
            raise ValueError("LogNormal takes noise='per_task' or 'shared'; a known noise column is on y's scale")
        super().__init__(noise, noise_prior)

    def resolved_noise(self, data, residual_df=None):
        return self.noise or learned_noise(residual_df)

    @staticmethod
    def transform(y: torch.Tensor) -> torch.Tensor:
        return torch.log(y)

    def family(self, eta, scale, params):
        return dist.LogNormal(eta, scale)

    def mean(self, eta, params, task, trials=None):
        s = self.scale(eta, params, task, None)
        return torch.exp((eta + 0.5 * s * s).clamp(max=80.0))
