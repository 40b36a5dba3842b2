"""Collapsed Gaussian form of a shared-sparsity (horseshoe) multi-task regression.

Given the scales (``SharedSparsity.scales``: global, local, slab, spread and private scales),
the shared mean is Gaussian, m ~ N(m0, diag(p)^2) (p_j = the feature's regularised scale, the
intercept's wide prior), and each task's coefficients about it too, w_t ~ N(m, diag(v_t)) with
v_t = shared_sd^2 + private_sd_t^2, so with a Gaussian likelihood both integrate out:

    y ~ N(X m0, X P^2 X' + blockdiag_t(X_t diag(v_t) X_t' + sigma_t^2 I)),

evaluated by ``task_gaussian.TaskGaussian.log_marginal_mean`` (per-task sufficient statistics,
O(T D^3) per evaluation, not O(N); in the padded row form where every task has fewer rows than
parameters, O(T n^2 D + T n D^2)). The sampler then moves only the scales (about 2F + 6 values,
plus T x F private scales). Integrating out the shared effects (``effect_raw``) too removed
NUTS's divergences on issue 19's planted problem (27 of 2,000 draws at target_accept 0.9, then
0): non-centred, a well-determined effect m_j = p_j z_j leaves z_j a funnel in the local scale.
Afterwards ``conditional`` draws m and then w_t exactly, and splits them into the program's
``effect_raw``, ``intercept_mean``, ``deviation_raw`` and ``private_raw``.

Declines (the plain program is used) with shared coefficients or a known per-row noise.
"""

from __future__ import annotations

import math

import torch

from ..data import MultiTaskData
from ..likelihoods import Gaussian
from ..priors.sparsity import SharedSparsity, _has_intercept, pad
from . import register
from .task_gaussian import PopulationGaussian

__all__ = ["SparsityGaussian", "sparsity_gaussian"]


@register(SharedSparsity, Gaussian, "collapsed")
def sparsity_gaussian(model, data: MultiTaskData) -> SparsityGaussian | None:
    """The collapsed form of ``model`` on ``data``, or None where it does not apply."""
    if model.shared or model.likelihood_for(data).noise == "known":
        return None
    return SparsityGaussian(model, data)


class SparsityGaussian(PopulationGaussian):
    """Sufficient statistics and the collapsed program of a ``SharedSparsity`` Gaussian regression."""

    def log_marginal(self, mean, sd, s2) -> torch.Tensor:
        """sum_t log N(y_t | X_t m, X_t diag(sd_t^2) X_t' + s2_t I), shape (B,)."""
        return self.stats.log_marginal(mean, sd, s2)

    def _sample_population(self, tasks):
        return self.prior.scales(tasks)  # the shared mean is integrated out too

    def _factor(self, pop, sigma):
        """(m0, p) (B, D) of the shared mean, (B, T, D) sd of w about it, (B, T) noise variance,
        and the batch shape."""
        m0, p, sd, private_sd = pop
        D, T = self.D, self.T
        batch = p.shape[:-1]
        var = sd ** 2
        if private_sd is not None:
            var = var + pad(private_sd, D) ** 2
        var = var.expand(*batch[:-1], T, D) if len(batch) else var.expand(T, D)
        B = math.prod(batch)
        sd2 = var.reshape(B, T, D).clamp_min(0).sqrt()
        s2 = (sigma.reshape(B, -1) ** 2).expand(B, T)
        return (m0.reshape(B, D), p.reshape(B, D)), sd2, s2, batch

    def _mean_sites(self, m0, p, q, samples):
        """``effect_raw`` is q itself (effect = p q) and ``intercept_mean`` m0 + p q."""
        out = dict(samples)
        icpt = int(_has_intercept(self.tasks.feature_names))
        out["effect_raw"] = q[:, icpt:]
        if icpt:
            out["intercept_mean"] = m0[:, 0] + p[:, 0] * q[:, 0]
        return out

    def _split(self, pop, mean2, sd2, q, samples, generator):
        """``w`` (S, T, D) = m + sd_t q, and the program's ``deviation_raw`` / ``private_raw``."""
        *_, sd, private_sd = pop
        S = q.shape[0]
        out = dict(samples)
        out["w"] = mean2.unsqueeze(-2) + sd2 * q
        if private_sd is None:
            out["deviation_raw"] = q  # sd_t is the shared sd itself
            return out
        # sqrt(a^2 + b^2) q = a e + b v with e, v ~ N(0, 1): their joint conditional given q, with
        # no division by a scale that may be shrunk to ~0
        a = sd.reshape(S, -1, self.D).expand(S, self.T, self.D)
        b = pad(private_sd.reshape(S, self.T, -1), self.D)
        root = sd2.clamp_min(torch.finfo(sd2.dtype).tiny)
        g = torch.randn(q.shape, generator=generator, dtype=q.dtype, device=q.device)
        out["deviation_raw"] = (a * q + b * g) / root
        out["private_raw"] = ((b * q - a * g) / root)[..., self.D - private_sd.shape[-1]:]
        return out
