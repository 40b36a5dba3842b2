"""Collapsed Gaussian form of a hierarchical multi-task regression.

For ``MultiTaskModel`` with a diagonal ``priors.Hierarchical`` prior, no shared features and a
Gaussian likelihood (known, shared or per-task noise), each task's coefficients integrate out:

    w_t ~ N(mu, diag(tau)^2),  y_t | w_t ~ N(X_t w_t, sigma_t^2 I)
    =>  y_t ~ N(X_t mu, X_t diag(tau)^2 X_t' + sigma_t^2 I).

The marginal log-likelihood needs only the per-task sufficient statistics X_t'X_t, X_t'y_t,
y_t'y_t (weighted by 1/s_n^2 when the noise is known), computed once, so one evaluation costs
O(T D^3), not O(N). It is evaluated in the well-conditioned form A' = I + diag(tau) X'X
diag(tau) / sigma^2 (no 1/tau, so tau -> 0 is safe), with its gradient written out by hand
(~3x faster than autograd through the batched Cholesky on 400 6 x 6 blocks). Afterwards
``conditional`` draws w_t exactly from N(mu + tau * A'^-1 tau * u, tau A'^-1 tau),
u = X'(y - X mu) / sigma^2.
"""

from __future__ import annotations

import math

import pyro
import torch

from .data import MultiTaskData
from .likelihoods import Gaussian
from .priors.base import move_distribution
from .priors.hierarchical import Hierarchical, _hyper, _vec

__all__ = ["HierarchicalGaussian", "hierarchical_gaussian"]


def hierarchical_gaussian(model, data: MultiTaskData) -> HierarchicalGaussian | None:
    """The collapsed form of ``model`` on ``data``, or None where it does not apply."""
    prior, lik = model.prior, model.likelihood_for(data)
    if not isinstance(prior, Hierarchical) or prior.covariance != "diagonal":
        return None
    if not isinstance(lik, Gaussian) or model.shared:
        return None
    return HierarchicalGaussian(model, data)


class HierarchicalGaussian:
    """Sufficient statistics of a hierarchical Gaussian regression and its collapsed model.

    Satisfies ``bayesmtl.infer.base.Collapsed``: ``pyro_model()`` samples ``mu``, ``tau`` and
    ``sigma`` (where learned) with the marginal likelihood as ``pyro.factor("y_marginal")``;
    ``conditional`` adds ``w`` (and ``w_raw`` for the non-centred prior).
    """

    max_plate_nesting = 1

    def __init__(self, model, data: MultiTaskData):
        self.prior = model.prior
        self.lik = model.likelihood_for(data)
        Xv, _ = model.design(data)
        T, D = data.n_tasks, Xv.shape[-1]
        self.T, self.D = T, D
        y, task = data.y, data.task
        known = self.lik.noise == "known"
        wt = 1.0 / data.noise ** 2 if known else torch.ones_like(y)
        Xw = Xv * wt.unsqueeze(-1)
        XX = Xv.new_zeros(T, D, D).index_add_(0, task, Xw.unsqueeze(-1) * Xv.unsqueeze(-2))
        self.XX = 0.5 * (XX + XX.transpose(-1, -2))
        self.Xy = Xv.new_zeros(T, D).index_add_(0, task, Xw * y.unsqueeze(-1))
        self.yy = Xv.new_zeros(T).index_add_(0, task, wt * y * y)
        self.n = Xv.new_zeros(T).index_add_(0, task, torch.ones_like(y))
        # the constant part of log det: N log 2 pi (+ sum log s_n^2 with known noise)
        self.const = float(y.numel() * math.log(2 * math.pi))
        if known:
            self.const += float(torch.log(data.noise ** 2).sum())
        self.known = known
        self.like = torch.zeros((), dtype=Xv.dtype, device=Xv.device)
        self._priors = {"tau": move_distribution(self.prior.scale, self.like)}
        if not isinstance(self.prior.mean, float):
            self._priors["mu"] = move_distribution(self.prior.mean, self.like)
        if not known:
            self._priors["sigma"] = move_distribution(self.lik.noise_prior, self.like)

    # ------------------------------------------------------------------ algebra
    def _flat(self, mu, tau, sigma):
        """mu, tau (B, D) and sigma^2 (B, T) from site values with any leading batch shape."""
        D, T = self.D, self.T
        tau2 = tau.reshape(-1, D)
        mu2 = mu.expand(tau.shape).reshape(-1, D) if mu.dim() > 1 else mu.expand(tau2.shape)
        B = tau2.shape[0]
        if sigma is None:
            s2 = tau2.new_ones(B, T)
        else:
            s = sigma.reshape(B, -1)
            s2 = (s * s).expand(B, T)
        return mu2, tau2, s2

    def _factor(self, mu, tau, s2):
        """Cholesky L of A' (B, T, D, D), tau * u (B, T, D), r'r / sigma^2 (B, T)."""
        XX = self.XX / s2[..., None, None]                      # (B, T, D, D)
        Xy = self.Xy / s2[..., None]                            # (B, T, D)
        m = mu.unsqueeze(-2)                                    # (B, 1, D)
        XXm = (XX * m.unsqueeze(-2)).sum(-1)                    # (B, T, D); no bmm: D is small
        rr = self.yy / s2 - 2 * (m * Xy).sum(-1) + (m * XXm).sum(-1)
        tu = tau.unsqueeze(-2) * (Xy - XXm)
        t = tau.unsqueeze(-2)
        A = t.unsqueeze(-1) * XX * t.unsqueeze(-2) + torch.eye(self.D, dtype=XX.dtype, device=XX.device)
        L = torch.linalg.cholesky_ex(A)[0]  # no error check: it would sync on every call
        return L, tu, rr

    def log_marginal(self, mu, tau, sigma=None) -> torch.Tensor:
        """log p(y | mu, tau, sigma) with w integrated out, shape tau.shape[:-1].

        Its gradient is written out by hand (``_LogMarginal``): autograd through the batched
        Cholesky costs about three times the forward pass on (B, T, D, D) blocks.
        """
        batch = tau.shape[:-1]
        mu2, tau2, s2 = self._flat(mu, tau, sigma)
        ll = _LogMarginal.apply(mu2, tau2, s2, self.XX, self.Xy, self.yy, self.n)
        return (ll - 0.5 * self.const).reshape(batch)

    # ------------------------------------------------------------------ Collapsed protocol
    def pyro_model(self):
        T, D, like, prior = self.T, self.D, self.like, self.prior

        def model() -> None:
            task_plate = pyro.plate("task", T, dim=-1)
            mu = _hyper("mu", prior.mean, D, like)
            tau = pyro.sample("tau", _vec(prior.scale, D, like))
            sigma = self.lik.sample_params(T, task_plate, like).get("sigma")
            pyro.factor("y_marginal", self.log_marginal(mu, tau, sigma))

        return model

    def log_density(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(y, mu, tau, sigma) of ``pyro_model()`` for a batch of draws (C, *site shape) -> (C,).

        The same density as the Pyro program, written directly in tensors: a back end may use it
        instead of tracing the program on every evaluation (it checks that the two agree).
        """
        tau = values["tau"]
        C = tau.shape[0]
        mu = values["mu"] if "mu" in values else torch.full_like(tau, self.prior.mean)
        sigma = values.get("sigma")
        lp = self.log_marginal(mu, tau, sigma)
        for name, d in self._priors.items():
            lp = lp + d.log_prob(values[name]).reshape(C, -1).sum(-1)
        return lp

    def conditional(self, samples: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Add exact draws of ``w`` (S, T, D) (and ``w_raw``) to flat draws (S, ...)."""
        tau = samples["tau"]
        S = tau.shape[0]
        tau = tau.reshape(S, self.D)
        mu = samples["mu"].reshape(S, self.D) if "mu" in samples else torch.full_like(tau, self.prior.mean)
        mu2, tau2, s2 = self._flat(mu, tau, samples.get("sigma"))
        L, tu, _ = self._factor(mu2, tau2, s2)
        v = torch.linalg.solve_triangular(L, tu.unsqueeze(-1), upper=False)
        eps = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        z = torch.linalg.solve_triangular(L.transpose(-1, -2), v + eps, upper=True).squeeze(-1)  # (S, T, D)
        out = dict(samples)
        out["w"] = mu2.unsqueeze(-2) + tau2.unsqueeze(-2) * z
        if not self.prior.centered:
            out["w_raw"] = z
        return out


class _LogMarginal(torch.autograd.Function):
    """sum_t log N(y_t | X_t mu, X_t diag(tau)^2 X_t' + s2_t I) without the 2 pi / known-noise constant.

    mu, tau (B, D), s2 (B, T); XX (T, D, D) or (B, T, D, D), Xy (T, D) or (B, T, D), yy, n (T,) or
    (B, T) -> (B,). With A = I + K, K = t XX t / s2, b = t c, c = (Xy - XX mu) / s2, q = A^-1 b:
    ll_t = -(n log s2 + log|A| + r'r / s2 - b'q) / 2, and with G = dll/dA = -(A^-1 + q q') / 2:
    dll/dtau = sum_t 2 (G * XX / s2) t + q c,  dll/dmu = sum_t c - XX (t q) / s2,
    dll/ds2_t = (-n / 2 - <G, K> - b'q + r'r / (2 s2)) / s2.
    """

    @staticmethod
    def forward(ctx, mu, tau, s2, XX, Xy, yy, n):
        ll, *saved = _lm_forward(mu, tau, s2, XX, Xy, yy, n)
        ctx.save_for_backward(*saved)
        return ll

    @staticmethod
    def backward(ctx, g):
        return (*_lm_backward(g, *ctx.saved_tensors), None, None, None, None)


def _lm_forward(mu, tau, s2, XX, Xy, yy, n):
    XXs = XX / s2[..., None, None]                          # (B, T, D, D)
    Xys = Xy / s2[..., None]                                # (B, T, D)
    m, t = mu.unsqueeze(-2), tau.unsqueeze(-2)              # (B, 1, D)
    XXm = (XXs * m.unsqueeze(-2)).sum(-1)                   # no bmm: D is small
    c = Xys - XXm
    rr = yy / s2 - 2 * (m * Xys).sum(-1) + (m * XXm).sum(-1)
    b = t * c
    K = t.unsqueeze(-1) * XXs * t.unsqueeze(-2)
    M, logdet = _inv_logdet(K)
    q = (M * b.unsqueeze(-2)).sum(-1)
    bq = (b * q).sum(-1)
    ll = -0.5 * (n * torch.log(s2) + logdet + rr - bq)      # (B, T)
    return ll.sum(-1), s2, XXs, t, c, rr, K, M, q, bq, n


def _lm_backward(g, s2, XXs, t, c, rr, K, M, q, bq, n):
    G = -0.5 * (M + q.unsqueeze(-1) * q.unsqueeze(-2))
    d_tau = (2 * (G * XXs * t.unsqueeze(-2)).sum(-1) + q * c).sum(-2)
    d_mu = (c - (XXs * (t * q).unsqueeze(-2)).sum(-1)).sum(-2)
    d_s2 = (-0.5 * n - (G * K).sum((-1, -2)) - bq + 0.5 * rr) / s2
    g1 = g.unsqueeze(-1)
    return g1 * d_mu, g1 * d_tau, g1 * d_s2


def _inv_logdet(K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(I + K)^-1 and log|I + K| for symmetric PSD K (..., D, D), by batched Cholesky.

    Every eigenvalue of I + K is >= 1, so the factorisation cannot fail; its error check is
    skipped because it would synchronise with the device on every call.
    """
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    L = torch.linalg.cholesky_ex(K + eye)[0]
    return torch.cholesky_inverse(L), 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
