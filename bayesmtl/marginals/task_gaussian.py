"""Gaussian task coefficients integrated out of a Gaussian regression, given the population.

The algebra shared by the collapsed forms whose prior makes each task's coefficients Gaussian
once the population is fixed:

    w_t = m_t + B_t q_t,  q_t ~ N(0, I_R),  y_t | w_t ~ N(X_t w_t, s2_t I)
    =>  y_t ~ N(X_t m_t, X_t B_t B_t' X_t' + s2_t I)

with m_t one population mean or each task's own (a tree's node), B_t diagonal, given as its
diagonal d (..., T, D) (R = D: a horseshoe's scales), or [diag(d), G], given as the pair (d, G),
G (..., T, D, K) (R = D + K: a subspace's loadings next to the task residuals). Two equivalent
forms, each with every eigenvalue >= 1 (no division by a scale that may shrink to 0):

- parameters: A = I_R + B' X'X B / s2 from per-task sufficient statistics, O(T R^3);
- rows, where every task has fewer rows n_t than R (p > n): K = I_n + X B B' X' / s2 on the
  tasks' rows padded to the largest n_t with zero rows (which add nothing), O(T n^2 R + T n^3).

Afterwards ``draw`` gives q_t exactly from its conditional N(A^-1 B'c, A^-1), c = X'(y - X m) / s2,
so a form splits w back into its program's own standard-normal sites.

A mean shared by every task with a Gaussian prior, m ~ N(m0, diag(p)^2), integrates out as well
(``log_marginal_mean``, ``draw_mean``): from G = sum_t X_t' C_t^-1 X_t and b = sum_t X_t' C_t^-1
(y_t - X_t m0), one D x D factor M = I + P G P (eigenvalues >= 1 again), O(T n^2 D + T n D^2).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pyro
import torch

from ..data import MultiTaskData
from ..design import add_at
from ..protocol import data_context
from . import Marginal

__all__ = ["TaskGaussian", "PopulationGaussian"]


class TaskGaussian:
    """Per-task sufficient statistics of one Gaussian regression.

    Parameters
    ----------
    X : Tensor (N, D)
        The task-varying design.
    y : Tensor (N,)
    task : LongTensor (N,)
        Each row's task in 0..T-1.
    n_tasks : int
    width : int
        R, the columns of B; the row form is used where every task has fewer rows than R.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, task: torch.Tensor, n_tasks: int, width: int):
        T, D = n_tasks, X.shape[-1]
        self.T, self.D = T, D
        XX = add_at(X.new_zeros(T, D, D), 0, task, X.unsqueeze(-1) * X.unsqueeze(-2))
        self.XX = 0.5 * (XX + XX.transpose(-1, -2))
        self.Xy = add_at(X.new_zeros(T, D), 0, task, X * y.unsqueeze(-1))
        self.yy = add_at(X.new_zeros(T), 0, task, y * y)
        self.n = add_at(X.new_zeros(T), 0, task, torch.ones_like(y))
        self.const = float(y.numel() * math.log(2 * math.pi))
        n_max = int(self.n.max()) if T else 0
        self.rows = None  # (X (T, n, D), y (T, n)) padded, in the row form
        if 0 < n_max < width:
            slot = _slots(task, T)
            self.rows = (X.new_zeros(T, n_max, D).index_put_((task, slot), X),
                         X.new_zeros(T, n_max).index_put_((task, slot), y))

    def _factor(self, mean: torch.Tensor, B, s2: torch.Tensor):
        """mean (S, D), or (S, T, D) for a mean of each task, B (S, T, D) or a pair ((S, T, D),
        (S, T, D, K)), s2 (S, T) -> u = B'c (S, T, R), r'r / s2 (S, T), the Cholesky factor of
        A (S, T, R, R) and c = X'(y - X m) / s2 (S, T, D)."""
        inv = 1.0 / s2
        m = _per_task(mean)                                          # (S, 1 or T, D)
        XXm = torch.matmul(self.XX, m.unsqueeze(-1)).squeeze(-1)     # (S, T, D)
        c = (self.Xy - XXm) * inv.unsqueeze(-1)
        rr = (self.yy - (m * (2 * self.Xy - XXm)).sum(-1)) * inv
        d, G = B if isinstance(B, tuple) else (B, None)
        u = d * c
        A = d.unsqueeze(-1) * self.XX * d.unsqueeze(-2)
        if G is not None:  # B = [diag(d), G]: A's blocks, with no product of a diagonal by a matrix
            XXG = self.XX @ G                                        # (S, T, D, K)
            u = torch.cat([u, (G * c.unsqueeze(-1)).sum(-2)], -1)
            dXXG = d.unsqueeze(-1) * XXG
            A = torch.cat([torch.cat([A, dXXG], -1),
                           torch.cat([dXXG.transpose(-1, -2), G.transpose(-1, -2) @ XXG], -1)], -2)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        L = torch.linalg.cholesky_ex(eye + A * inv[..., None, None])[0]  # every eigenvalue >= 1
        return u, rr, L, c

    def log_marginal(self, mean: torch.Tensor, B, s2: torch.Tensor) -> torch.Tensor:
        """sum_t log N(y_t | X_t m, X_t B_t B_t' X_t' + s2_t I), shape (S,)."""
        if self.rows is not None:
            _, L, a, inv = self._rows_factor(mean, B, s2)
            return self._total(s2, L, (a * a).sum((-1, -2)) * inv)
        u, rr, L, _ = self._factor(mean, B, s2)
        v = torch.linalg.solve_triangular(L, u.unsqueeze(-1), upper=False)
        return self._total(s2, L, rr - (v * v).sum((-1, -2)))

    def _total(self, s2: torch.Tensor, L: torch.Tensor, quad: torch.Tensor) -> torch.Tensor:
        """sum_t log N from each task's noise variance, factor L (log|C_t| = n_t log s2_t +
        log|L L'|) and quadratic form, shape (S,)."""
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        return (-0.5 * (self.n * torch.log(s2) + logdet + quad)).sum(-1) - 0.5 * self.const

    def _rows_factor(self, mean, B, s2):
        """The row form: padded X (T, n, D), the Cholesky factor L (S, T, n, n) of
        K_t = I + X_t B_t B_t' X_t' / s2_t, a = L^-1 (y_t - X_t m) (S, T, n, 1) and 1 / s2 (a padded
        row is a zero row of X with y = 0: K's diagonal 1 there, residual 0)."""
        X, y = self.rows
        inv = 1.0 / s2                                                   # (S, T)
        r = y - torch.matmul(X, _per_task(mean).unsqueeze(-1)).squeeze(-1)  # (S, T, n); 0 on padded rows
        d, G = B if isinstance(B, tuple) else (B, None)
        XB = X * d.unsqueeze(-2)                                         # (S, T, n, D)
        if G is not None:
            XB = torch.cat([XB, X @ G], -1)                              # (S, T, n, R)
        eye = torch.eye(X.shape[-2], dtype=X.dtype, device=X.device)
        L = torch.linalg.cholesky_ex(eye + torch.matmul(XB, XB.transpose(-1, -2)) * inv[..., None, None])[0]
        return X, L, torch.linalg.solve_triangular(L, r.unsqueeze(-1), upper=False), inv

    def _shared_terms(self, m0: torch.Tensor, B, s2: torch.Tensor):
        """sum_t log N(y_t | X_t m0, C_t) (S,), G = sum_t X_t' C_t^-1 X_t (S, D, D) and
        b = sum_t X_t' C_t^-1 (y_t - X_t m0) (S, D), with C_t = X_t B_t B_t' X_t' + s2_t I: what a
        mean shared by every task, m ~ N(m0, diag(p)^2), needs to be integrated out too."""
        if self.rows is not None:  # C_t^-1 = K_t^-1 / s2_t
            X, L, a, inv = self._rows_factor(m0, B, s2)
            Z = torch.linalg.solve_triangular(L, X.expand(*L.shape[:-2], *X.shape[-2:]), upper=False)
            Zt = Z.transpose(-1, -2) * inv[..., None, None]
            G = torch.matmul(Zt, Z).sum(-3)
            b = torch.matmul(Zt, a).sum(-3).squeeze(-1)
            return self._total(s2, L, (a * a).sum((-1, -2)) * inv), G, b
        # C_t^-1 = (I - X B A^-1 B' X' / s2) / s2, A = I + B' X'X B / s2 = L L'
        inv = 1.0 / s2
        d, Gk = B if isinstance(B, tuple) else (B, None)
        u, rr, L, c = self._factor(m0, B, s2)
        BXX = d.unsqueeze(-1) * self.XX                                      # (S, T, D, D): B'X'X
        if Gk is not None:
            BXX = torch.cat([BXX, Gk.transpose(-1, -2) @ self.XX], -2)
        v = torch.linalg.solve_triangular(L, u.unsqueeze(-1), upper=False)
        E = torch.linalg.solve_triangular(L, BXX * inv[..., None, None], upper=False)
        G = (self.XX * inv[..., None, None] - torch.matmul(E.transpose(-1, -2), E)).sum(-3)
        b = (c - torch.matmul(E.transpose(-1, -2), v).squeeze(-1)).sum(-2)
        return self._total(s2, L, rr - (v * v).sum((-1, -2))), G, b

    def _mean_factor(self, m0, p, B, s2):
        """(sum_t log N(y_t | X_t m0, C_t), h, Cholesky factor of M = I + P G P), P = diag(p)."""
        ll, G, b = self._shared_terms(m0, B, s2)
        eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
        Lm = torch.linalg.cholesky_ex(eye + p.unsqueeze(-1) * G * p.unsqueeze(-2))[0]  # every eigenvalue >= 1
        return ll, p * b, Lm

    def log_marginal_mean(self, m0: torch.Tensor, p: torch.Tensor, B, s2: torch.Tensor) -> torch.Tensor:
        """``log_marginal`` with the population mean integrated out too: m ~ N(m0, diag(p)^2)
        shared by every task, m0 and p (S, D); shape (S,). With m = m0 + p q, q ~ N(0, I):
        log p(y) = sum_t log N(y_t | X_t m0, C_t) - log|L_M| + |L_M^-1 h|^2 / 2, h = p b."""
        ll, h, Lm = self._mean_factor(m0, p, B, s2)
        v = torch.linalg.solve_triangular(Lm, h.unsqueeze(-1), upper=False)
        return ll - torch.log(torch.diagonal(Lm, dim1=-2, dim2=-1)).sum(-1) + 0.5 * (v * v).sum((-1, -2))

    def draw_mean(self, m0: torch.Tensor, p: torch.Tensor, B, s2: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
        """q (S, D), the shared mean's standard-normal coordinates (m = m0 + p q), from their
        conditional given y and the population: N(M^-1 h, M^-1)."""
        _, h, Lm = self._mean_factor(m0, p, B, s2)
        v = torch.linalg.solve_triangular(Lm, h.unsqueeze(-1), upper=False)
        eps = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        return torch.linalg.solve_triangular(Lm.transpose(-1, -2), v + eps, upper=True).squeeze(-1)

    def draw(self, mean: torch.Tensor, B, s2: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """q (S, T, R) from its conditional given y: N(A^-1 B'c, A^-1)."""
        u, _, L, _ = self._factor(mean, B, s2)
        v = torch.linalg.solve_triangular(L, u.unsqueeze(-1), upper=False)
        eps = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        return torch.linalg.solve_triangular(L.transpose(-1, -2), v + eps, upper=True).squeeze(-1)


def _per_task(mean: torch.Tensor) -> torch.Tensor:
    """A population mean (S, D) as (S, 1, D); a mean of each task (S, T, D) as it is."""
    return mean.unsqueeze(-2) if mean.dim() == 2 else mean


def _slots(task: torch.Tensor, T: int) -> torch.Tensor:
    """Each row's position among its task's rows (0, 1, ... in data order), shape (N,)."""
    order = torch.argsort(task, stable=True)
    counts = torch.bincount(task, minlength=T)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(task)
    slot[order] = torch.arange(task.numel(), device=task.device) - start[task[order]]
    return slot


class PopulationGaussian(Marginal):
    """A collapsed form whose prior has ``population(tasks)``: the prior of every task's w given
    the population. The collapsed program samples the population and the noise and adds the
    marginal likelihood; ``conditional`` replays the population at each draw and draws what was
    integrated out. A subclass writes ``_factor`` (population -> m, B, s2) and ``_split`` (the
    exact draw of q -> the program's own sites).
    """

    max_plate_nesting = 1

    def __init__(self, model, data: MultiTaskData, width: int | None = None):
        self.prior = model.prior
        self.lik = model.likelihood_for(data)
        self.tasks = model.tasks(data)
        self.dtype, self.device = data.dtype, data.device
        Xv, _ = model.design(data)
        self.T, self.D = data.n_tasks, Xv.shape[-1]
        self.stats = TaskGaussian(Xv, data.y, data.task, data.n_tasks, width=width or self.D)
        self.like = torch.zeros((), dtype=Xv.dtype, device=Xv.device)

    def _factor(self, pop, sigma):
        """(S, D) or (S, T, D) mean, B (see ``TaskGaussian``), (S, T) noise variance, and the batch
        shape. The mean may be a pair (m0, p), both (S, D): a mean shared by every task with prior
        N(m0, diag(p)^2), integrated out with the tasks' draws (``TaskGaussian.log_marginal_mean``);
        the subclass then writes ``_mean_sites``."""
        raise NotImplementedError

    def _split(self, pop, mean: torch.Tensor, B, q: torch.Tensor, samples: dict[str, torch.Tensor],
               generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The program's sites from q (S, T, R), the exact draw given y (``mean`` and ``B`` as
        ``_factor`` gave them)."""
        raise NotImplementedError

    def _population(self):
        task_plate = pyro.plate("task", self.T, dim=-1)
        with data_context(self.dtype, self.device):
            return self._sample_population(replace(self.tasks, plate=task_plate)), task_plate

    def _sample_population(self, tasks):
        """The prior's sites that stay in the collapsed program, and what ``_factor`` reads."""
        return self.prior.population(tasks)

    # ------------------------------------------------------------------ Collapsed protocol
    def pyro_model(self):
        def model() -> None:
            pop, task_plate = self._population()
            with data_context(self.dtype, self.device):
                sigma = self.lik.sample_params(self.T, task_plate, self.like)["sigma"]
            mean, B, s2, batch = self._factor(pop, sigma)
            if isinstance(mean, tuple):  # a shared mean N(m0, diag(p)^2), integrated out too
                ll = self.stats.log_marginal_mean(*mean, B, s2)
            else:
                ll = self.stats.log_marginal(mean, B, s2)
            pyro.factor("y_marginal", ll.reshape(batch))

        return model

    def conditional(self, samples: dict[str, torch.Tensor], generator: torch.Generator,
                    chunk: int = 200) -> dict[str, torch.Tensor]:
        """Add the exact draws of what was integrated out, ``chunk`` draws at a time (A is
        (chunk, T, R, R): 2,000 draws at once of 20 tasks x 61 parameters would hold 1.2 GB)."""
        S = next(iter(samples.values())).shape[0]
        parts = [self._conditional({k: v[lo:lo + chunk] for k, v in samples.items()}, generator)
                 for lo in range(0, S, chunk)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _conditional(self, samples: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        from ..pyro_util import batch_condition

        S = next(iter(samples.values())).shape[0]
        box = {}

        def prog():
            box["pop"] = self._population()[0]

        with torch.no_grad(), pyro.poutine.block():
            batch_condition(prog, samples, S, 1)
        mean, B, s2, _ = self._factor(box["pop"], samples["sigma"])
        if isinstance(mean, tuple):
            m0, p = mean
            qm = self.stats.draw_mean(m0, p, B, s2, generator)
            samples = self._mean_sites(m0, p, qm, samples)
            mean = m0 + p * qm
        return self._split(box["pop"], mean, B, self.stats.draw(mean, B, s2, generator), samples, generator)

    def _mean_sites(self, m0: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
                    samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The program's sites of a shared mean integrated out, from ``_factor``'s (m0, p) and its
        standard-normal coordinates q, all (S, D): m = m0 + p q."""
        raise NotImplementedError
