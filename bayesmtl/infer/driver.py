"""The one sampling loop every batched sampler (NUTS, ChEES) shares, around its kernel.

``run_batched``: chain groups in worker processes (``processes``), dtype and torch threads;
``_sample``: the batched potential, initial points (``_init``), compiling its value and gradient
(``_make_vg``: ``torch.jit.trace``, or ``_inductor_vg``: one ``make_fx`` graph compiled by
``torch.compile``), the host copy of draws (``DrawBuffer``), progress (``tick``), timings and
the ``info`` every batched sampler reports. The sampler itself is a ``runner(vg, state, gen,
keep, report) -> (sample_stats, extra, info)``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace

import numpy as np
import pyro
import torch

from .base import Draws, Settings, torch_threads
from .hmc_util import HMCState, pick
from .potential import BatchedPotential

__all__ = ["run_batched", "DrawBuffer", "tick", "progress_bar", "INDUCTOR_FROM"]

#: runs of at least this many iterations (warmup + draws) compile the potential with inductor by default
INDUCTOR_FROM = 1000

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def run_batched(backend, target, settings: Settings, opts, runner, report=None) -> Draws:
    """Run ``runner`` (see ``_sample``) on ``target`` with the batched samplers' options ``opts``
    (``options.NUTS`` or ``options.ChEES``): chain groups in processes (``processes``), dtype,
    threads, the target's written-out density where it has one."""
    if opts.processes > 1 and settings.chains > 1:
        if torch.device(settings.device).type != "cpu":
            raise ValueError("processes > 1 runs chain groups on CPU cores; on a GPU keep processes=1 "
                             "(all chains in one batch)")
        from .groups import run_in_processes

        return run_in_processes(backend.run, target, replace(settings, options=replace(opts, processes=1)),
                                min(opts.processes, settings.chains))
    if opts.dtype is not None:
        target = target.to(_DTYPES[opts.dtype])
    with torch_threads(opts.threads if torch.device(settings.device).type == "cpu" else None), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        direct = (target.log_density, target.log_density_grad)
        return _sample(target.pyro_model(), target.max_plate_nesting, direct, settings, opts, runner, report)


def _sample(fn, max_plate_nesting, direct, settings: Settings, opts, runner, report=None) -> Draws:
    """Potential, initial points and the host copy of draws around ``runner(vg, state, gen, keep,
    report) -> (sample_stats, extra, info)``, which runs the chains (``extra``: step_size,
    seconds_warmup)."""
    C = settings.chains
    t_start = time.perf_counter()
    pot = BatchedPotential(fn, max_plate_nesting, *direct)
    dev, dt = pot.device, pot.dtype
    gen = torch.Generator(device=dev).manual_seed(settings.seed)
    state = _init(pot, C, gen, opts.init_radius, dev, dt)
    host: dict[str, list[np.ndarray]] = {}

    def keep(z):  # constrain a chunk on the device, then move it to host memory
        C_, k, P = z.shape
        with torch.no_grad():
            values, _ = pot.constrain(z.reshape(C_ * k, P))
        for name, v in values.items():
            host.setdefault(name, []).append(v.reshape((C_, k) + v.shape[1:]).cpu().numpy())

    mode = opts.compile
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


# ---------------------------------------------------------------------- the potential's value and gradient
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
    """One leapfrog step, gradient included, traced once into one aten graph (``make_fx``: the Pyro
    program and autograd run only here) and compiled for this batch shape; checked against
    autograd at z0. The value-and-grad it returns is that step with eps = 0, and carries the
    fused step as ``vg.leapfrog`` (``hmc_util.leapfrog`` uses it for a diagonal metric): one
    compiled call per leapfrog instead of a dozen small ops around the gradient."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def value_and_grad(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            U = pot(z)
            (g,) = torch.autograd.grad(U.sum(), z)
        return U.detach(), g

    def step(z, r, g, eps, inv_mass):
        half = 0.5 * eps
        r = torch.addcmul(r, half, g, value=-1.0)
        z = torch.addcmul(z, eps, inv_mass * r)
        U, g = _finite(*value_and_grad(z))
        return z, torch.addcmul(r, half, g, value=-1.0), U, g

    C, P = z0.shape
    zeros, ones, no_step = torch.zeros_like(z0), torch.ones_like(z0), z0.new_zeros(C, 1)
    # distinct tensors for every input: make_fx keys its inputs by identity
    graph = make_fx(step)(z0.clone(), torch.zeros_like(z0), torch.zeros_like(z0), no_step.clone(), ones.clone())
    fn = torch.compile(graph, dynamic=False, fullgraph=True)
    _, _, U, g = fn(z0, zeros, zeros, no_step, ones)  # compiles now, so the cost shows as set-up time
    U0, g0 = _finite(*value_and_grad(z0))
    if not (torch.allclose(U, U0, rtol=1e-6, atol=1e-8, equal_nan=True)
            and torch.allclose(g, g0, rtol=1e-5, atol=1e-7, equal_nan=True)):
        raise ValueError("the compiled potential disagrees with autograd")

    def vg(z):
        return fn(z.contiguous(), zeros, zeros, no_step, ones)[2:]

    def leapfrog(z, r, g, eps, inv_mass):
        # the graph has the shapes it was traced with: a metric shared by the chains is (1, P)
        return fn(z.contiguous(), r.contiguous(), g.contiguous(), eps.expand(C, 1).contiguous(),
                  inv_mass.expand(C, P).contiguous())

    vg.leapfrog = leapfrog
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
        z = pick(bad, z2, z)
        U, g = pot.value_and_grad(z)
    raise RuntimeError(f"no finite starting point found for {int((~torch.isfinite(U)).sum())} chain(s) "
                       f"after {tries} tries; check the model's log density")


# ---------------------------------------------------------------------- draws, progress, timing
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


def progress_bar(total: int, desc: str, progress: bool):
    """A tqdm bar over ``total`` iterations (disabled unless ``progress``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not progress, unit="it", desc=desc)


def tick(bar, report, i: int, chains: int, t_loop: float, n_div: int, **more) -> None:
    """After iteration i: the progress bar (draws/s, divergences, ``more``) and ``report``."""
    bar.update(1)
    if report is not None:
        report(i + 1, n_div)
    if not bar.disable and i % 20 == 0:
        el = time.perf_counter() - t_loop
        bar.set_postfix({"draws/s": f"{chains * (i + 1) / max(el, 1e-9):.0f}", **more, "div": n_div}, refresh=False)


def timings(t_loop: float, t_warm: float) -> dict[str, float]:
    """``extra``'s timings of a run whose loop started at ``t_loop`` and whose warmup took ``t_warm``."""
    return {"seconds_warmup": t_warm, "seconds_sampling": time.perf_counter() - t_loop - t_warm}
