"""SVI speed: steps per second and seconds to a converged ELBO, bayesmtl next to NumPyro and
stock Pyro on the same hierarchical regression, in one run.

    .venv/bin/python benchmarks/svi.py [--problems small,large] [--steps 6000,1500] [--seed 0]
                                       [--numpyro-python python3] [--skip numpyro] [--threads 1]
                                       [--device cpu|cuda]

Problems (issue 22): small = 100 tasks x 50 rows x 5 features; large = 2,000 tasks x 200 rows
x 20 features (400k rows). Model: w_t = mu + tau * z_t (non-centred), z_t ~ N(0, I),
mu ~ N(0, 10), tau ~ HalfNormal(1), sigma_t ~ HalfNormal(1), y ~ N(x . w_t, sigma_t); the
same priors in every row. Rows:

- NumPyro: ``AutoNormal``, ``Trace_ELBO``, Adam(0.01), ``svi.run`` (the whole loop one XLA
  program), float32 (its default) and float64, in /tmp/numpyro-venv (made with pip on first
  use, never the package's own environment; ``--numpyro-python`` names one that has numpyro);
- stock Pyro: the same model in plain Pyro, ``AutoNormal``, ``JitTrace_ELBO``, ClippedAdam(0.01);
- bayesmtl ``svi``: the same model, mean-field guide (``collapse=False, guide="normal"``),
  compiled step (float64 and float32 data) and Pyro's SVI (``compile=None``); and the default
  ``bm.fit(..., method="svi")`` (collapsed form, structured guide, 4 particles), which a user
  gets without asking, compiled (float64 and float32).

Every row runs ``--steps`` steps (no early stop, no annealing). steps/s excludes compiling;
"to converged" = compile + the steps until the loss, averaged over 100-step windows, first comes
within 0.1% (or 1 nat) of the lowest final loss any row reached on the same ELBO, times the time
a step takes ("not reached" when it never does). The ratio columns divide each row's steps/s
by the faster NumPyro row's, and the sooner-converged NumPyro row's time to converged by the
row's (on the collapsed ELBO the comparison is of wall time to a different, tighter bound).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pandas as pd
import torch

warnings.filterwarnings("ignore")

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402

import bayesmtl as bm  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mcmc import numpyro_python  # noqa: E402  (benchmarks/mcmc.py)

PROBLEMS = {"small": (100, 50, 5), "large": (2000, 200, 20)}
WINDOW = 100


def planted(tasks: int, rows: int, features: int, seed: int) -> pd.DataFrame:
    """A planted hierarchical regression (task, y, x0..)."""
    rng = np.random.default_rng(seed)
    D = features + 1
    mu, tau = rng.normal(0, 1, D), rng.uniform(0.2, 0.8, D)
    W = mu + tau * rng.normal(size=(tasks, D))
    task = np.repeat(np.arange(tasks), rows)
    X = rng.normal(size=(tasks * rows, features))
    sigma = rng.uniform(0.5, 1.5, tasks)
    y = W[task, 0] + np.einsum("nd,nd->n", X, W[task, 1:]) + sigma[task] * rng.normal(size=len(task))
    df = pd.DataFrame(X, columns=[f"x{j}" for j in range(features)])
    df.insert(0, "y", y)
    df.insert(0, "task", task)
    return df


def converged_at(losses: np.ndarray, best: float) -> int | None:
    """The first step whose 100-step window mean comes within 0.1% (or 1 nat) of ``best``, the
    lowest final loss any row reached on the same ELBO; None if it never does."""
    n = len(losses) // WINDOW
    means = losses[: n * WINDOW].reshape(n, WINDOW).mean(1)
    hit = np.flatnonzero(means <= best + max(1.0, 1e-3 * abs(best)))
    return None if len(hit) == 0 else int((hit[0] + 1) * WINDOW)


def row(name: str, steps_s: float, compile_s: float, losses: np.ndarray, note: str = "",
        elbo: str = "full") -> dict:
    """One table row; ``elbo``: "full" (the model with every task's w) or "collapsed" (w
    integrated out), whose losses are compared among themselves."""
    losses = np.asarray(losses, dtype=float)
    return {"row": name, "steps/s": steps_s, "compile s": compile_s, "losses": losses, "elbo": elbo,
            "final loss": float(np.mean(losses[-WINDOW:])), "note": note}


def settle(rows: list[dict]) -> None:
    """Fill in each row's step and seconds to the converged ELBO (see ``converged_at``)."""
    for kind in {r["elbo"] for r in rows}:
        group = [r for r in rows if r["elbo"] == kind]
        best = min(r["final loss"] for r in group)
        for r in group:
            at = converged_at(r["losses"], best)
            r["converged at step"] = "not reached" if at is None else at
            r["s to converged"] = None if at is None else r["compile s"] + at / r["steps/s"]


# ---------------------------------------------------------------------- bayesmtl
LOSSES: list[list[float]] = []  # every step's loss of each fit (info keeps a thinned trace)


def _keep_losses() -> None:
    from bayesmtl.infer import svi

    real = svi._optimise

    def optimise(*args, **kwargs):
        out = real(*args, **kwargs)
        LOSSES.append(list(out[0]))
        return out

    svi._optimise = optimise


def bayesmtl_rows(df: pd.DataFrame, features: int, steps: int, seed: int, device: str = "cpu") -> list[dict]:
    cols = [f"x{j}" for j in range(features)]
    prior = bm.priors.Hierarchical(mean=dist.Normal(0.0, 10.0), scale=dist.HalfNormal(1.0))
    lik = bm.likelihoods.Gaussian(noise="per_task", noise_prior=dist.HalfNormal(1.0))
    out = []
    # compile="inductor" named: "auto" compiles from 3000 steps only
    for name, kw, dtype in [
            ("bayesmtl svi, mean field, compiled", dict(collapse=False, guide="normal", compile="inductor"),
             torch.float64),
            ("bayesmtl svi, mean field, compiled, float32 data", dict(collapse=False, guide="normal",
                                                                      compile="inductor"), torch.float32),
            ("bayesmtl svi, mean field, Pyro's SVI (compile=None)", dict(collapse=False, guide="normal",
                                                                         compile=None), torch.float64),
            ("bayesmtl svi default (collapsed, structured, 4 particles), compiled", dict(compile="inductor"),
             torch.float64),
            ("bayesmtl svi default, compiled, float32 data", dict(compile="inductor"), torch.float32)]:
        data = bm.MultiTaskData.from_frame(df, task="task", target="y", features=cols, dtype=dtype)
        model = bm.MultiTaskModel(prior=prior, likelihood=lik)
        n = steps
        t0 = time.perf_counter()
        post = bm.fit(model, data, method="svi", seed=seed, draws=100, progress=False, steps=n, min_steps=n,
                      anneal=0, psis=False, device=device, **kw)
        wall = time.perf_counter() - t0
        losses = np.asarray(LOSSES.pop(), dtype=float)
        i = post.info
        compile_s = i.get("seconds_compile") or 0.0
        rate = i["steps"] / (i["fit_seconds"] - compile_s)
        ran = "compiled" if i.get("compile") == "inductor" else "op by op"  # (a failed compile check runs op by op)
        note = f"path {i['path']}, {i.get('gradient', 'autograd')} gradient, {ran}; fit() wall {wall:.1f} s"
        out.append(row(name, rate, compile_s, losses, note, "collapsed" if i["path"] == "collapsed" else "full"))
    return out


# ---------------------------------------------------------------------- stock Pyro
def pyro_row(df: pd.DataFrame, features: int, steps: int, seed: int, device: str = "cpu") -> dict:
    from pyro.infer import SVI, JitTrace_ELBO
    from pyro.infer.autoguide import AutoNormal

    task = torch.as_tensor(df["task"].to_numpy(), device=device)
    X = torch.as_tensor(np.column_stack([np.ones(len(df)), df[[f"x{j}" for j in range(features)]].to_numpy()]),
                        device=device)
    y = torch.as_tensor(df["y"].to_numpy(), device=device)
    T, D = int(task.max()) + 1, X.shape[1]

    def model():
        mu = pyro.sample("mu", dist.Normal(X.new_zeros(D), 10.0).to_event(1))
        tau = pyro.sample("tau", dist.HalfNormal(X.new_ones(D)).to_event(1))
        with pyro.plate("task", T, device=X.device):
            z = pyro.sample("z", dist.Normal(X.new_zeros(D), 1.0).to_event(1))
            sigma = pyro.sample("sigma", dist.HalfNormal(torch.ones((), dtype=X.dtype, device=X.device)))
        w = mu + tau * z
        with pyro.plate("data", len(y), device=X.device):
            pyro.sample("y", dist.Normal((X * w[task]).sum(-1), sigma[task]), obs=y)

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, AutoNormal(model), pyro.optim.ClippedAdam({"lr": 0.01}), JitTrace_ELBO(ignore_jit_warnings=True))
    n = steps
    t0 = time.perf_counter()
    losses = [svi.step()]  # (step returns a float: it waits for the device)
    first = time.perf_counter() - t0  # the JIT traces on the first step
    t1 = time.perf_counter()
    losses += [svi.step() for _ in range(n - 1)]
    rate = (n - 1) / (time.perf_counter() - t1)
    return row("stock Pyro (AutoNormal, JitTrace_ELBO)", rate, first, np.asarray(losses))


# ---------------------------------------------------------------------- NumPyro, in its own venv
NUMPYRO_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np, pandas as pd
    import jax, jax.numpy as jnp, numpyro, numpyro.distributions as nd
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    spec = json.loads(sys.argv[1]); df = pd.read_csv(spec["csv"])
    task = df["task"].to_numpy(); T = int(task.max()) + 1
    X = np.column_stack([np.ones(len(df)), df[spec["features"]].to_numpy(float)]); D = X.shape[1]
    y = df["y"].to_numpy(float)
    X, y, task = jnp.asarray(X), jnp.asarray(y), jnp.asarray(task)
    def model():
        mu = numpyro.sample("mu", nd.Normal(0, 10).expand([D]).to_event(1))
        tau = numpyro.sample("tau", nd.HalfNormal(1).expand([D]).to_event(1))
        with numpyro.plate("task", T):
            z = numpyro.sample("z", nd.Normal(0, 1).expand([D]).to_event(1))
            sigma = numpyro.sample("sigma", nd.HalfNormal(1))
        w = mu + tau * z
        with numpyro.plate("data", len(y)):
            numpyro.sample("y", nd.Normal((X * w[task]).sum(-1), sigma[task]), obs=y)
    svi = SVI(model, AutoNormal(model), numpyro.optim.Adam(0.01), Trace_ELBO())
    key = jax.random.PRNGKey(spec["seed"])
    t0 = time.perf_counter(); r = svi.run(key, spec["steps"], progress_bar=False); jax.block_until_ready(r.losses)
    first = time.perf_counter() - t0
    t0 = time.perf_counter(); r = svi.run(key, spec["steps"], progress_bar=False); jax.block_until_ready(r.losses)
    again = time.perf_counter() - t0
    print(json.dumps({"first": first, "again": again, "losses": np.asarray(r.losses, dtype=float).tolist(),
                      "version": numpyro.__version__, "jax": jax.__version__}))
""")


def numpyro_rows(df: pd.DataFrame, features: int, steps: int, seed: int, python: str, threads: int,
                 device: str = "cpu") -> list[dict]:
    csv = f"/tmp/svi_bench_{len(df)}.csv"
    df.to_csv(csv, index=False)
    out = []
    for x64 in (False, True):
        spec = {"csv": csv, "features": [f"x{j}" for j in range(features)], "steps": steps, "seed": seed}
        env = dict(os.environ, JAX_ENABLE_X64="1" if x64 else "0",
                   JAX_PLATFORMS="cuda" if device.startswith("cuda") else "cpu",
                   XLA_FLAGS=f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                             f"intra_op_parallelism_threads={threads}")
        res = subprocess.run([python, "-c", NUMPYRO_SCRIPT, json.dumps(spec)], capture_output=True, text=True, env=env)
        if res.returncode:
            print(res.stderr[-2000:], file=sys.stderr)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        name = f"NumPyro {r['version']} ({'float64' if x64 else 'float32, its default'})"
        out.append(row(name, steps / r["again"], max(r["first"] - r["again"], 0.0), np.asarray(r["losses"]),
                       f"jax {r['jax']}; svi.run, the loop in XLA"))
    return out


def show(title: str, rows: list[dict]) -> None:
    settle(rows)
    theirs = [r for r in rows if r["row"].startswith("NumPyro")]
    base = max(theirs, key=lambda r: r["steps/s"], default=None)  # the faster NumPyro row
    reached = [r for r in theirs if r["s to converged"] is not None]
    first = min(reached, key=lambda r: r["s to converged"], default=None)  # the sooner-converged one
    print(f"\n### {title}\n")
    cols = ["row", "steps/s", "ratio", "compile s", "converged at step", "s to converged", "ratio (converged)",
            "final loss", "note"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))

    def num(x):
        return "" if x is None else f"{x:.1f}" if x < 100 else f"{x:.0f}"

    for r in rows:
        r = dict(r)
        r["ratio"] = f"{r['steps/s'] / base['steps/s']:.2f}x" if base else ""
        both = first is not None and r["s to converged"]
        r["ratio (converged)"] = f"{first['s to converged'] / r['s to converged']:.2f}x" if both else ""
        for k in ("steps/s", "compile s", "s to converged"):
            r[k] = num(r[k])
        r["final loss"] = f"{r['final loss']:.1f}" + (" (collapsed)" if r["elbo"] == "collapsed" else "")
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print("\n(to converged: within 0.1% of the lowest final loss of the rows on the same ELBO; the "
          "collapsed rows' ELBO integrates w out and is compared among themselves)")
    sys.stdout.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="small,large")
    ap.add_argument("--steps", default="6000,1500", help="steps a row, one per problem")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch (and XLA) threads")
    ap.add_argument("--numpyro-python", default="")
    ap.add_argument("--skip", default="", help="comma list of: numpyro, pyro, bayesmtl")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: every row's (NumPyro's through JAX_PLATFORMS)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    skip = set(filter(None, a.skip.split(",")))
    _keep_losses()
    names = a.problems.split(",")
    steps = [int(s) for s in a.steps.split(",")]
    gpu = f", {torch.cuda.get_device_name()}" if a.device.startswith("cuda") else ""
    print(f"torch {torch.__version__}, {a.threads} thread(s), {os.cpu_count()} cores; seed {a.seed}; device "
          f"{a.device}{gpu}")
    for name, n in zip(names, steps + steps[-1:] * len(names), strict=False):
        T, R, F = PROBLEMS[name]
        df = planted(T, R, F, a.seed)
        rows = []
        if "numpyro" not in skip:
            rows += numpyro_rows(df, F, n, a.seed, numpyro_python(a.numpyro_python), a.threads, a.device)
        if "pyro" not in skip:
            rows.append(pyro_row(df, F, n, a.seed, a.device))
        if "bayesmtl" not in skip:
            rows += bayesmtl_rows(df, F, n, a.seed, a.device)
        show(f"{name}: {T} tasks x {R} rows x {F} features, {n} steps a row", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
