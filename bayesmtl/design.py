"""The linear predictor of a multi-task model: eta_n = x_n . w_task[n] (+ shared part), with a
sparse task-row product that is fast forward and backward (``TaskRows``)."""

from __future__ import annotations

import itertools
import math
import warnings
import weakref

import torch

from .protocol import is_fusing

__all__ = ["linear_predictor", "task_rows", "TaskRows"]


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
    """

    def __init__(self, X: torch.Tensor, task: torch.Tensor, n_tasks: int):
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
        return (self.At @ g).T.reshape(g.shape[1], -1, self.D)


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
    return (_ROWS[key].At @ g.T).T.contiguous()


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
            out[k].index_add_(0, t, v)
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
