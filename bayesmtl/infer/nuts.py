"""Batched NUTS: all chains advance in lock-step as a batch dimension.

The sampler is a set of small functions over NamedTuple states (blackjax style). Every tensor
has the chains as its leading dim C; the flat unconstrained position has shape (C, P).

- Multinomial NUTS (Betancourt 2017) with iterative tree building (NumPyro's checkpoint scheme
  for the U-turn checks inside a subtree) and Stan's extra checks across the halves of every
  merged subtree. Chains whose trajectory has stopped keep computing but their state is masked,
  so one doubling costs the same for every chain and a transition costs the largest tree among
  the chains.
- Per-chain step size by dual averaging and a per-chain diagonal (or dense) mass matrix from
  Stan-style windows (75 / 25, 50, 100, ... / 50 iterations).
- Divergence when the energy error exceeds ``max_delta_energy`` (1000) or is not finite.
- Draws are copied to host memory in chunks; the progress bar shows draws/s and divergences.

Options (``settings.options``): ``target_accept`` (0.8), ``max_tree_depth`` (10), ``dense_mass``
(False: a diagonal inverse mass matrix per chain; True: dense, (C, P, P), worth it for strongly
correlated posteriors of modest dimension), ``compile`` ("auto": "inductor" for runs of at least
``INDUCTOR_FROM`` iterations, else "jit"; "jit": the potential is traced once with
``torch.jit.trace``, 1.5-2.5x faster per evaluation than plain tracing on small models;
"inductor": the potential and its gradient are traced once into one graph (``make_fx``) and
compiled by ``torch.compile``, about 25x faster per evaluation than "jit" on a small user prior
for a one-off compile of tens of seconds, falling back to "jit" with a warning where compiling
fails; None: plain Pyro tracing on every call; none applies where the target has a written-out
gradient, ``info["gradient"]``), ``dtype`` ("float64" or "float32", plain
path only), ``threads`` (torch threads on CPU, default 1), ``chunk`` (draws per host copy, 100),
``init_radius`` (2: initial points uniform in (-r, r) unconstrained), ``processes`` (1: all chains
in one batch; k > 1 on a CPU: k chain groups in k forked worker processes, one core each, see
``groups.py``; group 0 keeps the seed, so results depend on the seed and k).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import pyro
import torch

from .base import Draws, Settings, torch_threads
from .potential import BatchedPotential

__all__ = ["BatchedNUTS", "HMCState", "TreeState", "nuts_step", "run_nuts", "adaptation_schedule"]

OPTIONS = ("target_accept", "max_tree_depth", "dense_mass", "metric", "compile", "dtype", "threads", "chunk",
           "init_radius", "max_delta_energy", "processes")  # see COMMON_OPTIONS below


# ---------------------------------------------------------------------- states
class HMCState(NamedTuple):
    """Where each chain is: z (C, P), potential U (C,), its gradient g (C, P)."""

    z: torch.Tensor
    U: torch.Tensor
    g: torch.Tensor


class TreeState(NamedTuple):
    """A (sub)trajectory per chain: its two ends, its proposal, weight and momentum sum."""

    z_left: torch.Tensor
    r_left: torch.Tensor
    g_left: torch.Tensor
    z_right: torch.Tensor
    r_right: torch.Tensor
    g_right: torch.Tensor
    z_prop: torch.Tensor
    U_prop: torch.Tensor
    g_prop: torch.Tensor
    r_prop: torch.Tensor
    log_w: torch.Tensor       # (C,) log of the summed weights exp(-H)
    r_sum: torch.Tensor       # (C, P)
    turning: torch.Tensor     # (C,) bool
    diverging: torch.Tensor   # (C,) bool


class StepInfo(NamedTuple):
    """Per-chain statistics of one transition, all shape (C,)."""

    accept: torch.Tensor
    n_steps: torch.Tensor
    depth: torch.Tensor
    diverging: torch.Tensor
    energy: torch.Tensor


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


def _ckpt_idxs(n: int) -> tuple[int, int]:
    """Checkpoints to compare leaf n with (NumPyro's ``_leaf_idx_to_ckpt_idxs``)."""
    idx_max = bin(n >> 1).count("1")
    k, tail = n, 0
    while k & 1:
        k >>= 1
        tail += 1
    return idx_max - tail + 1, idx_max


def _pick(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per chain: a where mask (C,) else b."""
    m = mask.reshape(mask.shape + (1,) * (a.dim() - 1))
    return torch.where(m, a, b)


def build_subtree(vg, start: tuple, eps, inv_mass, H0, active, depth: int, gen, max_delta: float):
    """Extend each active chain by 2**depth leapfrog steps from ``start`` = (z, r, g).

    Returns (TreeState of the new subtree, whose left end is its first new leaf, end point
    (z, r, g), sum of accept probs (C,), number of steps (C,)). A chain stops early (masked) when
    its subtree turns or diverges. Besides the U-turn check over every completed sub-subtree, the
    two halves of each are checked with one point of the other half added (Stan's extra checks,
    Stan PR 2800): without them NUTS misses U-turns on near-Gaussian targets and now and then
    runs trees 8-30 times too long, and with lock-step chains the longest tree sets the pace.
    """
    z, r, g = start
    C, P = z.shape
    building = active.clone()
    log_w = torch.full_like(H0, -math.inf)
    r_sum = torch.zeros_like(r)
    # a chain's current end and its proposal as one (C, 3, P) stack of z, r, g: one select each
    end = torch.stack((z, r, g), 1)
    prop, U_prop = end, torch.zeros_like(H0)
    turning = torch.zeros_like(active)
    diverging = torch.zeros_like(active)
    sum_acc = torch.zeros_like(H0)
    n_steps = torch.zeros(C, dtype=torch.long, device=z.device)
    slots = max(depth, 1)
    r_ck, rs_ck = z.new_zeros(C, slots, P), z.new_zeros(C, slots, P)    # first leaf of each open subtree
    r_end, rs_end = z.new_zeros(C, slots, P), z.new_zeros(C, slots, P)  # last leaf of each left half, by level
    for n in range(2 ** depth):
        z1, r1, U1, g1 = leapfrog(vg, end[:, 0], end[:, 1], end[:, 2], eps, inv_mass)
        leaf = torch.stack((z1, r1, g1), 1)
        if n == 0:
            first = leaf
        delta = torch.nan_to_num(U1 + kinetic(r1, inv_mass) - H0, nan=math.inf, posinf=math.inf)
        b = building
        b3 = b.view(C, 1, 1)
        end = torch.where(b3, leaf, end)
        sum_acc = torch.addcmul(sum_acc, b, torch.exp(-delta).clamp(max=1.0))
        n_steps = n_steps + b
        new_log_w = torch.logaddexp(log_w, -delta)
        u = torch.rand(C, generator=gen, device=z.device, dtype=z.dtype)
        take = b & (u.log() < -delta - new_log_w)
        prop = torch.where(take.view(C, 1, 1), leaf, prop)
        U_prop = torch.where(take, U1, U_prop)
        log_w = torch.where(b, new_log_w, log_w)
        sum_before = r_sum
        r_sum = torch.addcmul(r_sum, b.view(C, 1), r1)
        lo, hi = _ckpt_idxs(n)
        if n % 2 == 0:
            turn = None
            if n > 0:  # the left half that just ended, plus this first leaf of its right sibling
                lo1 = _ckpt_idxs(n - 1)[0]
                rc = r_ck[:, lo1]
                turn = is_turning(inv_mass, rc, r1, r_sum - rs_ck[:, lo1] + rc)
            r_ck[:, hi] = r1
            rs_ck[:, hi] = r_sum
        else:  # every subtree ending here, all checkpoints lo..hi at once: (C, k, P)
            rc = r_ck[:, lo:hi + 1]
            sub = r_sum.unsqueeze(1) - rs_ck[:, lo:hi + 1] + rc
            turn = is_turning(inv_mass, rc, r1.unsqueeze(1), sub).any(-1)
            k = hi - lo + 1
            if k >= 2:  # the last leaf of each such subtree's left half, plus its right half
                re = r_end[:, 1:k]
                turn = turn | is_turning(inv_mass, re, r1.unsqueeze(1), r_sum.unsqueeze(1) - rs_end[:, 1:k]).any(-1)
            if k < depth:
                r_end[:, k] = r1
                rs_end[:, k] = sum_before
        stop = delta > max_delta
        diverging = diverging | (b & stop)
        if turn is not None:
            turning = turning | (b & turn)
            stop = stop | turn
        building = b & ~stop
        if n < 2 ** depth - 1 and not bool(building.any()):
            break
    z, r, g = end.unbind(1)
    tree = TreeState(*first.unbind(1), z, r, g, prop[:, 0], U_prop, prop[:, 2], prop[:, 1], log_w, r_sum,
                     turning, diverging)
    return tree, (z, r, g), sum_acc, n_steps


def nuts_step(vg, state: HMCState, eps: torch.Tensor, inv_mass: torch.Tensor, gen: torch.Generator,
              max_depth: int = 10, max_delta: float = 1000.0) -> tuple[HMCState, StepInfo]:
    """One multinomial NUTS transition for every chain. eps (C,), inv_mass (C, P) or (C, P, P)."""
    z, U, g = state
    C, P = z.shape
    r = draw_momentum(inv_mass, gen)
    H0 = U + kinetic(r, inv_mass)
    false = torch.zeros(C, dtype=torch.bool, device=z.device)
    tree = TreeState(z, r, g, z, r, g, z, U, g, r, torch.zeros_like(U), r, false, false)
    active = torch.ones_like(false)
    sum_acc, n_steps = torch.zeros_like(U), torch.zeros(C, dtype=torch.long, device=z.device)
    depth = torch.zeros(C, dtype=torch.long, device=z.device)
    for d in range(max_depth):
        right = torch.rand(C, generator=gen, device=z.device, dtype=z.dtype) < 0.5
        start = (_pick(right, tree.z_right, tree.z_left), _pick(right, tree.r_right, tree.r_left),
                 _pick(right, tree.g_right, tree.g_left))
        eps_s = torch.where(right, eps, -eps).unsqueeze(-1)
        sub, end, acc, ns = build_subtree(vg, start, eps_s, inv_mass, H0, active, d, gen, max_delta)
        sum_acc, n_steps = sum_acc + acc, n_steps + ns
        prob = torch.exp(torch.clamp(sub.log_w - tree.log_w, max=0.0))
        prob = torch.where(sub.turning | sub.diverging, 0.0, prob)
        u = torch.rand(C, generator=gen, device=z.device, dtype=z.dtype)
        take = active & (u < prob)
        a = active
        right_a, left_a = a & right, a & ~right
        lefts, rights = (tree.z_left, tree.r_left, tree.g_left), (tree.z_right, tree.r_right, tree.g_right)
        z_l, r_l, g_l = (_pick(left_a, e, t) for e, t in zip(end, lefts, strict=True))
        z_r, r_r, g_r = (_pick(right_a, e, t) for e, t in zip(end, rights, strict=True))
        r_sum = _pick(a, tree.r_sum + sub.r_sum, tree.r_sum)
        # the merged tree, and (Stan's extra checks) each part with the other's nearest point added
        r_far = _pick(right, tree.r_left, tree.r_right)
        turn_full = (is_turning(inv_mass, r_l, r_r, r_sum)
                     | is_turning(inv_mass, r_far, sub.r_left, tree.r_sum + sub.r_left)
                     | is_turning(inv_mass, start[1], end[1], sub.r_sum + start[1]))
        tree = TreeState(z_l, r_l, g_l, z_r, r_r, g_r,
                         _pick(take, sub.z_prop, tree.z_prop), torch.where(take, sub.U_prop, tree.U_prop),
                         _pick(take, sub.g_prop, tree.g_prop), _pick(take, sub.r_prop, tree.r_prop),
                         torch.where(a, torch.logaddexp(tree.log_w, sub.log_w), tree.log_w), r_sum,
                         tree.turning | (a & (sub.turning | turn_full)), tree.diverging | (a & sub.diverging))
        depth = torch.where(a, d + 1, depth)
        active = a & ~sub.turning & ~sub.diverging & ~turn_full
        if not bool(active.any()):
            break
    info = StepInfo(sum_acc / n_steps.clamp_min(1), n_steps, depth, tree.diverging,
                    tree.U_prop + kinetic(tree.r_prop, inv_mass))
    return HMCState(tree.z_prop, tree.U_prop, tree.g_prop), info


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


# ---------------------------------------------------------------------- the back end
COMMON_OPTIONS = ("compile", "dtype", "threads", "chunk", "init_radius", "max_delta_energy", "processes")


def common_options(method: str, opts: dict, known: tuple[str, ...]) -> dict:
    """Validate the options every batched sampler shares (see the module docstring); raise on
    unknown ones."""
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) for method '{method}': {unknown}; known: {', '.join(known)}")
    compile_ = opts.get("compile", "auto")
    if compile_ not in ("auto", "jit", "inductor", None, False, "none"):
        raise ValueError(f"compile must be 'auto', 'jit', 'inductor' or None; got {compile_!r}")
    dtype = {"float64": torch.float64, "float32": torch.float32, None: None}.get(opts.get("dtype"), "bad")
    if dtype == "bad":
        raise ValueError(f"dtype must be 'float64' or 'float32'; got {opts.get('dtype')!r}")
    processes = opts.get("processes", 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an integer >= 1; got {processes!r}")
    return {"compile": compile_ if compile_ in ("auto", "jit", "inductor") else None, "dtype": dtype,
            "threads": opts.get("threads", 1),
            "chunk": int(opts.get("chunk", 100)), "radius": float(opts.get("init_radius", 2.0)),
            "max_delta": float(opts.get("max_delta_energy", 1000.0)), "processes": processes}


def run_batched(backend, target, settings: Settings, common: dict, runner, report=None) -> Draws:
    """The part every batched sampler shares: chain groups in processes (``processes``), dtype,
    threads, the target's written-out density where it has one, then ``_sample`` with ``runner``
    (see there)."""
    if common["processes"] > 1 and settings.chains > 1:
        if torch.device(settings.device).type != "cpu":
            raise ValueError("processes > 1 runs chain groups on CPU cores; on a GPU keep processes=1 "
                             "(all chains in one batch)")
        from .groups import run_in_processes

        one = {k: v for k, v in settings.options.items() if k != "processes"}
        return run_in_processes(backend.run, target, replace(settings, options=one),
                                min(common["processes"], settings.chains))
    if common["dtype"] is not None:
        target = target.to(common["dtype"])
    with torch_threads(common["threads"] if torch.device(settings.device).type == "cpu" else None), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        direct = (target.log_density, target.log_density_grad)
        return _sample(target.pyro_model(), target.max_plate_nesting, direct, settings, common, runner, report)


class BatchedNUTS:
    """``method="nuts"``: multinomial NUTS with chains as a batch dimension."""

    name = "nuts"
    paths = ("collapsed", "plain")

    def run(self, target, settings: Settings, report=None) -> Draws:
        """Sample; ``report(iteration, divergences)`` is called after every iteration (worker
        processes use it for the parent's progress bar)."""
        opts = dict(settings.options)
        common = common_options("nuts", opts, OPTIONS)
        accept = float(opts.get("target_accept", 0.8))
        if not 0 < accept < 1:
            raise ValueError(f"target_accept must lie in (0, 1); got {accept}")
        max_depth = int(opts.get("max_tree_depth", 10))
        if max_depth < 1:
            raise ValueError(f"max_tree_depth must be >= 1; got {max_depth}")
        dense = opts.get("dense_mass", False)
        if dense not in (True, False):
            raise ValueError(f"dense_mass must be True or False; got {dense!r}")
        metric = opts.get("metric", "fisher")
        if metric not in ("fisher", "stan"):
            raise ValueError(f"metric must be 'fisher' or 'stan'; got {metric!r}")

        def runner(vg, state, gen, keep, report):
            stats, extra = run_nuts(vg, state, settings.warmup, settings.draws, gen, accept, max_depth,
                                    common["max_delta"], common["chunk"], keep, settings.progress, dense, metric,
                                    report)
            info = {"sampler": "batched multinomial NUTS", "target_accept": accept, "max_tree_depth": max_depth,
                    "dense_mass": dense, "metric": "dense covariance" if dense else metric,
                    "mean_tree_depth": float(stats["tree_depth"].mean())}
            return stats, extra, info

        return run_batched(self, target, settings, common, runner, report)


#: runs of at least this many iterations (warmup + draws) compile the potential with inductor by default
INDUCTOR_FROM = 1000


def _make_vg(pot: BatchedPotential, C: int, mode: str | None, z0: torch.Tensor):
    """Value-and-grad of the potential for C chains and the compile mode used: through a
    ``torch.jit.trace`` graph ("jit"), one compiled forward-and-backward graph ("inductor"),
    or plain tracing (None)."""
    if mode is None:
        return pot.value_and_grad, None
    if mode == "inductor":
        try:
            return _inductor_vg(pot, z0), "inductor"
        except Exception as e:  # noqa: BLE001 - any compiler failure: the traced graph still works
            warnings.warn(f"compile='inductor' failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          "using compile='jit'", RuntimeWarning, stacklevel=2)
    with torch.enable_grad():
        traced = torch.jit.trace(lambda z: pot(z), (z0.detach().requires_grad_(True),), check_trace=False)

    def vg(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            U = traced(z)
            (g,) = torch.autograd.grad(U.sum(), z)
        return _finite(U.detach(), g)
    return vg, "jit"


def _inductor_vg(pot: BatchedPotential, z0: torch.Tensor):
    """U and dU/dz traced once into one aten graph (``make_fx``: the Pyro program and autograd run
    only here) and compiled for this batch shape; checked against autograd at z0."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def value_and_grad(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            U = pot(z)
            (g,) = torch.autograd.grad(U.sum(), z)
        return U.detach(), g

    graph = make_fx(value_and_grad)(z0)
    fn = torch.compile(graph, dynamic=False, fullgraph=True)
    U, g = fn(z0)  # compiles now, so the cost shows as set-up time
    U0, g0 = value_and_grad(z0)
    if not (torch.allclose(U, U0, rtol=1e-6, atol=1e-8, equal_nan=True)
            and torch.allclose(g, g0, rtol=1e-5, atol=1e-7, equal_nan=True)):
        raise ValueError("the compiled potential disagrees with autograd")

    def vg(z):
        return _finite(*fn(z))
    return vg


def _finite(U: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U = inf and g = 0 wherever either is not finite (such a proposal is rejected)."""
    bad = ~torch.isfinite(U) | ~torch.isfinite(g).all(-1)
    return torch.where(bad, math.inf, U), torch.where(bad.unsqueeze(-1), 0.0, g)


def _init(pot, C, gen, radius, device, dtype, tries: int = 100) -> HMCState:
    """Uniform(-radius, radius) unconstrained start per chain, redrawn where U is not finite."""
    z = (torch.rand(C, pot.dim, generator=gen, device=device, dtype=dtype) * 2 - 1) * radius
    U, g = pot.value_and_grad(z)
    for _ in range(tries):
        bad = ~torch.isfinite(U)
        if not bool(bad.any()):
            return HMCState(z, U, g)
        z2 = (torch.rand(C, pot.dim, generator=gen, device=device, dtype=dtype) * 2 - 1) * radius
        z = _pick(bad, z2, z)
        U, g = pot.value_and_grad(z)
    raise RuntimeError(f"no finite starting point found for {int((~torch.isfinite(U)).sum())} chain(s) "
                       f"after {tries} tries; check the model's log density")


class DrawBuffer:
    """Draws and per-draw stats of all chains, handed on every ``chunk`` draws: positions (C, k, P)
    to ``on_chunk`` (on the device), stats to host arrays (C, draws) by name."""

    def __init__(self, names: tuple[str, ...], chunk: int, on_chunk):
        self.names, self.chunk, self.on_chunk = names, chunk, on_chunk
        self.z: list[torch.Tensor] = []
        self.now: dict[str, list[torch.Tensor]] = {k: [] for k in names}
        self.done: dict[str, list[np.ndarray]] = {k: [] for k in names}
        self.divergences = 0

    def add(self, z: torch.Tensor, values: tuple, last: bool) -> None:
        self.z.append(z)
        for k, v in zip(self.names, values, strict=True):
            self.now[k].append(v)
        if len(self.z) == self.chunk or last:
            self.on_chunk(torch.stack(self.z, dim=1))
            self.z.clear()
            for k, vals in self.now.items():
                self.done[k].append(torch.stack(vals, dim=1).cpu().numpy())
                vals.clear()
            self.divergences = int(sum(s.sum() for s in self.done["diverging"]))

    def stats(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v, axis=1) for k, v in self.done.items()}


def tick(bar, report, i: int, chains: int, t_loop: float, n_div: int, **more) -> None:
    """After iteration i: the progress bar (draws/s, divergences, ``more``) and ``report``."""
    bar.update(1)
    if report is not None:
        report(i + 1, n_div)
    if not bar.disable and i % 20 == 0:
        el = time.perf_counter() - t_loop
        bar.set_postfix({"draws/s": f"{chains * (i + 1) / max(el, 1e-9):.0f}", **more, "div": n_div}, refresh=False)


def run_nuts(vg, state: HMCState, warmup: int, draws: int, gen: torch.Generator, target: float = 0.8,
             max_depth: int = 10, max_delta: float = 1000.0, chunk: int = 100, on_chunk=None,
             progress: bool = False, dense: bool = False, metric: str = "fisher",
             report=None) -> tuple[dict[str, np.ndarray], dict]:
    """Adapt for ``warmup`` iterations, then draw ``draws`` per chain.

    ``vg`` maps z (C, P) to (U (C,), dU/dz (C, P)). The diagonal inverse mass matrix is adapted in
    Stan's windows. ``metric="fisher"`` (default) starts from 1/|gradient| at the initial point,
    adds short windows inside the initial buffer (ending at iterations 5, 10, 20, 40) and estimates
    each window's metric as sqrt(var(z) / var(gradient)), nutpie's estimate: exact for a Gaussian
    and good from few draws. On the hierarchical logistic benchmark it cut the lock-step leapfrogs
    of warmup by 30%. ``metric="stan"``: identity start, the windows' sample variance. ``dense``:
    adapt a dense (C, P, P) inverse mass matrix (the windows' sample covariance) instead of a
    diagonal one. ``report(i, divergences)`` after every iteration. Every ``chunk`` draws, ``on_chunk(z)`` gets the
    chunk's positions (C, k, P) on the device (default: keep them, copied to the host). Returns
    the sample stats, each (C, draws), and a dict with the final step size, inverse mass
    matrix and timings.
    """
    from tqdm.auto import tqdm

    C, P = state.z.shape
    dev, dt = state.z.device, state.z.dtype
    kept: list[np.ndarray] = []
    if on_chunk is None:
        def on_chunk(z):
            kept.append(z.cpu().numpy())
    fisher = metric == "fisher" and not dense
    inv_mass = (torch.eye(P, device=dev, dtype=dt).expand(C, P, P).clone() if dense
                else torch.ones(C, P, device=dev, dtype=dt))
    if fisher:
        inv_mass = 1.0 / state.g.abs().clamp(1e-4, 1e4)
    eps = find_step_size(vg, state, torch.ones(C, device=dev, dtype=dt), inv_mass, gen)
    da = da_init(eps)
    mass_ends, mass_range = mass_windows(warmup, fisher)
    wf = welford_init(state.z, dense)
    wg = welford_init(state.z)
    buf = DrawBuffer(("diverging", "tree_depth", "n_steps", "energy", "step_size", "acceptance_rate"), chunk,
                     on_chunk)
    bar = tqdm(total=warmup + draws, disable=not progress, unit="it", desc=f"nuts {C} chain{'s' if C > 1 else ''}")
    n_div, t_loop, t_warm = 0, time.perf_counter(), 0.0
    for i in range(warmup + draws):
        state, info = nuts_step(vg, state, eps, inv_mass, gen, max_depth, max_delta)
        if i < warmup:
            da = da_update(da, info.accept, target)
            eps = da.log_eps.exp()
            if mass_range[0] <= i < mass_range[1]:
                wf = welford_update(wf, state.z)
                if fisher:
                    wg = welford_update(wg, state.g)
            if i in mass_ends:
                if fisher:  # var(z) / var(grad) balanced (nutpie's estimate): exact for a Gaussian, few draws
                    inv_mass = (welford_variance(wf) / welford_variance(wg)).sqrt().clamp(1e-8, 1e8)
                else:
                    inv_mass = welford_variance(wf)
                wf, wg = welford_init(state.z, dense), welford_init(state.z)
                eps = find_step_size(vg, state, eps, inv_mass, gen)
                da = da_init(eps)
            if i == warmup - 1:
                eps = da.log_eps_bar.exp()
                t_warm = time.perf_counter() - t_loop
        else:
            buf.add(state.z, (info.diverging, info.depth, info.n_steps, info.energy, eps, info.accept),
                    i == warmup + draws - 1)
            n_div = buf.divergences
        tick(bar, report, i, C, t_loop, n_div)
    bar.close()
    sample_stats = buf.stats()
    extra = {"step_size": eps, "inv_mass": inv_mass, "seconds_warmup": t_warm,
             "seconds_sampling": time.perf_counter() - t_loop - t_warm}
    if kept:
        extra["z"] = np.concatenate(kept, axis=1)
    return sample_stats, extra


def _sample(fn, max_plate_nesting, direct, settings: Settings, common: dict, runner, report=None) -> Draws:
    """Potential, initial points and the host copy of draws around ``runner(vg, state, gen, keep,
    report) -> (sample_stats, extra, info)``, which runs the chains (``extra``: step_size,
    seconds_warmup)."""
    C = settings.chains
    t_start = time.perf_counter()
    pot = BatchedPotential(fn, max_plate_nesting, *direct)
    dev, dt = pot.device, pot.dtype
    gen = torch.Generator(device=dev).manual_seed(settings.seed)
    state = _init(pot, C, gen, common["radius"], dev, dt)
    host: dict[str, list[np.ndarray]] = {}

    def keep(z):  # constrain a chunk on the device, then move it to host memory
        C_, k, P = z.shape
        with torch.no_grad():
            values, _ = pot.constrain(z.reshape(C_ * k, P))
        for name, v in values.items():
            host.setdefault(name, []).append(v.reshape((C_, k) + v.shape[1:]).cpu().numpy())

    mode = common["compile"]
    if mode == "auto":
        mode = "inductor" if settings.warmup + settings.draws >= INDUCTOR_FROM else "jit"
    with pyro.validation_enabled(False):  # values come from bijections onto the support
        vg, mode = (pot.value_and_grad, None) if pot.direct_grad is not None else _make_vg(pot, C, mode, state.z)
        t_compile = time.perf_counter() - t_start
        sample_stats, extra, own = runner(vg, state, gen, keep, report)
    samples = {k: torch.from_numpy(np.concatenate(v, axis=1)) for k, v in host.items()}
    info = {**own, "compile": mode,
            "gradient": "written out" if pot.direct_grad is not None else "autograd",
            "seconds_setup": t_compile, "seconds_warmup": extra["seconds_warmup"],
            "seconds_total": time.perf_counter() - t_start,
            "step_size": extra["step_size"].cpu().tolist(), "dtype": str(dt).replace("torch.", ""),
            "dim": pot.dim, "leapfrog_steps": int(sample_stats["n_steps"].sum())}
    return Draws(samples, sample_stats, info)
