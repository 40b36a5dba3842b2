"""The linear predictor of a multi-task model: eta_n = x_n . w_task[n] (+ shared part), with a
sparse task-row product that is fast forward and backward (``TaskRows``)."""

from __future__ import annotations

import itertools
import math
import warnings
import weakref

import torch

from .protocol import is_fusing

__all__ = ["linear_predictor", "task_rows", "TaskRows", "add_at"]


def linear_predictor(w: torch.Tensor, coef: torch.Tensor | None, Xv: torch.Tensor,
                     Xs: torch.Tensor, task: torch.Tensor, rows: TaskRows | None = None) -> torch.Tensor:
    """eta (..., N) from w (..., T, D), coef (..., 1, Ds) or (..., Ds), Xv (N, D), Xs (N, Ds).

    ``rows``, the same Xv and task as a ``TaskRows``, computes the varying part faster op by op;
    traced for a fusing compiler (``protocol.is_fusing``) the plain gather compiles to less.
    """
    eta = rows(w) if rows is not None and not is_fusing() else (Xv * w[..., task, :]).sum(-1)
    if coef is not None and Xs.shape[-1]:
        if coef.dim() >= 2 and coef.shape[-2] == 1:
            coef = coef.squeeze(-2)
        eta = eta + (coef @ Xs.T if coef.dim() > 1 else Xs @ coef)
    return eta


def task_rows(X: torch.Tensor, task: torch.Tensor, n_tasks: int) -> TaskRows | None:
    """A ``TaskRows`` where the device has sparse CSR products (CPU, CUDA), else None."""
    return TaskRows(X, task, n_tasks) if X.device.type in ("cpu", "cuda") else None


class TaskRows:
    """x_n . w_{task[n]} for every row n as one sparse product: A (N, T*D) @ w.flatten(-2).

    Gathering w[..., task, :] into (..., N, D) and its scatter-add backward cost 3-7x more
    (4 to 1024 chains, 5000 rows; measured in benchmarks/mcmc.py's set-up). Both directions
    are CSR x dense products; A' is stored too so the backward needs no transpose.

    ``deterministic`` (default: on CUDA) sums the adjoint as batched dense products over blocks
    of each task's rows instead: cuSPARSE's A' product adds in a different order on every call
    (H200, torch 2.11: 30 of 30 repeats differed in the last bits), so the same seed gave
    different draws.
    """

    def __init__(self, X: torch.Tensor, task: torch.Tensor, n_tasks: int, deterministic: bool | None = None):
        N, D = X.shape
        self.D = D
        self.shape = (N, n_tasks * D)
        cols = (task.unsqueeze(-1) * D + torch.arange(D, device=X.device)).reshape(-1)
        row_of = torch.arange(N, device=X.device).repeat_interleave(D)
        idx = torch.int32 if N * D < 2**31 - 1 else torch.int64
        vals = X.reshape(-1)
        order = torch.argsort(cols, stable=True)
        crow = torch.cat([cols.new_zeros(1), torch.bincount(cols, minlength=n_tasks * D).cumsum(0)])
        with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice: not the user's concern
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            self.A = torch.sparse_csr_tensor(torch.arange(0, N * D + 1, D, device=X.device).to(idx),
                                             cols.to(idx), vals, self.shape, check_invariants=True)
            self.At = torch.sparse_csr_tensor(crow.to(idx), row_of[order].to(idx), vals[order], self.shape[::-1],
                                              check_invariants=True)
        self.blocks = _Blocks(X, task, n_tasks) if (X.is_cuda if deterministic is None else deterministic) else None
        self.key = next(_KEYS)
        _ROWS[self.key] = self

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        """eta (..., N) from w (..., T, D)."""
        batch = w.shape[:-2]
        flat = w.reshape(-1, self.shape[1])
        return _task_rows(flat, self.key).reshape(*batch, self.shape[0])

    def columns(self, w: torch.Tensor) -> torch.Tensor:
        """eta as columns, (N, C) from w (C, T, D): no transposed copies of the (C, N) result.
        For code that computes the gradient itself; ``__call__`` is the autograd-aware form."""
        return self.A @ w.reshape(w.shape[0], -1).T.contiguous()

    def adjoint(self, g: torch.Tensor) -> torch.Tensor:
        """sum over each task's rows of g_n x_n: (C, T, D) from columns g (N, C)."""
        return self.adjoint_columns(g).T.reshape(g.shape[1], -1, self.D)

    def adjoint_columns(self, g: torch.Tensor) -> torch.Tensor:
        """A' g: (T*D, C) from columns g (N, C)."""
        return self.At @ g if self.blocks is None else self.blocks(g)


class _Blocks:
    """A' g in a fixed order: each task's rows cut into blocks of b = ceil(N / T) (zero-padded,
    so at most 2T blocks), one batched matmul per call, then the blocks of a task summed by a
    sorted index_put (deterministic on CUDA; index_add there is not)."""

    def __init__(self, X: torch.Tensor, task: torch.Tensor, n_tasks: int):
        N, D = X.shape
        counts = torch.bincount(task, minlength=n_tasks)
        b = max(1, -(-N // n_tasks))
        per_task = -(-counts // b)                                       # blocks of each task
        first = per_task.cumsum(0) - per_task
        order = torch.argsort(task, stable=True)
        t = task[order]
        rank = torch.arange(N, device=X.device) - (counts.cumsum(0) - counts)[t]
        slot = (first[t] + rank // b) * b + rank % b
        n_blocks = int(per_task.sum())
        self.gather = torch.zeros(n_blocks * b, dtype=torch.long, device=X.device)
        self.gather[slot] = order                                        # padding slots read row 0 ...
        Xp = X.new_zeros(n_blocks * b, D)
        Xp[slot] = X[order]                                              # ... times a zero row of X
        self.Xt = Xp.reshape(n_blocks, b, D).transpose(1, 2)             # (B, D, b)
        self.block_task = torch.repeat_interleave(torch.arange(n_tasks, device=X.device), per_task)
        self.one_each = bool((per_task == 1).all())
        self.n_tasks, self.b = n_tasks, b

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        C = g.shape[1]
        sums = self.Xt @ g.index_select(0, self.gather).reshape(-1, self.b, C)   # (B, D, C)
        if not self.one_each:
            sums = sums.new_zeros(self.n_tasks, *sums.shape[1:]).index_put_((self.block_task,), sums, accumulate=True)
        return sums.reshape(-1, C)


def add_at(out: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``out.index_add_(dim, index, source)``, summed in the same order on every call: on CUDA
    index_add_ adds with atomics (a different order, different last bits, each run), so there
    a sorted ``index_put_(accumulate=True)`` instead. Returns ``out``."""
    return _sorted_add(out, dim, index, source) if out.is_cuda else out.index_add_(dim, index, source)


def _sorted_add(out: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    out.movedim(dim, 0).index_put_((index,), source.movedim(dim, 0), accumulate=True)
    return out


# Custom ops taking a key, not the sparse tensors: torch.jit.trace and make_fx record each as one
# node (a traced graph cannot hold sparse constants) and replay it through the registry; the fake
# implementations give torch.compile their shapes.
_ROWS: weakref.WeakValueDictionary[int, TaskRows] = weakref.WeakValueDictionary()
_KEYS = itertools.count()


@torch.library.custom_op("bayesmtl::task_rows", mutates_args=())
def _task_rows(flat: torch.Tensor, key: int) -> torch.Tensor:
    return (_ROWS[key].A @ flat.T).T.contiguous()


def _task_rows_setup(ctx, inputs, output):
    ctx.key = inputs[1]


@torch.library.custom_op("bayesmtl::task_rows_adjoint", mutates_args=())
def _task_rows_adjoint(g: torch.Tensor, key: int) -> torch.Tensor:
    return _ROWS[key].adjoint_columns(g.T).T.contiguous()


@_task_rows.register_fake
def _(flat, key):
    return flat.new_empty(flat.shape[0], _ROWS[key].shape[0])


@_task_rows_adjoint.register_fake
def _(g, key):
    return g.new_empty(g.shape[0], _ROWS[key].shape[1])


def _task_rows_backward(ctx, g):
    return _task_rows_adjoint(g, ctx.key), None


_task_rows.register_autograd(_task_rows_backward, setup_context=_task_rows_setup)


#: rows summed at a time: the (rows, D, D) products stay near 100 MB at D = 20
SUM_ROWS = 32_768


def task_gram(Xv: torch.Tensor, y: torch.Tensor, task: torch.Tensor, n_tasks: int, Xs: torch.Tensor | None = None,
              var: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-task sums of rows, float64 and additive over chunks of rows: ``XX`` (T, D, D), ``Xy``
    (T, D), ``yy``, ``ysum``, ``n`` and ``const_t`` (T,: sum of log 2 pi (+ log var)), and with a
    shared design ``XS`` (T, D, Ds), ``Sy`` (T, Ds), ``SS`` (T, Ds, Ds). Xv (N, D) the
    task-varying design, y (N,), task (N,), Xs (N, Ds); ``var`` (N,): known noise variances,
    each row then weighted by 1 / var (except in ``ysum`` and ``n``). Rows are summed
    ``SUM_ROWS`` at a time."""
    f64 = dict(dtype=torch.float64, device=Xv.device)
    Xs = Xv.new_zeros(Xv.shape[0], 0) if Xs is None else Xs
    D, Ds, N = Xv.shape[-1], Xs.shape[-1], Xv.shape[0]
    out = {k: torch.zeros(n_tasks, *shape, **f64) for k, shape in (
        ("XX", (D, D)), ("Xy", (D,)), ("yy", ()), ("ysum", ()), ("n", ()), ("const_t", ()),
        ("XS", (D, Ds)), ("Sy", (Ds,)), ("SS", (Ds, Ds)))}
    for lo in range(0, N, SUM_ROWS):
        part = slice(lo, lo + SUM_ROWS)
        X, S, yv, t = Xv[part].double(), Xs[part].double(), y[part].double(), task[part]
        wt = torch.ones_like(yv) if var is None else 1.0 / var[part].double()
        Xw, Sw = X * wt.unsqueeze(-1), S * wt.unsqueeze(-1)
        log_2pi = torch.full_like(yv, math.log(2 * math.pi))
        for k, v in (("XX", Xw.unsqueeze(-1) * X.unsqueeze(-2)), ("Xy", Xw * yv.unsqueeze(-1)), ("yy", wt * yv * yv),
                     ("ysum", yv), ("n", torch.ones_like(yv)),
                     ("const_t", log_2pi if var is None else log_2pi + torch.log(var[part].double())),
                     ("XS", Xw.unsqueeze(-1) * S.unsqueeze(-2)), ("Sy", Sw * yv.unsqueeze(-1)),
                     ("SS", Sw.unsqueeze(-1) * S.unsqueeze(-2))):
            add_at(out[k], 0, t, v)
    return out


def exact_fits(gram: dict[str, torch.Tensor], tol: float = 1e-9) -> list[int]:
    """Tasks whose rows are more than their design's rank yet fitted exactly by it (residual 0):
    with a noise sd of their own, the likelihood grows without bound as that sd goes to 0, and
    the posterior is improper. ``gram`` is ``task_gram``'s per-task sums."""
    XX, Xy, yy, n = gram["XX"], gram["Xy"], gram["yy"], gram["n"]
    spread = (yy - gram["ysum"] ** 2 / n.clamp_min(1)).clamp_min(0)
    vals, vecs = torch.linalg.eigh(XX)
    keep = vals > tol * vals[:, -1:].clamp_min(tol)
    proj = (vecs.transpose(-1, -2) @ Xy.unsqueeze(-1)).squeeze(-1)      # Xy in the eigenbasis
    fitted = (proj ** 2 / vals.where(keep, torch.ones_like(vals)) * keep).sum(-1)
    rss = (yy - fitted).clamp_min(0)
    rank = keep.sum(-1)
    exact = (n > rank) & (rss <= 1e-8 * (spread + yy).clamp_min(1e-300))
    return torch.nonzero(exact).flatten().tolist()
