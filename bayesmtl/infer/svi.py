"""Stochastic variational inference with Pyro autoguides (``method="svi"``).

Options: ``options.SVI`` (``bm.infer.SVI(guide="mvn", ...)`` or the same keywords to ``fit``):
``guide`` ("structured", the default: full rank over the population, mean field over the
tasks with a linear lean on the population, ``guides.py``; "normal" = mean field, "mvn" = full
rank, "lowrank", "delta" = MAP),
``rank`` (low-rank guide), ``lr`` (0.01), ``steps`` (most steps, 20000), ``min_steps`` (5000, or steps),
``tol`` (1e-5: stop when the mean loss of the last ``window`` (500) steps is less than
``lookback`` (4) x tol x |loss| below the mean of the window ``lookback`` windows earlier; one
window to the next is too noisy a comparison: a slow drift along a ridge then passes for
convergence half the time),
``anneal`` (None: 1000, or 3000 x min(T / B, 10) on task minibatches, whose steps are noisier;
after that, this many more steps with the learning rate decaying
geometrically to lr / 100, so the final guide is not one noisy iterate: on the radon
references it cut the worst mean error from up to 0.6 to about 0.1 posterior sd; 0 = off),
``average`` (True: the guide ends at the mean of its parameters over those annealing steps,
Polyak-Ruppert averaging, not at the last step. Adam's step is in the parameters' units, so the
last iterate's noise, counted in posterior sds, grows as the posterior narrows with more data:
on 1,000 tasks the population means of two seeds differed by up to 0.20-0.24 sd at the last
iterate and 0.08-0.10 sd averaged; what noise the averaged guide still carries is estimated
from block means of the averaging steps, ``averaging.py``, ``info["average_noise"]``, and a fit
warns above 0.1 sd),
``batch_size`` (rows per minibatch; None = all rows), ``particles`` (None: 4 on a collapsed
target, else 1), ``jit`` (True without minibatches), ``threads`` (1).

The draws: ``psis_draws`` (default 10 x ``settings.draws``, at least 1000, at most what fits in
``PSIS_VALUES`` numbers) draws of the fitted
guide give the importance ratios p/q, their Pareto k (``info["pareto_k"]``, Yao et al. 2018)
and smoothed weights; where the weights are usable (k < 1 and an effective sample size of at
least 100) ``settings.draws`` of them are resampled by weight (``psis=True``, the default), which
moves the guide's too-narrow tails toward the posterior's (seeds: the hyperscale's sd from 0.53
to 0.77 of the reference's); else they are the guide's own draws. One chain.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO, JitTraceEnum_ELBO, Predictive, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import (
    AutoDelta,
    AutoGuideList,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from pyro.infer.autoguide.initialization import init_to_median, init_to_sample
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from ..pyro_util import is_deterministic, is_mean_field, site_shapes
from .averaging import BlockMeans, guide_medians, record_noise
from .base import Draws, Settings, torch_threads
from .checkpoint import Checkpoint
from .distributed import check_same_data, shard, world
from .guides import AutoStructuredNormal
from .optim import CLIP_NORM, LazyClippedAdam
from .options import SVI as SVIOptions

__all__ = ["SVIBackend"]

_GUIDES = {"structured": AutoStructuredNormal, "normal": AutoNormal, "mvn": AutoMultivariateNormal,
           "lowrank": AutoLowRankMultivariateNormal, "delta": AutoDelta}


class SVIBackend:
    """``method="svi"``: Pyro SVI with an autoguide (see the module docstring)."""

    name = "svi"
    # the collapsed form first: its population-only posterior is what a full-rank guide fits
    # well (population sds within a few % of NUTS's), and the tasks are then drawn exactly; then
    # a user's prior as written (centred), whose posterior a Gaussian guide fits better than the
    # non-centred one samplers want
    paths = ("collapsed", "centred", "plain")
    kind = "independent"

    def __init__(self, label: str = "svi"):
        self.label = label  # the progress bar's name ("map" when MAP runs through here)

    def paths_for(self, options) -> tuple[str, ...]:
        """The default paths under ``options``: row minibatches need the plain program (task
        minibatches take a collapsed form that splits by task, ``Target.task_batches``)."""
        o = SVIOptions.of(options)
        return ("centred", "plain") if o.batch_size is not None else self.paths

    def run(self, target, settings: Settings) -> Draws:
        o = SVIOptions.of(settings.options)
        guide_name, lr, window = o.guide, o.lr, o.window
        batch = None if o.batch_size is None or o.batch_size >= target.n_rows else o.batch_size
        if o.batch_size is not None and batch is None:
            warnings.warn(f"batch_size {o.batch_size} is not below the data's {target.n_rows} rows: every step "
                          "uses all rows (no minibatches)", UserWarning, stacklevel=2)
        tasks = o.task_batch_size
        if tasks is not None and target.data is not None and not 1 <= tasks < target.data.n_tasks:
            T = target.data.n_tasks
            raise ValueError(f"task_batch_size must be from 1 to {T - 1} (the data have {T} tasks); got {tasks}")
        if tasks is not None and target.enumerated:
            raise ValueError("task_batch_size: this model sums out discrete sites over all tasks; fit it on all tasks")
        jit = batch is None and tasks is None if o.jit is None else o.jit

        w = world(settings.device)
        if w is not None:  # under torchrun: this process's shard of the tasks (distributed.py)
            if batch is not None or tasks is not None or o.validation is not None:
                raise ValueError("under torchrun (WORLD_SIZE > 1) each process takes a shard of the tasks; "
                                 "batch_size, task_batch_size and validation= do not combine with it yet")
            check_same_data(w, target.data.digest(), target.n_rows, target.data.n_tasks)
            target = shard(target, w)
        pyro.set_rng_seed(settings.seed % 2**32)  # (numpy's seeds stop at 2**32 - 1)
        pyro.clear_param_store()
        fn = target.pyro_model(subsample_size=batch, task_batch=tasks)
        # one run under a batch of 2 draws: a program that does not batch (its prior's hyperparameters
        # do not broadcast) fails here, naming the prior, not after the fit inside the PSIS check; its
        # trace names the sites that ask for a mean-field guide of their own (``_with_mean_field``)
        # (shapes only: a prior draw may give a non-finite density, e.g. in float32)
        with torch.random.fork_rng(), torch.no_grad(), poutine.block(), pyro.validation_enabled(False), \
                pyro.plate("_batch_check", 2, dim=-(target.max_plate_nesting + 1)):
            checked = poutine.trace(fn).get_trace()
        own = [k for k, v in checked.nodes.items() if v["type"] == "sample" and is_mean_field(v)]
        enum = target.enumerated  # discrete sites summed out, not guided
        # several particles where an evaluation is cheap: on school's collapsed form the guide's
        # population sds went from 0.73-0.78 of NUTS's (1 particle) to 0.85-0.90 (4 or 8)
        particles = o.particles or (COLLAPSED_PARTICLES if target.path == "collapsed" else 1)
        if _compiled(o, batch, tasks, enum, check=o.validation is not None, mean_field=bool(own)):
            return _run_flat(self.label, target, settings, o, fn, particles, w)
        kw = {"rank": o.rank} if guide_name == "lowrank" and o.rank is not None else {}
        if o.init_scale is not None and guide_name != "delta":
            kw["init_scale"] = float(o.init_scale)
        guided = poutine.block(fn, hide_fn=lambda m: bool(m.get("infer", {}).get("enumerate"))) if enum else fn
        plates, population = None, None
        if own and tasks is None:
            guide = _with_mean_field(guided, guide_name, kw, own)
        elif tasks is not None:
            plates = _TaskPlate(target.data.n_tasks, tasks)
            population, inside = _split_sites(fn)  # one trace serves the guide and the learning rates
            guide = _minibatch_guide(guided, guide_name, plates, kw, population, inside)
        else:
            guide = _GUIDES[guide_name](guided, **kw)
        if "rank" in kw:
            with torch.random.fork_rng(), poutine.block():
                guide._setup_prototype()  # its latent size, without drawing from the fit's stream
            if o.rank > guide.latent_dim:
                raise ValueError(f"rank {o.rank} exceeds the {guide.latent_dim} unconstrained dimensions of the "
                                 "posterior; use rank <= that, or guide='mvn'")
        with torch.random.fork_rng():  # a shape query: the fit's random stream stays as it was
            model_sites = model_sites_of(fn)
        elbo_cls = (JitTraceEnum_ELBO if jit else TraceEnum_ELBO) if enum else (JitTrace_ELBO if jit else Trace_ELBO)
        # particles as one more batch dim (the models batch through their plates): one pass, not a loop
        elbo = elbo_cls(num_particles=particles, vectorize_particles=particles > 1,
                        max_plate_nesting=target.max_plate_nesting, ignore_jit_warnings=True)
        if tasks is None:
            clip = _clip(o.clip, 1 if batch is None else target.n_rows)
            optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 1.0, "clip_norm": clip})
        else:  # lazy (see optim.py), and faster for the per-task parameters, which a step seldom visits
            optim = _LazyAdam(_local_rates(lr, plates, inside, o.clip))
        svi = SVI(fn, guide, optim, elbo)
        steps_ = _PyroSteps(svi, lr, None if w is None else w.mean)
        losses, converged, main_steps = [], False, None  # main_steps: set when the annealing starts
        ckpt = Checkpoint.of(settings, "svi", options=o.given(), path=target.path)
        t0 = time.perf_counter()
        if ckpt is not None and (saved := ckpt.load()) is not None:
            losses, converged, main_steps = _restore(svi, guide, *saved)
            if "n_mean" in saved[0]:  # (stopped while averaging)
                steps_.mean = {k: torch.from_numpy(saved[0][f"mean.{k}"]).to(p)
                               for k, p in pyro.get_param_store().named_parameters()}
                steps_.n_mean = int(saved[0]["n_mean"])
                steps_.blocks = BlockMeans.load(saved[0], dict(pyro.get_param_store().named_parameters()))
            t0 -= saved[1]["seconds"]
        ckpt = ckpt if w is None or w.rank == 0 else None  # one process writes it
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            check = _Validation(target.score, guide, o.patience) if o.validation is not None else None
            try:
                losses, converged, main_steps, anneal = _optimise(
                    steps_, o, self.label, settings.progress, ckpt, losses, converged, main_steps, t0, check,
                    model_sites, 0 if plates is None else plates.n_tasks)
            except RuntimeError as e:  # a trace replayed on a batch whose shapes it froze
                if not (jit and (batch is not None or tasks is not None) and "TorchScript" in str(e)):
                    raise
                raise ValueError(f"jit=True failed under minibatches ({'batch_size' if batch else 'task_batch_size'}="
                                 f"{batch or tasks}): the program's shapes change with the rows a batch holds "
                                 "(e.g. a likelihood that selects rows by the batch); pass jit=False") from None
        fit_seconds = time.perf_counter() - t0
        n = 1 if guide_name == "delta" else settings.draws
        shapes = site_shapes(fn)
        info = {"guide": guide_name, "particles": particles, "steps": len(losses), "converged": converged,
                **({"validation": check.summary()} if check is not None else {}),
                "final_loss": float(np.mean(losses[-window:])), "fit_seconds": fit_seconds,
                "steps_per_second": len(losses) / fit_seconds, "batch_size": batch, "jit": jit, "anneal": anneal,
                "loss_trace": [float(x) for x in losses[:: max(1, len(losses) // 200)]]}
        if w is not None:
            info["distributed"] = w.info()
        if plates is not None:
            plates.size = None  # draws of every task
            info.update(task_batch_size=tasks, psis="skipped: task minibatches (the check needs every row)")
        if guide_name != "delta" and not enum and plates is None:  # (the check cannot sum out enumerated sites yet)
            per_draw = sum((b + e).numel() for b, e, observed in shapes.values() if not observed)
            m = max(n, o.psis_draws or min(max(PSIS_DRAWS, 10 * n), int(PSIS_VALUES // max(per_draw, 1))))
            with torch.no_grad():
                log_w, values = log_ratios(target.pyro_model(), guide, target.max_plate_nesting, m,
                                           target.n_rows, keep=model_sites)
            log_w = log_w if w is None else w.mean(log_w)  # each process saw its shard
            pick = _psis_pick(log_w, n, o.psis, settings.seed, info)
            latent = {k_: v[pick].cpu().unsqueeze(0) for k_, v in values.items()}
        else:
            with torch.no_grad():
                out = Predictive(guide, num_samples=n, parallel=False)()
            latent = {k_: v.detach().cpu().unsqueeze(0) for k_, v in out.items() if k_ in model_sites}
        if steps_.block_means is not None and n > 1:
            record_noise(info, guide_medians(guide, steps_.block_means, population or _split_sites(fn)[0]), latent)
        return Draws(latent, {}, info)


#: annealing steps (``anneal=None``) on all tasks
ANNEAL = 1000
#: the learning rate at the annealing's end, as a share of ``lr``
ANNEAL_FLOOR = 0.01
#: under task minibatches ``TASK_ANNEAL`` x min(T / B, 10): the averaged guide's noise falls as
#: 1 / sqrt(passes over the tasks averaged) (``averaging.py``); 1,000 passes left 0.04 posterior
#: sd in each population value on 2,000 planted tasks (two seeds' means up to 0.10 sd apart),
#: 3,000 passes 0.02 (0.07 apart)
TASK_ANNEAL = 3000


def _optimise(steps_, o: SVIOptions, label: str, progress: bool, ckpt, losses: list, converged: bool,
              main_steps: int | None, t0: float, check=None, model_sites=(), n_tasks: int = 0
              ) -> tuple[list, bool, int | None, int]:
    """The optimisation loop both engines share: ``steps_.step(i)`` until the loss settles (see
    the module docstring) or ``o.steps``, then ``o.anneal`` steps with the learning rate decaying
    to lr / 100; a checkpoint when due. Returns (losses, converged, main_steps, anneal)."""
    window, lookback, steps = o.window, o.lookback, o.steps
    anneal = ANNEAL if o.anneal is None else o.anneal
    if o.anneal is None and o.task_batch_size is not None and n_tasks:
        anneal = int(TASK_ANNEAL * min(n_tasks / o.task_batch_size, LOCAL_RATE_MAX))
    min_steps = min(DEFAULT_MIN_STEPS, steps) if o.min_steps is None else o.min_steps
    with torch_threads(o.threads), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN")  # the step says it, with what to do
        bar = tqdm(total=steps, disable=not progress, desc=label, leave=False)
        bar.update(min(len(losses), steps))
        for i in range(len(losses), steps if not converged and main_steps is None else 0):
            losses.append(steps_.step(i))
            if (i + 1) % window == 0:
                bar.update(window)
                post = {"loss": f"{np.mean(losses[-window:]):.4g}"}
                if check is not None:
                    post["val_lpd"] = f"{check.update(i + 1, model_sites):.4g}"
                bar.set_postfix(**post)
                if check is not None:
                    if check.stop:
                        converged = True
                        break
                    continue
                if i + 1 >= max(min_steps, (lookback + 1) * window):
                    cur = np.mean(losses[-window:])
                    prev = np.mean(losses[-(lookback + 1) * window:-lookback * window])
                    if prev - cur < lookback * o.tol * abs(cur):
                        converged = True
                        break
            if ckpt is not None and ckpt.due():
                steps_.save(ckpt, losses, converged, main_steps, time.perf_counter() - t0)
        bar.close()
        if check is not None:  # end at the best window's guide; no annealing after it
            check.restore()
            anneal = 0
        if anneal:
            if main_steps is None:  # (resumed while annealing: the decay came back with Adam's state)
                main_steps = len(losses)
                steps_.decay(ANNEAL_FLOOR ** (1.0 / anneal), o.average, anneal)
            end = main_steps + anneal
            for i in range(len(losses), end):
                losses.append(steps_.step(i))
                if ckpt is not None and ckpt.due() and i < end - 1:
                    steps_.save(ckpt, losses, converged, main_steps, time.perf_counter() - t0)
            steps_.finish()
    return losses, converged, main_steps, anneal


class _PyroSteps:
    """Pyro's SVI as ``_optimise`` drives it; ``reduce`` averages gradients and the loss over
    processes (``distributed.py``)."""

    def __init__(self, svi: SVI, lr: float, reduce=None):
        self.svi, self.lr, self.reduce = svi, lr, reduce
        self.mean, self.n_mean = None, 0  # the running mean of the parameters while averaging
        self.blocks, self.block_means = None, None  # their block means (averaging.py)

    def step(self, i: int) -> float:
        loss = self._step(i)
        if self.mean is not None:
            self.n_mean += 1
            params = dict(pyro.get_param_store().named_parameters())
            with torch.no_grad():
                for name, p in params.items():
                    self.mean[name] += (p - self.mean[name]) / self.n_mean
            if self.blocks is not None:
                self.blocks.add(params)
        return loss

    def _step(self, i: int) -> float:
        if self.reduce is None:
            return _step(self.svi, i, self.lr)
        # SVI.step with the gradients averaged between backward and the optimiser
        with poutine.trace(param_only=True) as capture:
            loss = self.svi.loss_and_grads(self.svi.model, self.svi.guide)
        # by name, one message: every process must send the same collectives in the same order
        params = list({name: site["value"].unconstrained() for name, site in sorted(capture.trace.nodes.items())
                       }.values())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        mean = self.reduce(torch.cat([g.reshape(-1) for g in grads]))
        pos = 0
        for p in params:
            p.grad = mean[pos:pos + p.numel()].reshape(p.shape).to(p.dtype)
            pos += p.numel()
        self.svi.optim(set(params))
        pyro.infer.util.zero_grads(params)
        loss = float(self.reduce(torch.as_tensor(float(loss), dtype=torch.float64)))
        return _finite(loss, i, self.lr)

    def decay(self, lrd: float, average: bool = False, length: int = 0) -> None:
        for opt in self.svi.optim.optim_objs.values():
            for group in opt.param_groups:
                group["lrd"] = lrd
        if average:  # (unconstrained values: the mean of constrained ones could leave the support)
            params = dict(pyro.get_param_store().named_parameters())
            self.mean = {k: p.detach().clone() for k, p in params.items()}
            self.n_mean = 0
            self.blocks = BlockMeans(params, length)  # (means() is None where anneal < BLOCKS)

    def finish(self) -> None:
        if self.mean is not None and self.n_mean:
            with torch.no_grad():
                for name, p in pyro.get_param_store().named_parameters():
                    p.copy_(self.mean[name])
        self.block_means = None if self.blocks is None else self.blocks.means()
        self.mean, self.blocks = None, None

    def save(self, ckpt, losses, converged, main_steps, seconds) -> None:
        _save(ckpt, self.svi, losses, converged, main_steps, seconds, self.mean, self.n_mean, self.blocks)


class _FlatSteps:
    """``flat_svi.FlatSVI`` as ``_optimise`` drives it."""

    def __init__(self, engine, lr: float):
        self.engine, self.lr = engine, lr

    def step(self, i: int) -> float:
        loss = self.engine.step()
        return _finite(loss, i, self.lr)

    def decay(self, lrd: float, average: bool = False, length: int = 0) -> None:
        self.engine.decay(lrd, average, length)

    def finish(self) -> None:
        self.engine.finish()

    def save(self, ckpt, losses, converged, main_steps, seconds) -> None:
        ckpt.save({**self.engine.state(), "losses": np.asarray(losses, dtype=np.float64)}, steps=len(losses),
                  converged=converged, main_steps=main_steps, seconds=seconds, engine="flat")


#: ``compile="auto"`` compiles the step (``flat_svi.py``) for runs of at least this many steps:
#: compiling takes 5-20 s, which a run of a few hundred steps would not win back
COMPILED_FROM = 3000


def _compiled(o: SVIOptions, batch, tasks, enum: bool, check: bool, mean_field: bool = False) -> bool:
    """Whether this fit runs as one compiled step on the flat potential (``flat_svi.py``);
    ``compile="inductor"`` where it cannot raises a ValueError that says why."""
    from .flat_svi import GUIDES

    why = ("row minibatches (batch_size)" if batch is not None else
           "task minibatches (task_batch_size)" if tasks is not None else
           "discrete sites summed out (enumeration)" if enum else
           "validation= (early stopping scores Pyro's guide)" if check else
           "sites with a mean-field guide of their own (a Bayesian trunk)" if mean_field else
           f"guide={o.guide!r} (the compiled step writes {', '.join(GUIDES)})" if o.guide not in GUIDES else
           "clip= (the compiled step clips at Pyro's 10)" if o.clip not in (None, CLIP_NORM) else None)
    if o.compile == "inductor" and why is not None:
        raise ValueError(f"compile='inductor' cannot run with {why}; use compile=None (Pyro's SVI)")
    return o.compile == "inductor" or (o.compile == "auto" and why is None and o.steps >= COMPILED_FROM)


def _run_flat(label: str, target, settings: Settings, o: SVIOptions, fn, particles: int, w=None) -> Draws:
    """SVI as one compiled step on the target's flat potential (``flat_svi.py``): the loop,
    checkpoints and PSIS draws as on Pyro's path."""
    from .flat_svi import FlatSVI, start

    direct = (target.log_density, target.log_density_grad)
    with torch.random.fork_rng(), warnings.catch_warnings():  # the prior's medians: not the fit's stream
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        pot, guide = start(fn, target.max_plate_nesting, direct, o.guide, o.init_scale)
    gen = torch.Generator(device=pot.device).manual_seed(settings.seed)
    engine = FlatSVI(pot, guide, o.lr, particles, gen, "inductor", None if w is None else w.mean)
    steps_ = _FlatSteps(engine, o.lr)
    losses, converged, main_steps = [], False, None
    ckpt = Checkpoint.of(settings, "svi", options=o.given(), path=target.path, engine="flat")
    t0 = time.perf_counter()
    if ckpt is not None and (saved := ckpt.load()) is not None:
        arrays, head = saved
        engine.load(arrays)
        losses = [float(x) for x in arrays["losses"]]
        converged, main_steps = bool(head["converged"]), head["main_steps"]
        t0 -= head["seconds"]
    ckpt = ckpt if w is None or w.rank == 0 else None  # one process writes it
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        losses, converged, main_steps, anneal = _optimise(
            steps_, o, label, settings.progress, ckpt, losses, converged, main_steps, t0)
    fit_seconds = time.perf_counter() - t0
    n = settings.draws
    info = {"guide": o.guide, "particles": particles, "steps": len(losses), "converged": converged,
            "final_loss": float(np.mean(losses[-o.window:])), "fit_seconds": fit_seconds,
            "steps_per_second": len(losses) / max(fit_seconds - engine.seconds_compile, 1e-9),
            "batch_size": None, "jit": False, "anneal": anneal, "compile": engine.mode,
            "seconds_compile": engine.seconds_compile,
            "gradient": "written out" if pot.direct_grad is not None else "autograd",
            "loss_trace": [float(x) for x in losses[:: max(1, len(losses) // 200)]]}
    m = max(n, o.psis_draws or min(max(PSIS_DRAWS, 10 * n), int(PSIS_VALUES // max(pot.dim, 1))))
    z, log_q = engine.sample(m)
    log_w = engine.log_ratios(z, log_q, target.n_rows)
    if w is not None:
        log_w = w.mean(log_w)  # each process saw its shard
        info["distributed"] = w.info()
    pick = _psis_pick(log_w, n, o.psis, settings.seed, info)
    with torch.no_grad():
        values, _ = pot.constrain(z[pick.to(z.device)])
        if engine.block_means is not None and n > 1:  # (block means of the guide's loc, its median)
            blocks, _ = pot.constrain(engine.block_means)
            population = _split_sites(fn)[0]
            record_noise(info, {k: v for k, v in blocks.items() if k in population}, values)
    return Draws({k: v.cpu().unsqueeze(0) for k, v in values.items()}, {}, info)


def _psis_pick(log_w: torch.Tensor, n: int, resample: bool, seed: int, info: dict) -> torch.Tensor:
    """Indices of the ``n`` draws kept of those whose log ratios are ``log_w``: resampled by
    their smoothed weights where these are usable (and ``resample``), else at random; the
    Pareto k, ESS and which of the two went into ``info``."""
    k, weights = psis_weights(log_w)
    ess = float(1.0 / (weights ** 2).sum()) if weights is not None else 0.0
    info.update(pareto_k=k, psis_draws=len(log_w), psis_ess=ess)
    gen = torch.Generator().manual_seed(seed)
    info["resampled"] = bool(resample and weights is not None and k < PSIS_MAX_K and ess >= PSIS_MIN_ESS)
    if info["resampled"]:  # sampling-importance-resampling: the guide's draws moved toward the posterior
        return torch.multinomial(weights, n, replacement=True, generator=gen)
    return torch.randperm(len(log_w), generator=gen)[:n]


def _clip(given: float | None, summed: int) -> float:
    """ClippedAdam's elementwise clip: ``clip=`` where given, else Pyro's 10 times the rows
    (``batch_size``) or tasks (``task_batch_size``) a minibatch's loss is scaled up to (1 on all
    rows). A step's gradient is then its batch's times N / B or T / B, noisy and skewed; a clip
    within that noise cuts its large values and biases the fit: 200 planted tasks x 15 rows at
    500 rows a step, tau 0.23-0.31 full-batch sds off clipped at 10, 0.12-0.13 at 10 x N
    (networks keep 10: ``models.neural.CLIP``); tasks, ``_local_rates``."""
    return CLIP_NORM * summed if given is None else given


def _LazyAdam(optim_args: dict) -> pyro.optim.PyroOptim:
    """``optim.LazyClippedAdam`` wrapped for Pyro (as ``pyro.optim.ClippedAdam`` wraps its own)."""
    return pyro.optim.PyroOptim(LazyClippedAdam, optim_args)


class _TaskPlate:
    """The guide's task plate (``create_plates``): ``size`` tasks a minibatch, drawn by the guide
    and replayed by the model; ``size = None`` for draws of every task after the fit."""

    def __init__(self, n_tasks: int, size: int | None):
        self.n_tasks, self.size = n_tasks, size

    def __call__(self, *args, **kwargs) -> pyro.plate:
        return pyro.plate("task", self.n_tasks, dim=-1, subsample_size=self.size)


#: under task minibatches a per-task parameter's learning rate is lr times T / B, at most this
LOCAL_RATE_MAX = 10.0


def _local_rates(lr: float, plates: _TaskPlate, local: list[str], clip: float | None = None):
    """Adam's settings per parameter: a task in a batch of B out of T is visited once every T / B
    steps, so its guide parameters step at lr x min(T / B, LOCAL_RATE_MAX); the population's at lr.
    Every gradient is clipped at Pyro's 10 times T, the tasks the loss sums over, which a
    gradient reaches only when something has gone wrong: a step's gradient is its batch's times
    T / B, noisy and skewed by which tasks were drawn, and clipping cuts its large values on one
    side. Clipped at 10 the population's tau came out 0.1 sd low on average (200 tasks, 20 a
    step); clipped at 10 x T / B, on 2,000 tasks with 200 a step, tau's mean lay 0.134 full-batch
    sds from the full-batch fit's; unclipped 0.079, as close as two full-batch fits (0.074)."""
    ratio = plates.n_tasks / plates.size
    fast = lr * min(ratio, LOCAL_RATE_MAX)
    clip = _clip(clip, plates.n_tasks)

    def rates(name: str) -> dict:  # AutoNormal's "...locs.w" / "...scales.w", AutoDelta's "AutoDelta.w"
        own = any(name.endswith((f"locs.{s}", f"scales.{s}")) or name == f"AutoDelta.{s}" for s in local)
        return {"lr": fast if own else lr, "lrd": 1.0, "clip_norm": clip}
    return rates


def _split_sites(fn) -> tuple[list[str], list[str]]:
    """The latent sites of ``fn`` outside its task plate (the population) and inside it."""
    with torch.random.fork_rng(), torch.no_grad(), poutine.block():
        tr = poutine.trace(fn).get_trace()
    latent = [(k, v) for k, v in tr.nodes.items() if v["type"] == "sample" and not v["is_observed"]
              and not site_is_subsample(v) and not is_deterministic(v)]
    inside = [k for k, v in latent if any(f.name == "task" for f in v["cond_indep_stack"])]
    return [k for k, _ in latent if k not in inside], inside


def _with_mean_field(fn, name: str, kw: dict, own: list[str]):
    """A guide for a program with sites asking for a mean-field factor (``pyro_util.MEAN_FIELD``,
    e.g. a Bayesian trunk's weights): "structured" keeps its full-rank population block for the
    other sites and gives those an ``AutoNormal`` of their own; other guides are as named. Those
    sites start at a prior draw: at the prior's median (0) every hidden unit of a network would
    be the same and stay so."""

    def init(site):
        return init_to_sample(site) if is_mean_field(site) else init_to_median(site)

    if name == "delta":
        return AutoDelta(fn, init_loc_fn=init)
    if name != "structured":
        return _GUIDES[name](fn, init_loc_fn=init, **kw)
    guide = AutoGuideList(fn)
    guide.append(AutoStructuredNormal(poutine.block(fn, hide=own), **kw))
    guide.append(AutoNormal(poutine.block(fn, expose=own), init_loc_fn=init, **kw))
    return guide


def _minibatch_guide(fn, name: str, plates: _TaskPlate, kw: dict, population: list[str], inside: list[str]):
    """A guide for task minibatches: "structured" is full rank over the sites outside the task
    plate (the population) and mean field over the per-task sites, whose parameters a step
    updates only for the tasks in its batch; "normal" and "delta" as named. ``population`` and
    ``inside``: ``_split_sites(fn)``."""
    if name != "structured":
        return _GUIDES[name](fn, create_plates=plates, **kw)
    if not inside:  # (a collapsed form with shared noise: the population alone)
        return AutoMultivariateNormal(fn, **kw)
    if not population:
        return AutoNormal(fn, create_plates=plates, **kw)
    guide = AutoGuideList(fn, create_plates=plates)
    guide.append(AutoMultivariateNormal(poutine.block(fn, expose=population), **kw))
    guide.append(AutoNormal(poutine.block(fn, hide=population), **kw))
    return guide


def model_sites_of(fn) -> list[str]:
    """The latent sites of the program ``fn``."""
    return [k for k, (_, _, observed) in site_shapes(fn).items() if not observed]


class _Validation:
    """Early stopping on held-out rows (``SVI.validation``): ``update`` scores the guide's draws
    with ``score`` and keeps a copy of the parameters at the best score; ``stop`` once
    ``patience`` windows have passed without a better one; ``restore`` puts the best back."""

    draws = 32  # guide draws per score: the mean log predictive density's Monte Carlo error stays small

    def __init__(self, score, guide, patience: int):
        if score is None:
            raise ValueError("validation= needs the fit to hold rows out (bm.fit splits them off)")
        self.score, self.guide, self.patience = score, guide, patience
        self.best, self.best_step, self.trace, self.saved, self.since = -np.inf, 0, [], None, 0

    def update(self, step: int, sites: list[str]) -> float:
        with torch.no_grad(), poutine.block():
            out = Predictive(self.guide, num_samples=self.draws, parallel=False)()
        value = self.score({k: v for k, v in out.items() if k in sites})
        self.trace.append([step, value])
        if value > self.best:
            self.best, self.best_step, self.since = value, step, 0
            self.saved = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
        else:
            self.since += 1
        return value

    @property
    def stop(self) -> bool:
        return self.since >= self.patience

    def restore(self) -> None:
        if self.saved is not None:
            with torch.no_grad():
                for k, v in pyro.get_param_store().named_parameters():
                    if k in self.saved:
                        v.copy_(self.saved[k])

    def summary(self) -> dict:
        return {"best_lpd": self.best, "best_step": self.best_step, "stopped_early": self.stop, "trace": self.trace}


#: ELBO particles on a collapsed target unless ``particles=`` says otherwise
COLLAPSED_PARTICLES = 4
#: fewest guide draws whose importance ratios estimate the Pareto k (default: 10 x draws) ...
PSIS_DRAWS = 1000
#: ... unless their values would exceed this many numbers (then as many as fit, at least draws)
PSIS_VALUES = 25_000_000
#: resample the guide's draws only where the smoothed weights are usable: k below this ...
PSIS_MAX_K = 1.0
#: ... and an effective sample size of at least this many draws
PSIS_MIN_ESS = 100.0


def log_ratios(model, guide, nesting: int, n: int, n_rows: int, keep=()) -> tuple[torch.Tensor, dict]:
    """log p(theta, y) - log q(theta) for ``n`` draws of the guide, shape (n,): the importance
    ratios whose Pareto k says whether the guide can stand in for the posterior (Yao et al. 2018),
    and the draws of the sites in ``keep`` ({site: (n, ...)}). Draws go through in chunks (a
    plate of draws over every row), each under one outer plate."""
    chunk = max(1, min(n, int(2e6 // max(n_rows, 1))))
    out, values = [], {k: [] for k in keep}
    # a small first chunk: a program that does not batch fails there, not after a (k, k, ...) blow-up
    bounds = [0] + list(range(min(8, n), n, chunk)) + [n]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        k = hi - lo
        plate = pyro.plate("_psis_draws", k, dim=-(nesting + 1))
        with poutine.block(), plate:
            q = poutine.trace(guide).get_trace()
        with poutine.block(), plate:
            p = poutine.trace(poutine.replay(model, trace=q)).get_trace()
        out.append(_per_draw(p, k, nesting) - _per_draw(q, k, nesting))
        for name in keep:
            v = q.nodes[name]["value"].detach()
            values[name].append(v.reshape((k,) + v.shape[v.dim() - _site_dims(q.nodes[name], nesting):]))
    return torch.cat(out), {k: torch.cat(v) for k, v in values.items()}


def _site_dims(site: dict, nesting: int) -> int:
    """How many trailing dims of a site's value under the outer draws plate are its own."""
    return site["fn"].event_dim + nesting


def _per_draw(trace, k: int, nesting: int) -> torch.Tensor:
    """Sum of a trace's log densities per draw of the outer plate, shape (k,)."""
    total = torch.zeros(k, dtype=torch.float64, device="cpu")
    for name in [n for n, site in trace.nodes.items() if site["type"] == "sample" and is_deterministic(site)]:
        trace.remove_node(name)
    trace.compute_log_prob()  # scaled and masked as the ELBO sees them
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        lp = site["log_prob"]
        lp = lp.reshape((1,) * max(0, nesting + 1 - lp.dim()) + tuple(lp.shape))
        axis = lp.dim() - (nesting + 1)
        lp = lp.sum(tuple(range(axis))) if axis > 0 else lp
        lp = lp.reshape(lp.shape[0], -1).sum(-1)
        total = total + lp.detach().cpu().to(total.dtype)
    return total


def psis_weights(log_w: torch.Tensor) -> tuple[float, torch.Tensor | None]:
    """Pareto k and the normalised Pareto-smoothed importance weights (n,) of log ratios (n,);
    (nan, None) when a ratio is not finite."""
    from ..convert import psis

    w = log_w.double().cpu().numpy()
    if not np.isfinite(w).all():
        return float("nan"), None
    smoothed, k = psis(w)
    weights = torch.from_numpy(np.exp(smoothed - smoothed.max()))
    return k, weights / weights.sum()


def _save(ckpt: Checkpoint, svi: SVI, losses: list, converged: bool, main_steps: int | None, seconds: float,
          mean: dict | None = None, n_mean: int = 0, blocks: BlockMeans | None = None) -> None:
    """The guide's parameters (unconstrained), Adam's state per parameter, the losses so far,
    the running mean of the parameters while averaging and the torch random state (the guide's
    draws come from it)."""
    arrays = {f"param.{k}": v.detach().cpu().numpy() for k, v in pyro.get_param_store().get_state()["params"].items()}
    if mean is not None:
        arrays.update({f"mean.{k}": v.cpu().numpy() for k, v in mean.items()}, n_mean=np.asarray(n_mean))
    if blocks is not None:
        arrays.update(blocks.state())
    groups = {}
    for name, state in svi.optim.get_state().items():
        for key, value in state["state"].get(0, {}).items():
            arrays[f"optim.{name}.{key}"] = torch.as_tensor(value).cpu().numpy()
        groups[name] = state["param_groups"]
    arrays["losses"] = np.asarray(losses, dtype=np.float64)
    arrays["rng.cpu"] = torch.get_rng_state().numpy()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        arrays["rng.cuda"] = torch.cuda.get_rng_state().numpy()
    ckpt.save(arrays, steps=len(losses), converged=converged, main_steps=main_steps, seconds=seconds,
              param_groups=groups)


def _restore(svi: SVI, guide, arrays: dict, head: dict) -> tuple[list, bool, int | None]:
    """Put ``_save``'s state back: the guide's parameters (made by one call of the guide first),
    Adam's state (loaded as each parameter's optimiser is made) and the random state."""
    with poutine.block(), torch.no_grad():
        guide()  # builds the guide's parameters in the param store
    params = pyro.get_param_store().get_state()["params"]
    saved = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
    if set(saved) != set(params):
        raise ValueError("the checkpoint's guide parameters are not this fit's: it was written by a different "
                         "model or guide")
    with torch.no_grad():
        for k, v in saved.items():
            if tuple(v.shape) != tuple(params[k].shape):
                raise ValueError(f"the checkpoint's {k} has shape {tuple(v.shape)}, this fit's "
                                 f"{tuple(params[k].shape)}: written by a different model or settings")
            params[k].copy_(torch.from_numpy(v))
    state = {}
    for name, groups in head["param_groups"].items():
        one = {k.split(".")[-1]: int(v) if v.ndim == 0 and v.dtype.kind in "iu" else torch.from_numpy(v)
               for k, v in arrays.items() if k.startswith(f"optim.{name}.") and k.count(".") == name.count(".") + 2}
        for g in groups:
            g["betas"] = tuple(g["betas"])
        state[name] = {"state": {0: one}, "param_groups": groups}
    svi.optim.set_state(state)
    # one loss evaluation first: a JIT ELBO traces (and draws) on its first call, which the
    # uninterrupted run did at step 0; then the random state of the step the checkpoint ended at
    svi.loss_and_grads(svi.model, svi.guide)
    for p in params.values():
        p.grad = None
    torch.set_rng_state(torch.from_numpy(arrays["rng.cpu"]))
    if "rng.cuda" in arrays and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.from_numpy(arrays["rng.cuda"]))
    return [float(x) for x in arrays["losses"]], bool(head["converged"]), head["main_steps"]


#: fewest steps before the first convergence check (``min_steps=None``), or all of them if fewer
DEFAULT_MIN_STEPS = 5000


def _step(svi: SVI, i: int, lr: float) -> float:
    try:
        loss = svi.step()
    except ValueError as e:  # a distribution's parameter became nan or inf: the optimiser diverged
        if i == 0 or "constraint" not in str(e):
            raise
        raise FloatingPointError(f"SVI diverged at step {i} (a parameter became nan or inf); try a smaller lr "
                                 f"(now {lr}) or scale the data") from e
    return _finite(loss, i, lr)


def _finite(loss: float, i: int, lr: float) -> float:
    """``loss``, or a FloatingPointError that says what to do when it is not finite."""
    if not np.isfinite(loss):
        raise FloatingPointError(f"the ELBO became {loss} at step {i}; try a smaller lr (now {lr}) or scale the data")
    return loss
