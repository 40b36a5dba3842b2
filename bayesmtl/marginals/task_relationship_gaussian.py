"""Collapsed task-relationship model: W integrated out under a Gaussian likelihood.

Given the task covariance Omega = R R^T (R: T x Q), the feature scales sigma (D,), the
population mean mu and the noise, the model is linear-Gaussian in the standard normals V
(Q, D) of the non-centred prior, W = M + R V diag(sigma). With per-task sufficient statistics
G_t = X_t^T X_t, b_t = X_t^T y_t, c_t = y_t^T y_t (weighted by 1/noise^2 for known noise),
A_t = diag(sigma) G_t diag(sigma) / sigma_t^2 and r_t = sigma * (b_t - G_t mu) / sigma_t^2:

Full prior (R = diag(s) L_C or the inverse-Wishart's sqrt(scale) A^-T, Q = T), one joint Gaussian over V (TD):

    P = I + sum_t (R_t. R_t.^T) (x) A_t                                  (QD x QD)
    h = sum_t R_t. (x) r_t
    log p(y) = -1/2 sum_t [n_t log(2 pi sigma_t^2) + |y_t - X_t mu|^2 / sigma_t^2]
               - 1/2 log|P| + 1/2 h^T P^{-1} h

and V | y ~ N(P^{-1} h, P^{-1}): O((TD)^3) per evaluation, independent of the rows N.

Low-rank prior (R = [Lambda, diag(psi)], V = [U (r, D); Z (T, D)]): row t of W is
mu + sigma * (U^T lambda_t + psi_t z_t), so each z_t integrates out on its own (P_t = I +
psi_t^2 A_t, D x D), leaving a Gaussian in U alone with K_t = P_t^{-1} A_t, k_t = P_t^{-1} r_t:

    P_U = I + sum_t (lambda_t lambda_t^T) (x) K_t                        (rD x rD)
    h_U = sum_t lambda_t (x) k_t
    log p(y) = data term - 1/2 sum_t [log|P_t| - psi_t^2 r_t^T P_t^{-1} r_t]
               - 1/2 log|P_U| + 1/2 h_U^T P_U^{-1} h_U

then U | y ~ N(P_U^{-1} h_U, P_U^{-1}) and z_t | U, y ~ N(P_t^{-1} psi_t (r_t - A_t U^T lambda_t), P_t^{-1}).
That costs O(T D^3 + (rD)^3): linear in the number of tasks.
"""

from __future__ import annotations

import math

import pyro
import torch

from ..design import add_at
from ..likelihoods import Gaussian
from ..priors.base import move_distribution
from ..priors.relationship import TaskRelationship, task_psi
from . import Marginal, register

__all__ = ["CollapsedTaskRelationship", "MAX_COLLAPSED_DIM"]

#: beyond this size of the joint Gaussian solved per gradient (T * D for the full prior, rank * D for the
#: low-rank prior) the O(size^3) dense solve costs more than sampling W (benchmarks/mtrl.py: the full prior's
#: collapsed gradient costs 2x a plain one at TD = 200, over 100x at TD = 1040)
MAX_COLLAPSED_DIM = 500


@register(TaskRelationship, Gaussian, "collapsed")
def task_relationship_gaussian(model, data) -> CollapsedTaskRelationship | None:
    """W integrated out (Gaussian likelihood; shared coefficients stay sampled), or None where that
    would cost more than sampling W: the full prior solves a (T D)-dim Gaussian per gradient, the
    low-rank prior T Gaussians of dim D and one of dim rank x D; either joint size must be at
    most ``MAX_COLLAPSED_DIM``."""
    D = len(model.varying_names(data))
    if (model.prior.sized(data.n_tasks).rank or data.n_tasks) * D > MAX_COLLAPSED_DIM:
        return None
    return CollapsedTaskRelationship(model, data)


class CollapsedTaskRelationship(Marginal):
    """The ``Collapsed`` protocol for a Gaussian-likelihood task-relationship model.

    Built by ``bayesmtl.models.TaskRelationship.collapsed(data)``; ``pyro_model()`` samples the
    covariance sites, feature scales, mean, shared coefficients ``coef`` and noise and adds
    log p(y | those) as a factor (shared coefficients enter through y_t - Xs_t coef);
    ``conditional`` draws ``w_raw`` (and ``factor_raw``) and ``w`` exactly.
    """

    max_plate_nesting = 1

    def __init__(self, model, data):
        loc, scale, _ = model.scaling(data)  # (a no-op for the bound model that fit passes)
        Xv, Xs = model.design(data)
        rows = torch.as_tensor(data.rows_per_task(), dtype=torch.float64)
        prior: TaskRelationship = model.prior.sized(data.n_tasks).bind(loc, scale).for_tasks(rows, Xv.shape[-1])
        self.prior = prior
        self.lik = model.likelihood_for(data)
        self.T, self.D, self.Ds = data.n_tasks, Xv.shape[-1], Xs.shape[-1]
        self.shared_prior = model.shared_prior
        self.rank = prior.rank
        self.Q = self.T if self.rank is None else self.rank + self.T
        task, y = data.task, data.y
        wts = torch.ones_like(y)
        if self.lik.noise == "known":
            wts = data.noise.pow(-2)
        T, D = self.T, self.D
        Xw = Xv * wts.unsqueeze(-1)
        self.G = add_at(torch.zeros(T, D, D, dtype=Xv.dtype, device=Xv.device),
            0, task, Xw.unsqueeze(-1) * Xv.unsqueeze(-2))
        self.b = add_at(torch.zeros(T, D, dtype=Xv.dtype, device=Xv.device), 0, task, Xw * y.unsqueeze(-1))
        self.c = add_at(torch.zeros(T, dtype=Xv.dtype, device=Xv.device), 0, task, wts * y * y)
        self.n = torch.bincount(task, minlength=T).to(Xv.dtype)
        if self.Ds:  # shared coefficients stay sampled: cross-products to shift b_t and c_t by Xs_t coef
            Xsw = Xs * wts.unsqueeze(-1)
            self.H = add_at(Xv.new_zeros(T, D, self.Ds), 0, task, Xw.unsqueeze(-1) * Xs.unsqueeze(-2))
            self.F = add_at(Xv.new_zeros(T, self.Ds, self.Ds), 0, task, Xsw.unsqueeze(-1) * Xs.unsqueeze(-2))
            self.e = add_at(Xv.new_zeros(T, self.Ds), 0, task, Xsw * y.unsqueeze(-1))
        if self.lik.noise == "known":  # the fixed normalising constant of the known-noise rows
            self.const = -0.5 * (torch.log(2 * math.pi * data.noise.pow(2))).sum()
        self.like = torch.zeros((), dtype=Xv.dtype, device=Xv.device)

    # ------------------------------------------------------------------ the pieces
    def _mean(self, h: dict[str, torch.Tensor], B: int) -> torch.Tensor:
        if "mu" in h:
            return h["mu"].reshape(B, self.D)
        return torch.as_tensor(self.prior.mean, dtype=self.like.dtype, device=self.like.device).expand(B, self.D)

    def _noise_var(self, params: dict[str, torch.Tensor], B: int) -> torch.Tensor:
        """sigma_t^2 (B, T); ones for known noise (folded into the statistics)."""
        if self.lik.noise == "known":
            return torch.ones(B, self.T, dtype=self.like.dtype, device=self.like.device)
        s = params["sigma"].reshape(B, -1)
        return s.pow(2).expand(B, self.T)

    def _terms(self, h, params, B):
        """A_t (B, T, D, D), r_t (B, T, D) and the data term of log p(y) (B,)."""
        T, D = self.T, self.D
        fs = h["feature_scale"].reshape(B, D)
        mu = self._mean(h, B)
        v = self._noise_var(params, B)  # (B, T)
        b, c = self.b, self.c
        if self.Ds:  # the target less the shared part, y_t - Xs_t coef
            coef = h["coef"].reshape(B, self.Ds)
            b = b - torch.einsum("tij,bj->bti", self.H, coef)
            c = c - 2 * coef @ self.e.T + torch.einsum("bi,tij,bj->bt", coef, self.F, coef)  # (B, T)
        Gmu = torch.einsum("tij,bj->bti", self.G, mu)  # (B, T, D)
        r = (b - Gmu) * fs.unsqueeze(-2) / v.unsqueeze(-1)  # sigma * X_t^T (y_t - X_t mu) / sigma_t^2
        rss = c - 2 * (b * mu.unsqueeze(-2)).sum(-1) + (Gmu * mu.unsqueeze(-2)).sum(-1)
        A = self.G * (fs.unsqueeze(-1) * fs.unsqueeze(-2)).unsqueeze(-3) / v.reshape(B, T, 1, 1)
        if self.lik.noise == "known":
            data_term = self.const - 0.5 * rss.sum(-1)
        else:
            data_term = -0.5 * (self.n * torch.log(2 * math.pi * v) + rss / v).sum(-1)
        return A, r, data_term

    @staticmethod
    def _kron_sum(F: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """sum_t (F_t F_t^T) (x) K_t for F (B, T, Q), K (B, T, D, D): (B, QD, QD), as one batched matmul."""
        B, T, Q = F.shape
        D = K.shape[-1]
        FF = (F.unsqueeze(-1) * F.unsqueeze(-2)).reshape(B, T, Q * Q)
        M = (FF.transpose(-1, -2) @ K.reshape(B, T, D * D)).reshape(B, Q, Q, D, D)
        return M.transpose(2, 3).reshape(B, Q * D, Q * D)

    def _posterior(self, h, params, B):
        """The Gaussian over the coefficients that are solved jointly (V for the full prior, U for
        the low-rank prior): Cholesky factor of its precision, its linear term, the rest of log p(y)
        (B,), a failure flag (B,) and, for the low-rank prior, the per-task pieces for ``conditional``."""
        A, r, lp = self._terms(h, params, B)
        eye = torch.eye(self.D, dtype=A.dtype, device=A.device)
        if self.rank is None:
            R = self.prior.omega_root(h, self.T)  # (B, T, T)
            P = self._kron_sum(R, A) + torch.eye(self.T * self.D, dtype=A.dtype, device=A.device)
            hv = torch.einsum("bta,bti->bai", R, r).reshape(B, -1)
            chol, info = torch.linalg.cholesky_ex(P)
            return chol, hv, lp, info != 0, None
        lam = h["loadings"].reshape(B, self.T, self.rank)
        psi2 = task_psi(h, self.T).reshape(B, self.T, 1, 1).pow(2)
        Lt, info_t = torch.linalg.cholesky_ex(eye + psi2 * A)  # P_t (B, T, D, D)
        K = torch.cholesky_solve(A, Lt)  # P_t^{-1} A_t (symmetric: the two commute)
        K = 0.5 * (K + K.transpose(-1, -2))
        k = torch.cholesky_solve(r.unsqueeze(-1), Lt).squeeze(-1)  # P_t^{-1} r_t
        logdet_t = 2 * Lt.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (B, T)
        lp = lp - 0.5 * (logdet_t - psi2.reshape(B, self.T) * (r * k).sum(-1)).sum(-1)
        P = self._kron_sum(lam, K) + torch.eye(self.rank * self.D, dtype=A.dtype, device=A.device)
        hv = torch.einsum("btk,bti->bki", lam, k).reshape(B, -1)
        chol, info = torch.linalg.cholesky_ex(P)
        return chol, hv, lp, (info != 0) | (info_t != 0).any(-1), (A, r, Lt)

    def log_marginal(self, h, params, B) -> torch.Tensor:
        """log p(y | covariance, feature scales, mean, noise), shape (B,)."""
        chol, hv, rest, failed, _ = self._posterior(h, params, B)
        a = torch.linalg.solve_triangular(chol, hv.unsqueeze(-1), upper=False).squeeze(-1)
        logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        lp = rest - 0.5 * logdet + 0.5 * (a * a).sum(-1)
        # I + PSD cannot fail in exact arithmetic; guard against round-off blow-ups
        return torch.where(failed, torch.full_like(lp, -math.inf), lp)

    # ------------------------------------------------------------------ protocol
    def pyro_model(self):
        T, D = self.T, self.D
        like = self.like

        def model() -> None:
            task_plate = pyro.plate("task", T, dim=-1)
            h = self.prior.sample_hyper(T, D, task_plate, like)
            if self.Ds:
                prior = move_distribution(self.shared_prior, like).expand([self.Ds]).to_event(1)
                h["coef"] = pyro.sample("coef", prior)
            params = self.lik.sample_params(T, task_plate, like)
            fs = h["feature_scale"]
            batch = fs.shape[:-1]  # () unbatched, (C, 1) under an outer plate at dim -2
            B = int(torch.Size(batch).numel())
            pyro.factor("marginal_y", self.log_marginal(h, params, B).reshape(batch))

        return model

    @staticmethod
    def _gaussian_draw(chol, lin, generator):
        """A draw of N(P^{-1} lin, P^{-1}) given the Cholesky factor of P: (..., n, n), lin (..., n)."""
        m = torch.cholesky_solve(lin.unsqueeze(-1), chol)
        xi = torch.randn(m.shape, generator=generator, dtype=m.dtype, device=m.device)
        return (m + torch.linalg.solve_triangular(chol.transpose(-1, -2), xi, upper=True)).squeeze(-1)

    def conditional(self, samples: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Exact draws of V | rest, returned as ``w_raw`` (S, T, D) (+ ``factor_raw`` (S, r, D))
        and ``w`` (S, T, D), added to ``samples`` (flat draws, leading dim S)."""
        T, D = self.T, self.D
        S = samples["feature_scale"].shape[0]
        params = {"sigma": samples["sigma"]} if "sigma" in samples else {}
        out = dict(samples)
        joint = (T if self.rank is None else self.rank) * D
        chunk = max(1, min(256, int(4e6 // (joint * joint + T * D * D))))  # about 32 MB per temporary
        raws, facs, ws = [], [], []
        with torch.no_grad():
            for lo in range(0, S, chunk):
                part = {k: v[lo:lo + chunk] for k, v in samples.items()}
                pp = {k: v[lo:lo + chunk] for k, v in params.items()}
                B = part["feature_scale"].shape[0]
                chol, hv, _, _, pieces = self._posterior(part, pp, B)
                first = self._gaussian_draw(chol, hv, generator)
                if self.rank is None:
                    V = first.reshape(B, T, D)
                else:
                    A, r, Lt = pieces
                    U = first.reshape(B, self.rank, D)
                    lam = part["loadings"].reshape(B, T, self.rank)
                    psi = task_psi(part, T).reshape(B, T, 1)
                    m = lam @ U  # (B, T, D): U^T lambda_t for every task
                    lin = psi * (r - (A @ m.unsqueeze(-1)).squeeze(-1))
                    Z = self._gaussian_draw(Lt, lin, generator)
                    facs.append(U)
                    V = torch.cat([U, Z], dim=-2)
                R = self.prior.omega_root(part, T)
                fs = part["feature_scale"].reshape(B, 1, D)
                ws.append((R @ V) * fs + self._mean(part, B).unsqueeze(-2))
                raws.append(V[:, -T:])
        out["w_raw"] = torch.cat(raws)
        if self.rank is not None:
            out["factor_raw"] = torch.cat(facs)
        out["w"] = torch.cat(ws)
        return out
