"""Exact intrinsic coregionalisation model (ICM; Bonilla, Chai & Williams 2008).

    cov(f_i(x), f_j(x')) = B_ij k(x, x'),      y = f_task(x) + mean_task + eps,  eps ~ N(0, noise_task)

with B = W W^T + diag(v) (or diag(s) C diag(s) with C a correlation matrix) and k an ARD RBF or
Matérn kernel. Two exact paths give the same marginal likelihood:

* **Kronecker** (every task observed at every input; N inputs, T tasks): Sigma = B (x) K + D (x) I_N.
  With M = U^T D^{-1/2}, U the eigenvectors of D^{-1/2} B D^{-1/2} = U diag(c) U^T, the rotated
  covariance (M (x) I) Sigma (M (x) I)^T = diag(c) (x) K + I is block diagonal: T Cholesky
  factors of N x N matrices (c_t K + I) instead of one of an NT x NT matrix, or, from 4 tasks on
  a CPU, one eigendecomposition K = Q diag(lam) Q^T that serves every block. M is computed
  without gradient (a T x T eigendecomposition, whose backward is unstable at repeated
  eigenvalues); the first-order off-block terms are added back so value *and* gradient are
  exact. The factors are cached for prediction.
* **Hadamard** (tasks at different inputs; n rows): K_ij = B[t_i, t_j] k(x_i, x_j) + noise[t_i] delta_ij,
  one Cholesky of an n x n matrix.

Every function broadcasts over leading batch dims of the hyperparameters (chains, particles).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..design import add_at

__all__ = ["KERNELS", "ard_kernel", "private_kernel", "robust_cholesky", "gaussian_logpdf", "GPNumericalError",
           "task_covariance", "grid_layout", "Grid", "Cells", "group_cells", "training_layout", "hadamard_mll",
           "kronecker_mll", "KroneckerCache", "HadamardCache", "kronecker_cache", "hadamard_cache", "kronecker_solver",
           "integrated_means"]

KERNELS = ("rbf", "matern12", "matern32", "matern52")
_LOG2PI = math.log(2 * math.pi)


class GPNumericalError(RuntimeError):
    """A covariance matrix stayed non positive definite after the largest jitter."""


# ---------------------------------------------------------------------------------- kernels
def ard_kernel(X1: torch.Tensor, X2: torch.Tensor, lengthscale: torch.Tensor, kind: str = "rbf") -> torch.Tensor:
    """Unit-variance ARD kernel matrix.

    X1 (N1, D), X2 (N2, D), lengthscale (..., D) -> (..., N1, N2).
    """
    if callable(kind):  # a gpytorch kernel object, wrapped by the model: its own hyperparameters
        return kind(X1, X2, lengthscale)
    ls = lengthscale.unsqueeze(-2)
    return _scaled_kernel(X1 / ls, X2 / ls, kind)


def private_kernel(X1: torch.Tensor, t1: torch.Tensor, X2: torch.Tensor, t2: torch.Tensor,
                   private: tuple[torch.Tensor, ...], kind: str = "rbf") -> torch.Tensor:
    """Each task's own ARD kernel times its variance, zero between tasks.

    X1 (N1, D), t1 (N1,), X2 (N2, D), t2 (N2,), private = (lengthscales (..., T, D), variances
    (..., T)[, offsets (..., T)]) -> (..., N1, N2). An offset is the variance of a constant
    of each task's own (the hierarchical GP's task intercepts, integrated out).
    """
    ls, var = private[:2]
    same = t1.unsqueeze(-1) == t2.unsqueeze(-2)
    K = _scaled_kernel(X1 / ls[..., t1, :], X2 / ls[..., t2, :], kind) * var[..., t1].unsqueeze(-1)
    if len(private) > 2:
        K = K + private[2][..., t1].unsqueeze(-1)
    return K * same


def _scaled_kernel(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    if kind not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}; got {kind!r}")
    d2 = (a * a).sum(-1).unsqueeze(-1) + (b * b).sum(-1).unsqueeze(-2) - 2 * a @ b.transpose(-1, -2)
    return _kernel_of_d2(d2.clamp_min(0), kind)


def _kernel_of_d2(d2: torch.Tensor, kind: str) -> torch.Tensor:
    """A named unit-variance kernel as a function of the scaled squared distance d2."""
    if kind == "rbf":
        return torch.exp(-0.5 * d2)
    r = d2.clamp_min(1e-30).sqrt()  # clamp: zero gradient at r = 0 rather than 0 * inf
    if kind == "matern12":
        return torch.exp(-r)
    s = (math.sqrt(3) if kind == "matern32" else math.sqrt(5)) * r
    return ((1 + s) if kind == "matern32" else (1 + s + s * s / 3)) * torch.exp(-s)


def _kernel_slope(d2: torch.Tensor, k: torch.Tensor, kind: str) -> torch.Tensor:
    """d k / d d2 of ``_kernel_of_d2``; zero at d2 = 0 for the Matern kernels, as autograd
    through their clamp gives (the distance's own gradient is zero there)."""
    if kind == "rbf":
        return -0.5 * k
    r = d2.clamp_min(1e-30).sqrt()
    if kind == "matern12":
        out = -0.5 * k / r
    else:
        c = math.sqrt(3) if kind == "matern32" else math.sqrt(5)
        out = -1.5 * torch.exp(-c * r) if kind == "matern32" else -(5.0 / 6.0) * (1 + c * r) * torch.exp(-c * r)
    return torch.where(d2 > 1e-30, out, torch.zeros_like(out))


def robust_cholesky(A: torch.Tensor, what: str = "covariance matrix", max_tries: int = 6,
                    warn: bool = True) -> torch.Tensor:
    """Cholesky factor of A (..., n, n); on failure retry with jitter 1e-6, 1e-5, ... times the
    mean diagonal, warning with the jitter used; GPNumericalError when the last try fails too.
    A batch element with non-finite entries (a sampler's proposal far in a tail) gets a NaN factor,
    so its density is NaN and the proposal is rejected; it neither raises nor jitters the others."""
    L, info = torch.linalg.cholesky_ex(A)
    if torch.jit.is_tracing() or not bool((info > 0).any()):
        return L
    bad = ~torch.isfinite(A).all(-1).all(-1)
    if bool(bad.any()):
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        L = robust_cholesky(torch.where(bad[..., None, None], eye, A), what, max_tries, warn)
        return torch.where(bad[..., None, None], torch.full_like(L, float("nan")), L)
    # each matrix's own scale: one chain far in a tail must not set the jitter of the others
    scale = A.diagonal(dim1=-2, dim2=-1).abs().mean(-1)[..., None, None]
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    failed = info > 0  # only these get jitter; the others keep their exact factor
    for k in range(max_tries):
        jitter = scale * 10.0 ** (k - 6)
        Lk, ik = torch.linalg.cholesky_ex(A + jitter * eye)
        fixed = failed & (ik == 0)
        L = torch.where(fixed[..., None, None], Lk, L)
        failed = failed & ~fixed
        if not bool(failed.any()):
            if warn:
                # one text per call site (Python shows it once): the numbers vary at every proposal
                msg = (f"Cholesky of the {what} failed at some proposals; jitter (up to 1e{k - 6} times "
                       "its mean diagonal) was added to those") if A.dim() > 2 else \
                    f"Cholesky of the {what} failed; added jitter {float(jitter.max()):.2e} to its diagonal"
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
            return L
    if A.dim() > 2:
        # a batch of chains: the elements that still fail get a NaN factor (their proposals are
        # rejected); the others keep theirs. One matrix alone (a point estimate) raises below.
        return torch.where(failed[..., None, None], torch.full_like(L, float("nan")), L)
    raise GPNumericalError(
        f"Cholesky of the {what} ({A.shape[-1]} x {A.shape[-1]}) failed even with jitter {float(jitter.max()):.2e}; "
        "the hyperparameters are degenerate (noise near zero, duplicated inputs?): standardise the "
        "target, raise the noise prior or use float64")


def task_covariance(W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """B = W W^T + diag(v): W (..., T, r), v (..., T) -> (..., T, T)."""
    return W @ W.transpose(-1, -2) + torch.diag_embed(v)


class _GaussianLogpdf(torch.autograd.Function):
    """log N(r; 0, S) with the closed-form gradient dS = (a a^T - S^{-1}) / 2, dr = -a (a = S^{-1} r):
    one Cholesky forward, one inverse from the factor backward."""

    @staticmethod
    def forward(ctx, S, r, what):
        L = robust_cholesky(S, what)
        a = torch.cholesky_solve(r.unsqueeze(-1), L)
        val = (-0.5 * (r.unsqueeze(-1) * a).sum((-1, -2)) - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
               - 0.5 * r.shape[-1] * _LOG2PI)
        a = a.squeeze(-1)
        ctx.save_for_backward(L, a)
        ctx.mark_non_differentiable(L, a)
        return val, L, a

    @staticmethod
    def backward(ctx, g, _gL, _ga):
        L, a = ctx.saved_tensors
        g1 = g.unsqueeze(-1)
        # cholesky_inverse: 1.2-2.5x faster than cholesky_solve against I at n = 16-3,548 on
        # torch 2.13 (the reverse held on an older torch)
        dS = 0.5 * g1.unsqueeze(-1) * (a.unsqueeze(-1) * a.unsqueeze(-2) - torch.cholesky_inverse(L))
        return dS, -g1 * a, None


def gaussian_logpdf(S: torch.Tensor, r: torch.Tensor, what: str = "covariance matrix"):
    """log N(r; 0, S), its Cholesky factor and S^{-1} r: S (..., n, n), r (..., n) ->
    ((...), (..., n, n), (..., n)); differentiable in S and r (the factor and solve are not)."""
    return _GaussianLogpdf.apply(S, r, what)


# ---------------------------------------------------------------------------------- layout
@dataclass
class Grid:
    """Rows of long data arranged as a complete (input x task) grid.

    X : (N, D) distinct inputs; Y : (N, T) targets; row_index : (N, T) long, the long-format row
    of (input n, task t).
    """

    X: torch.Tensor
    Y: torch.Tensor
    row_index: torch.Tensor


def grid_layout(X: torch.Tensor, y: torch.Tensor, task: torch.Tensor, n_tasks: int) -> Grid | None:
    """The complete grid when every task is observed once at every input, else None."""
    n = X.shape[0]
    if n % n_tasks:
        return None
    N = n // n_tasks
    counts = torch.bincount(task, minlength=n_tasks)
    if bool((counts != N).any()):
        return None
    Xn = np.ascontiguousarray(X.detach().cpu().numpy())
    t = task.cpu().numpy()
    keys = [Xn[i].tobytes() for i in range(n)]
    first = np.flatnonzero(t == 0)
    pos = {keys[i]: k for k, i in enumerate(first)}
    if len(pos) != N:
        return None  # repeated inputs within a task
    idx = np.full((N, n_tasks), -1, dtype=np.int64)
    for i in range(n):
        k = pos.get(keys[i])
        if k is None or idx[k, t[i]] >= 0:
            return None
        idx[k, t[i]] = i
    if (idx < 0).any():
        return None
    ri = torch.as_tensor(idx, device=X.device)
    return Grid(X=X[ri[:, 0]], Y=y[ri], row_index=ri)


# ---------------------------------------------------------------------------------- Hadamard
@dataclass
class Cells:
    """Long rows grouped by distinct (input, task): the exact likelihood of the rows is that of
    the cell means with noise noise_t / count times a term free of f (sum of squares within cells).

    X (m, D), y (m,) cell means, task (m,), count (m,) rows per cell, ss (m,) within-cell sums of
    squares. ``None`` fields of a plain layout mean one row per cell.
    """

    X: torch.Tensor
    y: torch.Tensor
    task: torch.Tensor
    count: torch.Tensor | None = None
    ss: torch.Tensor | None = None


def group_cells(X: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> Cells:
    """Cells of repeated (input, task) rows (categorical inputs repeat a lot: the school data
    have 3.5k cells for 11k rows); plain rows when nothing repeats."""
    key = torch.cat([X, task.to(X.dtype).unsqueeze(-1)], -1)
    uniq, inv = torch.unique(key, dim=0, return_inverse=True)
    m = uniq.shape[0]
    if m == X.shape[0]:
        return Cells(X, y, task)
    count = add_at(torch.zeros(m, dtype=y.dtype, device=y.device), 0, inv, torch.ones_like(y))
    ybar = add_at(torch.zeros(m, dtype=y.dtype, device=y.device), 0, inv, y) / count
    ss = add_at(torch.zeros(m, dtype=y.dtype, device=y.device), 0, inv, (y - ybar[inv]) ** 2)
    return Cells(uniq[:, :-1].contiguous(), ybar, uniq[:, -1].long(), count, ss)


def training_layout(X: torch.Tensor, y: torch.Tensor, task: torch.Tensor, n_tasks: int, private: bool = False,
                    cells: bool = True) -> tuple[Grid | None, Cells | None]:
    """The exact path of a training set: X (n, D), y (n,), task (n,) long.

    ``(Grid, None)`` on the Kronecker path (every task observed once at every input, and no
    private kernels, which break the Kronecker structure); else ``(None, Cells)``, the Hadamard
    path's rows with repeated (input, task) merged (``(None, None)`` with ``cells=False``).
    """
    grid = None if private else grid_layout(X, y, task, n_tasks)
    if grid is not None or not cells:
        return grid, None
    return None, group_cells(X, y, task)


def _hadamard_cov(X, task, B, ls, noise, kind, count=None, private=None, offset=None):
    K = ard_kernel(X, X, ls, kind) * B[..., task.unsqueeze(-1), task.unsqueeze(-2)]
    if private is not None:  # (lengthscales (..., T, D), variances (..., T)) of each task's own kernel
        K = K + private_kernel(X, task, X, task, private, kind)
    if offset is not None:
        K = K + _offset_cov(task, task, offset)
    nz = noise[..., task]
    return K + torch.diag_embed(nz if count is None else nz / count)


def _offset_cov(t1: torch.Tensor, t2: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Covariance of integrated task means: offset[t] between rows of the same task t, else 0.
    t1 (N1,), t2 (N2,), offset (..., T) -> (..., N1, N2)."""
    return offset[..., t1].unsqueeze(-1) * (t1.unsqueeze(-1) == t2.unsqueeze(-2))


class _HadamardLogpdf(torch.autograd.Function):
    """The Hadamard-form log marginal likelihood for a named kernel, its gradient in closed form
    from G = (a a^T - S^{-1}) / 2: G's products with the kernel and task blocks give the
    gradients of B, the lengthscales and the noise as a few reductions, instead of autograd's
    dozen N x N temporaries (school, N = 3,548, one thread: 3.9 -> 3.2 s an evaluation; 4.8 s
    with ``cholesky_solve`` against I; ``benchmarks/gp.py --school``)."""

    @staticmethod
    def forward(ctx, X, y, task, B, ls, noise, mean, count, kind, what, offset=None):
        Z = X / ls.unsqueeze(-2)
        sq = (Z * Z).sum(-1)
        d2 = (Z @ Z.transpose(-1, -2)).mul_(-2).add_(sq.unsqueeze(-1)).add_(sq.unsqueeze(-2)).clamp_min_(0)
        Bg = B[..., task.unsqueeze(-1), task.unsqueeze(-2)]
        k = _kernel_of_d2(d2, kind)
        S = k.mul_(Bg) if torch.broadcast_shapes(k.shape, Bg.shape) == k.shape else k * Bg
        S.diagonal(dim1=-2, dim2=-1).add_(noise[..., task] if count is None else noise[..., task] / count)
        if offset is not None:
            S = S + _offset_cov(task, task, offset)
        L = robust_cholesky(S, what)
        del S, k
        r = (y - mean[..., task]).expand(L.shape[:-1])
        a = torch.cholesky_solve(r.unsqueeze(-1), L).squeeze(-1)
        val = -0.5 * (r * a).sum(-1) - L.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * r.shape[-1] * _LOG2PI
        ctx.save_for_backward(X, task, ls, L, a, d2, Bg, count)
        ctx.kind, ctx.shapes = kind, (B.shape, ls.shape, noise.shape, mean.shape)
        ctx.offset_shape = None if offset is None else offset.shape
        return val

    @staticmethod
    def backward(ctx, g):
        X, task, ls, L, a, d2, Bg, count = ctx.saved_tensors
        B_shape, ls_shape, noise_shape, mean_shape = ctx.shapes
        T = B_shape[-1]
        G = torch.cholesky_inverse(L).neg_()
        G.add_(a.unsqueeze(-1) * a.unsqueeze(-2)).mul_(0.5 * g[..., None, None])  # d val / d S
        dS_ii = G.diagonal(dim1=-2, dim2=-1).clone()
        if count is not None:
            dS_ii = dS_ii / count
        k = _kernel_of_d2(d2, ctx.kind)
        # S_ij = k_ij B[t_i, t_j] + noise: sum G k over each pair of tasks' block (two index_adds,
        # 9x faster than products with a one-hot (N, T) at school's 139 tasks)
        Gk = G * k
        dB = add_at(Gk.new_zeros(Gk.shape[:-2] + (T, T)),
            -2, task, add_at(Gk.new_zeros(Gk.shape[:-1] + (T,)), -1, task, Gk))
        del Gk
        doffset = None
        if ctx.offset_shape is not None and ctx.needs_input_grad[10]:  # G summed over each task's own block
            blocks = add_at(G.new_zeros(G.shape[:-2] + (T, T)),
                -2, task, add_at(G.new_zeros(G.shape[:-1] + (T,)), -1, task, G))
            doffset = blocks.diagonal(dim1=-2, dim2=-1).sum_to_size(ctx.offset_shape)
        H = G.mul_(Bg).mul_(_kernel_slope(d2, k, ctx.kind))   # d val / d d2, symmetric
        # d2_ij = sum_d (x_id - x_jd)^2 / ls_d^2, so sum_ij H_ij (x_id - x_jd)^2 = 2 (x_d^2 . H 1 - x_d . H x_d)
        spread = (H.sum(-1).unsqueeze(-1) * X * X).sum(-2) - (X * (H @ X)).sum(-2)
        dls = -4.0 * spread / ls ** 3
        dnoise = add_at(dS_ii.new_zeros(dS_ii.shape[:-1] + (T,)), -1, task, dS_ii)
        ga = g.unsqueeze(-1) * a
        dmean = add_at(ga.new_zeros(ga.shape[:-1] + (T,)), -1, task, ga)
        return (None, None, None, dB.sum_to_size(B_shape), dls.sum_to_size(ls_shape),
                dnoise.sum_to_size(noise_shape), dmean.sum_to_size(mean_shape), None, None, None, doffset)


def hadamard_mll(X: torch.Tensor, y: torch.Tensor, task: torch.Tensor, B: torch.Tensor, ls: torch.Tensor,
                 noise: torch.Tensor, mean: torch.Tensor, kind: str = "rbf", count: torch.Tensor | None = None,
                 ss: torch.Tensor | None = None, private: tuple[torch.Tensor, ...] | None = None,
                 offset: torch.Tensor | None = None) -> torch.Tensor:
    """Exact log marginal likelihood, Hadamard form.

    X (n, D), y (n,), task (n,) long; B (..., T, T), ls (..., D), noise (..., T), mean (..., T) -> (...).
    With ``count`` and ``ss`` (n,), rows are cells of repeated (input, task) (see ``group_cells``)
    and the result is the exact marginal likelihood of all the rows they hold. ``private``
    (lengthscales (..., T, D), variances (..., T)) adds each task's own kernel: an LMC with one
    shared and T private latent processes, which nests independent GPs (B = 0). ``offset``
    (..., T): the task means are integrated out, mean_t ~ N(mean[t], offset[t]), instead of given.
    """
    if isinstance(kind, str) and private is None:
        if kind not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}; got {kind!r}")
        mll = _HadamardLogpdf.apply(X, y, task, B, ls, noise, mean, count, kind, "ICM covariance (Hadamard path)",
                                    offset)
    else:
        S = _hadamard_cov(X, task, B, ls, noise, kind, count, private, offset)
        mll = gaussian_logpdf(S, (y - mean[..., task]).expand(S.shape[:-1]), "ICM covariance (Hadamard path)")[0]
    if count is not None:
        nz = noise[..., task]
        mll = mll - 0.5 * ((ss / nz).sum(-1) + ((count - 1) * torch.log(2 * math.pi * nz)).sum(-1)
                           + count.log().sum(-1))
    return mll


@dataclass
class HadamardCache:
    L: torch.Tensor        # (n, n) Cholesky of the training covariance
    alpha: torch.Tensor    # (n,) K^{-1} (y - mean)


def hadamard_cache(X, y, task, B, ls, noise, mean, kind, count=None, private=None, offset=None) -> HadamardCache:
    """Factors of one draw (no batch dims) for prediction."""
    L = robust_cholesky(_hadamard_cov(X, task, B, ls, noise, kind, count, private, offset),
                        "ICM covariance (Hadamard path)")
    r = (y - mean[task]).unsqueeze(-1)
    return HadamardCache(L, torch.cholesky_solve(r, L).squeeze(-1))


def integrated_means(cache: HadamardCache, task: torch.Tensor, mean: torch.Tensor, offset: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and sd, each (T,), of task means mean_t ~ N(mean[t], offset[t]) that the
    factors in ``cache`` integrated out (``offset`` given to ``hadamard_cache``): cov(mean_t, y_j)
    is offset[t] for the rows of task t, so E = mean + offset * (sum of alpha over the task's rows)
    and Var = offset - offset^2 * 1_t^T S^-1 1_t."""
    T = mean.shape[-1]
    Z = torch.nn.functional.one_hot(task, T).to(cache.L.dtype)  # (n, T)
    V = torch.linalg.solve_triangular(cache.L, Z, upper=False)
    post = mean + offset * (Z.T @ cache.alpha)
    var = offset - offset * offset * (V * V).sum(0)
    return post, var.clamp_min(0).sqrt()


def hadamard_predict(cache: HadamardCache, X, task, Xs, task_s, B, ls, mean, kind, private=None, offset=None):
    """Predictive mean and variance of f (plus the task mean, if integrated: ``offset``) at
    (Xs, task_s): each (m,)."""
    Ks = ard_kernel(Xs, X, ls, kind) * B[task_s.unsqueeze(-1), task.unsqueeze(-2)]  # (m, n)
    prior = B[task_s, task_s]  # k(x, x) = 1
    if private is not None:
        Ks = Ks + private_kernel(Xs, task_s, X, task, private, kind)
        prior = prior + sum(p[task_s] for p in private[1:])
    if offset is not None:
        Ks = Ks + _offset_cov(task_s, task, offset)
        prior = prior + offset[task_s]
    mu = mean[task_s] + Ks @ cache.alpha
    v = torch.linalg.solve_triangular(cache.L, Ks.T, upper=False)
    var = prior - (v * v).sum(0)
    return mu, var.clamp_min(0)


# ---------------------------------------------------------------------------------- Kronecker
def _rotation(B: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """M (..., T, T), detached, with M D M^T = I and M B M^T diagonal."""
    with torch.no_grad():
        s = noise.rsqrt()
        Bt = s.unsqueeze(-1) * B * s.unsqueeze(-2)
        U = _safe_eigh(Bt)[1]
        return U.transpose(-1, -2) * s.unsqueeze(-2)


def _safe_eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of symmetric (..., n, n); NaN for a batch element whose eigh
    fails (a sampler far out in a tail: non-finite or ill-conditioned), so its log density is NaN
    and the proposal is rejected, instead of one chain's matrix stopping every chain."""
    bad = ~torch.isfinite(A).all(-1).all(-1)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    A = torch.where(bad[..., None, None], eye, A)
    try:
        lam, U = torch.linalg.eigh(A)
    except torch.linalg.LinAlgError:
        flat = A.reshape(-1, *A.shape[-2:])
        lams, vecs = [], []
        for a in flat:  # one by one: only the failing elements are lost
            try:
                la, u = torch.linalg.eigh(a)
            except torch.linalg.LinAlgError:
                la, u = torch.full_like(a[0], float("nan")), torch.full_like(a, float("nan"))
            lams.append(la)
            vecs.append(u)
        lam, U = torch.stack(lams).reshape(A.shape[:-1]), torch.stack(vecs).reshape(A.shape)
    nan = float("nan")
    return (torch.where(bad[..., None], torch.full_like(lam, nan), lam),
            torch.where(bad[..., None, None], torch.full_like(U, nan), U))


class _EigenBlocks(torch.autograd.Function):
    """sum_t log N(z_t; 0, c_t K + e_t I) from one eigendecomposition K = Q diag(lam) Q^T.

    The gradient is written out (dK = sum_t c_t (a_t a_t^T - A_t^-1) / 2 with A_t^-1 = Q diag(1 /
    (c_t lam + e_t)) Q^T), so eigh's own backward, unstable at the near-repeated eigenvalues of a
    smooth kernel, is never used. Returns (value, alpha (..., N, T) = A_t^-1 z_t, Q, d = c lam + e).
    """

    @staticmethod
    def forward(ctx, K, c, e, Z):
        lam, Q = _safe_eigh(K)  # a chain whose K fails gets NaN (its proposal is rejected)
        if K.dim() == 2 and not bool(torch.isfinite(lam).all()):
            raise GPNumericalError("eigendecomposition of the input kernel matrix failed (NaN or inf entries)")
        lam = lam.clamp_min(0)                                   # K is PSD: round-off only
        d = c.unsqueeze(-2) * lam.unsqueeze(-1) + e.unsqueeze(-2)  # (..., N, T)
        aq = (Q.transpose(-1, -2) @ Z) / d
        N, T = Z.shape[-2:]
        val = -0.5 * (aq * aq * d).sum((-1, -2)) - 0.5 * d.log().sum((-1, -2)) - 0.5 * N * T * _LOG2PI
        alpha = Q @ aq
        ctx.save_for_backward(Q, lam, d, aq, alpha, c)
        ctx.mark_non_differentiable(alpha, Q, d)
        return val, alpha, Q, d

    @staticmethod
    def backward(ctx, g, _ga, _gQ, _gd):
        Q, lam, d, aq, alpha, c = ctx.saved_tensors
        g1, g2 = g.unsqueeze(-1), g.unsqueeze(-1).unsqueeze(-1)
        w = (c.unsqueeze(-2) / d).sum(-1)                        # (..., N)
        Qt = Q.transpose(-1, -2)
        dK = 0.5 * g2 * ((alpha * c.unsqueeze(-2)) @ alpha.transpose(-1, -2) - (Q * w.unsqueeze(-2)) @ Qt)
        dc = 0.5 * g1 * (aq * aq * lam.unsqueeze(-1) - lam.unsqueeze(-1) / d).sum(-2)
        de = 0.5 * g1 * (aq * aq - 1 / d).sum(-2)
        return dK, dc, de, -g2 * alpha


def kronecker_solver(n_inputs: int, n_tasks: int, device: torch.device | str = "cpu") -> str:
    """"eigh" (one eigendecomposition of K serves every task) or "cholesky" (one factor per task).

    On a CPU eigh of an N x N matrix costs about as much as 4 Cholesky factors with their
    backward solves (measured at N = 2,225: 1.1x faster at 4 tasks, 2x at 7); GPU eigh is slow.
    """
    return "eigh" if n_tasks >= 4 and torch.device(device).type == "cpu" and n_inputs > 1 else "cholesky"


def kronecker_mll(X: torch.Tensor, Y: torch.Tensor, B: torch.Tensor, ls: torch.Tensor,
                  noise: torch.Tensor, mean: torch.Tensor, kind: str = "rbf",
                  cache: bool = False, solver: str | None = None):
    """Exact log marginal likelihood on a complete grid, Kronecker form.

    X (N, D), Y (N, T); B (..., T, T), ls (..., D), noise (..., T), mean (..., T) -> (...).
    ``solver``: "cholesky" (T factors of N x N), "eigh" (one eigendecomposition of K) or None
    (``kronecker_solver``'s choice). With ``cache=True`` returns (mll, KroneckerCache) for
    prediction (no batch dims).
    """
    N, T = Y.shape
    solver = solver or kronecker_solver(N, T, Y.device)
    if solver not in ("cholesky", "eigh"):
        raise ValueError(f"solver must be 'cholesky' or 'eigh'; got {solver!r}")
    M = _rotation(B, noise)                                     # (..., T, T) constant
    C = M @ B @ M.transpose(-1, -2)                             # ~diag(c), differentiable
    E = M @ torch.diag_embed(noise) @ M.transpose(-1, -2)       # ~I, differentiable
    R = Y - mean.unsqueeze(-2)                                  # (..., N, T)
    Z = R @ M.transpose(-1, -2)                                 # rotated residuals (..., N, T)
    K = ard_kernel(X, X, ls, kind)                              # (..., N, N)
    c = C.diagonal(dim1=-2, dim2=-1)
    e = E.diagonal(dim1=-2, dim2=-1)
    Q = d = None
    if solver == "eigh":
        batch = torch.broadcast_shapes(K.shape[:-2], c.shape[:-1], Z.shape[:-2])
        mll, Al, Q, d = _EigenBlocks.apply(K.expand(batch + K.shape[-2:]), c.expand(batch + c.shape[-1:]),
                                           e.expand(batch + e.shape[-1:]), Z.expand(batch + Z.shape[-2:]))
        Ls = None
    else:
        eye = torch.eye(N, dtype=K.dtype, device=K.device)
        mll, Ls, alphas = 0.0, [], []
        for t in range(T):
            A = c[..., t, None, None] * K + e[..., t, None, None] * eye
            zt = Z[..., :, t].expand(A.shape[:-1])
            val, L, alpha = gaussian_logpdf(A, zt, "rotated Kronecker block of the ICM covariance")
            mll = mll + val
            alphas.append(alpha)
            Ls.append(L)
        Al = torch.stack(alphas, -1).detach()                   # (..., N, T)
    if T > 1:
        # off-block terms: zero in value at this point, but carry the gradient w.r.t. the
        # off-diagonal entries of C and E (d z'S^-1 z = -alpha_s' dS_st alpha_t)
        G = Al.transpose(-1, -2) @ (K @ Al)                      # (..., T, T) alpha_s' K alpha_t
        H = Al.transpose(-1, -2) @ Al                            # alpha_s' alpha_t
        off = 1 - torch.eye(T, dtype=K.dtype, device=K.device)
        cross = ((C - C.detach()) * G * off).sum((-1, -2)) + ((E - E.detach()) * H * off).sum((-1, -2))
        mll = mll + 0.5 * cross
    mll = mll + N * torch.linalg.slogdet(M)[1]                    # log-det of the constant rotation
    if not cache:
        return mll
    L = None if Ls is None else torch.stack([x.detach() for x in Ls])
    return mll, KroneckerCache(M=M, G=Al @ M, P=M @ B.detach(), L=L, Q=Q, d=d)


@dataclass
class KroneckerCache:
    """Factors for prediction: either L, or Q and d (the eigh solver)."""

    M: torch.Tensor                  # (T, T) rotation
    G: torch.Tensor                  # (N, T) Sigma^{-1} (Y - mean) in grid layout
    P: torch.Tensor                  # (T, T) M B
    L: torch.Tensor | None = None    # (T, N, N) Cholesky factors of c_t K + e_t I
    Q: torch.Tensor | None = None    # (N, N) eigenvectors of K
    d: torch.Tensor | None = None    # (N, T) eigenvalues of c_t K + e_t I


def kronecker_cache(X, Y, B, ls, noise, mean, kind, solver: str | None = None) -> KroneckerCache:
    with torch.no_grad():
        return kronecker_mll(X, Y, B, ls, noise, mean, kind, cache=True, solver=solver)[1]


def kronecker_predict(cache: KroneckerCache, X, Xs, task_s, B, ls, mean, kind):
    """Predictive mean and variance of f at (Xs, task_s) from the cached factors: each (m,).

    mean_j(x) = mean_j + (k(x, X) G B)_j;  var_j(x) = B_jj - sum_t P_tj^2 |L_t^{-1} k(X, x)|^2.
    """
    U, inv = torch.unique(Xs, dim=0, return_inverse=True)       # rows for several tasks share one solve
    Ks = ard_kernel(U, X, ls, kind)                               # (u, N)
    mu = mean[task_s] + ((Ks @ cache.G) @ B)[inv, task_s]
    if cache.L is not None:
        V = torch.linalg.solve_triangular(cache.L, Ks.T.unsqueeze(0).expand(cache.L.shape[0], -1, -1), upper=False)
        q = (V * V).sum(1)[:, inv]                                 # (T, m)
    else:  # k^T Q diag(1 / d_t) Q^T k: one product for every task
        q = (((Ks @ cache.Q) ** 2) @ (1 / cache.d)).T[:, inv]
    var = B[task_s, task_s] - (cache.P[:, task_s] ** 2 * q).sum(0)
    return mu, var.clamp_min(0)
