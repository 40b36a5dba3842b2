"""User-written task priors: how fast bayesmtl samples a prior the user wrote in plain Pyro,
next to NumPyro's NUTS on the same model and the same data, in one run, side by side.

    .venv/bin/python benchmarks/custom_priors.py [--quick] [--chains 4] [--warmup 1000] [--draws 1000]
                                                 [--seed 0] [--only student-t,three-level,covariates,horseshoe]
                                                 [--tasks 40] [--rows 10] [--json PATH]
                                                 [--numpyro-python PYTHON]

Priors: the three of ``examples/custom_priors.py`` (``student-t``: heavy-tailed population;
``three-level``: population -> group means -> tasks; ``covariates``: task parameters regressed
on a task-level covariate) and ``horseshoe`` (``HorseshoePopulation`` below: a sparse
population, most tasks at the population mean and a few far from it). Each on planted data,
40 tasks x 10 rows, one feature (parameters: intercept, slope), Gaussian likelihood with one
shared noise sd (``bm.likelihoods.Gaussian(noise="shared")``).

Rows per prior: bayesmtl ``nuts`` with default options (``compile="auto"``: "inductor" for runs
of >= 1000 iterations, the potential and its gradient compiled once by torch.compile; "jit"
below), ``nuts`` with ``compile="jit"``, ``chees`` (default and ``compile="jit"``), and NumPyro's
NUTS with vectorised chains. When the default already resolves to "jit" (short runs, e.g.
``--quick``) the explicit jit rows would repeat it and are left out.

The NumPyro models are written as a NumPyro user would write the same priors, and non-centred
where bayesmtl non-centres automatically: ``numpyro.handlers.reparam`` with
``LocScaleReparam(0)`` (Student-t: ``shape_params=("df",)``) on exactly the sites bayesmtl lists
(``model.reparam_config``, recorded as ``post.info["reparam"]``). NumPyro runs in its own
virtualenv (``/tmp/numpyro-venv``, created on first use: numpyro, jax, jaxlib, arviz, pandas;
``--numpyro-python`` names a Python that has them) as a subprocess that reads the data from a
CSV (exported from bayesmtl's own design matrix, task codes and task-level features, so the
data are identical) and writes its draws back; every ESS and r_hat, both sides, is computed
here by the same code.

Columns:
* wall s: ``bm.fit``, and NumPyro's one ``mcmc.run`` (warmup and draws, as a user runs it),
  compilation included, imports and data loading not;
* compile s: bayesmtl ``info["seconds_setup"]`` (potential built, traced, compiled); NumPyro:
  the seconds of its ``mcmc.run`` spent tracing, lowering and compiling (``jax.monitoring``
  compile events). Every row runs in a fresh process, bayesmtl's with an empty inductor cache
  (a new ``TORCHINDUCTOR_CACHE_DIR``): each compile is a cold one, as on a user's first fit;
* recompile s: bayesmtl's torch.compile (dynamo) compilations after the set-up's first one
  (``torch._dynamo.utils.compilation_time_metrics``): in the wall, not in ``seconds_setup``;
* min bulk ESS: over every scalar of every site both samplers report (mu, tau, w, sigma and
  the prior's other sites: group means, beta, horseshoe local scales); non-centred
  auxiliaries (``*_decentered``) are left out, their ``w`` is in;
* ESS/s = min bulk ESS / wall s; x NumPyro: that divided by NumPyro's ESS/s on the same prior;
* tree depth: mean over draws and chains of ceil(log2(leapfrogs + 1)), both sides (equal to
  bayesmtl's own ``tree_depth``; ChEES has no tree); steps/draw: mean leapfrog steps per draw
  and chain;
* ms/leapfrog: sampling-phase seconds, without warmup or compilation, over the leapfrog steps
  per chain of that phase. bayesmtl: (``seconds_total`` - ``seconds_setup`` -
  ``seconds_warmup`` - recompile s) / (``leapfrog_steps`` / chains), ``leapfrog_steps`` counting
  the draws only (the initial step-size search before the warmup loop is in the numerator).
  NumPyro: one more ``run`` of as many draws from the adapted state, after the measured one and
  not in its wall: its seconds less its compilation over its ``num_steps`` / chains. Chains run
  in lock-step on both sides: this is the cost per chain-step, not per batch;
* max r_hat (rank-normalised split r_hat, arviz) over the same scalars; divergences after warmup.

Threads: torch 1 thread for bayesmtl (``torch.set_num_threads(1)``); NumPyro one XLA host device
with Eigen's multi-threading off (``--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1``), float64 on both sides (``JAX_ENABLE_X64``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch

warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))  # first: this file shares the examples' module name

import arviz as az  # noqa: E402
import custom_priors as cp  # noqa: E402  (examples/custom_priors.py)
from mcmc import NUMPYRO_VENV, min_bulk_ess, numpyro_python  # noqa: E402  (benchmarks/mcmc.py)

import bayesmtl as bm  # noqa: E402

PRIORS = ("student-t", "three-level", "covariates", "horseshoe")
NUMPYRO_XLA_FLAGS = ("--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false "
                     "intra_op_parallelism_threads=1")


# ---------------------------------------------------------------------- the fourth user prior
class HorseshoePopulation(bm.priors.TaskPrior):
    """A sparse population: most tasks sit at the population mean, a few far from it.

    The horseshoe (Carvalho, Polson & Scott 2010) over the task deviations w_t - mu, one local
    scale per deviation (task and parameter), one global scale per parameter:

        mu_d ~ Normal(0, 5),  tau_d ~ HalfCauchy(1),  lam_td ~ HalfCauchy(1),
        w_td = mu_d + lam_td * tau_d * z_td,  z_td ~ Normal(0, 1),

    written centred, ``w_td ~ Normal(mu_d, lam_td * tau_d)``: bayesmtl non-centres ``w``
    (the z form above) by itself. tau_d shrinks every task towards mu; a heavy-tailed lam_td
    lets the few tasks that differ escape the shrinkage in the parameter where they differ.
    """

    def sample(self, tasks):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0).expand([tasks.dims]).to_event(1))
        tau = pyro.sample("tau", dist.HalfCauchy(1.0).expand([tasks.dims]).to_event(1))
        with tasks.plate:
            lam = pyro.sample("lam", dist.HalfCauchy(1.0).expand([tasks.dims]).to_event(1))
            return pyro.sample("w", dist.Normal(mu, lam * tau).to_event(1))


def planted_horseshoe(n_tasks: int, rows: int, seed: int):
    """Long frame and planted values from a sparse population: mu = (1, -0.5), each task's
    intercept and slope deviate from mu with probability 0.15 (by +-1 to +-2.5), else not at all;
    task 0's intercept (+2) and task 1's slope (-1.5) always deviate. Noise sd 0.5."""
    rng = np.random.default_rng(seed)
    mu, sigma = np.array([1.0, -0.5]), 0.5
    dev = np.where(rng.random((n_tasks, 2)) < 0.15,
                   rng.choice([-1.0, 1.0], size=(n_tasks, 2)) * rng.uniform(1.0, 2.5, size=(n_tasks, 2)), 0.0)
    dev[0, 0], dev[1, 1] = 2.0, -1.5
    w = mu + dev
    frames = []
    for t in range(n_tasks):
        x = rng.normal(size=rows)
        y = w[t, 0] + w[t, 1] * x + sigma * rng.normal(size=rows)
        frames.append(pd.DataFrame({"task": f"t{t:02d}", "x": x, "y": y}))
    return pd.concat(frames, ignore_index=True), {"mu": mu, "deviating": int((dev != 0).sum())}


def problem(kind: str, n_tasks: int, rows: int, seed: int):
    """(model, data) for one prior on its planted data."""
    if kind == "horseshoe":
        train, _ = planted_horseshoe(n_tasks, rows, seed)
        data = bm.MultiTaskData.from_frame(train, task="task", target="y", features=["x"])
        return bm.MultiTaskModel(HorseshoePopulation(), likelihood=bm.likelihoods.Gaussian(noise="shared")), data
    train, _, _ = cp.planted(kind, n_tasks, rows, seed)
    return cp.build(kind, train)


# ---------------------------------------------------------------------- measurements
def depth_of(steps) -> float:
    """Mean NUTS tree depth from leapfrog counts: ceil(log2(n + 1)) doublings per draw."""
    return float(np.mean(np.ceil(np.log2(np.asarray(steps, dtype=float) + 1))))


def diagnostics(samples: dict[str, np.ndarray], sites: list[str]) -> tuple[float, float]:
    """(min bulk ESS, max r_hat) over every scalar of ``sites``, samples (C, S, ...)."""
    chosen = {k: np.asarray(samples[k], dtype=float) for k in sites}
    rhat = az.rhat(az.convert_to_dataset(chosen))
    return min_bulk_ess(chosen), float(max(float(rhat[k].max()) for k in rhat.data_vars))


def common_sites(a: dict, b: dict) -> list[str]:
    """Sites both samplers report, non-centred auxiliaries left out."""
    return sorted(k for k in set(a) & set(b) if not k.endswith(("_decentered", "_raw")))


def inductor_from() -> int:
    """Iterations from which ``compile="auto"`` means "inductor" (1000 where not found)."""
    for name in ("bayesmtl.infer.driver", "bayesmtl.infer.nuts"):
        try:
            return int(importlib.import_module(name).INDUCTOR_FROM)
        except (ImportError, AttributeError):
            continue
    return 1000


def run_bayesmtl(kind: str, method: str, options: dict, a) -> tuple[dict[str, np.ndarray], dict]:
    """One bayesmtl row in a fresh process (``--one-row``): imports, caches and compilation all
    cold, as NumPyro's are in its own fresh process. Returns the draws and the row."""
    out = tempfile.mktemp(prefix="bayesmtl_draws_", suffix=".npz")
    job = {"kind": kind, "method": method, "options": options, "chains": a.chains, "warmup": a.warmup,
           "draws": a.draws, "seed": a.seed, "tasks": a.tasks, "rows": a.rows, "out": out}
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one-row", json.dumps(job)],
                         capture_output=True, text=True)
    if res.returncode:
        print(res.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"bayesmtl {method} {options} on {kind} failed")
    row = json.loads(res.stdout.strip().splitlines()[-1])
    with np.load(out) as f:
        samples = {k: f[k] for k in f.files}
    os.remove(out)
    return samples, row


def dynamo_compiles() -> list[float]:
    """Seconds of each torch.compile (dynamo) compilation in this process so far, in order."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:
        return []
    return [float(t) for t in compilation_time_metrics.get("_compile.compile_inner", [])]


def one_row(job: dict) -> None:
    """The child of ``run_bayesmtl``: fit, save the draws, print the row as JSON."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bayesmtl_inductor_")  # no on-disk cache
    torch.set_num_threads(1)
    model, data = problem(job["kind"], job["tasks"], job["rows"], job["seed"])
    C, method, options = job["chains"], job["method"], job["options"]
    t0 = time.perf_counter()
    post = bm.fit(model, data, method=method, chains=C, warmup=job["warmup"], draws=job["draws"], seed=job["seed"],
                  progress=False, **options)
    wall = time.perf_counter() - t0
    info, st = post.info, post.sample_stats
    steps = np.asarray(st["n_steps"], dtype=float)
    recompile = sum(dynamo_compiles()[1:])  # the first is the set-up's; later ones fall outside it
    sampling = info["seconds_total"] - info["seconds_setup"] - info["seconds_warmup"] - recompile
    np.savez(job["out"], **post.samples)
    print(json.dumps({
        "sampler": " ".join([f"bayesmtl {method}"] + [f"{k}={v}" for k, v in options.items()]),
        "compile": info.get("compile"), "wall s": wall, "compile s": info["seconds_setup"],
        "recompile s": recompile,
        "tree depth": depth_of(steps) if method == "nuts" else None,
        "steps/draw": float(steps.mean()),
        "ms/leapfrog": 1e3 * sampling / (info["leapfrog_steps"] / C),
        "divergences": int(np.asarray(st["diverging"]).sum()),
        "non_centred": sorted(info.get("reparam", {}).get("non_centred", [])),
    }))


NUMPYRO_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np, pandas as pd
    import jax, numpyro, numpyro.distributions as nd
    from numpyro.handlers import reparam
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.reparam import LocScaleReparam

    spec = json.loads(sys.argv[1]); df = pd.read_csv(spec["csv"])
    task = df["task"].to_numpy(int); T = int(task.max()) + 1
    X = df[spec["design"]].to_numpy(float); D = X.shape[1]
    y = df["y"].to_numpy(float)
    per_task = df.groupby("task").first().sort_index()          # task-level columns, one row per task

    # The priors as a NumPyro user writes them (same distributions as the bayesmtl classes).
    def student_t():
        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0).expand([D]).to_event(1))
        tau = numpyro.sample("tau", nd.HalfNormal(1.0).expand([D]).to_event(1))
        with numpyro.plate("task", T):
            return numpyro.sample("w", nd.StudentT(spec["df"], mu, tau).to_event(1))

    def three_level():
        g = per_task["group"].to_numpy(int); G = int(spec["groups"])
        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0).expand([D]).to_event(1))
        tau_group = numpyro.sample("tau_group", nd.HalfNormal(1.0).expand([D]).to_event(1))
        tau = numpyro.sample("tau", nd.HalfNormal(1.0).expand([D]).to_event(1))
        with numpyro.plate("group", G):
            m = numpyro.sample("group_mean", nd.Normal(mu, tau_group).to_event(1))
        with numpyro.plate("task", T):
            return numpyro.sample("w", nd.Normal(m[g], tau).to_event(1))

    def covariates():
        z = per_task[spec["covariates"]].to_numpy(float)           # (T, K)
        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0).expand([D]).to_event(1))
        tau = numpyro.sample("tau", nd.HalfNormal(1.0).expand([D]).to_event(1))
        with numpyro.plate("feature", D):
            beta = numpyro.sample("beta", nd.Normal(0.0, 1.0).expand([z.shape[1]]).to_event(1))  # (D, K)
        with numpyro.plate("task", T):
            return numpyro.sample("w", nd.Normal(mu + z @ beta.T, tau).to_event(1))

    def horseshoe():
        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0).expand([D]).to_event(1))
        tau = numpyro.sample("tau", nd.HalfCauchy(1.0).expand([D]).to_event(1))
        with numpyro.plate("task", T):
            lam = numpyro.sample("lam", nd.HalfCauchy(1.0).expand([D]).to_event(1))
            return numpyro.sample("w", nd.Normal(mu, lam * tau).to_event(1))

    prior = {"student-t": student_t, "three-level": three_level, "covariates": covariates,
             "horseshoe": horseshoe}[spec["kind"]]

    def model():
        w = prior()
        sigma = numpyro.sample("sigma", nd.HalfNormal(1.0))       # Gaussian(noise="shared")
        eta = (X * w[task]).sum(-1)
        with numpyro.plate("data", len(y)):
            numpyro.sample("y", nd.Normal(eta, sigma), obs=y)

    shape = {"student-t": ("df",)}.get(spec["kind"], ())
    config = {site: LocScaleReparam(0, shape_params=shape) for site in spec["reparam"]}
    mcmc = MCMC(NUTS(reparam(model, config=config)), num_warmup=spec["W"], num_samples=spec["S"],
                num_chains=spec["C"], chain_method="vectorized", progress_bar=False)

    spans = []  # XLA tracing, lowering and compiling, (start, end) in time.time()
    jax.monitoring.register_event_time_span_listener(
        lambda event, start, end, **kw: spans.append((start, end)) if event.startswith("/jax/core/compile/") else None)

    def compiling(t0, t1):
        # seconds in [t0, t1] spent compiling: the union of the (possibly nested) spans
        total, reach = 0.0, t0
        for a, b in sorted(spans):
            a, b = max(a, reach), min(b, t1)
            if b > a:
                total, reach = total + b - a, b
        return total

    fields = ("num_steps", "diverging")
    t0, c0 = time.perf_counter(), time.time()
    mcmc.run(jax.random.PRNGKey(spec["seed"]), extra_fields=fields)  # warmup and draws, as a user runs it
    s = mcmc.get_samples(group_by_chain=True); jax.block_until_ready(s)
    wall, compile_s = time.perf_counter() - t0, compiling(c0, time.time())
    ex = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    # Timing only (not in the wall): draws again from the adapted state; its sampling time less its
    # compilation over its leapfrog steps gives the cost of a leapfrog without compilation.
    mcmc.post_warmup_state = mcmc.last_state
    t1, c1 = time.perf_counter(), time.time()
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps",))
    jax.block_until_ready(mcmc.get_samples())
    again = time.perf_counter() - t1 - compiling(c1, time.time())
    steps_again = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])
    np.savez(spec["out"], **{k: np.asarray(v) for k, v in s.items()}, **{"__" + k: v for k, v in ex.items()})
    print(json.dumps({"wall": wall, "compile": compile_s, "sampling": again,
                      "steps": float(steps_again.sum() / spec["C"]), "version": numpyro.__version__,
                      "jax": jax.__version__}))
""")


def export(kind: str, model, data, path: str) -> dict:
    """bayesmtl's own design matrix, task codes, target and task-level features as a CSV."""
    Xv, _ = model.design(data)
    names = [f"x{j}" for j in range(Xv.shape[1])]
    df = pd.DataFrame(Xv.numpy(), columns=names)
    df.insert(0, "task", data.task.numpy())
    df["y"] = data.y.numpy()
    for k, v in data.task_features.items():
        df[k] = v.numpy()[data.task.numpy()]
    df.to_csv(path, index=False)
    spec = {"kind": kind, "csv": path, "design": names, "reparam": sorted(model.reparam_config(data))}
    if kind == "student-t":
        spec["df"] = float(model.prior.df)
    if kind == "three-level":
        spec["groups"] = len(data.task_levels["group"])
    if kind == "covariates":
        spec["covariates"] = list(model.prior.covariates)
    return spec


def run_numpyro(py: str, spec: dict, C: int, W: int, S: int, seed: int):
    out = tempfile.mktemp(prefix="numpyro_draws_", suffix=".npz")
    spec = dict(spec, C=C, W=W, S=S, seed=seed, out=out)
    env = dict(os.environ, XLA_FLAGS=NUMPYRO_XLA_FLAGS, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    res = subprocess.run([py, "-c", NUMPYRO_SCRIPT, json.dumps(spec)], capture_output=True, text=True, env=env)
    if res.returncode:
        print(res.stderr[-3000:], file=sys.stderr)
        return None, None
    r = json.loads(res.stdout.strip().splitlines()[-1])
    with np.load(out) as f:
        arrays = {k: f[k] for k in f.files}
    os.remove(out)
    samples = {k: v for k, v in arrays.items() if not k.startswith("__")}
    steps = arrays["__num_steps"].astype(float)
    return samples, {
        "sampler": f"NumPyro {r['version']} NUTS vectorised", "compile": "XLA", "wall s": r["wall"],
        "compile s": r["compile"], "recompile s": None, "tree depth": depth_of(steps),
        "steps/draw": float(steps.mean()),
        "ms/leapfrog": 1e3 * r["sampling"] / r["steps"],
        "divergences": int(arrays["__diverging"].sum()), "versions": f"numpyro {r['version']}, jax {r['jax']}",
    }


# ---------------------------------------------------------------------- tables
COLUMNS = ["sampler", "compile", "wall s", "compile s", "recompile s", "min bulk ESS", "ESS/s", "x NumPyro",
           "tree depth", "steps/draw", "ms/leapfrog", "max r_hat", "divergences"]


def table(rows: list[dict]) -> str:
    df = pd.DataFrame(rows)[COLUMNS]
    fmt = {"wall s": "{:.1f}", "compile s": "{:.1f}", "recompile s": "{:.1f}", "min bulk ESS": "{:.0f}",
           "ESS/s": "{:.2f}", "x NumPyro": "{:.3f}", "tree depth": "{:.2f}", "steps/draw": "{:.1f}",
           "ms/leapfrog": "{:.3f}", "max r_hat": "{:.3f}"}
    for c, f in fmt.items():
        df[c] = [("" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)) for v in df[c]]
    df["compile"] = df["compile"].fillna("")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """One line: each bayesmtl sampler's ESS/s over NumPyro's, per prior and as a geometric mean;
    "!" marks a row whose max r_hat exceeds 1.05."""
    parts = []
    for label in dict.fromkeys(r["sampler"] for r in rows if r["sampler"].startswith("bayesmtl")):
        mine = [r for r in rows if r["sampler"] == label and r.get("x NumPyro")]
        if not mine:
            continue
        each = ", ".join(f"{r['prior']} {r['x NumPyro']:.2f}{'!' if r['max r_hat'] > 1.05 else ''}" for r in mine)
        gmean = math.exp(np.mean([math.log(r["x NumPyro"]) for r in mine]))
        parts.append(f"{label.removeprefix('bayesmtl ')}: {gmean:.2f}x ({each})")
    if not parts:
        return "ESS/s against NumPyro's: no NumPyro rows"
    return "ESS/s against NumPyro's (geometric mean over priors; ! = max r_hat > 1.05): " + "; ".join(parts)


def bench_prior(kind: str, a, py: str) -> list[dict]:
    C, W, S, seed = a.chains, a.warmup, a.draws, a.seed
    model, data = problem(kind, a.tasks, a.rows, seed)
    spec = export(kind, model, data, os.path.join(tempfile.gettempdir(), f"custom_priors_{kind}.csv"))
    jit_rows = W + S >= inductor_from() and not a.no_jit  # below, the default already is "jit"
    runs = [("nuts", {}), ("nuts", {"compile": "jit"}), ("chees", {}), ("chees", {"compile": "jit"})]
    runs = [(m, o) for m, o in runs if jit_rows or not o]
    results = []
    for method, options in runs:
        samples, row = run_bayesmtl(kind, method, options, a)
        if row.pop("non_centred") != spec["reparam"]:
            print(f"# warning: bayesmtl non-centred other sites than NumPyro's {spec['reparam']}", file=sys.stderr)
        results.append((samples, row))
        print(f"# {kind}: {row['sampler']} done in {row['wall s']:.1f} s (load {os.getloadavg()[0]:.1f})",
              flush=True)
    samples, ref_row = run_numpyro(py, spec, C, W, S, seed)
    if ref_row is not None:
        results.append((samples, ref_row))
        print(f"# {kind}: {ref_row['sampler']} done in {ref_row['wall s']:.1f} s (load {os.getloadavg()[0]:.1f})",
              flush=True)
    sites = common_sites(results[0][0], samples if samples is not None else results[0][0])
    rows = []
    for smp, row in results:
        ess, rhat = diagnostics(smp, sites)
        row.update({"prior": kind, "chains": C, "warmup": W, "draws": S, "sites": ",".join(sites),
                    "min bulk ESS": ess, "ESS/s": ess / row["wall s"], "max r_hat": rhat,
                    "reparam": ",".join(spec["reparam"])})
        rows.append(row)
    ref = ref_row["ESS/s"] if ref_row is not None else None
    for r in rows:
        r["x NumPyro"] = r["ESS/s"] / ref if ref else None
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200 warmup + 200 draws per chain")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, help="warmup per chain (default 1000; quick 200)")
    p.add_argument("--draws", type=int, help="draws per chain (default 1000; quick 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--rows", type=int, default=10, help="rows per task")
    p.add_argument("--only", default=",".join(PRIORS), help=f"comma-separated priors out of {','.join(PRIORS)}")
    p.add_argument("--json", type=Path, help="save every row here")
    p.add_argument("--no-jit", action="store_true", help="leave out the compile='jit' rows")
    p.add_argument("--numpyro-python", default="",
                   help=f"a Python that has numpyro, jax, arviz and pandas (default: create {NUMPYRO_VENV})")
    p.add_argument("--one-row", help=argparse.SUPPRESS)  # internal: one bayesmtl row, in a child process
    a = p.parse_args(argv)
    if a.one_row:
        one_row(json.loads(a.one_row))
        return 0
    a.warmup = a.warmup if a.warmup is not None else (200 if a.quick else 1000)
    a.draws = a.draws if a.draws is not None else (200 if a.quick else 1000)
    kinds = [k for k in a.only.split(",") if k]
    unknown = sorted(set(kinds) - set(PRIORS))
    if unknown:
        p.error(f"unknown prior(s) {unknown}; choose from {','.join(PRIORS)}")
    torch.set_num_threads(1)
    py = numpyro_python(a.numpyro_python)
    print(f"# user-written priors: torch {torch.__version__}, pyro {pyro.__version__}, {os.cpu_count()} cpu(s), "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; {a.tasks} tasks x "
          f"{a.rows} rows, {a.chains} chains x ({a.warmup} warmup + {a.draws} draws), seed {a.seed}", flush=True)
    everything, t_start = [], time.perf_counter()
    for kind in kinds:
        rows = bench_prior(kind, a, py)
        everything += rows
        print(f"\n## {kind}: {a.chains} chains x ({a.warmup} + {a.draws}), {a.tasks} tasks x {a.rows} rows; "
              f"non-centred: {rows[0]['reparam'] or 'none'}; ESS over {rows[0]['sites']}\n")
        print(table(rows), flush=True)
    print(f"\n{summary(everything)}\n(whole run {time.perf_counter() - t_start:.0f} s)")
    versions = next((r["versions"] for r in everything if "versions" in r), None)
    if versions:
        print(f"NumPyro side: {versions}; load average at the end {os.getloadavg()[0]:.1f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(everything, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
