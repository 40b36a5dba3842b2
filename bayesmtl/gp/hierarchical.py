"""Hierarchical GP (Lawrence & Platt 2004; Yu, Tresp & Schwaighofer 2005; Schwaighofer, Tresp &
Yu 2005): every task's function is one shared function plus the task's own deviation,

    f_t(x) = g(x) + h_t(x) + c_t,   g ~ GP(0, s_g^2 k_g),   h_t ~ GP(0, s_h^2 k_h),   c_t ~ N(0, c^2)
    y = m + f_t(x) + N(0, noise_t)

with g shared, h_t and c_t independent across tasks (ARD kernels k_g and k_h with their own
lengthscales). Tasks are exchangeable, so a task never seen in training gets g's posterior plus
a fresh deviation from the prior: the model predicts new tasks, which an ICM cannot.

In covariance form this is the Hadamard ICM with B = s_g^2 1 1^T and each task's own kernel
s_h^2 k_h + c^2 (``icm.private_kernel`` with an offset), so the exact marginal likelihood,
prediction and leave-one-out are the ICM's. Sites (D features, T tasks): ``lengthscale`` (D,)
and ``shared_scale`` () of g, ``deviation_lengthscale`` (D,) and ``deviation_scale`` () of the
h_t, ``offset_scale`` () (c), ``noise`` (T,) variances, ``mean`` () (m).
"""

from __future__ import annotations

import math

import pyro
import torch

__all__ = ["SITE_DIMS", "parts", "sample_sites", "initial", "constrain"]

#: named dims of the hierarchical GP's sites (``MultitaskGP.site_dims``)
SITE_DIMS = {"lengthscale": ("feature",), "shared_scale": (), "deviation_lengthscale": ("feature",),
             "deviation_scale": (), "offset_scale": (), "noise": ("task",), "mean": ()}


def parts(h: dict[str, torch.Tensor], n_tasks: int):
    """(B (..., T, T), private (lengthscales (..., T, D), variances (..., T), offsets (..., T)),
    mean (..., T), noise (..., T)) of the ICM form, for ``n_tasks`` tasks (known tasks first).

    Tasks beyond the fitted ones are new: same B row, deviation and offset (exchangeable), and the
    average of the known tasks' noise variances.
    """
    T = n_tasks
    batch = h["shared_scale"].shape
    ones = torch.ones(T, T, dtype=h["shared_scale"].dtype, device=h["shared_scale"].device)
    B = h["shared_scale"].pow(2)[..., None, None] * ones
    dls = h["deviation_lengthscale"]
    private = (dls.unsqueeze(-2).expand(*batch, T, dls.shape[-1]),
               h["deviation_scale"].pow(2).unsqueeze(-1).expand(*batch, T),
               h["offset_scale"].pow(2).unsqueeze(-1).expand(*batch, T))
    noise = h["noise"]
    if noise.shape[-1] < T:
        extra = noise.mean(-1, keepdim=True).expand(*noise.shape[:-1], T - noise.shape[-1])
        noise = torch.cat([noise, extra], -1)
    return B, private, h["mean"].unsqueeze(-1).expand(*batch, T), noise


def sample_sites(model, n_tasks: int, n_features: int, mv) -> dict[str, torch.Tensor]:
    """The sites under ``model``'s priors (``mv`` moves a distribution to the data's device)."""
    scale = mv(model.outputscale_prior)
    return {"lengthscale": pyro.sample("lengthscale", mv(model.lengthscale_prior).expand([n_features]).to_event(1)),
            "shared_scale": pyro.sample("shared_scale", scale),
            "deviation_lengthscale": pyro.sample("deviation_lengthscale",
                                                 mv(model.lengthscale_prior).expand([n_features]).to_event(1)),
            "deviation_scale": pyro.sample("deviation_scale", scale),
            "offset_scale": pyro.sample("offset_scale", scale),
            "noise": pyro.sample("noise", mv(model.noise_prior).expand([n_tasks]).to_event(1)),
            "mean": pyro.sample("mean", mv(model.mean_prior))}


def initial(data, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Type-II starting values, unconstrained (logs of positive values), requiring grad: the
    target's variance split 1/2 shared, 1/8 deviation, 1/8 offset, 1/4 noise."""
    T, D, dt, dev = data.n_tasks, data.n_features, data.dtype, data.device
    var = float(data.y.double().var()) if data.n_rows > 1 else 1.0
    var = max(var, 1e-6)
    rnd = lambda *s: 0.1 * torch.randn(*s, generator=gen, dtype=dt).to(dev)  # noqa: E731
    log_ls = torch.full((D,), math.log(math.sqrt(max(D, 1))), dtype=dt, device=dev)
    half = lambda share: torch.tensor(0.5 * math.log(share * var), dtype=dt, device=dev)  # noqa: E731
    raw = {"log_ls": log_ls + rnd(D), "log_shared": half(0.5) + rnd(()), "log_dls": log_ls + rnd(D),
           "log_dev": half(0.125) + rnd(()), "log_offset": half(0.125) + rnd(()),
           "log_noise": torch.full((T,), math.log(0.25 * var), dtype=dt, device=dev) + rnd(T),
           "mean": data.y.double().mean().to(dt).reshape(())}
    return {k: v.clone().requires_grad_() for k, v in raw.items()}


def constrain(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sites from ``initial``'s unconstrained values."""
    return {"lengthscale": raw["log_ls"].exp(), "shared_scale": raw["log_shared"].exp(),
            "deviation_lengthscale": raw["log_dls"].exp(), "deviation_scale": raw["log_dev"].exp(),
            "offset_scale": raw["log_offset"].exp(), "noise": raw["log_noise"].exp(), "mean": raw["mean"]}
