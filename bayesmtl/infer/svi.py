"""Stochastic variational inference with Pyro autoguides (``method="svi"``).

Options: ``options.SVI`` (``bm.infer.SVI(guide="mvn", ...)`` or the same keywords to ``fit``):
``guide`` ("normal" = mean field, "mvn" = full-rank, "lowrank", "delta" = MAP),
``rank`` (low-rank guide), ``lr`` (0.01), ``steps`` (most steps, 20000), ``min_steps`` (5000),
``tol`` (1e-5: stop when the mean loss of the last ``window`` (500) steps is less than
``lookback`` (4) x tol x |loss| below the mean of the window ``lookback`` windows earlier; one
window to the next is too noisy a comparison: a slow drift along a ridge then passes for
convergence half the time),
``anneal`` (1000: after that, this many more steps with the learning rate decaying
geometrically to lr / 100, so the final guide is not one noisy iterate: on the radon
references it cut the worst mean error from up to 0.6 to about 0.1 posterior sd; 0 = off),
``batch_size`` (rows per minibatch; None = all rows), ``particles`` (1), ``jit`` (True without
minibatches), ``threads`` (1).

The draws are ``settings.draws`` independent samples from the fitted guide, as one chain.
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
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from tqdm.auto import tqdm

from ..pyro_util import site_shapes
from .base import Draws, Settings, torch_threads
from .options import SVI as SVIOptions

__all__ = ["SVIBackend"]

_GUIDES = {"normal": AutoNormal, "mvn": AutoMultivariateNormal,
           "lowrank": AutoLowRankMultivariateNormal, "delta": AutoDelta}


class SVIBackend:
    """``method="svi"``: Pyro SVI with an autoguide (see the module docstring)."""

    name = "svi"
    paths = ("plain",)

    def run(self, target, settings: Settings) -> Draws:
        o = SVIOptions.of(settings.options)
        guide_name, lr, window, lookback, anneal = o.guide, o.lr, o.window, o.lookback, o.anneal
        steps, min_steps, tol = o.steps, o.min_steps, o.tol
        batch = None if o.batch_size is None or o.batch_size >= target.n_rows else o.batch_size
        jit = batch is None if o.jit is None else o.jit

        pyro.set_rng_seed(settings.seed)
        pyro.clear_param_store()
        fn = target.pyro_model(subsample_size=batch)
        kw = {"rank": o.rank} if guide_name == "lowrank" and o.rank is not None else {}
        enum = target.enumerated  # discrete sites summed out, not guided
        guided = poutine.block(fn, hide_fn=lambda m: bool(m.get("infer", {}).get("enumerate"))) if enum else fn
        guide = _GUIDES[guide_name](guided, **kw)
        elbo_cls = (JitTraceEnum_ELBO if jit else TraceEnum_ELBO) if enum else (JitTrace_ELBO if jit else Trace_ELBO)
        particles = o.particles
        # particles as one more batch dim (the models batch through their plates): one pass, not a loop
        elbo = elbo_cls(num_particles=particles, vectorize_particles=particles > 1,
                        max_plate_nesting=target.max_plate_nesting, ignore_jit_warnings=True)
        svi = SVI(fn, guide, pyro.optim.ClippedAdam({"lr": lr, "lrd": 1.0}), elbo)
        losses, converged = [], False
        t0 = time.perf_counter()
        with torch_threads(o.threads), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            bar = tqdm(total=steps, disable=not settings.progress, desc="svi", leave=False)
            for i in range(steps):
                losses.append(_step(svi, i, lr))
                if (i + 1) % window == 0:
                    bar.update(window)
                    bar.set_postfix(loss=f"{np.mean(losses[-window:]):.4g}")
                    if i + 1 >= max(min_steps, (lookback + 1) * window):
                        cur = np.mean(losses[-window:])
                        prev = np.mean(losses[-(lookback + 1) * window:-lookback * window])
                        if prev - cur < lookback * tol * abs(cur):
                            converged = True
                            break
            bar.close()
            if anneal:
                for opt in svi.optim.optim_objs.values():
                    for group in opt.param_groups:
                        group["lrd"] = 0.01 ** (1.0 / anneal)
                for i in range(len(losses), len(losses) + anneal):
                    losses.append(_step(svi, i, lr))
        fit_seconds = time.perf_counter() - t0
        if not converged:
            warnings.warn(f"SVI did not converge in {steps} steps (mean loss still falling); "
                          "raise steps= or lr=", RuntimeWarning, stacklevel=3)
        n = 1 if guide_name == "delta" else settings.draws
        with torch.no_grad():
            out = Predictive(guide, num_samples=n, parallel=False)()
        model_sites = {k for k, (_, _, observed) in site_shapes(fn).items() if not observed}
        latent = {k: v.detach().cpu().unsqueeze(0) for k, v in out.items() if k in model_sites}
        info = {"guide": guide_name, "steps": len(losses), "converged": converged,
                "final_loss": float(np.mean(losses[-window:])), "fit_seconds": fit_seconds,
                "steps_per_second": len(losses) / fit_seconds, "batch_size": batch, "jit": jit, "anneal": anneal,
                "loss_trace": [float(x) for x in losses[:: max(1, len(losses) // 200)]]}
        return Draws(latent, {}, info)


def _step(svi: SVI, i: int, lr: float) -> float:
    loss = svi.step()
    if not np.isfinite(loss):
        raise FloatingPointError(f"the ELBO became {loss} at step {i}; try a smaller lr (now {lr}) or scale the data")
    return loss
