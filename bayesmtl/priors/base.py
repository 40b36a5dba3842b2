"""The task-prior protocol.

A task prior samples the (..., T, D) matrix of task parameters inside a Pyro model, draws the
parameters of tasks never seen in training from what it learned, and says how tasks relate.
Every site it declares sits either outside the task plate (hyperparameters, shape (..., 1, k)
under a leading batch plate) or inside it (per-task values), so chains or particles can be
vectorised by an outer plate at dim ``-(max_plate_nesting + 1)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pyro.distributions import Distribution
from torch.distributions import TransformedDistribution

__all__ = ["TaskPrior", "move_distribution", "as_distribution", "log_prob_and_grad", "add_log_priors"]


class TaskPrior:
    """Base class. Subclasses implement ``sample`` and may override the rest.

    ``sample`` runs inside a Pyro model: it gets the task plate (dim -1) and returns the task
    parameter tensor of shape (..., T, D).
    """

    #: one line saying what ``relations`` measures; shown on every relations result
    relation_kind: str = "task similarity"

    def sample(self, n_tasks: int, n_dims: int, task_plate, like: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def site_dims(self) -> dict[str, tuple[str, ...]]:
        """Named dims of every site this prior declares (beyond the leading chain, draw)."""
        return {"w": ("task", "feature")}

    def sample_new(self, samples: dict[str, torch.Tensor], n_new: int, n_dims: int,
                   generator: torch.Generator) -> torch.Tensor:
        """Parameters of ``n_new`` unseen tasks, shape (S, n_new, D), one per posterior draw.

        ``samples`` maps site names to draws with a flat leading dim S.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot predict tasks never seen in training")

    def relations(self, samples: dict[str, torch.Tensor]) -> np.ndarray:
        """Draws of a (T, T) task-relation matrix, shape (S, T, T)."""
        w = samples["w"]
        centre = w.mean(-2, keepdim=True)
        scale = w.std(-2, keepdim=True).clamp_min(1e-12)
        return _cosine((w - centre) / scale)

    def check(self, n_tasks: int, n_dims: int) -> None:
        """Raise ValueError when the prior cannot serve T tasks with D parameters each."""


def _cosine(z: torch.Tensor) -> np.ndarray:
    """Cosine similarity between rows: z (S, T, D) -> (S, T, T)."""
    n = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (n @ n.transpose(-1, -2)).cpu().numpy()


def as_distribution(value, name: str) -> Distribution:
    """Accept a Pyro distribution or a number (a fixed value, as a point mass)."""
    import pyro.distributions as dist

    if isinstance(value, Distribution):
        return value
    if isinstance(value, (int, float)):
        return dist.Delta(torch.tensor(float(value)))
    raise TypeError(f"{name} must be a pyro distribution or a number; got {type(value).__name__}")


def move_distribution(d: Distribution, like: torch.Tensor) -> Distribution:
    """The same distribution with its parameters on ``like``'s device and dtype.

    Users write priors with CPU float tensors (``dist.Normal(0, 10)``); models run where the
    data live. Parameters are found through ``arg_constraints``.
    """
    params, moved = {}, False
    for k in d.arg_constraints:
        v = d.__dict__.get(k, None)
        if v is None and isinstance(d, TransformedDistribution):  # HalfNormal, LogNormal: params are properties
            v = getattr(d, k, None)
        if torch.is_tensor(v):
            dtype = like.dtype if v.is_floating_point() else v.dtype
            moved |= v.device != like.device or v.dtype != dtype
            params[k] = v.to(device=like.device, dtype=dtype)
    if not moved:
        return d
    extra = {}
    if type(d).__name__ == "LKJCholesky":
        extra["dim"] = d._dim if hasattr(d, "_dim") else d.event_shape[-1]
    try:
        return type(d)(**params, **extra)
    except TypeError as e:  # a distribution whose constructor takes other names
        raise TypeError(f"cannot move prior {d!r} to {like.device}/{like.dtype}: {e}") from e


def log_prob_and_grad(d: Distribution, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """log p(x) and d log p(x) / dx, elementwise and shaped like x, for the usual scalar prior
    families written out (x inside the support); None for any other distribution.

    Lets a back end skip autograd where a model's whole density has a written-out gradient
    (``HierarchicalGaussian.log_density_and_grad``); ``BatchedPotential`` checks the result
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
