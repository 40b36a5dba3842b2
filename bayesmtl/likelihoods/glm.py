"""The canonical-link GLMs: Bernoulli (logit), Poisson (log) and binomial (logit) rows. Their
``cumulant`` and ``base_measure`` feed the hand-written GLM log density
(``marginals/hierarchical_glm.py``)."""

from __future__ import annotations

import pyro.distributions as dist
import torch

from .base import Likelihood

__all__ = ["Bernoulli", "Poisson", "Binomial"]


class Bernoulli(Likelihood):
    """y ~ Bernoulli(sigmoid(eta))."""

    kind = "bernoulli"

    def distribution(self, eta, params, task, noise, trials):
        return dist.Bernoulli(logits=eta)

    @staticmethod
    def cumulant(eta, trials=None):
        """A(eta) and A'(eta) of log p(y | eta) = y eta - A(eta) (canonical link): softplus, sigmoid."""
        return torch.nn.functional.softplus(eta), torch.sigmoid(eta)

    @staticmethod
    def base_measure(y, trials=None):
        """The rest of log p(y | eta), free of eta: 0."""
        return torch.zeros_like(y)

    def mean(self, eta, params=None, task=None, trials=None):
        return torch.sigmoid(eta)


class Poisson(Likelihood):
    """y ~ Poisson(exp(eta))."""

    kind = "poisson"

    def distribution(self, eta, params, task, noise, trials):
        return dist.Poisson(torch.exp(eta.clamp(max=80.0)))

    @staticmethod
    def log_prob_and_grad(eta, y, trials=None):
        """log p(y | eta) and its derivative in eta, both (..., N), with the same clamp as ``distribution``."""
        e = eta.clamp(max=80.0)
        rate = torch.exp(e)
        return y * e - rate - torch.lgamma(y + 1), torch.where(eta < 80.0, y - rate, 0.0)

    def mean(self, eta, params=None, task=None, trials=None):
        return torch.exp(eta)


class Binomial(Likelihood):
    """y ~ Binomial(trials, sigmoid(eta)); the data need a trials column."""

    kind = "binomial"
    uses_trials = True

    def distribution(self, eta, params, task, noise, trials):
        return dist.Binomial(total_count=trials, logits=eta)

    @staticmethod
    def cumulant(eta, trials=None):
        """A(eta) and A'(eta) of log p(y | eta) = y eta - A(eta) + const: n softplus, n sigmoid."""
        return trials * torch.nn.functional.softplus(eta), trials * torch.sigmoid(eta)

    @staticmethod
    def base_measure(y, trials=None):
        """The rest of log p(y | eta), free of eta: log (n choose y)."""
        return torch.lgamma(trials + 1) - torch.lgamma(y + 1) - torch.lgamma(trials - y + 1)

    def mean(self, eta, params=None, task=None, trials=None):
        return torch.sigmoid(eta) if trials is None else trials * torch.sigmoid(eta)
