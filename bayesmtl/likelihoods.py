"""Observation models: how a row's linear predictor eta becomes its target.

A likelihood samples its own parameters (e.g. per-task noise) inside the model, observes the
rows, and gives the predictive distribution of new rows from posterior draws.
"""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import torch

from .data import MultiTaskData
from .priors.base import as_distribution, move_distribution

__all__ = ["Likelihood", "LocationScale", "Gaussian", "StudentT", "Bernoulli", "Poisson", "Binomial",
           "get_likelihood"]


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


class LocationScale(Likelihood):
    """Base of likelihoods on the target's own scale, y ~ F(eta, sigma): the noise settings, the
    data-scaled noise prior and new tasks' sigma. A subclass writes ``family`` (and, with
    parameters of its own, ``sample_extra``, ``extra_dims``)."""

    _defaults: list[str] | None = None

    def __init__(self, noise: str | None = None, noise_prior=None):
        if noise not in (None, "per_task", "shared", "known"):
            raise ValueError(f"noise must be 'per_task', 'shared' or 'known'; got {noise!r}")
        self.noise = noise
        self.noise_prior = None if noise_prior is None else as_distribution(noise_prior, "noise_prior")
        self._defaults: list[str] | None = None  # what ``bind`` set from the data

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

    def bind(self, data: MultiTaskData) -> LocationScale:
        """A copy with ``noise`` fixed by what the data carry and the default noise prior
        scaled to the target (HalfNormal(sd(y)))."""
        out = copy.copy(self)
        out.noise = self.resolved_noise(data)
        if self.noise_prior is None:
            out.noise_prior = dist.HalfNormal(torch.tensor(self.location_scale(data)[1], dtype=data.dtype))
        out._defaults = self.defaults()
        return out

    def defaults(self):
        return list(self._defaults) if self._defaults is not None else \
            (["noise_prior"] if self.noise_prior is None else [])

    def check(self, data: MultiTaskData) -> None:
        super().check(data)
        if self.resolved_noise(data) == "known" and data.noise is None:
            raise ValueError("noise='known' needs a noise column (MultiTaskData.from_frame(..., noise='se'))")

    def sample_extra(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameters of the family beyond sigma (outside the task plate); none by default."""
        return {}

    def extra_dims(self) -> dict[str, tuple[str, ...]]:
        return {}

    def sample_params(self, n_tasks, task_plate, like):
        prior = move_distribution(dist.HalfNormal(1.0) if self.noise_prior is None else self.noise_prior, like)
        out = self.sample_extra(like)
        if self.noise == "per_task":
            with task_plate:
                out["sigma"] = pyro.sample("sigma", prior)
        elif self.noise == "shared":
            out["sigma"] = pyro.sample("sigma", prior)
        return out

    def site_dims(self):
        sigma = {"per_task": {"sigma": ("task",)}, "shared": {"sigma": ()}}.get(self.noise, {})
        return {**sigma, **self.extra_dims()}

    @staticmethod
    def per_row(v: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        """A scalar site's value against eta (..., N): () or (C, 1) in the model, (S,) from draws."""
        return v.unsqueeze(-1) if v.dim() == eta.dim() - 1 else v

    def scale(self, eta, params, task, noise):
        if self.noise == "known":
            return noise
        if self.noise == "per_task":
            return params["sigma"][..., task]
        return self.per_row(params["sigma"], eta)

    def family(self, eta, scale, params) -> dist.Distribution:
        raise NotImplementedError

    def distribution(self, eta, params, task, noise, trials):
        return self.family(eta, self.scale(eta, params, task, noise), params)

    def mean(self, eta, trials=None):
        return eta

    def new_task_params(self, params, n_new, generator):
        if self.noise != "per_task":
            return params
        # per-task noise has no population: a new task borrows a random known task's sigma per draw
        sigma = params["sigma"]
        pick = torch.randint(sigma.shape[-1], (sigma.shape[0], n_new), generator=generator)
        return {**params, "sigma": torch.cat([sigma, sigma.gather(-1, pick)], dim=-1)}

    def __repr__(self):
        prior = "data-scaled" if self.noise_prior is None else self.noise_prior
        return f"{type(self).__name__}(noise={self.noise!r}, noise_prior={prior})"


class Gaussian(LocationScale):
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
        return dist.StudentT(self.per_row(params["nu"], eta), eta, scale)

    def mean(self, eta, trials=None):
        return eta  # the centre; the mean where nu > 1


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


_BY_NAME = {"gaussian": Gaussian, "normal": Gaussian, "student_t": StudentT, "student-t": StudentT,
            "bernoulli": Bernoulli, "logistic": Bernoulli, "poisson": Poisson, "binomial": Binomial}


def get_likelihood(spec: str | Likelihood) -> Likelihood:
    """A likelihood from its name ("gaussian", "student_t", "bernoulli", "poisson", "binomial") or itself."""
    if isinstance(spec, Likelihood):
        return spec
    if isinstance(spec, str) and spec.lower() in _BY_NAME:
        return _BY_NAME[spec.lower()]()
    raise ValueError(f"unknown likelihood {spec!r}; choose one of {', '.join(sorted(_BY_NAME))}")
