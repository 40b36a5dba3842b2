"""Collapsed Gaussian form of a shared-subspace multi-task regression.

Given the population (``SharedSubspace.population``: the mean, the loadings and factor scales,
the residual scale and, with sparse codes, each task's code variances), each task's
coefficients are Gaussian,

    w_t = m + diag(d) e_t + G_t s_t,  e_t ~ N(0, I_D), s_t ~ N(0, I_K),

so with a Gaussian likelihood e_t and s_t integrate out together (``task_gaussian``, with the
factor B_t = [diag(d), G_t], D + K columns). The sampler then moves the loadings, the factor
scales and the code variances, not the T x (D + K) draws whose rotation and sign the sampler
would otherwise wander through. Afterwards ``conditional`` draws (e_t, s_t) exactly, as the
program's ``deviation_raw`` and ``codes`` (``codes_raw`` with sparse codes).

Declines (the plain program is used) with shared coefficients or a known per-row noise.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pyro
import torch

from ..data import MultiTaskData
from ..likelihoods import Gaussian
from ..priors.sparsity import _has_intercept
from ..priors.subspace import SharedSubspace
from ..protocol import data_context
from . import Marginal, register
from .task_gaussian import TaskGaussian

__all__ = ["SubspaceGaussian", "subspace_gaussian"]


@register(SharedSubspace, Gaussian, "collapsed")
def subspace_gaussian(model, data: MultiTaskData) -> SubspaceGaussian | None:
    """The collapsed form of ``model`` on ``data``, or None where it does not apply."""
    if model.shared or model.likelihood_for(data).noise == "known":
        return None
    return SubspaceGaussian(model, data)


class SubspaceGaussian(Marginal):
    """Sufficient statistics and the collapsed program of a ``SharedSubspace`` Gaussian regression."""

    max_plate_nesting = 1

    def __init__(self, model, data: MultiTaskData):
        self.prior = model.prior
        self.lik = model.likelihood_for(data)
        self.tasks = model.tasks(data)
        self.dtype, self.device = data.dtype, data.device
        Xv, _ = model.design(data)
        self.T, self.D = data.n_tasks, Xv.shape[-1]
        self.K = self.prior.factors(self.D - int(_has_intercept(self.tasks.feature_names)))
        # the row form only below D rows, not D + K: the factor's K columns are cheap in the
        # parameter form (issue 19's planted subspace, 30 rows, D = 26, K = 8: 21 ms a gradient
        # of 4 chains against 26 ms in the row form)
        self.stats = TaskGaussian(Xv, data.y, data.task, data.n_tasks, width=self.D)
        self.like = torch.zeros((), dtype=Xv.dtype, device=Xv.device)
        self.codes = "codes_raw" if self.prior.sparse_codes else "codes"

    def _factor(self, pop, sigma):
        """(S, D) mean, B as (diagonal (S, T, D), factor (S, T, D, K)), (S, T) noise variance, and the
        batch shape."""
        T, D = self.T, self.D
        batch = pop.mean.shape[:-1]
        S = math.prod(batch)
        mean = pop.mean.reshape(S, D)
        B = (pop.diag.reshape(S, 1, D).expand(S, T, D), pop.factor.reshape(S, T, D, self.K))
        s2 = (sigma.reshape(S, -1) ** 2).expand(S, T)
        return mean, B, s2, batch

    def _population(self):
        task_plate = pyro.plate("task", self.T, dim=-1)
        with data_context(self.dtype, self.device):
            return self.prior.population(replace(self.tasks, plate=task_plate)), task_plate

    # ------------------------------------------------------------------ Collapsed protocol
    def pyro_model(self):
        def model() -> None:
            pop, task_plate = self._population()
            with data_context(self.dtype, self.device):
                sigma = self.lik.sample_params(self.T, task_plate, self.like)["sigma"]
            mean, B, s2, batch = self._factor(pop, sigma)
            pyro.factor("y_marginal", self.stats.log_marginal(mean, B, s2).reshape(batch))

        return model

    def conditional(self, samples: dict[str, torch.Tensor], generator: torch.Generator,
                    chunk: int = 200) -> dict[str, torch.Tensor]:
        """Add exact draws of ``deviation_raw`` (S, T, D) and the codes (S, T, K), ``chunk`` draws
        at a time."""
        S = next(iter(samples.values())).shape[0]
        parts = [self._conditional({k: v[lo:lo + chunk] for k, v in samples.items()}, generator)
                 for lo in range(0, S, chunk)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _conditional(self, samples: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        from ..pyro_util import batch_condition

        S = next(iter(samples.values())).shape[0]
        box = {}

        def prog():
            box["pop"] = self._population()[0]

        with torch.no_grad(), pyro.poutine.block():
            batch_condition(prog, samples, S, 1)
        mean, B, s2, _ = self._factor(box["pop"], samples["sigma"])
        q = self.stats.draw(mean, B, s2, generator)
        return {**samples, "deviation_raw": q[..., :self.D], self.codes: q[..., self.D:]}
