"""Do the diagnostics speak? The failing fits of issue 23, each run as a user would, with the
``DiagnosticWarning`` lines they print; and a healthy fit, which must print none.

    .venv/bin/python benchmarks/diagnostics.py [--only dp-nuts,chees-horseshoe,gp-nuts,svi-3level,healthy]

* ``dp-nuts``: Dirichlet-process clustering, NUTS with 20 warmup + 20 draws (the issue: r_hat
  7.31, 23 divergences, ESS 3.8, no warning).
* ``chees-horseshoe``: ChEES on the horseshoe population of ``custom_priors.py`` (r_hat 1.43).
* ``gp-nuts``: a 4-task ICM GP under NUTS, short (r_hat 1.16, ESS 9.6).
* ``svi-3level``: the default (mean-field) guide on the 3-level user prior (sds 0.02 of NUTS's).
* ``healthy``: eight-schools-like data, non-centred, NUTS at default lengths: no warning.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import bayesmtl as bm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # examples/custom_priors.py is ``custom_priors``


def _benchmark_priors():
    """benchmarks/custom_priors.py (which imports the example as ``cp``), under its own name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_custom_priors", ROOT / "benchmarks" / "custom_priors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dp_nuts(seed):
    from bayesmtl.synthetic import planted_clusters

    df, _ = planted_clusters(tasks_per_cluster=4, rows=20, likelihood="gaussian", seed=seed)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    return bm.models.DPClustering(), data, dict(method="nuts", chains=4, warmup=20, draws=20)


def chees_horseshoe(seed):
    model, data = _benchmark_priors().problem("horseshoe", 40, 10, seed)
    return model, data, dict(method="chees", chains=4, warmup=500, draws=500)


def gp_nuts(seed):
    from bayesmtl.models.multitask_gp import MultitaskGP

    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, 10, 60))
    f = np.sin(x)
    rows = [{"task": f"t{t}", "x": xi, "y": s * fi + 0.2 * rng.normal()}
            for t, s in enumerate([1.0, 0.8, -0.9, 0.3]) for xi, fi in zip(x, f, strict=True)]
    data = bm.MultiTaskData.from_frame(pd.DataFrame(rows), task="task", target="y")
    return MultitaskGP(rank=2), data, dict(method="nuts", chains=2, warmup=60, draws=60)


def svi_3level(seed):
    from custom_priors import build, planted

    train, _, _ = planted("three-level", n_tasks=40, rows=10, seed=1)
    model, data = build("three-level", train)
    return model, data, dict(method="svi", draws=500)


def healthy(seed):
    rng = np.random.default_rng(seed)
    theta = 5 + 5 * rng.normal(size=8)
    se = rng.uniform(9, 18, 8)
    df = pd.DataFrame({"school": list("ABCDEFGH"), "y": theta + se * rng.normal(size=8), "se": se})
    data = bm.MultiTaskData.from_frame(df, task="school", target="y", features=[], noise="se")
    return bm.models.Hierarchical(), data, dict(method="nuts", target_accept=0.9)


CASES = {"dp-nuts": dp_nuts, "chees-horseshoe": chees_horseshoe, "gp-nuts": gp_nuts, "svi-3level": svi_3level,
         "healthy": healthy}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(CASES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.only.split(","):
        model, data, kw = CASES[name](args.seed)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", bm.DiagnosticWarning)
            post = bm.fit(model, data, seed=args.seed, progress=False, **kw)
        said = [str(w.message) for w in caught if issubclass(w.category, bm.DiagnosticWarning)]
        d = post.diagnostics()
        rows.append({"case": name, "seconds": round(time.perf_counter() - t0, 1), "max r_hat": d.get("max_r_hat"),
                     "min ess_bulk": d.get("min_ess_bulk"), "divergences": d["divergences"],
                     "pareto k": post.info.get("pareto_k"), "warnings": len(said)})
        print(f"\n== {name} ({kw})", flush=True)
        for s in said:
            print("  warning:", s, flush=True)
    print()
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
