"""Targets on their own scale: Gaussian and Student-t rows, y ~ F(eta, sigma)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist

from ..priors.base import as_distribution, move_distribution
from .base import LocationScale, per_row

__all__ = ["Gaussian", "StudentT"]


class Gaussian(LocationScale):
    """y ~ Normal(eta, sigma).

    Parameters
    ----------
    noise : {"per_task", "shared", "known", None}
        ``per_task`` learns sigma_t per task, ``shared`` one sigma, ``known`` takes each row's sd
        from the data's noise column. None: ``known`` when the data carry a noise column, else
        ``per_task``, or ``shared`` when the median task has fewer than 5 rows beyond its
        parameters (a sigma per task from so few rows is mostly its prior; ``MIN_TASK_DF``).
    noise_prior : pyro distribution, default data-scaled
        Prior of each learned sigma; default HalfNormal(sd of the target), so the noise can be
        as large as the target's spread whatever its units.
    """

    kind = "gaussian"

    def family(self, eta, scale, params):
        return dist.Normal(eta, scale)


class StudentT(LocationScale):
    """y ~ StudentT(nu, eta, sigma): a Gaussian whose rows may hold outliers.

    Parameters
    ----------
    noise, noise_prior
        As for ``Gaussian`` (sigma is the scale, not the sd).
    df_prior : pyro distribution, default Gamma(2, 0.1)
        Prior of the degrees of freedom ``nu`` (one, shared by every task; Juarez & Steel 2010,
        brms's default): mean 20, with room for heavy tails (nu of 1-5) and near-Gaussian ones.
    """

    kind = "student_t"

    def __init__(self, noise: str | None = None, noise_prior=None, df_prior=None):
        super().__init__(noise, noise_prior)
        self.df_prior = dist.Gamma(2.0, 0.1) if df_prior is None else as_distribution(df_prior, "df_prior")

    def sample_extra(self, like):
        return {"nu": pyro.sample("nu", move_distribution(self.df_prior, like))}

    def extra_dims(self):
        return {"nu": ()}

    def family(self, eta, scale, params):
        return dist.StudentT(per_row(params["nu"], eta), eta, scale)

    def mean(self, eta, params, task, trials=None):
        return eta  # the centre; the mean where nu > 1
