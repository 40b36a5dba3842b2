"""The task-prior protocol.

A task prior samples the (..., T, D) matrix of task parameters inside a Pyro model, draws the
parameters of tasks never seen in training from what it learned, and says how tasks relate.
Every site it declares sits either outside the task plate (hyperparameters, shape (..., 1, k)
under a leading batch plate) or inside it (per-task values), so chains or particles can be
vectorised by an outer plate at dim ``-(max_plate_nesting + 1)``.
"""

from __future__ import annotations

import numpy as np
import torch
from pyro.distributions import Distribution
from torch.distributions import TransformedDistribution

__all__ = ["TaskPrior", "move_distribution", "as_distribution"]


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
