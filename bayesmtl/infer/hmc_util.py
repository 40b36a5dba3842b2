"""Pure helpers of the batched HMC samplers, functions over NamedTuple states (NumPyro's
``hmc_util``). Every tensor has the chains as its leading dim C; a position is flat, (C, P).

- dynamics: ``velocity``, ``kinetic``, ``draw_momentum``, ``leapfrog``, the U-turn check ``is_turning``;
- step size: dual averaging (``DualAveraging``, ``da_init``, ``da_update``) and ``find_step_size``;
- metric: running moments per chain (``Welford``, ``welford_*``) or pooled over chains
  (``Pooled``, ``pooled_*``), Stan's ``regularise``, and the windows (``adaptation_schedule``,
  ``mass_windows``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["HMCState", "pick", "velocity", "kinetic", "draw_momentum", "leapfrog", "is_turning",
           "DualAveraging", "da_init", "da_update", "find_step_size",
           "Welford", "welford_init", "welford_update", "welford_variance", "regularise",
           "Pooled", "pooled_init", "pooled_update", "pooled_variance",
           "mass_windows", "adaptation_schedule"]


class HMCState(NamedTuple):
    """Where each chain is: z (C, P), potential U (C,), its gradient g (C, P)."""

    z: torch.Tensor
    U: torch.Tensor
    g: torch.Tensor


def pick(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per chain: a where mask (C,) else b."""
    m = mask.reshape(mask.shape + (1,) * (a.dim() - 1))
    return torch.where(m, a, b)


# ---------------------------------------------------------------------- dynamics
def velocity(inv_mass: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """M^-1 r for momenta r (C, P) or (C, k, P); inv_mass (C, P) diagonal or (C, P, P) dense."""
    if inv_mass.dim() == 2:
        return (inv_mass.unsqueeze(1) if r.dim() == 3 else inv_mass) * r
    return r @ inv_mass if r.dim() == 3 else (r.unsqueeze(1) @ inv_mass).squeeze(1)  # M^-1 is symmetric


def kinetic(r: torch.Tensor, inv_mass: torch.Tensor) -> torch.Tensor:
    return 0.5 * (r * velocity(inv_mass, r)).sum(-1)


def draw_momentum(inv_mass: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """r ~ N(0, M), (C, P): M = inv_mass^-1, diagonal or dense (r = L^-T e where inv_mass = L L')."""
    C, P = inv_mass.shape[:2]
    e = torch.randn(C, P, generator=gen, device=inv_mass.device, dtype=inv_mass.dtype)
    if inv_mass.dim() == 2:
        return e / inv_mass.sqrt()
    L = torch.linalg.cholesky(inv_mass)
    return torch.linalg.solve_triangular(L.transpose(-1, -2), e.unsqueeze(-1), upper=True).squeeze(-1)


def leapfrog(vg, z, r, g, eps, inv_mass):
    """One leapfrog step of size eps (C, 1) (signed by direction): new z, r, U, g."""
    half = 0.5 * eps
    r = torch.addcmul(r, half, g, value=-1.0)
    z = torch.addcmul(z, eps, velocity(inv_mass, r))
    U, g = vg(z)
    return z, torch.addcmul(r, half, g, value=-1.0), U, g


def is_turning(inv_mass, r_left, r_right, r_sum) -> torch.Tensor:
    """Generalised no-U-turn criterion (Betancourt 2017, A.4.2), (C,) bool."""
    rs = r_sum - 0.5 * (r_left + r_right)
    return ((velocity(inv_mass, r_left) * rs).sum(-1) <= 0) | ((velocity(inv_mass, r_right) * rs).sum(-1) <= 0)


# ---------------------------------------------------------------------- step size
class DualAveraging(NamedTuple):
    """Nesterov dual averaging of log step size (Hoffman & Gelman 2014), per chain (C,)."""

    log_eps: torch.Tensor
    log_eps_bar: torch.Tensor
    h_bar: torch.Tensor
    mu: torch.Tensor
    t: int


def da_init(eps: torch.Tensor) -> DualAveraging:
    z = torch.zeros_like(eps)
    return DualAveraging(eps.log(), z, z, (10 * eps).log(), 0)


def da_update(s: DualAveraging, accept: torch.Tensor, target: float, gamma: float = 0.05,
              t0: float = 10.0, kappa: float = 0.75) -> DualAveraging:
    t = s.t + 1
    eta = 1.0 / (t + t0)
    h_bar = (1 - eta) * s.h_bar + eta * (target - accept)
    log_eps = s.mu - math.sqrt(t) / gamma * h_bar
    w = t ** (-kappa)
    return DualAveraging(log_eps, w * log_eps + (1 - w) * s.log_eps_bar, h_bar, s.mu, t)


def find_step_size(vg, state: HMCState, eps: torch.Tensor, inv_mass: torch.Tensor,
                   gen: torch.Generator, max_iter: int = 60) -> torch.Tensor:
    """Per chain, double or halve eps until one leapfrog step's acceptance crosses 0.8."""
    z, U, g = state
    C, P = z.shape
    target = math.log(0.8)
    last = torch.zeros(C, device=z.device, dtype=z.dtype)
    going = torch.ones(C, dtype=torch.bool, device=z.device)
    for _ in range(max_iter):
        r = draw_momentum(inv_mass, gen)
        _, r1, U1, _ = leapfrog(vg, z, r, g, eps.unsqueeze(-1), inv_mass)
        delta = U1 + kinetic(r1, inv_mass) - U - kinetic(r, inv_mass)
        direction = torch.where(-delta > target, 1.0, -1.0)  # nan -> shrink
        going = going & ((last == 0) | (direction == last))
        going = going & (eps > 1e-8) & (eps < 1e4)
        if not bool(going.any()):
            break
        eps = torch.where(going, eps * 2.0 ** direction, eps)
        last = direction
    return eps


# ---------------------------------------------------------------------- metric
class Welford(NamedTuple):
    """Running per-chain mean (C, P) and sum of squared deviations of z: (C, P), or (C, P, P) dense."""

    n: int
    mean: torch.Tensor
    m2: torch.Tensor


def welford_init(z: torch.Tensor, dense: bool = False) -> Welford:
    m2 = z.new_zeros(z.shape + z.shape[-1:]) if dense else torch.zeros_like(z)
    return Welford(0, torch.zeros_like(z), m2)


def welford_update(s: Welford, z: torch.Tensor) -> Welford:
    n = s.n + 1
    d = z - s.mean
    mean = s.mean + d / n
    inc = d.unsqueeze(-1) * (z - mean).unsqueeze(-2) if s.m2.dim() == 3 else d * (z - mean)
    return Welford(n, mean, s.m2 + inc)


def regularise(var: torch.Tensor, n: int) -> torch.Tensor:
    """Stan's regularised (co)variance estimate from n draws: shrunk towards 1e-3 (times I for a
    (..., P, P) covariance) with weight 5 / (n + 5)."""
    shrink = 1e-3 * (5.0 / (n + 5.0))
    if var.dim() == 3:
        var = 0.5 * (var + var.transpose(-1, -2))
        return (n / (n + 5.0)) * var + shrink * torch.eye(var.shape[-1], dtype=var.dtype, device=var.device)
    return (n / (n + 5.0)) * var + shrink


def welford_variance(s: Welford) -> torch.Tensor:
    """The regularised (co)variance of the draws seen so far (``regularise``)."""
    return regularise(s.m2 / max(s.n - 1, 1), s.n)


class Pooled(NamedTuple):
    """Sums of x and x * x (P,) over chains and iterations, and how many draws they hold: one
    variance shared by all chains."""

    n: int
    s1: torch.Tensor
    s2: torch.Tensor


def pooled_init(z: torch.Tensor) -> Pooled:
    zero = torch.zeros(z.shape[-1], dtype=z.dtype, device=z.device)
    return Pooled(0, zero, zero)


def pooled_update(s: Pooled, x: torch.Tensor) -> Pooled:
    """Add every chain's x (C, P)."""
    return Pooled(s.n + x.shape[0], s.s1 + x.sum(0), s.s2 + (x * x).sum(0))


def pooled_variance(s: Pooled) -> torch.Tensor:
    """Regularised variance of the pooled draws, from their sums."""
    n = s.n
    mean = s.s1 / n
    return regularise((s.s2 / n - mean * mean).clamp_min(0) * n / max(n - 1, 1), n)


def mass_windows(warmup: int, early: bool) -> tuple[set[int], tuple[int, int]]:
    """Iterations that end a metric window, and the range (first, end) of iterations whose draws
    feed the windows. ``early``: four short windows inside Stan's initial buffer too (ending at
    iterations 5, 10, 20, 40 and the buffer's end), used when that buffer has 40+ iterations."""
    windows = adaptation_schedule(warmup)
    ends = {hi for lo, hi in windows[1:-1]}
    span = (windows[1][0], windows[-1][0]) if len(windows) > 2 else (0, 0)
    if early and len(windows) > 2 and windows[0][1] >= 40:
        ends |= {4, 9, 19, 39, windows[0][1]}
        span = (0, span[1])
    return ends, span


def adaptation_schedule(warmup: int) -> list[tuple[int, int]]:
    """Stan's windows as (first, last) iteration: initial buffer, mass windows, final buffer."""
    if warmup < 20:
        return [(0, warmup - 1)] if warmup > 0 else []
    init, term, base = 75, 50, 25
    if warmup < init + term + base:
        init, term = int(0.15 * warmup), int(0.1 * warmup)
        base = warmup - init - term
    out = [(0, init - 1)]
    end = warmup - term
    size, start = base, init
    while start < end:
        cur_start, cur_size = start, size
        if 3 * cur_size <= end - cur_start:
            size = 2 * cur_size
        else:
            cur_size = end - cur_start
        start = cur_start + cur_size
        out.append((cur_start, start - 1))
    out.append((end, warmup - 1))
    return out
