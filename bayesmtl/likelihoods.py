"""Observation models: how a row's linear predictor eta becomes its target.

A likelihood samples its own parameters (e.g. per-task noise) inside the model, observes the
rows, and gives the predictive distribution of new rows from posterior draws.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from .data import MultiTaskData
from .priors.base import as_distribution, move_distribution

__all__ = ["Likelihood", "Gaussian", "Bernoulli", "Poisson", "Binomial", "get_likelihood"]


class Likelihood:
    """Base class. ``kind`` names the target check in ``MultiTaskData.check_target``."""

    kind: str = ""

    def check(self, data: MultiTaskData) -> None:
        data.check_target(self.kind)

    def location_scale(self, data: MultiTaskData) -> tuple[float, float]:
        """Where the linear predictor sits and how far it ranges, read from the data: the
        defaults of the priors scale with it (``protocol.Tasks``). The link scale (0, 1) here;
        a likelihood on the target's own scale (Gaussian) returns the target's mean and sd."""
        return 0.0, 1.0

    def bind(self, data: MultiTaskData) -> Likelihood:
        """A copy with settings left to the data fixed from ``data``; itself when there are none."""
        return self

    def defaults(self) -> list[str]:
        """Names of the settings left at their data-scaled defaults (``prior_summary``)."""
        return []

    def sample_params(self, n_tasks: int, task_plate, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sample the likelihood's own parameters (outside the data plate)."""
        return {}

    def site_dims(self) -> dict[str, tuple[str, ...]]:
        return {}

    def distribution(self, eta: torch.Tensor, params: dict[str, torch.Tensor], task: torch.Tensor,
                     noise: torch.Tensor | None, trials: torch.Tensor | None) -> dist.Distribution:
        """Distribution of the rows given eta (..., N) and each row's task index (N,)."""
        raise NotImplementedError

    def mean(self, eta: torch.Tensor, trials: torch.Tensor | None = None) -> torch.Tensor:
        """E[y | eta] on the target's scale."""
        raise NotImplementedError

    def new_task_params(self, params: dict[str, torch.Tensor], n_new: int,
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Parameters for tasks unseen in training; draws have a flat leading dim S."""
        return params

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Gaussian(Likelihood):
    """y ~ Normal(eta, sigma).

    Parameters
    ----------
    noise : {"per_task", "shared", "known", None}
        ``per_task`` learns sigma_t per task, ``shared`` one sigma, ``known`` takes each row's sd
        from the data's noise column. None: ``known`` when the data carry a noise column, else
        ``per_task``.
    noise_prior : pyro distribution, default data-scaled
        Prior of each learned sigma; default HalfNormal(sd of the target), so the noise can be
        as large as the target's spread whatever its units.
    """

    kind = "gaussian"

    def __init__(self, noise: str | None = None, noise_prior=None):
        if noise not in (None, "per_task", "shared", "known"):
            raise ValueError(f"noise must be 'per_task', 'shared' or 'known'; got {noise!r}")
        self.noise = noise
        self.noise_prior = None if noise_prior is None else as_distribution(noise_prior, "noise_prior")

    def resolved_noise(self, data: MultiTaskData) -> str:
        if self.noise is None:
            return "known" if data.noise is not None else "per_task"
        return self.noise

    def location_scale(self, data: MultiTaskData) -> tuple[float, float]:
        y = data.y.double() if data.y is not None else None
        if y is None or y.numel() < 2:
            return 0.0, 1.0
        m, s = float(y.mean()), float(y.std())
        return m, s if s > 0 else max(abs(m), 1.0)

    def bind(self, data: MultiTaskData) -> Gaussian:
        """A copy with ``noise`` fixed by what the data carry and the default noise prior
        scaled to the target (HalfNormal(sd(y)))."""
        prior = self.noise_prior
        if prior is None:
            prior = dist.HalfNormal(torch.tensor(self.location_scale(data)[1], dtype=data.dtype))
        out = Gaussian(self.resolved_noise(data), prior)
        out._defaults = self.defaults()
        return out

    def defaults(self):
        return getattr(self, "_defaults", ["noise_prior"] if self.noise_prior is None else [])

    def check(self, data: MultiTaskData) -> None:
        super().check(data)
        if self.resolved_noise(data) == "known" and data.noise is None:
            raise ValueError("noise='known' needs a noise column (MultiTaskData.from_frame(..., noise='se'))")

    def sample_params(self, n_tasks, task_plate, like):
        prior = move_distribution(dist.HalfNormal(1.0) if self.noise_prior is None else self.noise_prior, like)
        if self.noise == "per_task":
            with task_plate:
                return {"sigma": pyro.sample("sigma", prior)}
        if self.noise == "shared":
            return {"sigma": pyro.sample("sigma", prior)}
        return {}

    def site_dims(self):
        return {"per_task": {"sigma": ("task",)}, "shared": {"sigma": ()}}.get(self.noise, {})

    def scale(self, eta, params, task, noise):
        if self.noise == "known":
            return noise
        if self.noise == "per_task":
            return params["sigma"][..., task]
        sigma = params["sigma"]  # () / (C, 1) inside the model, (S,) from draws
        return sigma.unsqueeze(-1) if sigma.dim() == eta.dim() - 1 else sigma

    def distribution(self, eta, params, task, noise, trials):
        return dist.Normal(eta, self.scale(eta, params, task, noise))

    def mean(self, eta, trials=None):
        return eta

    def new_task_params(self, params, n_new, generator):
        if self.noise != "per_task":
            return params
        # per-task noise has no population: a new task borrows a random known task's sigma per draw
        sigma = params["sigma"]
        pick = torch.randint(sigma.shape[-1], (sigma.shape[0], n_new), generator=generator)
        return {"sigma": torch.cat([sigma, sigma.gather(-1, pick)], dim=-1)}

    def __repr__(self):
        prior = "data-scaled" if self.noise_prior is None else self.noise_prior
        return f"Gaussian(noise={self.noise!r}, noise_prior={prior})"


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

    def mean(self, eta, trials=None):
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

    def mean(self, eta, trials=None):
        return torch.exp(eta)


class Binomial(Likelihood):
    """y ~ Binomial(trials, sigmoid(eta)); the data need a trials column."""

    kind = "binomial"

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

    def mean(self, eta, trials=None):
        return torch.sigmoid(eta) if trials is None else trials * torch.sigmoid(eta)


_BY_NAME = {"gaussian": Gaussian, "normal": Gaussian, "bernoulli": Bernoulli, "logistic": Bernoulli,
            "poisson": Poisson, "binomial": Binomial}


def get_likelihood(spec: str | Likelihood) -> Likelihood:
    """A likelihood from its name ("gaussian", "bernoulli", "poisson", "binomial") or itself."""
    if isinstance(spec, Likelihood):
        return spec
    if isinstance(spec, str) and spec.lower() in _BY_NAME:
        return _BY_NAME[spec.lower()]()
    raise ValueError(f"unknown likelihood {spec!r}; choose one of {', '.join(sorted(_BY_NAME))}")
