"""Ordered categories (ratings, grades, stages): the cumulative logit model (brms's
``cumulative("logit")``), P(y <= k) = sigmoid(c_k - eta) for levels 0..K-1."""

from __future__ import annotations

import copy
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ..data import MultiTaskData
from .base import Likelihood

__all__ = ["Ordinal", "OrderedNormal"]


class OrderedNormal(dist.TorchDistribution):
    """iid Normal(loc, scale) entries restricted to increasing order, event shape (n,): the
    density of the sorted entries of n iid normals (so a draw is a sorted draw)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.ordered_vector
    has_rsample = False

    def __init__(self, loc, scale, n: int, validate_args=None):
        self.loc, self.scale, self.n = torch.as_tensor(loc), torch.as_tensor(scale), int(n)
        batch = torch.broadcast_shapes(self.loc.shape, self.scale.shape)
        super().__init__(batch, torch.Size([self.n]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(OrderedNormal, _instance)
        new.loc, new.scale, new.n = self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.n
        super(OrderedNormal, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            z = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
            return (self.loc.unsqueeze(-1) + self.scale.unsqueeze(-1) * z).sort(-1).values

    def log_prob(self, value):
        lp = dist.Normal(self.loc.unsqueeze(-1), self.scale.unsqueeze(-1)).log_prob(value).sum(-1)
        return lp + math.lgamma(self.n + 1)


class Ordinal(Likelihood):
    """y in {0, ..., K-1} with P(y <= k) = sigmoid(c_k - eta): one set of ordered cutpoints c
    (K-1) shared by every task; eta carries each task's location (its intercept) and effects.

    The cutpoints enter centred (``cutpoints`` = ``cutpoints_raw`` minus its mean), so the
    model's intercept, not the cutpoints, holds the overall location.

    Parameters
    ----------
    levels : int, default from the data
        K, the number of categories (default: the largest target + 1).
    cutpoint_scale : float
        The cutpoints' prior: iid Normal(0, cutpoint_scale) in increasing order (logit units).
    """

    kind = "ordinal"

    def __init__(self, levels: int | None = None, cutpoint_scale: float = 5.0):
        if levels is not None and (int(levels) != levels or levels < 2):
            raise ValueError(f"levels must be an integer >= 2; got {levels!r}")
        if not cutpoint_scale > 0:
            raise ValueError(f"cutpoint_scale must be > 0; got {cutpoint_scale!r}")
        self.levels = None if levels is None else int(levels)
        self.cutpoint_scale = float(cutpoint_scale)

    def check(self, data: MultiTaskData) -> None:
        super().check(data)
        top = int(data.y.max())
        if self.levels is not None and top >= self.levels:
            raise ValueError(f"target {data.target_name!r} reaches {top}, outside levels 0..{self.levels - 1} "
                             f"(Ordinal(levels={self.levels}))")
        if self.levels is None and top < 1:
            raise ValueError(f"target {data.target_name!r} has one level only (all 0); an ordinal model needs two")

    def bind(self, data: MultiTaskData) -> Ordinal:
        out = copy.copy(self)
        if out.levels is None and data.y is not None:
            out.levels = int(data.y.max()) + 1
        return out

    def _levels(self) -> int:
        if self.levels is None:
            raise ValueError("Ordinal has no number of levels yet: pass levels= or fit it to data")
        return self.levels

    def sample_params(self, n_tasks, task_plate, like):
        K = self._levels()
        prior = OrderedNormal(like.new_zeros(()), like.new_tensor(self.cutpoint_scale), K - 1)
        raw = pyro.sample("cutpoints_raw", prior)
        return {"cutpoints_raw": raw,
                "cutpoints": pyro.deterministic("cutpoints", raw - raw.mean(-1, keepdim=True), event_dim=1)}

    def site_dims(self):
        return {"cutpoints_raw": ("cutpoint",), "cutpoints": ("cutpoint",)}

    @staticmethod
    def _cuts(eta: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # (K-1,) or (C, 1, K-1) in the model, (S, K-1) from draws: one row of cutpoints per eta row
        return c.unsqueeze(-2) if c.dim() == eta.dim() else c

    def distribution(self, eta, params, task, noise, trials):
        return dist.OrderedLogistic(eta, self._cuts(eta, params["cutpoints"]))

    def mean(self, eta, params, task, trials=None):
        probs = self.distribution(eta, params, task, None, trials).probs  # (..., N, K)
        return (probs * torch.arange(probs.shape[-1], dtype=probs.dtype, device=probs.device)).sum(-1)

    def __repr__(self):
        return f"Ordinal(levels={self.levels}, cutpoint_scale={self.cutpoint_scale})"
