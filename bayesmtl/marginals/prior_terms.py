"""Closed-form prior terms with their gradients written out, for the usual scalar families:
what lets a fast path skip autograd for the hyperparameters too."""

from __future__ import annotations

import math

import torch
from pyro.distributions import Distribution

__all__ = ["log_prob_and_grad", "add_log_priors"]


def log_prob_and_grad(d: Distribution, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """log p(x) and d log p(x) / dx, elementwise and shaped like x, for the usual scalar prior
    families written out (x inside the support); None for any other distribution.

    Lets a back end skip autograd where a model's whole density has a written-out gradient
    (``marginals.hierarchical_gaussian``); ``BatchedPotential`` checks the result
    against the Pyro program. Independent wrappers are looked through.
    """
    import pyro.distributions as dist

    while isinstance(d, (dist.Independent, torch.distributions.Independent)):
        d = d.base_dist
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    if isinstance(d, dist.HalfNormal):
        r = x / d.scale
        lp, g = -0.5 * r * r - torch.log(d.scale) + (math.log(2) - half_log_2pi), -r / d.scale
    elif isinstance(d, (dist.HalfCauchy, dist.Cauchy)):
        half = isinstance(d, dist.HalfCauchy)
        r = x if half else x - d.loc
        a = r / d.scale
        lp = -torch.log1p(a * a) - torch.log(d.scale) + (math.log(2 / math.pi) if half else -math.log(math.pi))
        g = -2 * r / (d.scale ** 2 + r * r)
    elif isinstance(d, dist.LogNormal):
        lx = torch.log(x)
        a = (lx - d.loc) / d.scale
        lp, g = -0.5 * a * a - lx - torch.log(d.scale) - half_log_2pi, -(1 + a / d.scale) / x
    elif isinstance(d, dist.Normal):
        a = (x - d.loc) / d.scale
        lp, g = -0.5 * a * a - torch.log(d.scale) - half_log_2pi, -a / d.scale
    elif isinstance(d, (dist.Gamma, dist.InverseGamma)):
        a, b, lx = d.concentration, d.rate, torch.log(x)
        const = a * torch.log(b) - torch.lgamma(a)
        if isinstance(d, dist.Gamma):
            lp, g = const + (a - 1) * lx - b * x, (a - 1) / x - b
        else:
            lp, g = const - (a + 1) * lx - b / x, (b / x - a - 1) / x
    elif isinstance(d, dist.Exponential):
        lp, g = torch.log(d.rate) - d.rate * x, -d.rate * torch.ones_like(x)
    else:
        return None
    return torch.broadcast_to(lp, x.shape), torch.broadcast_to(g, x.shape)


def add_log_priors(lp: torch.Tensor, grads: dict[str, torch.Tensor], priors: dict[str, Distribution],
                   values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict] | None:
    """lp (C,) and the gradients plus each named site's prior term; None where a prior has no
    written-out gradient (``log_prob_and_grad``)."""
    for name, d in priors.items():
        out = log_prob_and_grad(d, values[name])
        if out is None:
            return None
        lp = lp + out[0].reshape(lp.shape[0], -1).sum(-1)
        grads[name] = grads[name] + out[1]
    return lp, grads
