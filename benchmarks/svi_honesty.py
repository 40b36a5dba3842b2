"""SVI honesty: population-level posterior sds under SVI's guides against the reference (or NUTS).

For each case, each guide's population-level sds (sites outside the task plate) divided by the
reference's: the posteriordb reference posteriors (radon x 3, seeds; ``BAYESMTL_DATA``), the
school data's hierarchical model at default settings (split 0, NUTS as the reference), and the
three-level planted prior of ``examples/custom_priors.py`` (NUTS as the reference). Prints one
row per (case, guide): the path SVI ran, the guide's Pareto k, whether its draws were
importance-resampled, the smallest and largest sd ratio and where the smallest sits. The issue's
target: every ratio within 0.75-1.25 under the default guide.

    .venv/bin/python benchmarks/svi_honesty.py \\
        --cases radon_pooled,radon_intercept,radon_slope,seeds,school,three-level \\
        --guides structured,normal --seeds 0,1,2 --out runs/svi_honesty.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import bayesmtl as bm

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples")]

REFERENCES = {"radon_pooled": "RADON_POOLED", "radon_intercept": "RADON_INTERCEPT",
              "radon_slope": "RADON_SLOPE", "seeds": "SEEDS"}


def reference_case(case: str):
    """(model, data, reference sds {name: sd}, draws -> {name: draws}) of a posteriordb case."""
    import reference as R
    from test_reference_posteriors import CASES

    name = getattr(R, REFERENCES[case])
    if R.reference_dir(name) is None:
        return None
    data, ref = R.load_reference(name)
    model, md, spec = CASES[name](data)
    pop = [k for k in ref.index if "[" not in k]

    def draws(post):
        d = R.draws_of(post, spec(post))
        return {k: np.asarray(d[k]).ravel() for k in pop if k in d}

    return model, md, {k: float(ref.loc[k, "sd"]) for k in pop}, draws


def population_draws(post) -> dict[str, np.ndarray]:
    """Every entry of every summarised site outside the task plate, flattened ({label: draws})."""
    out = {}
    for site in post.summarised_sites():
        dims = post.dims().get(site, ())
        if "task" in dims:
            continue
        x = np.asarray(post.samples[site]).reshape(post.num_chains * post.num_draws, -1)
        for j in range(x.shape[1]):
            out[f"{site}[{j}]" if x.shape[1] > 1 else site] = x[:, j]
    return out


def nuts_case(model, data, args):
    ref = bm.fit(model, data, method="nuts", chains=4, warmup=args.warmup, draws=args.draws, seed=args.seed,
                 progress=False)
    sds = {k: float(v.std()) for k, v in population_draws(ref).items()}
    return model, data, sds, population_draws


def school_case(args):
    from calibration import SCHOOL_SHARED, school_split

    train, _, task, target, features, shared = school_split(0)
    data = bm.MultiTaskData.from_frame(train, task=task, target=target, features=features, standardize=True)
    return nuts_case(bm.models.Hierarchical(shared=SCHOOL_SHARED), data, args)


def planted_case(kind: str, args):
    """A prior of ``examples/custom_priors.py`` on 40 planted tasks x 10 rows (NUTS as the reference)."""
    from custom_priors import build, planted

    train, _, _ = planted(kind, n_tasks=40, rows=10, seed=1)
    model, data = build(kind, train)
    return nuts_case(model, data, args)


def three_level_case(args):
    return planted_case("three-level", args)


def run_case(case: str, args) -> list[dict]:
    t0 = time.perf_counter()
    made = (reference_case(case) if case in REFERENCES else
            school_case(args) if case == "school" else planted_case(case, args))
    if made is None:
        print(f"{case}: skipped (reference not found; set BAYESMTL_DATA)")
        return []
    model, data, ref_sd, draws = made
    ref_seconds = time.perf_counter() - t0
    rows = []
    for guide, seed in [(g, int(s)) for g in args.guides.split(",") for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bm.DiagnosticWarning)
            post = bm.fit(model, data, method="svi", guide=guide, draws=1000, seed=seed, progress=False)
        ratio = {k: float(v.std()) / ref_sd[k] for k, v in draws(post).items() if k in ref_sd and ref_sd[k] > 0}
        worst = min(ratio, key=ratio.get)
        i = post.info
        rows.append({"case": case, "guide": guide, "seed": seed, "path": i["path"],
                     "pareto_k": round(i.get("pareto_k", np.nan), 2),
                     "resampled": i.get("resampled"), "min_ratio": round(min(ratio.values()), 2),
                     "max_ratio": round(max(ratio.values()), 2), "lowest": worst,
                     "within_25pct": all(0.75 <= r <= 1.25 for r in ratio.values()),
                     "svi_s": round(time.perf_counter() - t0, 1), "reference_s": round(ref_seconds, 1)})
        print(pd.DataFrame([rows[-1]]).to_string(index=False, header=len(rows) == 1), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="radon_pooled,radon_intercept,radon_slope,seeds,school,three-level",
                   help="also: covariates, student-t (planted priors of examples/custom_priors.py)")
    p.add_argument("--guides", default="structured,normal")
    p.add_argument("--warmup", type=int, default=500, help="NUTS warmup where NUTS is the reference")
    p.add_argument("--draws", type=int, default=500, help="NUTS draws per chain where NUTS is the reference")
    p.add_argument("--seed", type=int, default=0, help="the NUTS reference's seed")
    p.add_argument("--seeds", default="0", help="SVI seeds, comma-separated")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [r for case in args.cases.split(",") for r in run_case(case, args)]
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
