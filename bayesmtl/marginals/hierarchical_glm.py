"""The plain (not collapsed) hierarchical GLM's log density with its gradient written out.

For ``MultiTaskModel`` with a diagonal ``priors.Hierarchical`` prior, no shared features and a
Bernoulli, binomial or Poisson likelihood:

    w = mu + tau * w_raw (non-centred) or w_t ~ N(mu, diag(tau)^2) (centred),
    eta_n = x_n . w_task[n],  y_n ~ likelihood(eta_n).

The gradient is the chain rule by hand: dll/deta per row from the likelihood, dll/dw by the
adjoint ``TaskRows`` product, then to w_raw, mu and tau. With a canonical link (Bernoulli,
binomial) log p = y eta - A(eta) + c(y), and the y eta part is summed per task, not per row.
No autograd graph is built, which is what an evaluation costs most at this size (a few hundred
small tensor ops otherwise).
``BatchedPotential`` checks it against autograd through the Pyro program before using it.
"""

from __future__ import annotations

import math

import torch

from ..data import MultiTaskData
from ..design import task_rows
from ..likelihoods import Bernoulli, Binomial, Poisson
from ..priors.base import move_distribution
from ..priors.hierarchical import Hierarchical
from . import Marginal, register
from .prior_terms import add_log_priors

__all__ = ["HierarchicalGLM", "hierarchical_glm"]


@register(Hierarchical, (Bernoulli, Binomial, Poisson), "written")
def hierarchical_glm(model, data: MultiTaskData) -> HierarchicalGLM | None:
    """The written-out density of ``model`` on ``data``, or None where it does not apply."""
    if model.prior.covariance != "diagonal" or model.shared:
        return None
    Xv, _ = model.design(data)
    rows = task_rows(Xv, data.task, data.n_tasks)
    return None if rows is None else HierarchicalGLM(model, data, rows)


class HierarchicalGLM(Marginal):
    """``log_density_and_grad(values)`` for the sites mu, tau, w_raw (or w) of the Pyro program."""

    def __init__(self, model, data: MultiTaskData, rows):
        self.prior = model.prior
        self.lik = model.likelihood_for(data)
        self.rows = rows
        self.y = data.y.unsqueeze(-1)                           # (N, 1), against eta (N, C)
        self.trials = None if data.trials is None else data.trials.unsqueeze(-1)
        self.canonical = isinstance(self.lik, (Bernoulli, Binomial))
        if self.canonical:  # sum_n y_n eta_n = sum_t w_t . Xy_t: per task, not per row
            self.Xy = rows.adjoint(self.y)                      # (1, T, D)
            self.c = float(self.lik.base_measure(self.y, self.trials).sum())
        like = torch.zeros((), dtype=data.dtype, device=data.device)
        self._priors = {"tau": move_distribution(self.prior.scale, like)}
        if not isinstance(self.prior.mean, float):
            self._priors["mu"] = move_distribution(self.prior.mean, like)

    def log_density_and_grad(self, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict] | None:
        """(log p (C,), {site: d log p / d value}) for values (C, *site shape); None when a prior
        has no written-out gradient (``priors.base.log_prob_and_grad``)."""
        tau = values["tau"]                                     # (C, D)
        mu = values["mu"] if "mu" in values else torch.full_like(tau, self.prior.mean)
        m, t = mu.unsqueeze(-2), tau.unsqueeze(-2)              # (C, 1, D)
        centred = self.prior.centered
        w = values["w"] if centred else m + t * values["w_raw"]  # (C, T, D)
        eta = self.rows.columns(w)                              # (N, C): rows x chains
        if self.canonical:  # log p = y eta - A(eta) + c(y)
            A, dA = self.lik.cumulant(eta, self.trials)
            lp = (w * self.Xy).sum((-1, -2)) - A.sum(0) + self.c
            d_w = self.Xy - self.rows.adjoint(dA)               # (C, T, D)
        else:
            ll, d_eta = self.lik.log_prob_and_grad(eta, self.y, self.trials)
            lp, d_w = ll.sum(0), self.rows.adjoint(d_eta)
        grads = {}
        if centred:  # w_t ~ N(mu, tau)
            r = (w - m) / t
            rt = r / t
            lp = lp - (0.5 * r * r + torch.log(t)).sum((-1, -2)) - w[0].numel() * 0.5 * math.log(2 * math.pi)
            grads["w"] = d_w - rt
            d_mu, d_tau = rt.sum(-2), ((r * r - 1) / t).sum(-2)
        else:  # w_raw ~ N(0, 1)
            z = values["w_raw"]
            lp = lp - 0.5 * (z * z).sum((-1, -2)) - z[0].numel() * 0.5 * math.log(2 * math.pi)
            grads["w_raw"] = t * d_w - z
            d_mu, d_tau = d_w.sum(-2), (z * d_w).sum(-2)
        grads["tau"] = d_tau.reshape(tau.shape)
        if "mu" in values:
            grads["mu"] = d_mu.reshape(values["mu"].shape)
        return add_log_priors(lp, grads, self._priors, values)
