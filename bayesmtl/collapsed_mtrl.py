"""Collapsed task-relationship model: W integrated out under a Gaussian likelihood.

Given the task covariance Omega = R R^T (R: T x Q), the feature scales sigma (D,), the
population mean mu and the noise, the model is linear-Gaussian in the standard normals V
(Q, D) of the non-centred prior, W = M + R V diag(sigma). With per-task sufficient statistics
G_t = X_t^T X_t, b_t = X_t^T y_t, c_t = y_t^T y_t (weighted by 1/noise^2 for known noise):

    P = I + sum_t (R_t. (x) diag(sigma)) (G_t / sigma_t^2) (R_t. (x) diag(sigma))^T    (QD x QD)
    h = sum_t R_t. (x) (sigma * (b_t - G_t mu)) / sigma_t^2
    log p(y) = -1/2 sum_t [n_t log(2 pi sigma_t^2) + |y_t - X_t mu|^2 / sigma_t^2]
               - 1/2 log|P| + 1/2 h^T P^{-1} h

and V | y ~ N(P^{-1} h, P^{-1}). Each evaluation costs O((QD)^3), independent of the rows N.
"""

from __future__ import annotations

import math

import pyro
import torch

from .priors.relationship import TaskRelationship, omega_root

__all__ = ["CollapsedTaskRelationship", "MAX_COLLAPSED_DIM"]

#: beyond this many integrated-out coefficients (Q * D) the O((QD)^3) dense solve per gradient costs more than
#: sampling W (benchmarks/mtrl.py: 2x a plain gradient at QD = 200, over 100x at QD = 1040)
MAX_COLLAPSED_DIM = 500


class CollapsedTaskRelationship:
    """The ``Collapsed`` protocol for a Gaussian-likelihood task-relationship model.

    Built by ``bayesmtl.models.TaskRelationship.collapsed(data)``; ``pyro_model()`` samples the
    covariance sites, feature scales, mean and noise and adds log p(y | those) as a factor;
    ``conditional`` draws ``w_raw`` (and ``factor_raw``) and ``w`` exactly.
    """

    max_plate_nesting = 1

    def __init__(self, model, data):
        prior: TaskRelationship = model.prior
        self.prior = prior
        self.lik = model.likelihood_for(data)
        Xv, _ = model.design(data)
        self.T, self.D = data.n_tasks, Xv.shape[-1]
        self.rank = prior.rank
        self.Q = self.T if self.rank is None else self.rank + self.T
        task, y = data.task, data.y
        wts = torch.ones_like(y)
        if self.lik.noise == "known":
            wts = data.noise.pow(-2)
        T, D = self.T, self.D
        Xw = Xv * wts.unsqueeze(-1)
        self.G = torch.zeros(T, D, D, dtype=Xv.dtype, device=Xv.device).index_add_(
            0, task, Xw.unsqueeze(-1) * Xv.unsqueeze(-2))
        self.b = torch.zeros(T, D, dtype=Xv.dtype, device=Xv.device).index_add_(0, task, Xw * y.unsqueeze(-1))
        self.c = torch.zeros(T, dtype=Xv.dtype, device=Xv.device).index_add_(0, task, wts * y * y)
        self.n = torch.bincount(task, minlength=T).to(Xv.dtype)
        if self.lik.noise == "known":  # the fixed normalising constant of the known-noise rows
            self.const = -0.5 * (torch.log(2 * math.pi * data.noise.pow(2))).sum()
        self.like = torch.zeros((), dtype=Xv.dtype, device=Xv.device)

    # ------------------------------------------------------------------ the pieces
    def _mean(self, h: dict[str, torch.Tensor], B: int) -> torch.Tensor:
        if "mu" in h:
            return h["mu"].reshape(B, self.D)
        return torch.full((B, self.D), float(self.prior.mean), dtype=self.like.dtype, device=self.like.device)

    def _noise_var(self, params: dict[str, torch.Tensor], B: int) -> torch.Tensor:
        """sigma_t^2 (B, T); ones for known noise (folded into the statistics)."""
        if self.lik.noise == "known":
            return torch.ones(B, self.T, dtype=self.like.dtype, device=self.like.device)
        s = params["sigma"].reshape(B, -1)
        return s.pow(2).expand(B, self.T)

    def _posterior(self, h, params, B):
        """Cholesky factor of P (B, QD, QD), h (B, QD) and the data term of log p(y) (B,)."""
        T, D, Q = self.T, self.D, self.Q
        R = omega_root(h, T, self.rank)  # (B, T, Q)
        fs = h["feature_scale"].reshape(B, D)
        mu = self._mean(h, B)
        v = self._noise_var(params, B)  # (B, T)
        Gmu = torch.einsum("tij,bj->bti", self.G, mu)  # (B, T, D)
        r = self.b - Gmu  # X_t^T (y_t - X_t mu)
        rss = self.c - 2 * (self.b * mu.unsqueeze(-2)).sum(-1) + (Gmu * mu.unsqueeze(-2)).sum(-1)
        As = self.G * (fs.unsqueeze(-1) * fs.unsqueeze(-2)).unsqueeze(-3) / v.reshape(B, T, 1, 1)
        # sum_t (R_t R_t^T) (x) As_t as one batched matmul (B, Q^2, T) @ (B, T, D^2)
        RR = (R.unsqueeze(-1) * R.unsqueeze(-2)).reshape(B, T, Q * Q)
        M = (RR.transpose(-1, -2) @ As.reshape(B, T, D * D)).reshape(B, Q, Q, D, D)
        M = M.transpose(2, 3).reshape(B, Q * D, Q * D)
        P = M + torch.eye(Q * D, dtype=M.dtype, device=M.device)
        hv = torch.einsum("bta,bti->bai", R, r * fs.unsqueeze(-2) / v.unsqueeze(-1)).reshape(B, Q * D)
        if self.lik.noise == "known":
            data_term = self.const - 0.5 * rss.sum(-1)
        else:
            data_term = -0.5 * (self.n * torch.log(2 * math.pi * v) + rss / v).sum(-1)
        chol, info = torch.linalg.cholesky_ex(P)
        return chol, hv, data_term, info

    def log_marginal(self, h, params, B) -> torch.Tensor:
        """log p(y | covariance, feature scales, mean, noise), shape (B,)."""
        chol, hv, data_term, info = self._posterior(h, params, B)
        a = torch.linalg.solve_triangular(chol, hv.unsqueeze(-1), upper=False).squeeze(-1)
        logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        lp = data_term - 0.5 * logdet + 0.5 * (a * a).sum(-1)
        # P = I + PSD cannot fail in exact arithmetic; guard against round-off blow-ups
        return torch.where(info == 0, lp, torch.full_like(lp, -math.inf))

    # ------------------------------------------------------------------ protocol
    def pyro_model(self):
        T, D = self.T, self.D
        like = self.like

        def model() -> None:
            task_plate = pyro.plate("task", T, dim=-1)
            h = self.prior.sample_hyper(T, D, task_plate, like)
            params = self.lik.sample_params(T, task_plate, like)
            fs = h["feature_scale"]
            batch = fs.shape[:-1]  # () unbatched, (C, 1) under an outer plate at dim -2
            B = int(torch.Size(batch).numel())
            pyro.factor("marginal_y", self.log_marginal(h, params, B).reshape(batch))

        return model

    def conditional(self, samples: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Exact draws of V | rest, returned as ``w_raw`` (S, T, D) (+ ``factor_raw`` (S, r, D))
        and ``w`` (S, T, D), added to ``samples`` (flat draws, leading dim S)."""
        T, D, Q = self.T, self.D, self.Q
        S = samples["feature_scale"].shape[0]
        h = {k: v for k, v in samples.items()}
        params = {"sigma": samples["sigma"]} if "sigma" in samples else {}
        out = dict(samples)
        raws, ws = [], []
        with torch.no_grad():
            for lo in range(0, S, 256):
                part = {k: v[lo:lo + 256] for k, v in h.items()}
                pp = {k: v[lo:lo + 256] for k, v in params.items()}
                B = part["feature_scale"].shape[0]
                chol, hv, _, _ = self._posterior(part, pp, B)
                m = torch.cholesky_solve(hv.unsqueeze(-1), chol).squeeze(-1)
                xi = torch.randn(B, Q * D, 1, generator=generator, dtype=m.dtype, device=m.device)
                V = m + torch.linalg.solve_triangular(chol.transpose(-1, -2), xi, upper=True).squeeze(-1)
                V = V.reshape(B, Q, D)
                R = omega_root(part, T, self.rank)
                fs = part["feature_scale"].reshape(B, 1, D)
                w = (R @ V) * fs + self._mean(part, B).unsqueeze(-2)
                raws.append(V)
                ws.append(w)
        V = torch.cat(raws)
        if self.rank is None:
            out["w_raw"] = V
        else:
            out["factor_raw"], out["w_raw"] = V[:, :self.rank], V[:, self.rank:]
        out["w"] = torch.cat(ws)
        return out
