"""What every likelihood shares: the ``Likelihood`` protocol, the location-scale base
(``LocationScale``: Gaussian, Student-t, log-normal), the one-parameter base (``OneParameter``:
negative binomial, Gamma, beta, zero-inflated Poisson), the links, and the shape check run when
a model is built (``check_shapes``).

Shapes: ``eta`` is (N,) in a plain run, (C, N) under C chains or particles and (S, N) at
prediction. A parameter sampled outside the task plate is then (), (C, 1) and (S,) (``per_row``
lines it up with eta); one sampled in the task plate is (..., T), indexed by each row's task.
"""

from __future__ import annotations

import copy
import math

import pyro
import pyro.distributions as dist
import torch

from ..data import MultiTaskData
from ..priors.base import as_distribution, move_distribution

__all__ = ["Likelihood", "LocationScale", "OneParameter", "check_shapes", "per_row", "LINKS"]

#: link name -> inverse link (eta -> the mean's scale)
LINKS = {"identity": lambda e: e, "log": lambda e: torch.exp(e.clamp(max=80.0)), "logit": torch.sigmoid,
         "softplus": torch.nn.functional.softplus}


def per_row(v: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """A scalar site's value against eta (..., N): () or (C, 1) in the model, (S,) from draws."""
    return v.unsqueeze(-1) if v.dim() == eta.dim() - 1 else v


class Likelihood:
    """Base class: how a row's linear predictor eta becomes its target.

    A likelihood samples its own parameters (e.g. per-task noise) inside the model
    (``sample_params``, named by ``site_dims``), gives the rows' distribution
    (``distribution``), their expected value (``mean``) and extends per-task parameters to new
    tasks (``new_task_params``). ``kind`` names the target check in
    ``MultiTaskData.check_target``.
    """

    kind: str = ""
    #: whether the rows' known noise sds (``data.noise``) and trial counts (``data.trials``) are used:
    #: a column given for a likelihood that ignores it is an error, not a silent no-op
    uses_noise: bool = False
    uses_trials: bool = False

    def check(self, data: MultiTaskData) -> None:
        """Refuse data this likelihood cannot model: a target of the wrong kind, or a noise or
        trials column it would ignore."""
        data.check_target(self.kind)
        name = type(self).__name__
        if data.noise is not None and not self.uses_noise:
            raise ValueError(f"the noise column {data.noise_column!r} (known sds) is not used by a {name} likelihood; "
                             "drop it, or use a likelihood on the target's scale (gaussian, student_t)")
        if data.trials is not None and not self.uses_trials:
            raise ValueError(f"the trials column {data.trials_column!r} is not used by a {name} likelihood; "
                             "drop it, or use the binomial likelihood")

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
        """Dims of every site ``sample_params`` samples (``("task",)`` for one value per task)."""
        return {}

    def coords(self) -> dict[str, list[str]]:
        """Labels of dims of its own that ``site_dims`` uses (none by default)."""
        return {}

    def distribution(self, eta: torch.Tensor, params: dict[str, torch.Tensor], task: torch.Tensor,
                     noise: torch.Tensor | None, trials: torch.Tensor | None) -> dist.Distribution:
        """Distribution of the rows given eta (..., N) and each row's task index (N,); its
        batch shape must be eta's (``check_shapes``)."""
        raise NotImplementedError

    def mean(self, eta: torch.Tensor, params: dict[str, torch.Tensor], task: torch.Tensor,
             trials: torch.Tensor | None = None) -> torch.Tensor:
        """E[y | eta, params] on the target's scale, shaped like eta: the distribution's mean."""
        return self.distribution(eta, params, task, None, trials).mean

    def new_task_params(self, params: dict[str, torch.Tensor], n_new: int,
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Parameters for tasks unseen in training (draws have a flat leading dim S). A per-task
        site (dims starting with ``task``) has no population here: each draw of a new task
        borrows the value of a random known task."""
        out = dict(params)
        for name, dims in self.site_dims().items():
            if dims[:1] == ("task",) and name in out:
                v = out[name]  # (S, T, ...)
                pick = torch.randint(v.shape[1], (v.shape[0], n_new), generator=generator).to(v.device)
                idx = pick.reshape(pick.shape + (1,) * (v.dim() - 2)).expand((-1, -1) + v.shape[2:])
                out[name] = torch.cat([v, v.gather(1, idx)], dim=1)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


#: fewest residual degrees of freedom (rows minus task parameters, median task) for a default
#: sigma per task; below it a task's sigma is mostly its prior and SVI fits it far too narrow
#: (computer survey, 16 rows x 14 parameters: 90% intervals covered 0.76, shared sigma 0.89)
MIN_TASK_DF = 5


def learned_noise(residual_df: float | None) -> str:
    """The default learned-noise mode: ``per_task``, or ``shared`` when the median task has fewer
    than ``MIN_TASK_DF`` residual degrees of freedom (``residual_df``; None: not known)."""
    return "shared" if residual_df is not None and residual_df < MIN_TASK_DF else "per_task"


class LocationScale(Likelihood):
    """Base of likelihoods on the target's own scale, y ~ F(eta, sigma): the noise settings, the
    data-scaled noise prior and new tasks' sigma. A subclass writes ``family`` (and, with
    parameters of its own, ``sample_extra``, ``extra_dims``); one on a transformed scale (log y)
    writes ``transform``."""

    _defaults: list[str] | None = None
    uses_noise = True

    def __init__(self, noise: str | None = None, noise_prior=None):
        if noise not in (None, "per_task", "shared", "known"):
            raise ValueError(f"noise must be 'per_task', 'shared' or 'known'; got {noise!r}")
        self.noise = noise
        self.noise_prior = None if noise_prior is None else as_distribution(noise_prior, "noise_prior")
        self._defaults: list[str] | None = None  # what ``bind`` set from the data

    def resolved_noise(self, data: MultiTaskData, residual_df: float | None = None) -> str:
        """The noise mode for these data: as given, else ``known`` with a noise column, else
        ``learned_noise(residual_df)`` (``per_task``, or ``shared`` when tasks have few rows per
        parameter)."""
        if self.noise is None:
            return "known" if data.noise is not None else learned_noise(residual_df)
        return self.noise

    @staticmethod
    def transform(y: torch.Tensor) -> torch.Tensor:
        """The scale eta lives on, from the target's (the identity; log for log-normal)."""
        return y

    def location_scale(self, data: MultiTaskData) -> tuple[float, float]:
        if not data.has_target:
            return 0.0, 1.0
        m, s, n = data.target_moments(self.transform)
        if n < 2 or not (math.isfinite(m) and math.isfinite(s)):
            return 0.0, 1.0
        return m, s if s > 0 else max(abs(m), 1.0)

    def bind(self, data: MultiTaskData, residual_df: float | None = None) -> LocationScale:
        """A copy with ``noise`` fixed by what the data carry (``resolved_noise``; ``residual_df``
        is the median task's rows minus its parameters, from the model) and the default noise
        prior scaled to the target (HalfNormal(sd(y)))."""
        out = copy.copy(self)
        out.noise = self.resolved_noise(data, residual_df)
        if self.noise_prior is None:
            out.noise_prior = dist.HalfNormal(torch.tensor(self.location_scale(data)[1], dtype=data.dtype))
        out._defaults = self.defaults()
        return out

    def defaults(self):
        if self._defaults is not None:
            return list(self._defaults)
        return (["noise"] if self.noise is None else []) + (["noise_prior"] if self.noise_prior is None else [])

    def check(self, data: MultiTaskData) -> None:
        """As ``Likelihood.check``; ``noise='known'`` also needs a noise column."""
        super().check(data)
        if self.resolved_noise(data) == "known" and data.noise is None:
            raise ValueError("noise='known' needs a noise column (MultiTaskData.from_frame(..., noise='se'))")

    def sample_extra(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameters of the family beyond sigma (outside the task plate); none by default."""
        return {}

    def extra_dims(self) -> dict[str, tuple[str, ...]]:
        """Dims of the family's extra parameters (beyond sigma), by site name."""
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

    def scale(self, eta, params, task, noise):
        """The noise sd per row: known, the row's task's sigma, or the shared one."""
        if self.noise == "known":
            return noise
        if self.noise == "per_task":
            return params["sigma"][..., task]
        return per_row(params["sigma"], eta)

    def family(self, eta, scale, params) -> dist.Distribution:
        """The distribution of y given location ``eta`` (..., N), noise sd ``scale`` and extra parameters."""
        raise NotImplementedError

    def distribution(self, eta, params, task, noise, trials):
        return self.family(eta, self.scale(eta, params, task, noise), params)

    def mean(self, eta, params, task, trials=None):
        return eta

    def __repr__(self):
        prior = "data-scaled" if self.noise_prior is None else self.noise_prior
        return f"{type(self).__name__}(noise={self.noise!r}, noise_prior={prior})"


class OneParameter(Likelihood):
    """Base of families with one parameter beyond the mean (a negative binomial's
    concentration, a Gamma's shape, a beta's precision, a zero-inflation probability): one value
    shared by every task, or one per task (``per_task=True``; a new task borrows a known task's
    value per draw). A subclass sets ``param`` (the site's name), ``default_prior`` and ``link``
    and writes ``family(mean, value)``.
    """

    param: str = ""
    link: str = "identity"

    def __init__(self, per_task: bool = False, prior=None):
        self.per_task = bool(per_task)
        self.prior = None if prior is None else as_distribution(prior, f"{self.param}_prior")

    def default_prior(self) -> dist.Distribution:
        """Gamma(2, 0.1), for a positive parameter (a concentration, shape or precision): mean
        20, density vanishing at 0 (not all noise) with room from about 0.5 to 60."""
        return dist.Gamma(2.0, 0.1)

    def sample_params(self, n_tasks, task_plate, like):
        prior = move_distribution(self.prior if self.prior is not None else self.default_prior(), like)
        if self.per_task:
            with task_plate:
                return {self.param: pyro.sample(self.param, prior)}
        return {self.param: pyro.sample(self.param, prior)}

    def site_dims(self):
        return {self.param: ("task",) if self.per_task else ()}

    def value(self, eta, params, task) -> torch.Tensor:
        """The parameter per row, shaped to broadcast with eta."""
        v = params[self.param]
        return v[..., task] if self.per_task else per_row(v, eta)

    def family(self, mean: torch.Tensor, value: torch.Tensor) -> dist.Distribution:
        """The distribution of y given its mean (after the link) and the extra parameter per row."""
        raise NotImplementedError

    def distribution(self, eta, params, task, noise, trials):
        return self.family(LINKS[self.link](eta), self.value(eta, params, task))

    def mean(self, eta, params, task, trials=None):
        return LINKS[self.link](eta)

    def __repr__(self):
        prior = self.prior if self.prior is not None else self.default_prior()
        return f"{type(self).__name__}(per_task={self.per_task}, prior={prior})"


def check_shapes(lik: Likelihood, data: MultiTaskData) -> None:
    """Raise ValueError naming the likelihood when its distribution's batch shape is not the
    rows' under a batch of draws: a parameter broadcast along the wrong dim would otherwise give
    a silently wrong log likelihood whenever the number of draws equals the number of rows.
    Runs with a number of draws unlike the rows' and the tasks' counts, on draws shaped as in
    prediction ((S, T, ...) per task, (S, ...) shared)."""
    N, T = data.y.shape[0], data.n_tasks
    S = next(s for s in range(3, 100) if s not in (N, T))
    like = data.X.new_zeros(())
    name = type(lik).__name__
    dims = lik.site_dims()
    try:
        with pyro.poutine.block(), pyro.plate("_shape_check", S, dim=-2), torch.no_grad():
            params = lik.sample_params(T, pyro.plate("task", T, dim=-1), like)
        flat = {}
        for k, v in params.items():
            v = v.expand((S,) + v.shape[1:]) if v.dim() >= 1 and v.shape[0] == 1 else v
            shared = not str((dims.get(k) or ("",))[0]).startswith("task")  # "task" or a group's "task_<g>"
            flat[k] = v.reshape((S,) + v.shape[2:]) if shared and v.dim() >= 2 and v.shape[1] == 1 else v
        eta = data.X.new_zeros(S, N) + torch.linspace(-0.5, 0.5, N, dtype=data.dtype, device=data.X.device)
        d = lik.distribution(eta, flat, data.task, data.noise, data.trials)
        shape = tuple(d.batch_shape)
        lp_shape = tuple(d.log_prob(data.y).shape)
    except (RuntimeError, IndexError, ValueError, KeyError) as e:
        raise ValueError(f"likelihood {name}: its distribution fails on {S} draws of {N} rows ({e}); "
                         f"line each parameter up with eta (bayesmtl.likelihoods.base.per_row)") from None
    if shape != (S, N) or lp_shape != (S, N):
        raise ValueError(f"likelihood {name}: with {S} draws of {N} rows its distribution has batch shape "
                         f"{shape} and log_prob shape {lp_shape}, not ({S}, {N}); a parameter is broadcast "
                         f"along the wrong dim (line it up with eta: bayesmtl.likelihoods.base.per_row)")
