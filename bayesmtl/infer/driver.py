"""The one sampling loop every batched sampler (NUTS, ChEES) shares, around its kernel.

``run_batched``: chain groups in worker processes (``processes``), dtype and torch threads;
``_sample``: the batched potential, initial points (``_init``), its value and gradient as a
``Gradient`` (``torch.jit.trace``d, or under "inductor" a way for the kernel to compile its whole
step, potential included, into one ``make_fx`` graph compiled by inductor: ``compile``, and on a
CPU a loop of such steps as one call: ``compile_loop``), the host copy of draws
(``DrawBuffer``), progress (``tick``), timings and the ``info`` every batched sampler reports.
The sampler itself is a ``runner(vg, state, gen, keep, report) -> (sample_stats, extra, info)``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from dataclasses import replace

import numpy as np
import pyro
import torch

from ..protocol import default_dtype, fusing
from .base import Draws, Settings, torch_threads
from .hmc_util import HMCState, pick
from .potential import BatchedPotential

__all__ = ["run_batched", "Gradient", "DrawBuffer", "tick", "progress_bar", "INDUCTOR_FROM"]

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
    dtype = _DTYPES.get(opts.dtype, torch.get_default_dtype())  # a prior's Python numbers take the data's dtype
    with torch_threads(opts.threads if torch.device(settings.device).type == "cpu" else None), \
            warnings.catch_warnings(), default_dtype(dtype):
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
        vg = _make_gradient(pot, mode, state.z)
        t_setup = time.perf_counter() - t_start
        sample_stats, extra, own = runner(vg, state, gen, keep, report)
    samples = {k: torch.from_numpy(np.concatenate(v, axis=1)) for k, v in host.items()}
    info = {**own, "compile": vg.mode,
            "gradient": "written out" if pot.direct_grad is not None else "autograd",
            "seconds_setup": t_setup + vg.seconds_compile, "seconds_compile": vg.seconds_compile,
            "seconds_warmup": extra["seconds_warmup"],
            "seconds_total": time.perf_counter() - t_start,
            "step_size": extra["step_size"].cpu().tolist(), "dtype": str(dt).replace("torch.", ""),
            "dim": pot.dim, "leapfrog_steps": int(sample_stats["n_steps"].sum())}
    if "checkpoint" in extra:
        info["checkpoint"] = extra["checkpoint"]
    return Draws(samples, sample_stats, info)


# ---------------------------------------------------------------------- the potential's value and gradient
class Gradient:
    """The potential's value and gradient as a kernel sees it, and a way to compile a kernel's
    step with the potential inside.

    ``gradient(z)`` maps z (C, P) to (U (C,), dU/dz (C, P)), U = inf and dU/dz = 0 where either
    is not finite. ``mode``: "inductor", "jit" or None (see ``_make_gradient``).
    ``compile(fn, *example)``: ``fn(gradient, *tensors) -> tuple of tensors`` as one call. Under
    "inductor" the Pyro program, autograd and the rest of ``fn`` are traced once into one aten
    graph (``make_fx``) and compiled for the example's shapes; the result is checked against
    ``fn`` run op by op on the example, and ``fn`` op by op is used (with a warning) where
    compiling fails. Otherwise ``fn`` is bound to this gradient and runs op by op.
    ``seconds_compile``: time spent compiling so far.
    """

    def __init__(self, fn, mode: str | None, traceable=None):
        self.fn, self.mode, self.traceable = fn, mode, traceable
        self.seconds_compile = 0.0

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fn(z)

    def compile(self, fn, *example: torch.Tensor):
        """``fn`` with this gradient bound, compiled where ``mode`` is "inductor"."""
        if self.mode != "inductor":
            return functools.partial(fn, self)
        t0 = time.perf_counter()
        try:
            return _compile(functools.partial(fn, self.traceable), example)
        except Exception as e:  # noqa: BLE001 - any compiler failure: the op-by-op step still works
            warnings.warn(f"compile='inductor' failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          "running the step op by op", RuntimeWarning, stacklevel=2)
            self.mode = None  # info["compile"] then says what ran
            return functools.partial(fn, self)
        finally:
            self.seconds_compile += time.perf_counter() - t0

    def compile_loop(self, outer, body, cond, example: tuple[torch.Tensor, ...],
                     body_example: tuple[torch.Tensor, ...]):
        """``outer(loop, *tensors) -> tuple of tensors`` as one call, where ``loop(carried, extra)``
        runs ``carried = body(gradient, *carried, *extra)`` while ``cond(*carried, *extra)`` (a
        0-dim bool) and returns the last ``carried``. Under "inductor" on a CPU the loop itself is
        compiled (a ``while_loop`` in inductor's C++ wrapper: no Python between iterations);
        ``body_example`` is (carried..., extra...) as ``outer`` passes them. Elsewhere, or where
        compiling fails, None: the caller keeps its own step."""
        if self.mode != "inductor" or example[0].device.type != "cpu":
            return None
        t0 = time.perf_counter()
        try:
            return _compile_loop(functools.partial(outer, functools.partial(_python_loop, self.traceable, body,
                                                                             cond)),
                                 outer, functools.partial(body, self.traceable), cond, example, body_example)
        except Exception:  # noqa: BLE001 - any compiler failure: the caller's compiled step still works
            return None
        finally:
            self.seconds_compile += time.perf_counter() - t0


def _python_loop(vg, body, cond, carried: tuple, extra: tuple) -> tuple:
    """``Gradient.compile_loop``'s loop, op by op."""
    while bool(cond(*carried, *extra)):
        carried = tuple(body(vg, *carried, *extra))
    return carried


def _lift_constants(gm):
    """``gm`` with its tensor constants (the program's data, captured by ``make_fx``) as trailing
    inputs, one per distinct tensor, and those tensors: a ``while_loop`` body takes its constants
    as inputs."""
    g = gm.graph
    last = [n for n in g.nodes if n.op == "placeholder"][-1]
    consts: list[torch.Tensor] = []
    seen: dict = {}
    for n in list(g.nodes):
        if n.op != "get_attr" or not isinstance(t := getattr(gm, n.target), torch.Tensor):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key not in seen:
            with g.inserting_after(last):
                seen[key] = last = g.placeholder(f"constant_{len(consts)}")
            consts.append(t)
        n.replace_all_uses_with(seen[key])
        g.erase_node(n)
    gm.recompile()
    return gm, consts


def _compile_loop(reference, outer, body, cond, example, body_example):
    """``Gradient.compile_loop`` under "inductor": body and condition traced to aten graphs
    (``make_fx``), the outer function around a ``while_loop`` of them traced under a fake tensor
    mode and compiled with inductor's C++ wrapper; checked against ``reference`` at the example."""
    import torch._inductor
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    ex = tuple(x.clone(memory_format=torch.contiguous_format) for x in example)
    bex = tuple(x.clone(memory_format=torch.contiguous_format) for x in body_example)
    with fusing():
        body_gm, consts = _lift_constants(make_fx(body)(*bex))
        cond_gm = make_fx(lambda *a: cond(*a[:len(bex)]))(*bex, *consts)  # the constants: unused inputs

    def loop(carried, extra):
        return torch.ops.higher_order.while_loop(cond_gm, body_gm, tuple(carried), (*extra, *consts))

    fake_mode = FakeTensorMode(shape_env=ShapeEnv(), static_shapes=True, allow_non_fake_inputs=True)
    fake = [fake_mode.from_tensor(x, static_shapes=True) for x in ex]
    with fake_mode:
        graph = make_fx(functools.partial(outer, loop))(*fake)
    log = logging.getLogger("torch._inductor")  # its C++ wrapper warns of ops it calls back into torch for
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # and a FutureWarning about its own internals
            warnings.simplefilter("ignore", FutureWarning)
            compiled = torch._inductor.compile(graph, fake, options=_loop_options())
    finally:
        log.setLevel(level)
    _check(compiled(*ex), reference(*ex))
    return _contiguous(compiled)


def _loop_options() -> dict:
    """Inductor's options for a compiled loop: scalar C++ and the C++ wrapper, which where this
    torch can (``cpp_wrapper_build_separate``) is built at -O1 apart from the kernels at -O3: the
    same speed, 4-5 s less compiling for a NUTS transition (its wrapper at -O3 took 4.5-5 s)."""
    import torch._inductor.config

    options = {"cpp.vec_isa_ok": False, "cpp_wrapper": True}
    if hasattr(torch._inductor.config, "cpp_wrapper_build_separate"):
        options["cpp_wrapper_build_separate"] = True
    return options


def _check(got, want) -> None:
    """A compiled step's outputs against the same step run op by op: exact for integers, to
    1e-5 in float64, and in lower precision to 1% of each output's largest entry (a float32
    gradient summed over many rows differs by a few tenths of a percent with the order of the
    sums alone; a miscompiled step is off by the size of its outputs)."""
    for a, b in zip(got, want, strict=True):
        if a.shape != b.shape:
            ok = False
        elif not a.is_floating_point():
            ok = torch.equal(a, b)
        elif b.dtype == torch.float64:
            ok = torch.allclose(a, b, rtol=1e-5, atol=1e-7, equal_nan=True)
        else:
            scale = float(b.nan_to_num(0.0, 0.0, 0.0).abs().max()) if b.numel() else 0.0
            ok = torch.allclose(a, b, rtol=1e-2, atol=1e-2 * scale + 1e-7, equal_nan=True)
        if not ok:
            raise ValueError("the compiled step disagrees with the step run op by op")


def _compile(fn, example: tuple[torch.Tensor, ...], simd: bool = False):
    """``fn`` over flat tensors as one inductor-compiled aten graph for the example's shapes,
    checked against ``fn`` at the example. Called with tensors of those shapes (made contiguous).
    ``simd``: vectorised C++ on a CPU (worth its probe where the graph is run many thousand times
    over every row, as an SVI step is)."""
    import torch._inductor
    from torch.fx.experimental.proxy_tensor import make_fx

    example = tuple(x.clone(memory_format=torch.contiguous_format) for x in example)  # distinct: no aliasing
    with fusing():  # distinct inputs: make_fx keys them by identity
        graph = make_fx(fn)(*(x.clone() for x in example))
    # On a CPU, scalar C++: a sampler's tensors are small (chains x parameters), so SIMD code
    # gains little, and skipping the probe for SIMD support saves cold compiles seconds
    options = {"cpp.vec_isa_ok": False} if example[0].device.type == "cpu" and not simd else {}
    compiled = torch._inductor.compile(graph, list(example), options=options)
    _check(compiled(*example), fn(*example))
    return _contiguous(compiled)


def _contiguous(compiled):
    """``compiled`` called with its inputs made contiguous (it was compiled for contiguous ones)."""
    def call(*args: torch.Tensor):
        return compiled(*(x if x.is_contiguous() else x.contiguous() for x in args))
    return call


def _make_gradient(pot: BatchedPotential, mode: str | None, z0: torch.Tensor) -> Gradient:
    """The potential's ``Gradient``: its written-out gradient where it has one (mode None);
    else autograd through a ``torch.jit.trace`` graph ("jit"), through the Pyro program itself
    (None), or under "inductor" the program for steps a kernel compiles (``Gradient.compile``)."""
    def autograd(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            U = pot(z)
            (g,) = torch.autograd.grad(U.sum(), z)
        return _finite(U.detach(), g)

    if pot.direct_grad is not None:
        return Gradient(pot.value_and_grad, None)
    if mode == "inductor":
        return Gradient(autograd, "inductor", autograd)
    if mode is None:
        return Gradient(autograd, None)
    with torch.enable_grad():
        traced = torch.jit.trace(lambda z: pot(z), (z0.detach().requires_grad_(True),), check_trace=False)

    def jit(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            U = traced(z)
            (g,) = torch.autograd.grad(U.sum(), z)
        return _finite(U.detach(), g)
    return Gradient(jit, "jit")


def _finite(U: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U = inf and g = 0 wherever either is not finite (such a proposal is rejected)."""
    bad = ~torch.isfinite(U) | ~torch.isfinite(g).all(-1)
    return torch.where(bad, math.inf, U), torch.where(bad.unsqueeze(-1), 0.0, g)


def _init(pot, C, gen, radius, device, dtype, tries: int = 100) -> HMCState:
    """Uniform(-r, r) unconstrained start per chain, redrawn where U is not finite; r starts at
    ``radius`` and halves every ``tries // 5`` failed tries (thousands of dims, e.g. an LKJ
    factor over 139 tasks, overflow at r = 2 but not at 0.5), down to the point 0."""
    r = radius
    z = (torch.rand(C, pot.dim, generator=gen, device=device, dtype=dtype) * 2 - 1) * r
    U, g = pot.value_and_grad(z)
    for i in range(tries):
        bad = ~torch.isfinite(U)
        if not bool(bad.any()):
            return HMCState(z, U, g)
        if i and i % max(tries // 5, 1) == 0:
            r = r / 2 if i < tries - max(tries // 5, 1) else 0.0
        z2 = (torch.rand(C, pot.dim, generator=gen, device=device, dtype=dtype) * 2 - 1) * r
        z = pick(bad, z2, z)
        U, g = pot.value_and_grad(z)
    raise RuntimeError(f"no finite starting point found for {int((~torch.isfinite(U)).sum())} chain(s) "
                       f"after {tries} tries (uniform in (-{radius}, {radius}) unconstrained, shrinking to 0); "
                       "check the model's log density")


# ---------------------------------------------------------------------- draws, progress, timing
class DrawBuffer:
    """Draws and per-draw stats of all chains, handed on every ``chunk`` draws: positions (C, k, P)
    to ``on_chunk`` (on the device), stats to host arrays (C, draws) by name. With ``keep_z`` the
    positions are also kept on the host, for a checkpoint (``state`` / ``restore``)."""

    def __init__(self, names: tuple[str, ...], chunk: int, on_chunk, keep_z: bool = False):
        self.names, self.chunk, self.on_chunk, self.keep_z = names, chunk, on_chunk, keep_z
        self.z: list[torch.Tensor] = []
        self.now: dict[str, list[torch.Tensor]] = {k: [] for k in names}
        self.done: dict[str, list[np.ndarray]] = {k: [] for k in names}
        self.z_done: list[np.ndarray] = []
        self.divergences = 0

    def add(self, z: torch.Tensor, values: tuple, last: bool) -> None:
        self.z.append(z)
        for k, v in zip(self.names, values, strict=True):
            self.now[k].append(v)
        if len(self.z) == self.chunk or last:
            self.flush()

    def flush(self) -> None:
        """Hand on the draws held so far (a checkpoint flushes first; the draws are the same)."""
        if not self.z:
            return
        z = torch.stack(self.z, dim=1)
        self.on_chunk(z)
        if self.keep_z:
            self.z_done.append(z.cpu().numpy())
        self.z.clear()
        for k, vals in self.now.items():
            self.done[k].append(torch.stack(vals, dim=1).cpu().numpy())
            vals.clear()
        self.divergences = int(sum(s.sum() for s in self.done["diverging"]))

    def stats(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v, axis=1) for k, v in self.done.items()}

    def state(self) -> dict[str, np.ndarray]:
        """Everything handed on so far, as arrays (call ``flush`` first)."""
        if not self.z_done:
            return {}
        return {"draws.z": np.concatenate(self.z_done, axis=1),
                **{f"draws.{k}": v for k, v in self.stats().items()}}

    def restore(self, arrays: dict[str, np.ndarray], device, dtype) -> None:
        """Take back ``state()``'s draws: positions go to ``on_chunk`` again, stats to the host."""
        if "draws.z" not in arrays:
            return
        z = arrays["draws.z"]
        self.on_chunk(torch.from_numpy(z).to(device=device, dtype=dtype))
        self.z_done = [z] if self.keep_z else []
        self.done = {k: [arrays[f"draws.{k}"]] for k in self.names}
        self.divergences = int(self.done["diverging"][0].sum())


def progress_bar(total: int | None, desc: str, progress: bool, unit: str = "it", leave: bool = True):
    """A tqdm bar over ``total`` iterations (None: not known ahead; disabled unless ``progress``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not progress, unit=unit, desc=desc, leave=leave)


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
