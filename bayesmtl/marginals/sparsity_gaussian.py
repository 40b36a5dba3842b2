"""Collapsed Gaussian form of a shared-sparsity (horseshoe) multi-task regression.

Given the population (``SharedSparsity.population``: global, local and slab scales, the shared
effects), each task's coefficients are Gaussian, w_t ~ N(m, diag(v_t)) with
v_t = shared_sd^2 + private_sd_t^2, so with a Gaussian likelihood they integrate out:

    y_t ~ N(X_t m, X_t diag(v_t) X_t' + sigma_t^2 I),

evaluated in the well-conditioned form A = I + diag(sqrt v_t) X_t'X_t diag(sqrt v_t) / sigma_t^2
from per-task sufficient statistics (O(T D^3) per evaluation, not O(N)); where every task has
fewer rows n_t than parameters D (p > n, this prior's home), in the row form
I + X_t diag(v_t) X_t' / sigma_t^2 instead (O(T n^2 D + T n^3); tasks padded to the largest
n_t with rows of zeros, which add nothing). On issue 19's planted problem (n_t = 40, D = 61) the
row form's gradient is about 3x cheaper (the D x D Cholesky and its backward pass dominate). The sampler then moves
only the population (about 3F + 6 values, plus T x F private scales), not the T x D Gaussian
draws that make the horseshoe's funnels. Afterwards ``conditional`` draws w_t exactly, and splits
w_t - m into the program's ``deviation_raw`` and ``private_raw`` from their joint conditional.

Declines (the plain program is used) with shared coefficients or a known per-row noise.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pyro
import torch

from ..data import MultiTaskData
from ..likelihoods import Gaussian
from ..priors.sparsity import SharedSparsity, pad
from ..protocol import data_context
from . import Marginal, register

__all__ = ["SparsityGaussian", "sparsity_gaussian"]


@register(SharedSparsity, Gaussian, "collapsed")
def sparsity_gaussian(model, data: MultiTaskData) -> SparsityGaussian | None:
    """The collapsed form of ``model`` on ``data``, or None where it does not apply."""
    if model.shared or model.likelihood_for(data).noise == "known":
        return None
    return SparsityGaussian(model, data)


def _slots(task: torch.Tensor, T: int) -> torch.Tensor:
    """Each row's position among its task's rows (0, 1, ... in data order), shape (N,)."""
    order = torch.argsort(task, stable=True)
    counts = torch.bincount(task, minlength=T)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(task)
    slot[order] = torch.arange(task.numel(), device=task.device) - start[task[order]]
    return slot


class SparsityGaussian(Marginal):
    """Sufficient statistics and the collapsed program of a ``SharedSparsity`` Gaussian regression."""

    max_plate_nesting = 1

    def __init__(self, model, data: MultiTaskData):
        self.prior = model.prior
        self.lik = model.likelihood_for(data)
        self.tasks = model.tasks(data)
        self.dtype, self.device = data.dtype, data.device
        Xv, _ = model.design(data)
        T, D = data.n_tasks, Xv.shape[-1]
        self.T, self.D = T, D
        y, task = data.y, data.task
        XX = Xv.new_zeros(T, D, D).index_add_(0, task, Xv.unsqueeze(-1) * Xv.unsqueeze(-2))
        self.XX = 0.5 * (XX + XX.transpose(-1, -2))
        self.Xy = Xv.new_zeros(T, D).index_add_(0, task, Xv * y.unsqueeze(-1))
        self.yy = Xv.new_zeros(T).index_add_(0, task, y * y)
        self.n = Xv.new_zeros(T).index_add_(0, task, torch.ones_like(y))
        self.const = float(y.numel() * math.log(2 * math.pi))
        self.like = torch.zeros((), dtype=Xv.dtype, device=Xv.device)
        n_max = int(self.n.max()) if T else 0
        self.rows = None  # (X (T, n, D), y (T, n), valid (T, n)) padded, in the row form
        if 0 < n_max < D:
            slot = _slots(task, T)
            Xp = Xv.new_zeros(T, n_max, D).index_put_((task, slot), Xv)
            yp = Xv.new_zeros(T, n_max).index_put_((task, slot), y)
            valid = torch.zeros(T, n_max, dtype=torch.bool, device=Xv.device).index_put_(
                (task, slot), torch.ones_like(y, dtype=torch.bool))
            self.rows = (Xp, yp, valid)

    # ------------------------------------------------------------------ algebra
    def _factor(self, mean: torch.Tensor, sd: torch.Tensor, s2: torch.Tensor):
        """mean (B, D), sd (B, T, D), s2 (B, T) -> c (B, T, D), r'r / s2 (B, T), Cholesky L of A
        (B, T, D, D), with c = X'(y - X m) / s2."""
        inv = 1.0 / s2
        m = mean.unsqueeze(-2)                                       # (B, 1, D)
        XXm = torch.matmul(self.XX, m.unsqueeze(-1)).squeeze(-1)     # (B, T, D)
        c = (self.Xy - XXm) * inv.unsqueeze(-1)
        rr = (self.yy - (m * (2 * self.Xy - XXm)).sum(-1)) * inv
        eye = torch.eye(self.D, dtype=sd.dtype, device=sd.device)
        A = eye + sd.unsqueeze(-1) * self.XX * sd.unsqueeze(-2) * inv[..., None, None]
        L = torch.linalg.cholesky_ex(A)[0]  # every eigenvalue of A is >= 1
        return c, rr, L

    def log_marginal(self, mean, sd, s2) -> torch.Tensor:
        """sum_t log N(y_t | X_t m, X_t diag(sd_t^2) X_t' + s2_t I), shape (B,)."""
        if self.rows is not None:
            return self._log_marginal_rows(mean, sd, s2)
        c, rr, L = self._factor(mean, sd, s2)
        v = torch.linalg.solve_triangular(L, (sd * c).unsqueeze(-1), upper=False)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        ll = -0.5 * (self.n * torch.log(s2) + logdet + rr - (v * v).sum((-1, -2)))
        return ll.sum(-1) - 0.5 * self.const

    def _log_marginal_rows(self, mean, sd, s2) -> torch.Tensor:
        """``log_marginal`` in the row form: K_t = I + X_t diag(sd_t^2) X_t' / s2_t on the padded rows
        (a padded row is a zero row of X with y = 0: K's diagonal 1 there, residual 0)."""
        X, y, valid = self.rows
        inv = 1.0 / s2                                                   # (B, T)
        r = y - torch.matmul(X, mean[:, None, :, None]).squeeze(-1)      # (B, T, n); 0 on padded rows
        XS = X * sd.unsqueeze(-2)                                        # (B, T, n, D)
        eye = torch.eye(X.shape[-2], dtype=X.dtype, device=X.device)
        K = eye + torch.matmul(XS, XS.transpose(-1, -2)) * inv[..., None, None]
        L = torch.linalg.cholesky_ex(K)[0]  # every eigenvalue of K is >= 1
        a = torch.linalg.solve_triangular(L, r.unsqueeze(-1), upper=False)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        ll = -0.5 * (self.n * torch.log(s2) + logdet + (a * a).sum((-1, -2)) * inv)
        return ll.sum(-1) - 0.5 * self.const

    def _moments(self, mean, sd, private_sd, sigma):
        """Flatten to (B, D) mean, (B, T, D) sd of w, (B, T) noise variance, and the batch shape."""
        D, T = self.D, self.T
        batch = mean.shape[:-1]
        var = sd ** 2
        if private_sd is not None:
            var = var + pad(private_sd, D) ** 2
        var = var.expand(*batch[:-1], T, D) if len(batch) else var.expand(T, D)
        B = math.prod(batch)
        mean2 = mean.reshape(B, D)
        sd2 = var.reshape(B, T, D).clamp_min(0).sqrt()
        s2 = (sigma.reshape(B, -1) ** 2).expand(B, T)
        return mean2, sd2, s2, batch

    # ------------------------------------------------------------------ Collapsed protocol
    def pyro_model(self):
        T, prior, lik, like = self.T, self.prior, self.lik, self.like
        dtype, device = self.dtype, self.device

        def model() -> None:
            task_plate = pyro.plate("task", T, dim=-1)
            with data_context(dtype, device):
                mean, sd, private_sd = prior.population(replace(self.tasks, plate=task_plate))
                sigma = lik.sample_params(T, task_plate, like)["sigma"]
            mean2, sd2, s2, batch = self._moments(mean, sd, private_sd, sigma)
            pyro.factor("y_marginal", self.log_marginal(mean2, sd2, s2).reshape(batch))

        return model

    def conditional(self, samples: dict[str, torch.Tensor], generator: torch.Generator,
                    chunk: int = 200) -> dict[str, torch.Tensor]:
        """Add exact draws of ``w`` (S, T, D) and the program's ``deviation_raw`` / ``private_raw``,
        ``chunk`` draws at a time (A is (chunk, T, D, D): 2,000 draws at once of 20 tasks x 61
        parameters would hold 1.2 GB)."""
        S = next(iter(samples.values())).shape[0]
        parts = [self._conditional({k: v[lo:lo + chunk] for k, v in samples.items()}, generator)
                 for lo in range(0, S, chunk)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _conditional(self, samples: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        from ..pyro_util import batch_condition

        S = next(iter(samples.values())).shape[0]
        box = {}

        def prog():
            task_plate = pyro.plate("task", self.T, dim=-1)
            with data_context(self.dtype, self.device):
                box["pop"] = self.prior.population(replace(self.tasks, plate=task_plate))

        with torch.no_grad(), pyro.poutine.block():
            batch_condition(prog, samples, S, 1)
        mean, sd, private_sd = box["pop"]
        mean2, sd2, s2, _ = self._moments(mean, sd, private_sd, samples["sigma"])
        c, _, L = self._factor(mean2, sd2, s2)
        # w_t = m + sd_t * q,  q ~ N(A^-1 sd_t c, A^-1)
        v = torch.linalg.solve_triangular(L, (sd2 * c).unsqueeze(-1), upper=False)
        eps = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        q = torch.linalg.solve_triangular(L.transpose(-1, -2), v + eps, upper=True).squeeze(-1)
        out = dict(samples)
        out["w"] = mean2.unsqueeze(-2) + sd2 * q
        if private_sd is None:
            out["deviation_raw"] = q  # sd_t is the shared sd itself
            return out
        # sqrt(a^2 + b^2) q = a e + b v with e, v ~ N(0, 1): their joint conditional given q, with
        # no division by a scale that may be shrunk to ~0
        a = sd.reshape(S, -1, self.D).expand(S, self.T, self.D)
        b = pad(private_sd.reshape(S, self.T, -1), self.D)
        root = sd2.clamp_min(torch.finfo(sd2.dtype).tiny)
        g = torch.randn(q.shape, generator=generator, dtype=q.dtype, device=q.device)
        out["deviation_raw"] = (a * q + b * g) / root
        out["private_raw"] = ((b * q - a * g) / root)[..., self.D - private_sd.shape[-1]:]
        return out
