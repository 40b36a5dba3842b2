"""Pyro's own NUTS, chain after chain: the reference sampler (``method="pyro_nuts"``).

Options: ``options.PyroNUTS`` (``bm.infer.PyroNUTS(...)`` or the same keywords to ``fit``):
``jit`` (default True; JIT-compiled potential, measured faster), ``target_accept`` (0.8),
``max_tree_depth`` (10), ``dense_mass`` (False), ``threads`` (1: Pyro's small-model inference is
faster and steadier on one torch thread).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS

from .base import Draws, Settings, torch_threads
from .options import PyroNUTS

__all__ = ["PyroNUTSBackend"]


class PyroNUTSBackend:
    """``method="pyro_nuts"``: Pyro's ``MCMC(NUTS(...))``, one chain after another."""

    name = "pyro_nuts"
    paths = ("collapsed", "plain")
    kind = "mcmc"

    def run(self, target, settings: Settings) -> Draws:
        o = PyroNUTS.of(settings.options)
        jit, accept, depth, dense, threads = o.jit, o.target_accept, o.max_tree_depth, o.dense_mass, o.threads
        fn = target.pyro_model()
        chains, stats, info = [], {"diverging": []}, {"step_size": [], "acceptance_rate": [],
                                                       "seconds_per_chain": [], "jit": jit}
        with torch_threads(threads), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            for c in range(settings.chains):
                pyro.set_rng_seed((settings.seed * 1000 + c) % 2**32)
                pyro.clear_param_store()
                kernel = NUTS(fn, jit_compile=jit, ignore_jit_warnings=True, target_accept_prob=accept,
                              max_tree_depth=depth, full_mass=dense,
                              max_plate_nesting=target.max_plate_nesting)
                mcmc = MCMC(kernel, num_samples=settings.draws, warmup_steps=settings.warmup,
                            num_chains=1, disable_progbar=not settings.progress)
                t0 = time.perf_counter()
                mcmc.run()
                info["seconds_per_chain"].append(time.perf_counter() - t0)
                chains.append({k: v.detach().cpu() for k, v in mcmc.get_samples().items()})
                diag = mcmc.diagnostics()
                div = np.zeros(settings.draws, dtype=bool)
                idx = np.asarray(diag["divergences"]["chain 0"], dtype=int)
                div[np.clip(idx, 0, settings.draws - 1)] = True
                stats["diverging"].append(div)
                info["step_size"].append(float(kernel.step_size))
                info["acceptance_rate"].append(float(diag["acceptance rate"]["chain 0"]))
        samples = {k: torch.stack([ch[k] for ch in chains]) for k in chains[0]}
        return Draws(samples, {k: np.stack(v) for k, v in stats.items()}, info)
