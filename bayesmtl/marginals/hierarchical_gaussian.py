"""Collapsed Gaussian form of a hierarchical multi-task regression.

For ``MultiTaskModel`` with a diagonal ``priors.Hierarchical`` prior and a Gaussian likelihood
(known, shared or per-task noise), each task's coefficients integrate out:

    w_t ~ N(mu, diag(tau)^2),  y_t | w_t ~ N(X_t w_t + S_t coef, sigma_t^2 I)
    =>  y_t ~ N(X_t mu + S_t coef, X_t diag(tau)^2 X_t' + sigma_t^2 I).

The marginal log-likelihood needs only the per-task sufficient statistics X_t'X_t, X_t'y_t,
y_t'y_t (weighted by 1/s_n^2 when the noise is known), computed once, so one evaluation costs
O(T D^3), not O(N). Shared coefficients (``shared=``, sampled as ``coef``) enter through the
residual r = y - S coef: X'r and r'r follow from X'S, S'y and S'S per task, also computed once.
It is evaluated in the well-conditioned form A' = I + diag(tau) X'X diag(tau) / sigma^2 (no
1/tau, so tau -> 0 is safe), with its gradient written out by hand (~3x faster than autograd
through the batched Cholesky on 400 6 x 6 blocks). Afterwards ``conditional`` draws w_t exactly
from N(mu + tau * A'^-1 tau * u, tau A'^-1 tau), u = X'(y - X mu) / sigma^2.
"""

from __future__ import annotations

import functools

import pyro
import torch
from pyro import poutine

from ..data import MultiTaskData
from ..likelihoods import Gaussian
from ..priors.base import move_distribution
from ..priors.hierarchical import Hierarchical, _hyper, _vec
from . import Marginal, register
from .prior_terms import add_log_priors

__all__ = ["HierarchicalGaussian", "hierarchical_gaussian"]


@register(Hierarchical, Gaussian, "collapsed")
def hierarchical_gaussian(model, data: MultiTaskData) -> HierarchicalGaussian | None:
    """The collapsed form of ``model`` on ``data``, or None where it does not apply."""
    if model.prior.covariance != "diagonal":
        return None
    return HierarchicalGaussian(model, data)


class HierarchicalGaussian(Marginal):
    """Sufficient statistics of a hierarchical Gaussian regression and its collapsed model.

    Satisfies ``bayesmtl.infer.base.Collapsed``: ``pyro_model()`` samples ``mu``, ``tau`` and
    ``sigma`` (where learned) and ``coef`` (shared features) with the marginal likelihood as
    ``pyro.factor("y_marginal")``;
    ``conditional`` adds ``w`` (and ``w_raw`` for the non-centred prior).
    """

    max_plate_nesting = 1

    def __init__(self, model, data: MultiTaskData):
        self.prior = model.prior
        self.lik = model.likelihood_for(data)
        known = self.lik.noise == "known"
        T = data.n_tasks
        stats = model.task_sums(data, weighted=known)
        dt = data.dtype
        XX, self.Xy, self.yy, self.n, self.const_t = (stats[k].to(dt) for k in ("XX", "Xy", "yy", "n", "const_t"))
        self.XX = 0.5 * (XX + XX.transpose(-1, -2))
        D, Ds = XX.shape[-1], stats["SS"].shape[-1]
        self.T, self.D, self.Ds = T, D, Ds
        if Ds:  # X'S (T, D, Ds), S'y (T, Ds), S'S (T, Ds, Ds): the residual's statistics given coef
            self.XS, self.Sy, SS = (stats[k].to(dt) for k in ("XS", "Sy", "SS"))
            self.SS = 0.5 * (SS + SS.transpose(-1, -2))
        # the constant part of log det: N log 2 pi (+ sum log s_n^2 with known noise)
        self.const = float(stats["const_t"].sum())
        self.known = known
        self.like = torch.zeros((), dtype=dt, device=self.XX.device)
        self._priors = {"tau": move_distribution(self.prior.scale, self.like)}
        if not isinstance(self.prior.mean, float):
            self._priors["mu"] = move_distribution(self.prior.mean, self.like)
        if not known:
            self._priors["sigma"] = move_distribution(self.lik.noise_prior, self.like)
        if Ds:
            self._coef_prior = move_distribution(model.shared_prior_for(data), self.like).expand([Ds])
            self._priors["coef"] = self._coef_prior

    # ------------------------------------------------------------------ algebra
    def _flat(self, mu, tau, sigma, n: int | None = None):
        """mu, tau (B, D) and sigma^2 (B, n) from site values with any leading batch shape (n:
        the tasks sigma is given for, all T by default)."""
        D, T = self.D, self.T if n is None else n
        tau2 = tau.reshape(-1, D)
        mu2 = mu.expand(tau.shape).reshape(-1, D) if mu.dim() > 1 else mu.expand(tau2.shape)
        B = tau2.shape[0]
        if sigma is None:
            s2 = tau2.new_ones(B, T)
        else:
            s = sigma.reshape(B, -1)
            s2 = (s * s).expand(B, T)
        return mu2, tau2, s2

    def _residual(self, coef):
        """X'r (B, T, D) and r'r (B, T) of the residual r = y - S coef, for coef (B, Ds); the
        stored X'y and y'y where there are no shared features."""
        if coef is None:
            return self.Xy, self.yy
        Xy = self.Xy - torch.einsum("tds,bs->btd", self.XS, coef)
        SSb = torch.einsum("tsr,br->bts", self.SS, coef)
        yy = self.yy - (coef.unsqueeze(-2) * (2 * self.Sy - SSb)).sum(-1)
        return Xy, yy

    def _coef(self, values, B):
        return values["coef"].reshape(B, self.Ds) if self.Ds else None

    def log_marginal(self, mu, tau, sigma=None, coef=None) -> torch.Tensor:
        """log p(y | mu, tau, sigma, coef) with w integrated out, shape tau.shape[:-1].

        Its gradient is written out by hand (``_LogMarginal``): autograd through the batched
        Cholesky costs about three times the forward pass on (B, T, D, D) blocks.
        """
        batch = tau.shape[:-1]
        mu2, tau2, s2 = self._flat(mu, tau, sigma)
        Xy, yy = self._residual(None if coef is None else coef.reshape(mu2.shape[0], self.Ds))
        ll = _LogMarginal.apply(mu2, tau2, s2, self.XX, Xy, yy, self.n)
        return (ll - 0.5 * self.const).reshape(batch)

    def log_marginal_tasks(self, idx: torch.Tensor, mu, tau, sigma=None) -> torch.Tensor:
        """``log_marginal`` summed over the tasks ``idx`` (B,) only, with ``sigma`` (..., B) of
        those tasks where it is per task (no shared features)."""
        batch = tau.shape[:-1]
        mu2, tau2, s2 = self._flat(mu, tau, sigma, n=idx.shape[0])
        ll = _LogMarginal.apply(mu2, tau2, s2, self.XX[idx], self.Xy[idx], self.yy[idx], self.n[idx])
        return (ll - 0.5 * self.const_t[idx].sum()).reshape(batch)

    # ------------------------------------------------------------------ Collapsed protocol
    def pyro_model(self, task_batch: int | None = None):
        """The collapsed program; ``task_batch`` tasks a run, drawn at random, their marginal
        likelihood scaled by T / task_batch (unbiased for all tasks'; no shared features)."""
        T, D, like, prior = self.T, self.D, self.like, self.prior
        if task_batch is not None and self.Ds:
            raise ValueError("the collapsed form takes no task minibatches with shared features; pass collapse=False")

        def model() -> None:
            task_plate = pyro.plate("task", T, dim=-1, subsample_size=task_batch)
            mu = _hyper("mu", prior.mean, D, like)
            tau = pyro.sample("tau", _vec(prior.scale, D, like))
            coef = pyro.sample("coef", self._coef_prior.to_event(1)) if self.Ds else None
            sigma = self.lik.sample_params(T, task_plate, like).get("sigma")
            if task_batch is None:
                pyro.factor("y_marginal", self.log_marginal(mu, tau, sigma, coef))
                return
            with task_plate as idx:  # (the indices the plate drew, or the guide's, replayed)
                pass
            with poutine.scale(scale=T / idx.shape[0]):
                pyro.factor("y_marginal", self.log_marginal_tasks(idx, mu, tau, sigma))

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
        lp = self.log_marginal(mu, tau, sigma, values.get("coef"))
        for name, d in self._priors.items():
            lp = lp + d.log_prob(values[name]).reshape(C, -1).sum(-1)
        return lp

    def log_density_and_grad(self, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict] | None:
        """``log_density`` and its gradient with respect to each site value, both written out.

        Returns (log p (C,), {site: d log p / d value, shaped like the value}), or None when a
        prior has no written-out gradient (``priors.base.log_prob_and_grad``). With it a back end
        needs no autograd graph: about 3x cheaper per evaluation than autograd through the
        traced program (``benchmarks/mcmc.py``).
        """
        tau = values["tau"]
        C = tau.shape[0]
        mu = values["mu"] if "mu" in values else torch.full_like(tau, self.prior.mean)
        sigma = values.get("sigma")
        mu2, tau2, s2 = self._flat(mu, tau, sigma)
        coef = self._coef(values, C)
        ll, *saved = _lm_forward(mu2, tau2, s2, self.XX, *self._residual(coef), self.n)
        d_mu, d_tau, d_s2, d_Xy, d_yy = _lm_backward(None, *saved)
        grads = {"tau": d_tau.reshape(tau.shape)}
        if coef is not None:  # through X'r = X'y - X'S coef and r'r = y'y - coef'(2 S'y - S'S coef)
            SSb = torch.einsum("tsr,br->bts", self.SS, coef)
            d_coef = (-torch.einsum("btd,tds->bs", d_Xy, self.XS)
                      + (d_yy.unsqueeze(-1) * (2 * SSb - 2 * self.Sy)).sum(-2))
            grads["coef"] = d_coef.reshape(values["coef"].shape)
        if "mu" in values:
            grads["mu"] = d_mu.reshape(values["mu"].shape)
        if sigma is not None:  # s2 = sigma^2, per task or shared by all tasks
            s = sigma.reshape(C, -1)
            ds = 2 * s * (d_s2 if s.shape[1] == self.T else d_s2.sum(-1, keepdim=True))
            grads["sigma"] = ds.reshape(sigma.shape)
        lp = ll - 0.5 * self.const
        return add_log_priors(lp, grads, self._priors, values)

    def conditional(self, samples: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Add exact draws of ``w`` (S, T, D) (and ``w_raw``) to flat draws (S, ...), a few draws
        at a time: the (draws, T, D, D) factors of 50,000 tasks would not fit in memory at once."""
        tau = samples["tau"]
        S = tau.shape[0]
        tau = tau.reshape(S, self.D)
        mu = samples["mu"].reshape(S, self.D) if "mu" in samples else torch.full_like(tau, self.prior.mean)
        mu2, tau2, s2 = self._flat(mu, tau, samples.get("sigma"))
        coef = self._coef(samples, S)
        step = max(1, _CONDITIONAL_VALUES // (self.T * self.D * self.D))
        z = tau.new_empty(S, self.T, self.D)
        for lo in range(0, S, step):
            part = slice(lo, lo + step)
            _, _, _, b, L = _lm_factor(mu2[part], tau2[part], s2[part], self.XX,
                                       *self._residual(None if coef is None else coef[part]))
            v = torch.linalg.solve_triangular(L, b.unsqueeze(-1), upper=False)
            eps = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
            z[part] = torch.linalg.solve_triangular(L.transpose(-1, -2), v + eps, upper=True).squeeze(-1)
        out = dict(samples)
        out["w"] = torch.addcmul(mu2.unsqueeze(-2), tau2.unsqueeze(-2), z)  # (one (S, T, D) tensor, no temporary)
        if not self.prior.centered:
            out["w_raw"] = z
        return out


#: numbers in one (draws, T, D, D) factor when drawing w: ~32 MB in float64
_CONDITIONAL_VALUES = 2 ** 22


class _LogMarginal(torch.autograd.Function):
    """sum_t log N(y_t | X_t mu, X_t diag(tau)^2 X_t' + s2_t I) without the 2 pi / known-noise constant.

    mu, tau (B, D), s2 (B, T); XX (T, D, D) or (B, T, D, D), Xy (T, D) or (B, T, D), yy, n (T,) or
    (B, T) -> (B,). With A = I + K, K = t XX t / s2, b = t c, c = (Xy - XX mu) / s2, q = A^-1 b,
    M = A^-1: ll_t = -(n log s2 + log|A| + r'r / s2 - b'q) / 2. The gradient needs only diag(M)
    (because M K = I - M), not M itself, with u = XX (t q) / s2:
    dll/dtau = sum_t q (c - u) - (1 - diag M) / t,  dll/dmu = sum_t c - u,
    dll/ds2_t = (D - n - tr M + r'r / s2 - b'q - q'q) / (2 s2),
    dll/dXy_t = (mu + t q) / s2,  dll/dyy_t = -1 / (2 s2) (for shared coefficients' residuals).
    """

    @staticmethod
    def forward(ctx, mu, tau, s2, XX, Xy, yy, n):
        ll, *saved = _lm_forward(mu, tau, s2, XX, Xy, yy, n)
        ctx.save_for_backward(*saved)
        return ll

    @staticmethod
    def backward(ctx, g):
        d_mu, d_tau, d_s2, d_Xy, d_yy = _lm_backward(g, *ctx.saved_tensors)
        need = ctx.needs_input_grad
        return d_mu, d_tau, d_s2, None, d_Xy if need[4] else None, d_yy if need[5] else None, None


@functools.lru_cache(maxsize=8)
def _eye(D: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.eye(D, dtype=dtype, device=device)


def _shared_matvec(XX: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XX (T, D, D) or (B, T, D, D) times v (B, T, D) or (B, 1, D) -> (B, T, D); one bmm where XX is shared."""
    if XX.dim() == 3:
        B, T, D = v.shape[0], XX.shape[0], XX.shape[-1]
        return torch.bmm(XX, v.expand(B, T, D).permute(1, 2, 0)).permute(2, 0, 1)
    return torch.matmul(XX, v.unsqueeze(-1)).squeeze(-1)


def _lm_factor(mu, tau, s2, XX, Xy, yy):
    """1 / s2 (B, T), c (B, T, D), r'r / s2 (B, T), b = tau c (B, T, D) and the Cholesky factor L of
    A = I + tau XX tau / s2 (B, T, D, D): what the marginal and the conditional of w both need."""
    inv = 1.0 / s2                                          # (B, T)
    m = mu.unsqueeze(-2)                                    # (B, 1, D)
    XXm = _shared_matvec(XX, m)                             # (B, T, D), unscaled
    c = (Xy - XXm) * inv.unsqueeze(-1)
    rr = (yy - (m * (2 * Xy - XXm)).sum(-1)) * inv
    tt = (tau.unsqueeze(-1) * tau.unsqueeze(-2)).unsqueeze(-3)   # (B, 1, D, D)
    eye = _eye(XX.shape[-1], XX.dtype, XX.device)
    # every eigenvalue of A is >= 1, so the factorisation cannot fail; its error check is
    # skipped because it would synchronise with the device on every call
    L = torch.linalg.cholesky_ex(torch.addcmul(eye, XX, tt * inv[..., None, None]))[0]
    return inv, c, rr, tau.unsqueeze(-2) * c, L


def _lm_forward(mu, tau, s2, XX, Xy, yy, n):
    inv, c, rr, b, L = _lm_factor(mu, tau, s2, XX, Xy, yy)
    t = tau.unsqueeze(-2)                                   # (B, 1, D)
    eye = _eye(XX.shape[-1], XX.dtype, XX.device)
    Li = torch.linalg.solve_triangular(L, eye, upper=False)  # L^-1, so M = Li' Li
    v = torch.matmul(Li, b.unsqueeze(-1))                    # (B, T, D, 1)
    q = torch.matmul(v.transpose(-1, -2), Li).squeeze(-2)   # Li' v = A^-1 b
    vv = (v * v).sum((-1, -2))                               # b'q
    diag_m = (Li * Li).sum(-2)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    ll = -0.5 * (n * torch.log(s2) + logdet + rr - vv)      # (B, T)
    return ll.sum(-1), XX, inv, t, c, rr, q, vv, diag_m, n, mu


def _lm_backward(g, XX, inv, t, c, rr, q, bq, diag_m, n, mu):
    u = _shared_matvec(XX, t * q) * inv.unsqueeze(-1)
    d_mu = (c - u).sum(-2)
    # (1 - M_dd) / t_d = sum_e M_de XX_de t_e / s2; where t_d = 0, M_dd = 1 exactly and this is 0
    d_tau = (q * (c - u) - (1 - diag_m) / t.clamp_min(torch.finfo(t.dtype).tiny)).sum(-2)
    D = q.shape[-1]
    d_s2 = 0.5 * (D - n - diag_m.sum(-1) + rr - bq - (q * q).sum(-1)) * inv
    d_Xy = (mu.unsqueeze(-2) + t * q) * inv.unsqueeze(-1)
    d_yy = -0.5 * inv
    if g is None:  # the gradient of ll itself (a caller outside autograd)
        return d_mu, d_tau, d_s2, d_Xy, d_yy
    g1 = g.unsqueeze(-1)
    return g1 * d_mu, g1 * d_tau, g1 * d_s2, g1.unsqueeze(-1) * d_Xy, g1 * d_yy
