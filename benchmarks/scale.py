"""Many tasks: SVI on task minibatches (``task_batch_size``) against the full-batch fit.

    .venv/bin/python benchmarks/scale.py [--tasks 50000] [--rows 100] [--features 10]
                                         [--task-batch 1000] [--compare 5000] [--draws 100]
                                         [--compare-draws 4000] [--nuts] [--seed 0]
                                         [--batch-seeds N] [--anneal K] [--reference-anneal K]

Planted hierarchical linear regression: w_t ~ N(mu, diag(tau^2)) over an intercept and
``--features`` slopes, y = x . w_t + N(0, 1), ``--rows`` rows a task. Two parts, one table each:

1. ``--compare`` tasks (a subset of the same planted population) fitted twice with the default
   guide: all tasks every step (the model's default SVI path) and ``--task-batch`` tasks a step.
   The population's posterior means are compared in units of the full-batch posterior sd, and
   the sds as a ratio; a second full-batch fit at the next seed gives SVI's own spread (the
   floor no comparison of two SVI fits goes below), and the minibatch fit is compared with the
   two full-batch fits' pooled means too (the reference's own noise halved in variance); each
   fit's reported noise is printed.
2. All ``--tasks`` tasks on task minibatches: time to build the data, to fit, steps, peak
   resident memory of the process (``ru_maxrss``), whether the 90% intervals of mu and tau
   cover the planted values, and the optimisation noise the fit reports for its averaged guide
   (``info["average_noise"]``, ``bayesmtl/infer/averaging.py``).

One process, one core's worth of threads (torch threads 1). Peak memory is the process's
high-water mark, so part 2 runs first when both are asked for.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd
import torch

import bayesmtl as bm


def planted(n_tasks: int, rows: int, features: int, seed: int):
    """(frame, mu, tau) of a planted hierarchical regression."""
    rng = np.random.default_rng(seed)
    D = features + 1
    mu = np.concatenate([[1.0], rng.normal(0.0, 0.5, features)])
    tau = rng.uniform(0.2, 0.8, D)
    W = mu + tau * rng.normal(size=(n_tasks, D))
    task = np.repeat(np.arange(n_tasks, dtype=np.int64), rows)
    X = rng.normal(size=(n_tasks * rows, features))
    y = W[task, 0] + np.einsum("nd,nd->n", X, W[task, 1:]) + rng.normal(size=len(task))
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(features)])
    frame.insert(0, "y", y)
    frame.insert(0, "task", task)
    return frame, mu, tau


def peak_gb() -> float:
    """The process's peak resident memory so far, GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def fit(frame: pd.DataFrame, features: int, draws: int, seed: int, **options):
    """(posterior, data seconds, fit seconds) of the default hierarchical model."""
    t0 = time.perf_counter()
    data = bm.MultiTaskData.from_frame(frame, task="task", target="y", features=[f"x{j}" for j in range(features)])
    t1 = time.perf_counter()
    model = bm.MultiTaskModel(prior=bm.priors.Hierarchical(), likelihood="gaussian")
    post = bm.fit(model, data, method="svi", seed=seed, draws=draws, progress=False, **options)
    return post, t1 - t0, time.perf_counter() - t1


def population(post) -> dict[str, np.ndarray]:
    """Draws (S, D) of mu and tau."""
    return {k: np.asarray(post.samples[k]).reshape(-1, np.asarray(post.samples[k]).shape[-1]) for k in ("mu", "tau")}


def covered(draws: np.ndarray, truth: np.ndarray) -> int:
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    return int(((lo <= truth) & (truth <= hi)).sum())


def _noise(post) -> str:
    """The fit's reported optimisation noise (``infer/averaging.py``) and where."""
    n = post.info.get("average_noise")
    return "-" if n is None else f"{n:.3f} ({post.info.get('average_noise_site')})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=50000)
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--features", type=int, default=10)
    p.add_argument("--task-batch", type=int, default=1000)
    p.add_argument("--compare", type=int, default=5000, help="tasks of the full-batch comparison (0: skip)")
    p.add_argument("--draws", type=int, default=100, help="draws of the many-task fit")
    p.add_argument("--compare-draws", type=int, default=4000,
                   help="draws of each comparison fit: with 4000 the largest of 11 Monte Carlo gaps between two "
                        "fits' means is about 0.045 sd, below the 0.1 mark")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--nuts", action="store_true",
                   help="also fit the comparison tasks with NUTS (4 chains x 1000 after 500 warmup) and print each "
                        "SVI fit's gap to it")
    p.add_argument("--batch-seeds", type=int, default=1,
                   help="fit the minibatch path at this many seeds; with 2 or more, also print the gap of their "
                        "pooled draws, which shrinks with more seeds if the gap is SVI's noise and not a bias")
    p.add_argument("--anneal", type=int, default=None,
                   help="annealing (averaged) steps of the minibatch fits (default: SVI's, 3000 x min(T / B, 10))")
    p.add_argument("--reference-anneal", type=int, default=None,
                   help="annealing (averaged) steps of the two full-batch fits (default: SVI's, 1000); more makes "
                        "the reference, and the floor of the comparison, less noisy")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.tasks:
        frame, mu, tau = planted(a.tasks, a.rows, a.features, a.seed)
        post, t_data, t_fit = fit(frame, a.features, a.draws, a.seed, task_batch_size=a.task_batch, steps=a.steps)
        pop = population(post)
        D = a.features + 1
        print(f"\n## {a.tasks} tasks x {a.rows} rows x {a.features} features ({len(frame):,} rows), "
              f"{a.task_batch} tasks a step\n")
        print("| data s | fit s | steps | steps/s | peak memory GB | mu covered (90%) | tau covered (90%) | "
              "reported noise, posterior sd |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print(f"| {t_data:.1f} | {t_fit:.0f} | {post.info['steps']} | {post.info['steps_per_second']:.1f} | "
              f"{peak_gb():.2f} | {covered(pop['mu'], mu)}/{D} | {covered(pop['tau'], tau)}/{D} | {_noise(post)} |")
        del post, frame
    if a.compare:
        frame, mu, tau = planted(a.compare, a.rows, a.features, a.seed + 1)
        full, _, t_full = fit(frame, a.features, a.compare_draws, a.seed, steps=a.steps, anneal=a.reference_anneal)
        batch = min(a.task_batch, a.compare // 5)
        parts = [fit(frame, a.features, a.compare_draws, a.seed + i, task_batch_size=batch, steps=a.steps,
                     anneal=a.anneal) for i in range(a.batch_seeds)]
        part, t_part = parts[0][0], parts[0][2]
        again, _, _ = fit(frame, a.features, a.compare_draws, a.seed + 1, steps=a.steps,
                          anneal=a.reference_anneal)  # SVI's own spread
        f, g = population(full), population(again)
        qs = [population(p_[0]) for p_ in parts]
        q = qs[0]
        print(f"\n## {a.compare} tasks: all tasks a step ({full.info['path']} path, {t_full:.0f} s) against "
              f"{part.info['task_batch_size']} a step ({t_part:.0f} s)\n")
        print("Each fit's own estimate of its averaged guide's noise (worst population value, posterior sds): "
              f"full batch {_noise(full)}, next seed {_noise(again)}, minibatch "
              f"{' / '.join(_noise(p_[0]) for p_ in parts)} ({part.info['anneal']} averaging steps)\n")
        print("| site | max abs(mean difference) / full-batch sd | against both full-batch fits pooled | "
              "the same, full batch at the next seed | sd ratio, min-max | covered (90%), full / minibatch |")
        print("| --- | --- | --- | --- | --- | --- |")
        for k, truth in (("mu", mu), ("tau", tau)):
            sd = f[k].std(0)
            z = np.abs(q[k].mean(0) - f[k].mean(0)) / sd
            both = np.abs(q[k].mean(0) - (f[k].mean(0) + g[k].mean(0)) / 2) / sd
            r = q[k].std(0) / sd
            floor = np.abs(g[k].mean(0) - f[k].mean(0)) / sd
            print(f"| {k} | {z.max():.3f} | {both.max():.3f} | {floor.max():.3f} | {r.min():.2f}-{r.max():.2f} | "
                  f"{covered(f[k], truth)}/{len(truth)} / {covered(q[k], truth)}/{len(truth)} |")
        if a.batch_seeds > 1:
            print(f"\n| site | minibatch at seeds {a.seed}..{a.seed + a.batch_seeds - 1}: max abs gap to the full "
                  "batch, full-batch sd | their pooled draws | signed gaps' correlation between the first two |")
            print("| --- | --- | --- | --- |")
            for k in ("mu", "tau"):
                sd = f[k].std(0)
                gaps = [(q_[k].mean(0) - f[k].mean(0)) / sd for q_ in qs]
                pooled = np.abs(np.mean(gaps, axis=0)).max()
                rho = np.corrcoef(gaps[0], gaps[1])[0, 1]
                print(f"| {k} | {' / '.join(f'{np.abs(z).max():.3f}' for z in gaps)} | {pooled:.3f} | {rho:.2f} |")
        if a.nuts:
            data = bm.MultiTaskData.from_frame(frame, task="task", target="y",
                                               features=[f"x{j}" for j in range(a.features)])
            model = bm.MultiTaskModel(prior=bm.priors.Hierarchical(), likelihood="gaussian")
            ref = population(bm.fit(model, data, method="nuts", seed=a.seed, draws=1000, warmup=500, progress=False))
            print("\n| fit | mu: max / mean abs gap to NUTS, NUTS sd | tau: max / mean | sd ratio to NUTS |")
            print("| --- | --- | --- | --- |")
            for name, p_ in (("full batch", f), ("full batch, next seed", g), (f"{batch} tasks a step", q)):
                gaps = [np.abs(p_[k].mean(0) - ref[k].mean(0)) / ref[k].std(0) for k in ("mu", "tau")]
                r = np.concatenate([p_[k].std(0) / ref[k].std(0) for k in ("mu", "tau")])
                print(f"| {name} | {gaps[0].max():.2f} / {gaps[0].mean():.2f} | {gaps[1].max():.2f} / "
                      f"{gaps[1].mean():.2f} | {r.min():.2f}-{r.max():.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
