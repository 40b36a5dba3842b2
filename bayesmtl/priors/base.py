"""The task-prior protocol.

A task prior samples the (..., T, D) matrix of task parameters inside a Pyro model, draws the
parameters of tasks never seen in training from what it learned, and says how tasks relate.
Every site it declares sits either outside the task plate (hyperparameters, shape (..., 1, k)
under a leading batch plate) or inside it (per-task values), so chains or particles can be
vectorised by an outer plate at dim ``-(max_plate_nesting + 1)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import torch
from pyro.distributions import Distribution
from torch.distributions import TransformedDistribution

from ..protocol import Tasks

__all__ = ["TaskPrior", "move_distribution", "as_distribution"]


class TaskPrior:
    """Base class of task priors. A subclass writes one method, ``sample(tasks)``, in plain Pyro.

    ``sample`` gets a ``protocol.Tasks`` (``tasks.n`` tasks, ``tasks.dims`` parameters each,
    ``tasks.plate``, task-level ``tasks.features``) and returns the task parameters, shape
    (..., T, D). Python numbers in distributions are fine: the program runs on the data's
    device and dtype. Site dims, new-task draws and device handling are derived by the model;
    the other methods are optional overrides.
    """

    #: one line saying what ``relations`` measures; shown on every relations result
    relation_kind: str = ("cosine similarity of task parameter vectors, centred and scaled across tasks")
    #: whether ``relations`` are signed correlations (-1..1) rather than similarities
    relation_signed: bool = False
    #: whether the package may non-centre this prior's location-scale sites (``MultiTaskModel(reparam=...)``);
    #: priors that choose their own parametrisation set False
    reparam: bool = True
    #: None: the prior samples its task parameters as written; False: it non-centres them itself
    #: (``priors.Hierarchical``), and a copy set to True samples w directly (SVI's "centred" path)
    centered: bool | None = None
    #: sites identified only up to a symmetry (rotation, sign, label): left out of summaries and r_hat
    unidentified_sites: tuple[str, ...] = ()
    #: back-end options this prior's posterior needs unless the user sets them, e.g.
    #: ``{"target_accept": 0.9}`` for a horseshoe's funnels; ``fit`` fills in those the back end knows
    sampler_defaults: Mapping[str, Any] = MappingProxyType({})

    def sample(self, tasks: Tasks) -> torch.Tensor:
        """The task parameters (..., T, D), sampled inside a Pyro model."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample(tasks)")

    def site_dims(self) -> dict[str, tuple[str, ...]]:
        """Names for the dims of sites whose derived names (``protocol.derive_dims``) are not
        wanted, e.g. {"group_mean": ("region", "feature")}; empty by default."""
        return {}

    def sample_new(self, samples: dict[str, torch.Tensor], tasks: Tasks,
                   generator: torch.Generator) -> torch.Tensor | None:
        """Parameters of ``tasks.n`` unseen tasks, (S, n, D), one per posterior draw; None (the
        default) lets the model rerun ``sample`` for them with the population fixed to each draw.
        Override only where a closed form is faster. ``samples``: site -> draws (S, ...).
        """
        return None

    def relations(self, samples: dict[str, torch.Tensor]) -> np.ndarray:
        """Draws of a (T, T) task-relation matrix, shape (S, T, T)."""
        w = samples["w"]
        centre = w.mean(-2, keepdim=True)
        scale = w.std(-2, keepdim=True).clamp_min(1e-12)
        return _cosine((w - centre) / scale)

    def relation_null(self, n_dims: int, n: int = 4000, seed: int = 0) -> np.ndarray | None:
        """Draws (n,) of one entry of ``relations`` for two unrelated tasks, or None where the
        null is 0 (correlations). The default relation, a cosine of standardised parameter
        vectors, is for exchangeable tasks the cosine of two independent isotropic Gaussian
        vectors in D dims: often far from 0 when D is small (for D = 2, |cos| > 0.95 a fifth of
        the time), so a pair counts as related only when it stands out from this."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 2, n_dims, generator=g, dtype=torch.float64)
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (z[:, 0] * z[:, 1]).sum(-1).numpy()

    def coords(self, feature_names: Sequence[str] = ()) -> dict[str, list]:
        """Labels of dims the prior names itself (``site_dims``) beyond task and feature, given
        the names of the D task parameters; none by default."""
        return {}

    def inclusion(self, samples: dict[str, torch.Tensor], task_names: Sequence[str],
                  feature_names: Sequence[str]) -> pd.DataFrame:
        """Posterior inclusion probability of each feature (sparsity priors such as
        ``SharedSparsity``); other priors select no features."""
        raise TypeError(f"{type(self).__name__} does not select features; inclusion() needs a sparsity prior "
                        "such as bayesmtl.priors.SharedSparsity")

    def cluster_counts(self, samples: dict[str, torch.Tensor]) -> np.ndarray | None:
        """Occupied clusters per draw (S,) for a clustering prior; None (the default) otherwise."""
        return None

    def relation_tree(self) -> np.ndarray | None:
        """A tree of the tasks the prior holds (a learned tree), as a scipy linkage matrix
        (T - 1, 4), for the relation plot's order and dendrogram; None (the default): the plot
        clusters the relation's means instead."""
        return None

    def check(self, n_tasks: int, n_dims: int) -> None:
        """Raise ValueError when the prior cannot serve T tasks with D parameters each."""

    def sized(self, n_tasks: int) -> TaskPrior:
        """A copy with the settings whose default depends on the number of tasks (a rank, whether
        a mean is learned) chosen for ``n_tasks``; ``MultiTaskModel.bind`` calls it before
        ``bind``. The base class has none: itself."""
        return self

    def bind(self, loc: torch.Tensor, scale: torch.Tensor) -> TaskPrior:
        """A copy with every prior left at its default set from the data's scales, loc and scale
        (D,) (see ``protocol.Tasks``); the prior's own settings stay. The base class has no
        defaults to set: itself."""
        return self

    def defaults(self) -> list[str]:
        """Names of the settings left at their data-scaled defaults (``prior_summary``)."""
        return []

    def learn_structure(self, model, data) -> TaskPrior:
        """A copy holding structure learned from the data before the fit (a learned tree's
        point tree); ``MultiTaskModel.bind`` calls it after ``bind``. ``model``: the bound
        model (its ``design``, ``likelihood`` and ``scaling``). The base class learns nothing:
        itself."""
        return self

    def problems(self) -> list:
        """What went wrong in ``learn_structure`` (e.g. a learned tree's chains that disagree),
        as ``diagnostics.Problem`` records; ``fit`` warns of them with the back end's own. None
        by default."""
        return []


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
