"""ChEES-HMC (Hoffman, Radul & Sountsov 2021): HMC where all chains share one step size and one
jittered trajectory length, both learned during warmup from the whole batch of chains.

Every chain takes the same number of leapfrog steps, so nothing is masked and no chain waits
for another's tree; a step is a leapfrog and nothing else (NUTS adds tree bookkeeping and U-turn
checks to every leaf). That suits many chains, and GPUs, where NUTS's per-leaf work is launch
bound. With few chains the batch estimates (mean, acceptance) are noisy: use NUTS there.

Warmup, per iteration:
- step size: dual averaging on the harmonic mean of the chains' acceptance probabilities,
  target 0.651 (the optimum for HMC; Beskos et al. 2013);
- trajectory length T: one gradient step on log T of the ChEES criterion
  1/4 E[(|z' - mean z'|^2 - |z - mean z|^2)^2] in the metric's coordinates (acceptance-weighted
  over chains; proposals accepted with probability < 1e-4 left out), scaled by a running RMS of
  its gradient (Adam without momentum, rate 0.025, restarted with each new metric), moves of at
  most 0.35 in log T, T capped at ``max_steps`` steps and lifted to at least one step of the
  step size found after each metric update;
- a diagonal metric shared by all chains, sqrt(var z / var grad) pooled over chains and
  iterations, in the same windows as NUTS's ``metric="fisher"``.
A draw's trajectory length is u * T with u from the van der Corput sequence (jitter against
resonance). After warmup, the step size is dual averaging's average since the last metric
update (as in Stan) and T the average of log T over the last half of warmup.

It shares with NUTS the step-size adaptation (``adapt.step_size_adaptation``), the metric's
start and estimate (``adapt.initial_metric``, ``adapt.fisher_metric``), ``find_step_size`` and
the window schedule (``hmc_util``), and the loop around the kernel (``driver``). Its metric
windows stay its own: pooled over chains, fed from the first iteration and updated only once
they hold two draws, unlike NUTS's per-chain ``adapt.window_adaptation``, so its draws are
unchanged.

Options: ``options.ChEES`` (``bm.infer.ChEES(...)`` or the same keywords to ``fit``):
``target_accept`` (0.651), ``max_steps`` (1000), plus the ones every batched sampler takes
(``compile``, ``dtype``, ``threads``, ``chunk``, ``init_radius``, ``max_delta_energy``,
``processes``; see ``nuts``). Sample stats: ``diverging``, ``n_steps``, ``energy``,
``step_size``, ``acceptance_rate``.
"""

from __future__ import annotations

import functools
import math
import time
from typing import NamedTuple

import numpy as np
import torch

from .adapt import fisher_metric, initial_metric, step_size_adaptation
from .base import Draws, Settings
from .checkpoint import Checkpoint, flatten, restore
from .driver import DrawBuffer, progress_bar, run_batched, tick, timings
from .hmc_util import (
    HMCState,
    draw_momentum,
    find_step_size,
    kinetic,
    leapfrog,
    mass_windows,
    pooled_init,
    pooled_update,
    pooled_variance,
    velocity,
)
from .options import ChEES

__all__ = ["ChEESBackend", "run_chees", "hmc_step", "chees_gradient", "TrajectoryAdaptation",
           "trajectory_update", "van_der_corput"]


def van_der_corput(i: int) -> float:
    """The i-th term (i >= 1) of the base-2 van der Corput sequence, in (0, 1)."""
    q, denom = 0.0, 1.0
    while i:
        denom *= 2
        q += (i & 1) / denom
        i >>= 1
    return q


def _leapfrogs(vg, i, z, r, U, g, e, inv_mass, n):
    """One leapfrog of a trajectory loop (``compiled_trajectory``)."""
    z, r, U, g = leapfrog(vg, z, r, g, e, inv_mass)
    return i + 1, z, r, U, g


def _more(i, z, r, U, g, e, inv_mass, n):
    """The trajectory loop goes on: fewer than n leapfrogs so far."""
    return i < n


def _trajectory(loop, z, r, U, g, e, inv_mass, n):
    _, z, r, U, g = loop((torch.zeros_like(n), z, r, U, g), (e, inv_mass, n))
    return z, r, U, g


def compiled_trajectory(vg, state: HMCState, e: torch.Tensor, inv_mass: torch.Tensor):
    """``trajectory(z, r, U, g, e (C, 1), inv_mass, n) -> (z, r, U, g)``: n (0-dim int64)
    leapfrogs as one compiled call (``driver.Gradient.compile_loop``; on a CPU, no Python between
    leapfrogs), or None where the loop does not compile."""
    z, U, g = state
    n = torch.tensor(3, device=z.device)
    i, r = torch.zeros_like(n), torch.ones_like(z)
    return vg.compile_loop(_trajectory, _leapfrogs, _more, (z, r, U, g, e, inv_mass, n),
                           (i, z, r, U, g, e, inv_mass, n))


def hmc_step(vg, state: HMCState, eps: float, n_steps: int, inv_mass: torch.Tensor, gen: torch.Generator,
             max_delta: float, step=None, trajectory=None):
    """n_steps leapfrog steps of size eps for every chain, then a Metropolis correction.
    ``step(z, r, g, eps (C, 1), inv_mass)``: the leapfrog as one compiled call (default: op by op);
    ``trajectory``: all n_steps of them as one (``compiled_trajectory``), used where given.

    Returns the new state, the proposal's position and velocity (for the ChEES gradient),
    acceptance probabilities (C,) and divergences (C,).
    """
    z, U, g = state
    C = z.shape[0]
    r = draw_momentum(inv_mass, gen)
    H0 = U + kinetic(r, inv_mass)
    e = torch.full((C, 1), eps, dtype=z.dtype, device=z.device)
    z1, r1, U1, g1 = z, r, U, g
    if trajectory is not None:
        z1, r1, U1, g1 = trajectory(z, r, U, g, e, inv_mass, torch.tensor(n_steps, device=z.device))
    else:
        step = step or functools.partial(leapfrog, vg)
        for _ in range(n_steps):
            z1, r1, U1, g1 = step(z1, r1, g1, e, inv_mass)
    v1 = velocity(inv_mass, r1)
    H1 = U1 + 0.5 * (r1 * v1).sum(-1)
    delta = torch.nan_to_num(H1 - H0, nan=math.inf, posinf=math.inf)
    diverging = delta > max_delta
    accept = torch.exp(-delta).clamp(max=1.0)
    accept = torch.where(diverging, 0.0, accept)
    u = torch.rand(C, generator=gen, device=z.device, dtype=z.dtype)
    take = u < accept
    m = take.unsqueeze(-1)
    new = HMCState(torch.where(m, z1, z), torch.where(take, U1, U), torch.where(m, g1, g))
    return new, (z1, v1), accept, diverging, torch.where(take, H1, H0)


def chees_gradient(z0: torch.Tensor, z1: torch.Tensor, v1: torch.Tensor, accept: torch.Tensor,
                   t: float, inv_mass: torch.Tensor) -> float | None:
    """d ChEES / d log T at the current T, acceptance-weighted over the chains (t = u * T, the
    trajectory length this draw used: d z1 / d log T = t * v1). None when no chain counts.

    Measured in the metric's coordinates (z / sqrt(inv_mass)), so each direction counts by its
    spread under the metric rather than its raw units. The proposals are centred on their
    acceptance-weighted mean, and chains with acceptance below 1e-4 do not count: one far-off
    rejected proposal would otherwise swamp the estimate (and the running scale that
    normalises the next steps).
    """
    s = inv_mass[:1].rsqrt()   # every chain shares the metric
    keep = (accept > 1e-4) & torch.isfinite(z1).all(-1) & torch.isfinite(v1).all(-1)
    w = torch.where(keep, accept, 0.0)
    k = keep.unsqueeze(-1)
    z1, v1 = torch.where(k, z1, 0.0), torch.where(k, v1, 0.0)   # a dropped chain's term is then 0
    total = w.sum()
    c0 = (z0 - z0.mean(0)) * s
    c1 = (z1 - (w.unsqueeze(-1) * z1).sum(0) / total.clamp_min(1e-300)) * s
    diff = (c1 * c1).sum(-1) - (c0 * c0).sum(-1)
    num, den = torch.stack([(w * diff * (c1 * v1 * s).sum(-1)).sum() * t, total]).tolist()  # one host sync
    return num / den if den > 0 else None


class TrajectoryAdaptation(NamedTuple):
    """Adam without momentum on log T: the current log T, the running mean square of the ChEES
    gradient and its count (reset when the metric changes, since the gradient's scale does)."""

    log_T: float
    mean_sq: float = 0.0
    n: int = 0


def trajectory_update(s: TrajectoryAdaptation, grad: float | None, eps: float, max_steps: int,
                      rate: float = 0.025) -> TrajectoryAdaptation:
    """One normalised gradient step on log T (moves of at most 0.35), capped at ``max_steps``
    leapfrog steps of size eps. No floor here: one tied to dual averaging's early jumps in eps
    would ratchet T up; ``run_chees`` lifts T to one step only after each metric update."""
    log_T, mean_sq, n = s
    if grad is not None:
        n += 1
        mean_sq = 0.95 * mean_sq + 0.05 * grad * grad
        step = rate * grad / (math.sqrt(mean_sq / (1 - 0.95 ** n)) + 1e-12)
        log_T += max(-0.35, min(0.35, step))
    return TrajectoryAdaptation(min(log_T, math.log(max_steps * eps)), mean_sq, n)


def run_chees(vg, state: HMCState, warmup: int, draws: int, gen: torch.Generator, target: float = 0.651,
              max_steps: int = 1000, max_delta: float = 1000.0, chunk: int = 100, on_chunk=None,
              progress: bool = False, report=None, checkpoint=None) -> tuple[dict[str, np.ndarray], dict]:
    """Adapt for ``warmup`` iterations, then draw ``draws`` per chain; same contract as
    ``nuts.run_nuts`` (sample stats (C, draws); extra with step_size (C,), inv_mass,
    trajectory_length, timings; ``checkpoint`` as there)."""
    C, P = state.z.shape
    dev, dt = state.z.device, state.z.dtype
    inv_mass = initial_metric(state, fisher=True).mean(0, keepdim=True).expand(C, P).contiguous()
    eps = float(find_step_size(vg, state, torch.ones(C, device=dev, dtype=dt), inv_mass, gen).median())
    lf = whole = None
    if getattr(vg, "mode", None) == "inductor":  # the trajectory, else the leapfrog, as one compiled call
        e = torch.full((C, 1), eps, device=dev, dtype=dt)
        whole = compiled_trajectory(vg, state, e, inv_mass)
        if whole is None:
            lf = vg.compile(leapfrog, state.z, torch.zeros_like(state.z), state.g, e, inv_mass)
    step = step_size_adaptation(target)  # on one number for all chains: the harmonic mean acceptance
    da = step.init(torch.tensor([eps], dtype=dt))
    traj = TrajectoryAdaptation(math.log(eps))
    ends, (_, last) = mass_windows(warmup, early=True)
    wz, wg = pooled_init(state.z), pooled_init(state.z)  # the metric window, pooled over chains
    avg_log_T, n_avg = 0.0, 0
    buf = DrawBuffer(("diverging", "n_steps", "energy", "step_size", "acceptance_rate"), chunk, on_chunk,
                     keep_z=checkpoint is not None)
    start, t_loop, t_warm = 0, time.perf_counter(), 0.0

    def adaptation():  # everything the loop carries from one iteration to the next
        return {"state": state, "eps": eps, "inv_mass": inv_mass, "da": da, "traj": traj, "wz": wz, "wg": wg,
                "avg_log_T": avg_log_T, "n_avg": n_avg}

    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        arrays, head = saved
        start, t_warm = head["iteration"], head["seconds_warmup"]
        t_loop -= head["seconds"]
        back = {k: restore(v, k, arrays) for k, v in adaptation().items()}
        state, eps, inv_mass, da, traj = back["state"], back["eps"], back["inv_mass"], back["da"], back["traj"]
        wz, wg, avg_log_T, n_avg = back["wz"], back["wg"], back["avg_log_T"], back["n_avg"]
        gen.set_state(torch.from_numpy(arrays["generator"]))
        buf.restore(arrays, dev, dt)
    bar = progress_bar(warmup + draws, f"chees {C} chains", progress)
    bar.update(start)
    n_div = buf.divergences
    for i in range(start, warmup + draws):
        u = van_der_corput(i + 1)
        t = u * math.exp(traj.log_T)
        n = int(min(max(1, math.ceil(t / eps)), max_steps))
        z0 = state.z
        state, (z1, v1), accept, div, energy = hmc_step(vg, state, eps, n, inv_mass, gen, max_delta, lf, whole)
        if i < warmup:
            hm = float(1.0 / (1.0 / accept.clamp_min(1e-10)).mean())  # harmonic mean: one stuck chain counts
            da, e = step.update(da, torch.tensor([hm], dtype=dt))
            eps = float(e)
            traj = trajectory_update(traj, chees_gradient(z0, z1, v1, accept, t, inv_mass), eps, max_steps)
            if i >= warmup // 2:
                avg_log_T, n_avg = avg_log_T + traj.log_T, n_avg + 1
            if i < last:
                wz, wg = pooled_update(wz, state.z), pooled_update(wg, state.g)
            if i in ends and wz.n > 1:
                inv_mass = fisher_metric(pooled_variance(wz), pooled_variance(wg)).expand(C, P).contiguous()
                wz, wg = pooled_init(state.z), pooled_init(state.z)
                eps = float(find_step_size(vg, state, torch.full((C,), eps, device=dev, dtype=dt), inv_mass,
                                           gen).median())
                da = step.init(torch.tensor([eps], dtype=dt))
                # at least one step of the new metric's step size (T can start far below it)
                traj = TrajectoryAdaptation(max(traj.log_T, math.log(eps)))
            if i == warmup - 1:
                # the step size is dual averaging's own average since the last metric change
                # (earlier step sizes were tuned to another metric); T averages the last half
                eps = float(step.final(da))
                if n_avg:
                    traj = TrajectoryAdaptation(max(avg_log_T / n_avg, math.log(eps)))
                t_warm = time.perf_counter() - t_loop
        else:
            buf.add(state.z, (div, torch.full((C,), n, device=dev), energy,
                              torch.full((C,), eps, device=dev, dtype=dt), accept), i == warmup + draws - 1)
            n_div = buf.divergences
        tick(bar, report, i, C, t_loop, n_div, steps=n)
        if checkpoint is not None and i < warmup + draws - 1 and checkpoint.due():
            buf.flush()
            arrays = {"generator": gen.get_state().numpy(), **buf.state()}
            for k, v in adaptation().items():
                flatten(v, k, arrays)
            checkpoint.save(arrays, iteration=i + 1, seconds=time.perf_counter() - t_loop, seconds_warmup=t_warm)
    bar.close()
    sample_stats = buf.stats()
    extra = {"step_size": torch.full((C,), eps, dtype=dt), "inv_mass": inv_mass,
             "trajectory_length": math.exp(traj.log_T), **timings(t_loop, t_warm),
             "compiled": ("whole trajectory" if whole is not None else  # a failed compile left mode None
                          "one leapfrog" if getattr(vg, "mode", None) == "inductor" else "nothing")}
    if checkpoint is not None:
        extra["checkpoint"] = {"resumed_at": start, "saves": checkpoint.saves}
    return sample_stats, extra


class ChEESBackend:
    """``method="chees"``: ChEES-HMC with all chains as one batch (see the module docstring)."""

    name = "chees"
    paths = ("collapsed", "plain")
    kind = "mcmc"

    def run(self, target, settings: Settings, report=None) -> Draws:
        o = ChEES.of(settings.options)
        if settings.chains // min(o.processes, settings.chains) < 2:
            raise ValueError("chees learns its step size and trajectory length across chains: use chains >= 2 "
                             "per process (many more is better), or method='nuts'")

        def runner(vg, state, gen, keep, report):
            ckpt = Checkpoint.of(settings, "chees", options=o.given(), dim=state.z.shape[1])
            stats, extra = run_chees(vg, state, settings.warmup, settings.draws, gen, o.target_accept, o.max_steps,
                                     o.max_delta_energy, o.chunk, keep, settings.progress, report, ckpt)
            info = {"sampler": "ChEES-HMC", "target_accept": o.target_accept, "max_steps": o.max_steps,
                    "trajectory_length": extra["trajectory_length"],
                    "mean_steps": float(stats["n_steps"][0].mean()), "compiled": extra["compiled"]}
            return stats, extra, info

        return run_batched(self, target, settings, o, runner, report)
