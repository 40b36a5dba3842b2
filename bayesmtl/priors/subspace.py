"""A shared low-dimensional subspace of task parameters (Ando & Zhang 2005, "A framework for
learning predictive structures from multiple tasks and unlabeled data"), with sparse,
overlapping task codes as an option (Kumar & Daumé 2012, "Learning task grouping and overlap in
multi-task learning"), and automatic relevance determination over the factors by a
multiplicative gamma process (Bhattacharya & Dunson 2011), so the number of factors in use is
learned up to ``max_factors``.

With the F features' coefficients in their data-scaled units u_j = sd(y) / sd(x_j):

    delta_1 ~ Gamma(a1, 1), delta_k ~ Gamma(a2, 1),  phi_k = (delta_1 ... delta_k)^(-1/2)
    L_kj ~ N(0, 1),  s_tk ~ N(0, 1) (dense) or Laplace(0, 1) = N(0, v_tk), v_tk ~ Exponential(1/2) (sparse codes)
    w_tj / u_j = m_j + sum_k s_tk phi_k L_kj + psi e_tj,   m_j ~ N(0, 2.5^2),  psi ~ HalfNormal(residual)

The intercept, when the model has one, is hierarchical (as in ``SharedSparsity``). S and L are
identified only up to rotation, sign and order, so they are left out of summaries and r_hat;
the identified quantities are ``subspace`` (T, F), the tasks' components sum_k s_tk phi_k L_k
in the data's units, ``w``, and ``active_factors``, the number of factors that each carry at
least ``active_share`` of the subspace's sum of squares.

Sites: ``mean`` (F,), ``shrinkage`` (K,), ``loadings`` (K, F), ``residual_scale`` (),
``codes`` (T, K) (sparse: ``code_scale_raw`` (T, K), the variances v, and ``codes_raw`` (T, K)), ``deviation_raw``
(T, D), ``intercept_mean`` (), ``intercept_scale`` (); deterministic ``factor_scale`` (K,),
(sparse: ``code_scale`` (T, K)), ``subspace`` (T, F), ``active_factors`` () and ``w`` (T, D).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from ..protocol import Tasks
from .base import TaskPrior, _cosine
from .hierarchical import LOCATION_SCALE
from .sparsity import _has_intercept, _positive, _sparse

__all__ = ["SharedSubspace", "SubspacePopulation"]


class SubspacePopulation(NamedTuple):
    """The prior of ``w`` given the population: w = mean + diag * e + factor @ codes (see
    ``SharedSubspace.population``)."""

    mean: torch.Tensor
    diag: torch.Tensor
    factor: torch.Tensor


class SharedSubspace(TaskPrior):
    """Task parameters near a shared low-dimensional subspace, its dimension learned.

    Parameters
    ----------
    max_factors : int, optional
        Upper bound K on the subspace's dimension (1 <= K < F, the number of features).
        Default: min(5, F - 1).
    sparse_codes : bool
        Laplace task codes (the Bayesian form of Kumar & Daumé's l1 penalty): each task leans on
        few factors, so groups of tasks share basis vectors and may overlap.
    residual_scale : float
        Scale of the HalfNormal prior on psi, each task's deviation from the subspace (units of
        sd(y) / sd(x)).
    a1, a2 : float
        Shapes of the multiplicative gamma process (a2 > 1 makes later factors smaller).
    active_share : float
        A factor counts as active in a draw when it carries at least this share of the
        subspace's sum of squares (``active_factors``).

    Notes
    -----
    Shapes: T tasks, D task parameters (the intercept first), F features, K = ``max_factors``.
    """

    reparam = False  # parametrised by hand
    relation_signed = True
    relation_kind = ("cosine of the tasks' components in the shared subspace (identified under rotation of the "
                     "factors): +1 = the same direction, 0 = unrelated, -1 = opposite")
    #: identified only up to rotation, sign and order of the factors: left out of summaries and r_hat
    unidentified_sites = ("loadings", "codes", "codes_raw", "code_scale", "code_scale_raw", "shrinkage",
                          "factor_scale")

    def __init__(self, max_factors: int | None = None, sparse_codes: bool = False, residual_scale: float = 0.5,
                 a1: float = 2.0, a2: float = 3.0, active_share: float = 0.05):
        if max_factors is not None and (isinstance(max_factors, bool) or not isinstance(max_factors, (int, np.integer))
                                        or max_factors < 1):
            raise ValueError(f"max_factors must be an integer >= 1; got {max_factors!r}")
        self.max_factors = None if max_factors is None else int(max_factors)
        self.sparse_codes = bool(sparse_codes)
        self.residual_scale = _positive(residual_scale, "residual_scale")
        self.a1, self.a2 = _positive(a1, "a1"), _positive(a2, "a2")
        self.active_share = _positive(active_share, "active_share")
        if not self.active_share < 1:
            raise ValueError(f"active_share must lie in (0, 1); got {active_share}")

    def factors(self, n_features: int) -> int:
        """K for F features: ``max_factors``, or min(5, F - 1) by default; ValueError when K >= F."""
        K = self.max_factors if self.max_factors is not None else min(5, n_features - 1)
        if n_features < 2 or K >= n_features:
            raise ValueError(f"SharedSubspace needs max_factors below the number of features ({n_features}, "
                             f"besides an intercept); got max_factors={K}")
        return K

    def coords(self, feature_names: Sequence[str] = ()) -> dict[str, list[str]]:
        """Labels of the features in the subspace and of the factors."""
        names = _sparse(list(feature_names))
        K = self.max_factors if self.max_factors is not None else max(1, min(5, len(names) - 1))
        return {"sparse_feature": names, "factor": [f"factor_{k}" for k in range(K)]}

    def site_dims(self) -> dict[str, tuple[str, ...]]:
        dims = {"mean": ("sparse_feature",), "shrinkage": ("factor",), "factor_scale": ("factor",),
                "loadings": ("factor", "sparse_feature"), "residual_scale": (), "deviation_raw": ("task", "feature"),
                "subspace": ("task", "sparse_feature"), "active_factors": (), "w": ("task", "feature"),
                "intercept_mean": (), "intercept_scale": ()}
        if self.sparse_codes:
            dims.update({"code_scale": ("task", "factor"), "code_scale_raw": ("task", "factor"),
                         "codes_raw": ("task", "factor")})
        else:
            dims["codes"] = ("task", "factor")
        return dims

    def population(self, tasks: Tasks) -> SubspacePopulation:
        """Sample everything but the tasks' standard-normal draws; returns the prior of ``w``:

            w = mean + diag * deviation_raw + factor @ codes_raw     (codes_raw: ``codes`` when dense)

        mean, diag (..., D) (the intercept first; under a batch of chains (C, 1, D), broadcasting
        against the tasks), factor (..., T, D, K) (its intercept row 0). Given these, each
        task's w is Gaussian, which the collapsed Gaussian form integrates out
        (``marginals.subspace_gaussian``).
        """
        like = tasks.like
        has_icpt = _has_intercept(tasks.feature_names)
        F = tasks.dims - int(has_icpt)
        K = self.factors(F)
        unit = tasks.scale[int(has_icpt):].to(like)
        ones_f, ones_k = like.new_ones(F), like.new_ones(K)
        m = pyro.sample("mean", dist.Normal(0 * ones_f, LOCATION_SCALE * ones_f).to_event(1))
        shape = torch.cat([like.new_full((1,), self.a1), like.new_full((K - 1,), self.a2)])
        delta = pyro.sample("shrinkage", dist.Gamma(shape, ones_k).to_event(1))
        phi = pyro.deterministic("factor_scale", torch.cumprod(delta, -1).rsqrt(), event_dim=1)
        L = pyro.sample("loadings", dist.Normal(0 * like, 1 + 0 * like).expand([K, F]).to_event(2))
        psi = pyro.sample("residual_scale", dist.HalfNormal(like.new_tensor(self.residual_scale))).unsqueeze(-1)
        mean, diag = unit * m, unit * psi.expand(*psi.shape[:-1], F)
        if has_icpt:
            mi = pyro.sample("intercept_mean", dist.Normal(tasks.loc[0].to(like),
                                                           LOCATION_SCALE * tasks.scale[0].to(like)))
            si = pyro.sample("intercept_scale", dist.HalfNormal(tasks.scale[0].to(like)))
            mean = torch.cat([mi.unsqueeze(-1).expand(*mean.shape[:-1], 1), mean], dim=-1)
            diag = torch.cat([si.unsqueeze(-1).expand(*diag.shape[:-1], 1), diag], dim=-1)
        scale = phi * like.new_ones(tasks.n, K)  # (..., T, K): each factor's scale in each task
        if self.sparse_codes:
            with tasks.plate:
                # Laplace codes (the Bayesian form of an l1 penalty) as a scale mixture; a horseshoe's
                # Cauchy tails made a new task's predictive mean a Monte-Carlo lottery
                v = pyro.sample("code_scale_raw", dist.Exponential(0.5 * ones_k).to_event(1))
                scale = scale * pyro.deterministic("code_scale", v.sqrt(), event_dim=1)
        # (..., T, F, K): unit_j L_kj scale_tk; under a batch of chains L (C, 1, K, F) carries the
        # task plate's 1 already
        Lt = L.transpose(-1, -2) if L.dim() > 2 else L.transpose(-1, -2).unsqueeze(0)
        factor = unit[:, None] * Lt * scale.unsqueeze(-2)
        if has_icpt:
            factor = torch.nn.functional.pad(factor, (0, 0, 1, 0))
        return SubspacePopulation(mean, diag, factor)

    def sample(self, tasks: Tasks) -> torch.Tensor:
        like = tasks.like
        pop = self.population(tasks)
        has_icpt = _has_intercept(tasks.feature_names)
        K = pop.factor.shape[-1]
        ones_k = like.new_ones(K)
        with tasks.plate:
            codes = pyro.sample("codes_raw" if self.sparse_codes else "codes",
                                dist.Normal(0 * ones_k, ones_k).to_event(1))
            e = pyro.sample("deviation_raw", dist.Normal(0 * like, 1 + 0 * like).expand([tasks.dims]).to_event(1))
        parts = pop.factor * codes.unsqueeze(-2)  # (..., T, D, K): each factor's part of each task's w
        sub = parts.sum(-1)
        pyro.deterministic("subspace", sub[..., int(has_icpt):], event_dim=2)
        # each factor's sum of squares, in units of sd(y) / sd(x)
        unit = tasks.scale[int(has_icpt):].to(like)
        energy = ((parts[..., int(has_icpt):, :] / unit[:, None]) ** 2).sum(-2).sum(-2, keepdim=True)  # (..., 1, K)
        share = energy / energy.sum(-1, keepdim=True).clamp_min(torch.finfo(like.dtype).tiny)
        count = (share >= self.active_share).to(like).sum(-1)
        pyro.deterministic("active_factors", count.squeeze(-1) if count.dim() == 1 else count)
        return pyro.deterministic("w", pop.mean + pop.diag * e + sub, event_dim=2)

    def relations(self, samples):
        return _cosine(samples["subspace"])

    def relation_null(self, n_dims, n=4000, seed=0):
        return None  # signed: read against 0

    def factor_counts(self, samples: dict[str, torch.Tensor]) -> np.ndarray:
        """Active factors per draw (S,)."""
        return samples["active_factors"].reshape(-1).round().to(torch.int64).cpu().numpy()

    def __repr__(self):
        return (f"SharedSubspace(max_factors={self.max_factors}, sparse_codes={self.sparse_codes}, "
                f"residual_scale={self.residual_scale})")
