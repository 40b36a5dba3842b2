"""Independent, pooled and hierarchical task priors (partial pooling; Heskes 2000,
Bakker & Heskes 2003, Gelman et al.).

Sites (D = number of task-varying parameters, T = tasks):

- ``Independent``: ``w`` (T, D) with an i.i.d. prior.
- ``Pooled``: ``w_shared`` (D,); ``w`` (T, D) repeats it.
- ``Hierarchical``: ``mu`` (D,), ``tau`` (D,), optionally ``corr_chol`` (D, D) (LKJ), and
  ``w`` (T, D) = mu + tau * z (non-centred, ``w_raw`` = z) or drawn directly (centred).
"""

from __future__ import annotations

import copy
import warnings

import pyro
import pyro.distributions as dist
import torch

from .base import TaskPrior, _cosine, as_distribution, move_distribution

__all__ = ["Independent", "Pooled", "Hierarchical"]


def _vec(d, n: int, like: torch.Tensor):
    """A scalar (or (n,)-batched) prior as an n-vector event."""
    return move_distribution(d, like).expand(torch.Size([n])).to_event(1)


#: a default location prior is Normal(loc, LOCATION_SCALE * scale) (rstanarm's 2.5)
LOCATION_SCALE = 2.5


def location_default(loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:
    """The data-scaled default prior of a location: Normal(loc, 2.5 scale), batch (D,)."""
    return dist.Normal(loc, LOCATION_SCALE * scale)


def spread_default(scale: torch.Tensor) -> dist.Distribution:
    """The data-scaled default prior of a spread: HalfNormal(scale), batch (D,)."""
    return dist.HalfNormal(scale)


def _bound(prior, settings: dict) -> TaskPrior:
    """A copy of ``prior`` with ``settings`` (name -> distribution) set where they were None."""
    out = copy.copy(prior)
    for name, value in settings.items():
        if getattr(prior, name) is None:
            setattr(out, name, value)
    return out


def _hyper(name: str, prior, n: int, like: torch.Tensor) -> torch.Tensor:
    """A (D,) hyperparameter site, or a constant when the prior is a fixed number."""
    if isinstance(prior, float):
        return torch.full((n,), prior, dtype=like.dtype, device=like.device)
    return pyro.sample(name, _vec(prior, n, like))


class _OnePrior(TaskPrior):
    """A prior with one setting, ``prior``, over each entry; data-scaled Normal(loc, 2.5 scale)
    when left None."""

    def __init__(self, prior: dist.Distribution | None = None):
        self.prior = None if prior is None else as_distribution(prior, "prior")

    def bind(self, loc, scale):
        return _bound(self, {"prior": location_default(loc, scale)})

    def defaults(self):
        return ["prior"] if self.prior is None else []

    def _prior(self, tasks):
        return location_default(tasks.loc, tasks.scale) if self.prior is None else self.prior


class Independent(_OnePrior):
    """Each task's parameters drawn independently: no borrowing of strength.

    Parameters
    ----------
    prior : pyro distribution, default data-scaled
        Prior of every entry of the (T, D) task-parameter matrix. Default: Normal(loc, 2.5 scale)
        with each parameter's loc and scale read from the data (``protocol.Tasks``).
    """

    reparam = False  # parametrised by hand (centred / non-centred options)

    relation_kind = ("cosine similarity of task parameter vectors, centred and scaled across "
                     "tasks (independent prior: tasks are unrelated a priori)")


    def sample(self, tasks):
        with tasks.plate:
            return pyro.sample("w", _vec(self._prior(tasks), tasks.dims, tasks.like))

    def sample_new(self, samples, tasks, generator):
        warnings.warn(f"Independent prior: the {tasks.n} new task(s) share nothing with the fitted tasks, so "
                      "their predictions are the prior's (wide by design); Hierarchical or Pooled borrow "
                      "strength for new tasks", UserWarning, stacklevel=2)
        like = samples["w"]
        p = move_distribution(self._prior(tasks), like)
        with torch.random.fork_rng(devices=[]):  # draw from the caller's generator, not global state
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            return p.expand(torch.Size([tasks.dims])).sample((like.shape[0], tasks.n))

    def __repr__(self):
        return f"Independent(prior={'data-scaled' if self.prior is None else self.prior})"


class Pooled(_OnePrior):
    """All tasks share one parameter vector: complete pooling.

    Parameters
    ----------
    prior : pyro distribution, default data-scaled Normal(loc, 2.5 scale) (``protocol.Tasks``)
        Prior of each entry of the shared vector.
    """

    reparam = False  # parametrised by hand (centred / non-centred options)

    relation_kind = "complete pooling: every pair of tasks is identical (1)"

    def relation_null(self, n_dims, n=4000, seed=0):
        return None  # every pair is 1 by construction


    def sample(self, tasks):
        n_tasks, n_dims = tasks.n, tasks.dims
        w = pyro.sample("w_shared", _vec(self._prior(tasks), n_dims, tasks.like))
        # unbatched (D,) or under an outer plate (..., 1, D): either way broadcast over tasks
        w = w.unsqueeze(-2) if w.dim() == 1 else w
        return pyro.deterministic("w", w.expand(*w.shape[:-2], n_tasks, n_dims))

    def site_dims(self):
        return {"w_shared": ("feature",), "w": ("task", "feature")}

    def sample_new(self, samples, tasks, generator):
        w = samples["w_shared"]
        return w.unsqueeze(-2).expand(w.shape[0], tasks.n, tasks.dims)

    def relations(self, samples):
        w = samples["w"]
        return torch.ones(w.shape[0], w.shape[1], w.shape[1], dtype=w.dtype).numpy()

    def __repr__(self):
        return f"Pooled(prior={'data-scaled' if self.prior is None else self.prior})"


class Hierarchical(TaskPrior):
    """Task parameters drawn from a learned population: w_t ~ N(mu, Sigma).

    Parameters
    ----------
    mean : pyro distribution or number, default data-scaled
        Prior of each entry of the population mean ``mu`` (D,). A number fixes it. Default:
        Normal(loc, 2.5 scale), each parameter's loc and scale read from the data
        (``protocol.Tasks``: the target's mean and sd for the intercept, 0 and sd(y) / sd(x)
        for a coefficient), as rstanarm's autoscale does.
    scale : pyro distribution, default data-scaled
        Prior of each population scale ``tau`` (D,). Default: HalfNormal(scale).
    covariance : {"diagonal", "lkj"}
        ``"lkj"`` learns a full population covariance diag(tau) C diag(tau), C ~ LKJ(eta).
    eta : float
        LKJ concentration (``covariance="lkj"`` only); must be > 0.
    centered : bool
        Sample ``w`` directly (centred) or as ``mu + tau * w_raw`` (non-centred, the default,
        which avoids the funnel when tasks have little data).
    """

    reparam = False  # parametrised by hand (centred / non-centred options)

    relation_kind = ("cosine similarity of the tasks' standardised deviations from the population "
                     "mean, (w_t - mu) / tau: +1 = deviate alike, 0 = unrelated, -1 = opposite")

    def __init__(self, mean=None, scale=None, covariance: str = "diagonal", eta: float = 2.0,
                 centered: bool = False):
        if covariance not in ("diagonal", "lkj"):
            raise ValueError(f"covariance must be 'diagonal' or 'lkj'; got {covariance!r}")
        if not eta > 0:
            raise ValueError(f"LKJ concentration eta must be > 0; got {eta}")
        self.mean = None if mean is None else (
            float(mean) if isinstance(mean, (int, float)) else as_distribution(mean, "mean"))
        self.scale = None if scale is None else as_distribution(scale, "scale")
        self.covariance = covariance
        self.eta = float(eta)
        self.centered = bool(centered)

    def site_dims(self):
        dims = {"tau": ("feature",), "w": ("task", "feature")}
        if not isinstance(self.mean, float):
            dims["mu"] = ("feature",)
        if self.covariance == "lkj":
            dims["corr_chol"] = ("feature", "feature_")
        if not self.centered:
            dims["w_raw"] = ("task", "feature")
        return dims

    def _scale_tril(self, tau, L):
        return tau.unsqueeze(-1) * L

    def bind(self, loc, scale):
        return _bound(self, {"mean": location_default(loc, scale), "scale": spread_default(scale)})

    def defaults(self):
        return [k for k in ("mean", "scale") if getattr(self, k) is None]

    def sample(self, tasks):
        n_dims, task_plate, like = tasks.dims, tasks.plate, tasks.like
        bound = self.bind(tasks.loc, tasks.scale) if self.defaults() else self  # fit binds once, up front
        mu = _hyper("mu", bound.mean, n_dims, like)
        tau = pyro.sample("tau", _vec(bound.scale, n_dims, like))
        if self.covariance == "lkj":
            conc = torch.tensor(self.eta, dtype=like.dtype, device=like.device)
            L = pyro.sample("corr_chol", dist.LKJCholesky(n_dims, conc))
            tril = self._scale_tril(tau, L)
            with task_plate:
                if self.centered:
                    return pyro.sample("w", dist.MultivariateNormal(mu, scale_tril=tril))
                z = pyro.sample("w_raw", dist.Normal(torch.zeros_like(like), 1.0)
                                .expand([n_dims]).to_event(1))
            return pyro.deterministic("w", mu + (tril @ z.unsqueeze(-1)).squeeze(-1))
        with task_plate:
            if self.centered:
                return pyro.sample("w", dist.Normal(mu, tau).to_event(1))
            z = pyro.sample("w_raw", dist.Normal(torch.zeros_like(like), 1.0).expand([n_dims]).to_event(1))
        return pyro.deterministic("w", mu + tau * z)

    def sample_new(self, samples, tasks, generator):
        n_new, n_dims = tasks.n, tasks.dims
        tau = samples["tau"]  # (S, D)
        mu = samples["mu"] if "mu" in samples else torch.full_like(tau, self.mean)
        z = torch.randn(mu.shape[0], n_new, n_dims, generator=generator, dtype=mu.dtype)
        if self.covariance == "lkj":
            tril = self._scale_tril(tau, samples["corr_chol"])  # (S, D, D)
            return mu.unsqueeze(-2) + (tril.unsqueeze(-3) @ z.unsqueeze(-1)).squeeze(-1)
        return mu.unsqueeze(-2) + tau.unsqueeze(-2) * z

    def relations(self, samples):
        w, tau = samples["w"], samples["tau"]
        mu = samples["mu"] if "mu" in samples else torch.full_like(tau, self.mean)
        return _cosine((w - mu.unsqueeze(-2)) / tau.unsqueeze(-2).clamp_min(1e-12))

    def __repr__(self):
        mean = "data-scaled" if self.mean is None else self.mean
        scale = "data-scaled" if self.scale is None else self.scale
        return (f"Hierarchical(mean={mean}, scale={scale}, covariance={self.covariance!r}, "
                f"centered={self.centered})")
