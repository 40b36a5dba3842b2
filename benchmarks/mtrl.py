"""Task-relationship learning (MTRL): the conjugate (collapsed) path against sampling W.

Synthetic data: T tasks, D = 10 features, ``--rows`` rows a task, W drawn from a planted task
covariance (four blocks, correlation 0.8 within, 0 across). For each T in ``--tasks`` the model
is fitted with method="nuts" twice, ``collapse=True`` (W integrated out, drawn exactly
afterwards) and ``collapse=False`` (W sampled), same chains, warmup and draws; the table shows
wall time and the minimum bulk ESS over the identified quantities (every w[t, d], every
off-diagonal task correlation, the feature scales and the noise sds) and that ESS per second.
The full LKJ prior is used up to ``--full-max`` tasks, the low-rank prior (rank ``--rank``) above.

Then SVI with the low-rank prior on ``--svi-tasks`` tasks (mean-field guide, full-data gradient):
seconds per 1,000 steps, for the plain model (guide over W too) and the collapsed one (W integrated
out; the guide covers Omega, the feature scales and the noise).

The collapsed low-rank form costs O(T D^3 + (rank D)^3) per gradient (T small D x D solves and one
of size rank x D), the full form O((T D)^3); see ``bayesmtl/marginals/task_relationship_gaussian.py``.

    .venv/bin/python benchmarks/mtrl.py --tasks 20,100 --chains 2 --warmup 300 --draws 300 --seed 0
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import arviz as az
import numpy as np
import torch

import bayesmtl as bm


def planted(T: int, D: int, rows: int, seed: int) -> bm.MultiTaskData:
    rng = np.random.default_rng(seed)
    block = np.arange(T) * 4 // T
    omega = np.where(block[:, None] == block[None, :], 0.8, 0.0)
    np.fill_diagonal(omega, 1.0)
    W = np.linalg.cholesky(omega) @ rng.standard_normal((T, D))
    X = rng.standard_normal((T * rows, D))
    task = np.repeat(np.arange(T), rows)
    y = (X * W[task]).sum(1) + 0.5 * rng.standard_normal(T * rows)
    return bm.MultiTaskData.from_arrays(X, y, task)


def min_ess(post) -> tuple[float, str]:
    """The smallest bulk ESS over w, the off-diagonal task correlations, the feature scales and the
    noise sds, and the group it came from (the feature scales trade size with Omega along a ridge
    that only their priors bound, so they mix slowest when they limit)."""
    s = post.samples
    draws = post.relations().draws
    C = draws.reshape(post.num_chains, post.num_draws, *draws.shape[1:])
    iu = np.triu_indices(C.shape[-1], 1)
    arrays = {"w": s["w"], "corr": C[..., iu[0], iu[1]], "feature_scale": s["feature_scale"]}
    if "sigma" in s:
        arrays["sigma"] = s["sigma"]
    ess = az.ess(az.from_dict(posterior=arrays), method="bulk")
    per = {k: float(ess[k].min()) for k in arrays}
    worst = min(per, key=per.get)
    return per[worst], worst


def grad_ms(fn, chains: int, repeats: int = 5) -> float:
    """Milliseconds per log-density value and gradient of a Pyro model for ``chains`` chains."""
    import pyro

    with pyro.plate("chains", chains, dim=-2):
        tr = pyro.poutine.trace(fn).get_trace()
    vals = {k: s["value"].detach().requires_grad_() for k, s in tr.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and k not in ("task", "data")}

    def once():
        with pyro.plate("chains", chains, dim=-2):
            t = pyro.poutine.trace(pyro.poutine.condition(fn, vals)).get_trace()
        torch.autograd.grad(t.log_prob_sum(), list(vals.values()), allow_unused=True)

    once()
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - t0) / repeats * 1000


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="20,100")
    p.add_argument("--features", type=int, default=10)
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--full-max", type=int, default=20, help="full LKJ prior up to this many tasks")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--paths", default="collapsed,plain")
    p.add_argument("--svi-tasks", type=int, default=1000)
    p.add_argument("--svi-steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--grad-only", action="store_true", help="only the per-gradient cost table")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    D = a.features
    print(f"load average (1, 5, 15 min) at the start: {os.getloadavg()}; torch threads {a.threads}")
    print(f"cost of one log-density value + gradient ({a.chains} chains, eager Pyro trace)")
    print(f"{'tasks':>5} {'prior':>10} {'collapsed ms':>12} {'plain ms':>9}")
    for T in [int(t) for t in a.tasks.split(",") if t]:
        data = planted(T, D, a.rows, a.seed)
        rank = None if T <= a.full_max else a.rank
        model = bm.models.TaskRelationship(prior=bm.priors.TaskRelationship(rank=rank), intercept=False,
                                           likelihood=bm.likelihoods.Gaussian("shared"))
        from bayesmtl.marginals.task_relationship_gaussian import CollapsedTaskRelationship

        col = CollapsedTaskRelationship(model, data)
        print(f"{T:5d} {'full LKJ' if rank is None else f'rank {rank}':>10} "
              f"{grad_ms(col.pyro_model(), a.chains):12.1f} {grad_ms(model.pyro_model(data), a.chains):9.1f}",
              flush=True)
    if a.grad_only:
        return
    print(f"\nNUTS (method='nuts'), {a.chains} chains x ({a.warmup} warmup + {a.draws} draws), D = {D}, "
          f"{a.rows} rows a task, device {a.device}")
    print(f"{'tasks':>5} {'prior':>10} {'path':>9} {'seconds':>8} {'min ESS':>8} {'ESS/s':>8} {'diverg':>6} {'of':>13}")
    for T in [int(t) for t in a.tasks.split(",") if t]:
        data = planted(T, D, a.rows, a.seed)
        rank = None if T <= a.full_max else a.rank
        prior = bm.priors.TaskRelationship(rank=rank)
        model = bm.models.TaskRelationship(prior=prior, intercept=False,
                                           likelihood=bm.likelihoods.Gaussian("shared"))
        for path in a.paths.split(","):
            t0 = time.perf_counter()
            post = bm.fit(model, data, method="nuts", chains=a.chains, warmup=a.warmup, draws=a.draws,
                          seed=a.seed, progress=False, collapse=path == "collapsed", device=a.device)
            secs = time.perf_counter() - t0
            ess, worst = min_ess(post)
            div = post.diagnostics()["divergences"]
            name = "full LKJ" if rank is None else f"rank {rank}"
            print(f"{T:5d} {name:>10} {post.info['path']:>9} {secs:8.1f} {ess:8.1f} {ess / secs:8.2f} {div:6d} "
                  f"{worst:>13}", flush=True)
    if a.svi_tasks:
        data = planted(a.svi_tasks, D, a.rows, a.seed)
        model = bm.models.TaskRelationship(prior=bm.priors.TaskRelationship(rank=a.rank), intercept=False,
                                           likelihood=bm.likelihoods.Gaussian("shared"))
        print(f"\nSVI, {a.svi_tasks} tasks, low rank {a.rank}, D = {D}, {data.n_rows} rows, mean-field guide, "
              f"{a.svi_steps} steps timed")
        print(f"{'path':>9} {'s / 1000 steps':>14} {'jit':>5}")
        for path in a.paths.split(","):
            with warnings.catch_warnings():  # a fixed number of steps is timed, convergence is not the point
                warnings.filterwarnings("ignore", "SVI did not converge")
                post = bm.fit(model, data, method="svi", draws=10, seed=a.seed, progress=False, steps=a.svi_steps,
                              min_steps=a.svi_steps, device=a.device, collapse=path == "collapsed")
            per = post.info["fit_seconds"] / post.info["steps"] * 1000
            print(f"{post.info['path']:>9} {per:14.2f} {str(post.info['jit']):>5}", flush=True)
    print(f"\nload average (1, 5, 15 min) at the end: {os.getloadavg()}")

if __name__ == "__main__":
    main()
