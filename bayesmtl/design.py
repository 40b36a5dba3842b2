"""The linear predictor of a multi-task model: eta_n = x_n . w_task[n] (+ shared part), with a
sparse task-row product that is fast forward and backward (``TaskRows``)."""

from __future__ import annotations

import itertools
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


def task_gram(Xv: torch.Tensor, y: torch.Tensor, task: torch.Tensor, n_tasks: int) -> dict[str, torch.Tensor]:
    """Per-task sums of rows, float64 and additive over chunks of rows: ``XX`` (T, D, D),
    ``Xy`` (T, D), ``yy``, ``ysum`` and ``n`` (T,). Xv (N, D) the task-varying design, y (N,),
    task (N,)."""
    X, yv = Xv.double(), y.double()
    D = X.shape[1]
    return {"XX": X.new_zeros(n_tasks, D, D).index_add_(0, task, X.unsqueeze(-1) * X.unsqueeze(-2)),
            "Xy": X.new_zeros(n_tasks, D).index_add_(0, task, X * yv.unsqueeze(-1)),
            "yy": X.new_zeros(n_tasks).index_add_(0, task, yv * yv),
            "ysum": X.new_zeros(n_tasks).index_add_(0, task, yv),
            "n": torch.bincount(task, minlength=n_tasks).double()}


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
