"""Hierarchical GP (Lawrence & Platt 2004; Yu, Tresp & Schwaighofer 2005; Schwaighofer, Tresp &
Yu 2005): every task's function is one shared function plus the task's own deviation,

    f_t(x) = g(x) + h_t(x) + c_t,   g ~ GP(0, s_g^2 k_g),   h_t ~ GP(0, s_h^2 k_h),   c_t ~ N(0, c^2)
    y = m + f_t(x) + N(0, noise_t)

with g shared, h_t and c_t independent across tasks (ARD kernels k_g and k_h with their own
lengthscales). Tasks are exchangeable, so a task never seen in training gets g's posterior plus
a fresh deviation from the prior: the model predicts new tasks, which an ICM cannot.

In covariance form this is the Hadamard ICM with B = s_g^2 1 1^T and each task's own kernel
s_h^2 k_h + c^2 (``icm.private_kernel`` with an offset), so the exact marginal likelihood,
prediction and leave-one-out are the ICM's. When every task is observed at every input (a grid)
the grid path below costs T + 2 factors of N x N instead of one of NT x NT.

Sites (D features, T tasks): ``lengthscale`` (D,)
and ``shared_scale`` () of g, ``deviation_lengthscale`` (D,) and ``deviation_scale`` () of the
h_t, ``offset_scale`` () (c), ``noise`` (T,) variances, ``mean`` () (m).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch

from . import icm

__all__ = ["SITE_DIMS", "parts", "mll", "sample_sites", "initial", "constrain", "GridCache", "grid_mll", "grid_cache",
           "grid_predict"]

#: named dims of the hierarchical GP's sites (``MultitaskGP.site_dims``)
SITE_DIMS = {"lengthscale": ("feature",), "shared_scale": (), "deviation_lengthscale": ("feature",),
             "deviation_scale": (), "offset_scale": (), "noise": ("task",), "mean": ()}


def parts(h: dict[str, torch.Tensor], n_tasks: int):
    """(B (..., T, T), private (lengthscales (..., T, D), variances (..., T), offsets (..., T)),
    mean (..., T), noise (..., T)) of the ICM form, for ``n_tasks`` tasks (known tasks first).

    Tasks beyond the fitted ones are new: same B row, deviation and offset (exchangeable), and the
    average of the known tasks' noise variances.
    """
    T = n_tasks
    batch = h["shared_scale"].shape
    ones = torch.ones(T, T, dtype=h["shared_scale"].dtype, device=h["shared_scale"].device)
    B = h["shared_scale"].pow(2)[..., None, None] * ones
    dls = h["deviation_lengthscale"]
    private = (dls.unsqueeze(-2).expand(*batch, T, dls.shape[-1]),
               h["deviation_scale"].pow(2).unsqueeze(-1).expand(*batch, T),
               h["offset_scale"].pow(2).unsqueeze(-1).expand(*batch, T))
    noise = h["noise"]
    if noise.shape[-1] < T:
        extra = noise.mean(-1, keepdim=True).expand(*noise.shape[:-1], T - noise.shape[-1])
        noise = torch.cat([noise, extra], -1)
    return B, private, h["mean"].unsqueeze(-1).expand(*batch, T), noise


def sample_sites(model, n_tasks: int, n_features: int, mv) -> dict[str, torch.Tensor]:
    """The sites under ``model``'s priors (``mv`` moves a distribution to the data's device)."""
    scale = mv(model.outputscale_prior)
    return {"lengthscale": pyro.sample("lengthscale", mv(model.lengthscale_prior).expand([n_features]).to_event(1)),
            "shared_scale": pyro.sample("shared_scale", scale),
            "deviation_lengthscale": pyro.sample("deviation_lengthscale",
                                                 mv(model.lengthscale_prior).expand([n_features]).to_event(1)),
            "deviation_scale": pyro.sample("deviation_scale", scale),
            "offset_scale": pyro.sample("offset_scale", scale),
            "noise": pyro.sample("noise", mv(model.noise_prior).expand([n_tasks]).to_event(1)),
            "mean": pyro.sample("mean", mv(model.mean_prior))}


def initial(data, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Type-II starting values, unconstrained (logs of positive values), requiring grad: the
    target's variance split 1/2 shared, 1/8 deviation, 1/8 offset, 1/4 noise."""
    T, D, dt, dev = data.n_tasks, data.n_features, data.dtype, data.device
    var = float(data.y.double().var()) if data.n_rows > 1 else 1.0
    var = max(var, 1e-6)
    rnd = lambda *s: 0.1 * torch.randn(*s, generator=gen, dtype=dt).to(dev)  # noqa: E731
    log_ls = torch.full((D,), math.log(math.sqrt(max(D, 1))), dtype=dt, device=dev)
    half = lambda share: torch.tensor(0.5 * math.log(share * var), dtype=dt, device=dev)  # noqa: E731
    raw = {"log_ls": log_ls + rnd(D), "log_shared": half(0.5) + rnd(()), "log_dls": log_ls + rnd(D),
           "log_dev": half(0.125) + rnd(()), "log_offset": half(0.125) + rnd(()),
           "log_noise": torch.full((T,), math.log(0.25 * var), dtype=dt, device=dev) + rnd(T),
           "mean": data.y.double().mean().to(dt).reshape(())}
    return {k: v.clone().requires_grad_() for k, v in raw.items()}


def constrain(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sites from ``initial``'s unconstrained values."""
    return {"lengthscale": raw["log_ls"].exp(), "shared_scale": raw["log_shared"].exp(),
            "deviation_lengthscale": raw["log_dls"].exp(), "deviation_scale": raw["log_dev"].exp(),
            "offset_scale": raw["log_offset"].exp(), "noise": raw["log_noise"].exp(), "mean": raw["mean"]}


def mll(grid, cells, h: dict[str, torch.Tensor], kind: str = "rbf") -> torch.Tensor:
    """Exact log marginal likelihood on the training layout (``icm.training_layout``): the grid
    path when ``grid`` is given, else the Hadamard path over ``cells``."""
    if grid is not None:
        return grid_mll(grid.X, grid.Y, h, kind)
    B, private, mean, noise = parts(h, int(h["noise"].shape[-1]))
    return icm.hadamard_mll(cells.X, cells.y, cells.task, B, h["lengthscale"], noise, mean, kind, cells.count,
                            cells.ss, private)


# ---------------------------------------------------------------------------------- grid path
# Every task observed once at every input (N inputs, T tasks): with A_t = s_h^2 K_h + c^2 J +
# noise_t I (N x N) and G = s_g^2 K_g, the covariance is blockdiag(A_t) + U G U^T, U = 1_T (x) I_N.
# With S = sum_t A_t^-1 and P = S^-1 + G, Woodbury and the determinant lemma give
#   Sigma^-1 = A^-1 - A^-1 U C U^T A^-1,  C = (G^-1 + S)^-1 = G P^-1 S^-1,  |Sigma| = prod_t |A_t| |P| |S|
# from T + 2 factors of N x N instead of one of NT x NT. No factor of G is needed: an RBF Gram
# matrix is often numerically singular, and P and S are not (they carry the noise).


@dataclass
class GridCache:
    """One draw's factors on the grid (no batch dims): ``A_inv`` (T, N, N), ``S_inv`` and ``G``
    (N, N), ``LP`` (N, N) lower triangular, ``alpha`` (T, N) = Sigma^-1 (y - m), task by task."""

    A_inv: torch.Tensor
    S_inv: torch.Tensor
    G: torch.Tensor
    LP: torch.Tensor
    alpha: torch.Tensor


def _grid_factors(X, Y, h, kind):
    N = Y.shape[-2]
    eye = torch.eye(N, dtype=X.dtype, device=X.device)
    own = h["deviation_scale"].pow(2)[..., None, None] * icm.ard_kernel(X, X, h["deviation_lengthscale"], kind) \
        + h["offset_scale"].pow(2)[..., None, None]
    A = own.unsqueeze(-3) + h["noise"][..., :, None, None] * eye  # (..., T, N, N)
    LA = icm.robust_cholesky(A, "hierarchical GP covariance of a task (grid path)")
    A_inv = torch.cholesky_solve(eye.expand_as(A), LA)
    LS = icm.robust_cholesky(A_inv.sum(-3), "hierarchical GP sum of the tasks' precisions (grid path)")
    S_inv = torch.cholesky_solve(eye.expand_as(LS), LS)
    G = h["shared_scale"].pow(2)[..., None, None] * icm.ard_kernel(X, X, h["lengthscale"], kind)
    LP = icm.robust_cholesky(S_inv + G, "hierarchical GP capacitance (grid path)")
    R = (Y - h["mean"][..., None, None]).transpose(-1, -2)  # (..., T, N)
    Ar = (A_inv @ R.unsqueeze(-1)).squeeze(-1)  # (..., T, N)
    return LA, A_inv, LS, S_inv, G, LP, R, Ar


def _c_form(u, G, S_inv, LP):
    """u' C u per column of u (..., N, m) with C = G P^-1 S^-1, without a factor of G: (..., m)."""
    a = torch.linalg.solve_triangular(LP, S_inv @ u, upper=False)
    b = torch.linalg.solve_triangular(LP, G @ u, upper=False)
    return (a * b).sum(-2)


def grid_mll(X: torch.Tensor, Y: torch.Tensor, h: dict[str, torch.Tensor], kind: str = "rbf") -> torch.Tensor:
    """Exact log marginal likelihood on a grid: X (N, D), Y (N, T), sites ``h`` with batch dims
    (...) -> (...)."""
    N, T = Y.shape
    LA, _, LS, S_inv, G, LP, R, Ar = _grid_factors(X, Y, h, kind)
    quad = (R * Ar).sum((-1, -2)) - _c_form(Ar.sum(-2).unsqueeze(-1), G, S_inv, LP).squeeze(-1)
    logdiag = lambda L: L.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # noqa: E731
    logdet = 2 * (logdiag(LA).sum(-1) + logdiag(LP) + logdiag(LS))
    return -0.5 * (quad + logdet + N * T * math.log(2 * math.pi))


def grid_cache(X: torch.Tensor, Y: torch.Tensor, h: dict[str, torch.Tensor], kind: str = "rbf") -> GridCache:
    """Factors of one draw (no batch dims) for prediction."""
    _, A_inv, _, S_inv, G, LP, _, Ar = _grid_factors(X, Y, h, kind)
    q = G @ torch.cholesky_solve(S_inv @ Ar.sum(0).unsqueeze(-1), LP)  # C U^T A^-1 r, (N, 1)
    return GridCache(A_inv, S_inv, G, LP, Ar - (A_inv @ q).squeeze(-1))


def grid_predict(cache: GridCache, X: torch.Tensor, Xs: torch.Tensor, task_s: torch.Tensor,
                 h: dict[str, torch.Tensor], kind: str = "rbf") -> tuple[torch.Tensor, torch.Tensor]:
    """Predictive mean and variance of f + m at (Xs, task_s), each (m,); a task index at or above
    the grid's T is a new task (the shared function and a fresh deviation)."""
    T = cache.alpha.shape[0]
    sg2, sh2, c2 = h["shared_scale"].pow(2), h["deviation_scale"].pow(2), h["offset_scale"].pow(2)
    g = sg2 * icm.ard_kernel(Xs, X, h["lengthscale"], kind)                    # (m, N)
    known = task_s < T
    hk = (sh2 * icm.ard_kernel(Xs, X, h["deviation_lengthscale"], kind) + c2) * known.unsqueeze(-1)
    t = task_s.clamp_max(T - 1)
    Ah = torch.zeros_like(hk)
    for k in torch.unique(t[known]).tolist():  # A_t^-1 h, task by task (a gather would be m x N x N)
        rows = known & (t == k)
        Ah[rows] = hk[rows] @ cache.A_inv[k]
    mean = h["mean"] + g @ cache.alpha.sum(0) + (hk * cache.alpha[t]).sum(-1)
    S = cache.A_inv.sum(0)
    Sg = g @ S
    quad = (Sg * g).sum(-1) + 2 * (g * Ah).sum(-1) + (hk * Ah).sum(-1)
    correction = _c_form((Sg + Ah).T, cache.G, cache.S_inv, cache.LP)
    return mean, (sg2 + sh2 + c2 - quad + correction).clamp_min(0)
