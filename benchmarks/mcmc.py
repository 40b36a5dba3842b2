"""MCMC speed: min bulk ESS per second of wall time (compilation included), bayesmtl's batched NUTS
and ChEES-HMC (collapsed and plain paths) next to Pyro's NUTS (and NumPyro's, ``--with-numpyro``).

    .venv/bin/python benchmarks/mcmc.py [--quick] [--chains 4] [--seed 0] [--pyro-draws 200]
                                        [--many 4,64,1024] [--with-numpyro] [--device cuda]
                                        [--warmup N] [--draws N] [--numpyro-python python3]
                                        [--processes 2]

Tables: (a) hierarchical linear regression, 100 tasks x 50 rows x 5 features, non-centred;
(b) hierarchical logistic regression, same shape; (c) eight schools (non-centred);
(d) ESS/s against the number of chains (eight schools, plain path), on ``--device``.
Pyro's NUTS (one chain per run, chains in turn, JIT, 1 thread) is slow: it runs ``--pyro-draws``
warmup + draws per chain and that row is marked "short run"; ESS/s barely depends on run length.
The plain-path row of (a) samples a badly mixing posterior at tree depth 10 and can take 15+
minutes; ``--skip "nuts (plain)"`` leaves it (and only it, in (a) and (c)) out.
``--with-numpyro`` creates /tmp/numpyro-venv (pip install numpyro jax jaxlib; never the package's
own environment) and times NumPyro's vectorised NUTS on (a)-(d), on the GPU with ``--device cuda``
(``--numpyro-python`` names a Python that already has numpyro and jax, e.g. on a machine
without network). ``--processes K`` adds rows with the chains split over K worker processes
(``processes=K``) and NumPyro's parallel chains (one XLA host device per chain).
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

import arviz as az  # noqa: E402
import pyro.distributions as dist  # noqa: E402

import bayesmtl as bm  # noqa: E402
from bayesmtl.synthetic import hierarchical_regression  # noqa: E402

ISSUE_NUMPYRO = {"a": "NumPyro 0.22 vectorised (issue's figure, 2 idle cores): 22.3 s, ESS 463, 20.8 ESS/s",
                 "c": "NumPyro vectorised (issue's figure): 320 ESS/s"}


def min_bulk_ess(samples: dict[str, np.ndarray]) -> float:
    """Smallest bulk ESS over every scalar of every site, samples (C, S, ...)."""
    ess = az.ess(az.convert_to_dataset({k: np.asarray(v, dtype=float) for k, v in samples.items()}), method="bulk")
    return float(min(float(ess[k].min()) for k in ess.data_vars))


SKIP: list[str] = []
DEVICE = ["cpu"]  # where bayesmtl's NUTS and ChEES run (Pyro's reference NUTS stays on the CPU)
NUMPYRO_PYTHON = [""]


def bench(label, model, data, method, chains, warmup, draws, seed, note="", **options) -> dict | None:
    if any(k in label for k in SKIP):
        return None
    t0 = time.perf_counter()
    post = bm.fit(model, data, method=method, chains=chains, warmup=warmup, draws=draws, seed=seed,
                  progress=False, device=DEVICE[0] if method in ("nuts", "chees") else "cpu", **options)
    wall = time.perf_counter() - t0
    ess = min_bulk_ess(post.samples)
    st = post.sample_stats
    div = int(np.asarray(st.get("diverging", 0)).sum())
    steps = ms = None
    if "n_steps" in st:  # leapfrog steps per draw, and wall ms per lock-step leapfrog while drawing
        steps = round(float(np.mean(st["n_steps"])), 1)
        lock = float(np.asarray(st["n_steps"]).max(0).sum())
        drawing = post.info.get("seconds_total", 0) - post.info.get("seconds_warmup", 0) - post.info.get(
            "seconds_setup", 0)
        ms = round(1e3 * drawing / lock, 2) if drawing > 0 else None
    row = {"sampler": label, "path": post.info.get("path"), "chains x (warmup+draws)": f"{chains}x({warmup}+{draws})",
           "wall s": round(wall, 1), "min bulk ESS": round(ess), "ESS/s": round(ess / wall, 2),
           "divergences": div, "steps/draw": steps, "ms/leapfrog": ms, "note": note}
    print(f"# row done (load {os.getloadavg()[0]:.1f}): {row}", flush=True)  # long runs: partial results early
    return row


def regression(likelihood: str, seed: int):
    df, _ = hierarchical_regression(n_tasks=100, rows=50, features=5, seed=seed, likelihood=likelihood)
    return bm.MultiTaskData.from_frame(df, task="task", target="y"), df


def eight_schools():
    y = [28, 8, -3, 7, -1, 1, 18, 12]
    sigma = [15, 10, 16, 11, 9, 11, 10, 18]
    df = pd.DataFrame({"school": [str(i + 1) for i in range(8)], "y": y, "sigma": sigma})
    data = bm.MultiTaskData.from_frame(df, task="school", target="y", features=[], noise="sigma")
    model = bm.models.Hierarchical(prior=bm.priors.Hierarchical(mean=dist.Normal(0, 5), scale=dist.HalfCauchy(5)))
    return model, data, df


def show(title: str, rows: list[dict], extra: str | None = None) -> None:
    rows = [r for r in rows if r]
    if not rows:
        return
    print(f"\n## {title}\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    if extra:
        print(f"\n{extra}")
    sys.stdout.flush()


# ---------------------------------------------------------------------- NumPyro, in its own venv
NUMPYRO_VENV = "/tmp/numpyro-venv"
NUMPYRO_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np, pandas as pd
    import jax, jax.numpy as jnp, numpyro, numpyro.distributions as nd, arviz as az
    from numpyro.infer import MCMC, NUTS
    spec = json.loads(sys.argv[1]); df = pd.read_csv(spec["csv"])
    task = pd.factorize(df[spec["task"]])[0]; T = task.max() + 1
    X = df[spec["features"]].to_numpy(float); X = np.column_stack([np.ones(len(df)), X]); D = X.shape[1]
    y = df[spec["target"]].to_numpy(float)
    def model():
        mu = numpyro.sample("mu", spec["mu"] == "n5" and nd.Normal(0, 5).expand([D]).to_event(1)
                            or nd.Normal(0, 10).expand([D]).to_event(1))
        tau = numpyro.sample("tau", spec["mu"] == "n5" and nd.HalfCauchy(5).expand([D]).to_event(1)
                             or nd.HalfNormal(1).expand([D]).to_event(1))
        with numpyro.plate("task", T):
            z = numpyro.sample("w_raw", nd.Normal(0, 1).expand([D]).to_event(1))
            sigma = numpyro.sample("sigma", nd.HalfNormal(1)) if spec["lik"] == "gaussian" else None
        w = mu + tau * z
        eta = (X * w[task]).sum(-1)
        with numpyro.plate("data", len(y)):
            if spec["lik"] == "gaussian":
                numpyro.sample("y", nd.Normal(eta, sigma[task]), obs=y)
            elif spec["lik"] == "known":
                numpyro.sample("y", nd.Normal(eta, df["sigma"].to_numpy(float)), obs=y)
            else:
                numpyro.sample("y", nd.Bernoulli(logits=eta), obs=y)
    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_warmup=spec["W"], num_samples=spec["S"], num_chains=spec["C"],
                chain_method=spec["method"], progress_bar=False)
    mcmc.run(jax.random.PRNGKey(spec["seed"]), extra_fields=("num_steps", "diverging"))
    s = mcmc.get_samples(group_by_chain=True); jax.block_until_ready(s)
    wall = time.perf_counter() - t0
    ex = mcmc.get_extra_fields(group_by_chain=True)
    steps = np.asarray(ex["num_steps"]); div = int(np.asarray(ex["diverging"]).sum())
    ess = az.ess(az.convert_to_dataset({k: np.asarray(v) for k, v in s.items()}), method="bulk")
    m = min(float(ess[k].min()) for k in ess.data_vars)
    print(json.dumps({"wall": wall, "ess": m, "version": numpyro.__version__, "steps": float(steps.mean()),
                      "lock": float(steps.max(0).sum()), "div": div}))
""")


def numpyro_python(given: str = "") -> str:
    """``given`` (a Python that has numpyro and jax), else /tmp/numpyro-venv's, made on first use
    (pip install numpyro jax jaxlib arviz pandas; never the package's own environment)."""
    if given:
        return given
    py = os.path.join(NUMPYRO_VENV, "bin", "python")
    if not os.path.exists(py):
        print(f"creating {NUMPYRO_VENV} (numpyro, jax, jaxlib, arviz, pandas) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", NUMPYRO_VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "numpyro", "jax", "jaxlib", "arviz", "pandas"], check=True)
    return py


def numpyro_row(label, df, spec, chains, warmup, draws, seed, parallel: bool = False) -> dict | None:
    """NumPyro's NUTS on the same data: chains vectorised (one device), or ``parallel`` (one XLA
    host device per chain, NumPyro's advice for parallel chains on a CPU)."""
    py = numpyro_python(NUMPYRO_PYTHON[0])
    csv = f"/tmp/numpyro_bench_{label}.csv"
    df.to_csv(csv, index=False)
    spec = dict(spec, csv=csv, C=chains, W=warmup, S=draws, seed=seed, method="parallel" if parallel else "vectorized")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={chains if parallel else 1}",
               JAX_ENABLE_X64="1",
               JAX_PLATFORMS="cuda" if DEVICE[0].startswith("cuda") else "cpu")
    out = subprocess.run([py, "-c", NUMPYRO_SCRIPT, json.dumps(spec)], capture_output=True, text=True, env=env)
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    r = json.loads(out.stdout.strip().splitlines()[-1])
    how = f"parallel, {chains} host devices" if parallel else "vectorised"
    return {"sampler": f"NumPyro {r['version']} NUTS {how}, {chains} chains", "path": "plain",
            "chains x (warmup+draws)": f"{chains}x({warmup}+{draws})", "wall s": round(r["wall"], 1),
            "min bulk ESS": round(r["ess"]), "ESS/s": round(r["ess"] / r["wall"], 2), "divergences": r["div"],
            "steps/draw": round(r["steps"], 1),
            "ms/leapfrog": f"<= {1e3 * r['wall'] / (r['lock'] * (warmup + draws) / draws):.3f}",
            "note": f"float64 on {DEVICE[0].split(':')[0]}, same model (ms/leapfrog: whole wall / est. steps)"}


def extra_rows(label, path, model, data, df, spec, C, W, S, seed, K, numpyro) -> list[dict]:
    """The rows (a)-(c) share: bayesmtl's NUTS in K processes (K > 1), NumPyro vectorised and,
    with K, NumPyro parallel."""
    rows = [bench(f"bayesmtl nuts ({path}), {K} processes", model, data, "nuts", C, W, S, seed, processes=K)] if K \
        else []
    if numpyro:
        rows += [numpyro_row(label, df, spec, C, W, S, seed)]
        rows += [numpyro_row(label, df, spec, C, W, S, seed, parallel=True)] if K else []
    return [r for r in rows if r]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter runs (500 + 500) and fewer chain counts")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pyro-draws", type=int, default=200, help="warmup = draws per chain for Pyro's NUTS rows")
    p.add_argument("--many", default=None, help="chain counts for table (d), default 4,64,1024 (quick: 4,64,256)")
    p.add_argument("--only", default="abcd", help="which tables to run, e.g. 'ac'")
    p.add_argument("--with-numpyro", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", default="", help="comma-separated substrings of sampler labels to skip, e.g. 'plain,Pyro'")
    p.add_argument("--device", default="cpu", help="device for bayesmtl's NUTS and ChEES (and NumPyro's JAX)")
    p.add_argument("--warmup", type=int, help="warmup per chain (default 1000, quick 500)")
    p.add_argument("--draws", type=int, help="draws per chain (default 1000, quick 500)")
    p.add_argument("--processes", type=int, default=0,
                   help="also run bayesmtl with chains split over this many worker processes (CPU), and "
                        "NumPyro with one host device per chain, in (a)-(c)")
    p.add_argument("--numpyro-python", default="",
                   help=f"a Python that already has numpyro, jax and arviz (default: create {NUMPYRO_VENV})")
    a = p.parse_args(argv)
    SKIP[:] = [k for k in a.skip.split(",") if k]
    DEVICE[0], NUMPYRO_PYTHON[0] = a.device, a.numpyro_python
    torch.set_num_threads(a.threads)
    C, seed = a.chains, a.seed
    K = a.processes if a.processes > 1 and a.device == "cpu" else 0
    W = S = 500 if a.quick else 1000
    W, S = a.warmup if a.warmup is not None else W, a.draws if a.draws is not None else S
    pw = a.pyro_draws
    short = f"short run ({pw}+{pw} per chain)"
    gpu = torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else "no GPU"
    print(f"# MCMC benchmark: torch {torch.__version__}, device {a.device} ({gpu}), {a.threads} thread(s), "
          f"{os.cpu_count()} cpu(s), load average {os.getloadavg()[0]:.1f}, seed {seed}")

    if "a" in a.only:
        data, df = regression("gaussian", seed)
        model = bm.models.Hierarchical()
        rows = [bench("bayesmtl nuts (collapsed)", model, data, "nuts", C, W, S, seed),
                bench("bayesmtl chees (collapsed)", model, data, "chees", C, W, S, seed),
                bench("bayesmtl nuts (plain)", model, data, "nuts", C, W, S, seed, collapse=False),
                bench("Pyro NUTS (jit, 1 thread)", model, data, "pyro_nuts", C, pw, pw, seed, note=short,
                      collapse=False)]
        spec = {"task": "task", "target": "y", "features": [f"x{j}" for j in range(1, 6)], "lik": "gaussian",
                "mu": "n10"}
        rows += extra_rows("a", "collapsed", model, data, df, spec, C, W, S, seed, K, a.with_numpyro)
        show("(a) hierarchical linear regression, 100 tasks x 50 rows x 5 features, non-centred", rows,
             "reference: " + ISSUE_NUMPYRO["a"])

    if "b" in a.only:
        data, df = regression("bernoulli", seed)
        model = bm.models.Hierarchical("bernoulli")
        rows = [bench("bayesmtl nuts (plain; no collapse possible)", model, data, "nuts", C, W, S, seed),
                bench("bayesmtl chees (plain)", model, data, "chees", C, W, S, seed),
                bench("Pyro NUTS (jit, 1 thread)", model, data, "pyro_nuts", C, pw, pw, seed, note=short)]
        spec = {"task": "task", "target": "y", "features": [f"x{j}" for j in range(1, 6)], "lik": "bernoulli",
                "mu": "n10"}
        rows += extra_rows("b", "plain", model, data, df, spec, C, W, S, seed, K, a.with_numpyro)
        show("(b) hierarchical logistic regression, same shape", rows)

    if "c" in a.only:
        model, data, df = eight_schools()
        rows = [bench("bayesmtl nuts (collapsed)", model, data, "nuts", C, W, S, seed),
                bench("bayesmtl chees (collapsed)", model, data, "chees", C, W, S, seed),
                bench("bayesmtl nuts (plain)", model, data, "nuts", C, W, S, seed, collapse=False),
                bench("Pyro NUTS (jit, 1 thread)", model, data, "pyro_nuts", C, pw, pw, seed, note=short,
                      collapse=False)]
        spec = {"task": "task", "target": "y", "features": [], "lik": "known", "mu": "n5"}
        rows += extra_rows("c", "collapsed", model, data, df.rename(columns={"school": "task"}), spec, C, W, S, seed,
                           K, a.with_numpyro)
        show("(c) eight schools, non-centred", rows, "reference: " + ISSUE_NUMPYRO["c"])

    if "d" in a.only:
        counts = [int(c) for c in (a.many or ("4,64,256" if a.quick else "4,64,1024")).split(",")]
        rows = []
        model, data, df = eight_schools()
        spec = {"task": "task", "target": "y", "features": [], "lik": "known", "mu": "n5"}
        for n in counts:
            d = S if n <= 64 else max(S // 5, 100)
            rows.append(bench(f"bayesmtl nuts (plain), {n} chains", model, data, "nuts", n, W, d, seed,
                              collapse=False))
            rows.append(bench(f"bayesmtl chees (plain), {n} chains", model, data, "chees", n, W, d, seed,
                              collapse=False))
            if a.with_numpyro:
                rows.append(numpyro_row("d", df.rename(columns={"school": "task"}), spec, n, W, d, seed))
        show(f"(d) ESS/s against the number of chains, {a.device} (eight schools, plain path)", rows)


if __name__ == "__main__":
    main()
