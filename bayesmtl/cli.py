"""Command line: ``bayesmtl fit | predict | summary | demo``.

Errors a user can fix (bad data, bad settings, missing files) print one line and exit with
status 2; nothing is written when a command fails.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings
from pathlib import Path

__all__ = ["main"]


class UserError(Exception):
    """An error in the user's input, reported as one line."""


def _csv_list(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def _options(pairs: list[str]) -> dict:
    """``key=value`` back-end options; values parsed as int, float, bool or str."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise UserError(f"--option expects key=value; got {p!r}")
        k, v = p.split("=", 1)
        for cast in (int, float):
            try:
                out[k] = cast(v)
                break
            except ValueError:
                continue
        else:
            out[k] = {"true": True, "false": False, "none": None}.get(v.lower(), v)
    return out


def _build_model(name: str, likelihood: str | None, shared: list[str] | None):
    from bayesmtl.models import get_model_class

    cls = get_model_class(name)
    params = inspect.signature(cls).parameters
    kwargs = {}
    for key, value in (("likelihood", likelihood), ("shared", shared)):
        if value is None:
            continue
        if key not in params:
            raise UserError(f"model {name!r} takes no --{key}")
        kwargs[key] = value
    return cls(**kwargs)


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="nuts", help="nuts, chees, pyro_nuts, svi or map (default nuts)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="back-end option, e.g. --option guide=mvn --option target_accept=0.9")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_fit(a: argparse.Namespace) -> int:
    import bayesmtl as bm

    data = bm.MultiTaskData.from_csv(a.data, task=a.task, target=a.target, features=_csv_list(a.features),
                                     noise=a.noise, trials=a.trials, standardize=a.standardize)
    model = _build_model(a.model, a.likelihood, _csv_list(a.shared))
    post = bm.fit(model, data, method=a.method, chains=a.chains, warmup=a.warmup, draws=a.draws,
                  seed=a.seed, device=a.device, progress=not a.quiet, **_options(a.option))
    post.save(a.out)
    d = post.diagnostics()
    print(f"wrote {a.out}: {post.num_chains} chain(s) x {post.num_draws} draws in {post.info['seconds']:.1f} s, "
          f"divergences {d['divergences']}, max r_hat {d.get('max_r_hat')}, min ess_bulk {d.get('min_ess_bulk')}")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    import pandas as pd

    import bayesmtl as bm
    from bayesmtl.runs import write_atomic_csv

    post = bm.load(a.run)
    if not Path(a.data).exists():
        raise UserError(f"data file {a.data!r} does not exist")
    pred = post.predict(pd.read_csv(a.data), seed=a.seed)
    write_atomic_csv(pred, a.out)
    print(f"wrote {a.out}: {len(pred)} rows ({int(pred['new_task'].sum())} of tasks unseen in training)")
    return 0


def cmd_summary(a: argparse.Namespace) -> int:
    import pandas as pd

    import bayesmtl as bm

    post = bm.load(a.run)
    with pd.option_context("display.max_rows", a.max_rows, "display.width", 140):
        print(post)
        print(post.summary().round(3))
        print(post.diagnostics())
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    import bayesmtl as bm
    from bayesmtl.synthetic import hierarchical_regression

    df, truth = hierarchical_regression(n_tasks=12, rows=30, features=3, seed=a.seed)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    print(f"demo data: {data}\nplanted: tasks with even numbers deviate from the population alike, "
          "and so do tasks with odd numbers\n")
    post = bm.fit(bm.models.Hierarchical(), data, method=a.method, chains=a.chains, warmup=a.warmup,
                  draws=a.draws, seed=a.seed, device=a.device, progress=not a.quiet, **_options(a.option))
    summary = post.summary(["mu", "tau"])
    summary.insert(0, "truth", np.concatenate([truth["mu"], truth["tau"]]))
    cols = ["truth", "mean", "sd", "q05", "q95", "ess_bulk", "r_hat"]
    rel = post.relations()
    m = rel.mean().to_numpy()
    same = truth["group"][:, None] == truth["group"][None, :]
    off = ~np.eye(len(m), dtype=bool)
    pairs = rel.to_frame().sort_values("mean", ascending=False)
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print(f"population (fitted with {a.method}, {post.info['seconds']:.1f} s):")
        print(summary[cols].round(3).to_string())
        print(f"\ntask relations: {rel.kind}")
        print(f"mean relation within planted groups {m[same & off].mean():+.2f}, "
              f"between groups {m[~same].mean():+.2f}")
        print("most alike:\n" + pairs.head(4).round(2).to_string(index=False))
        print("most opposite:\n" + pairs.tail(4).round(2).to_string(index=False))
        print(f"\ndiagnostics: {post.diagnostics()}")
    if a.out:
        post.save(a.out)
        rel.plot(Path(a.out) / "relations.png")
        print(f"wrote {a.out} (relations heatmap: {a.out}/relations.png)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bayesmtl", description="Bayesian multi-task learning")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fit a model to a long-format CSV and write a run directory")
    f.add_argument("--model", default="hierarchical", help="hierarchical, independent, pooled, dp-clustering, "
                   "multitask-gp, task-relationship")
    f.add_argument("--data", required=True, help="long-format CSV: one row per observation")
    f.add_argument("--task", required=True, help="task column")
    f.add_argument("--target", required=True, help="target column")
    f.add_argument("--features", help="comma-separated feature columns (default: all others)")
    f.add_argument("--shared", help="comma-separated features whose coefficients all tasks share")
    f.add_argument("--likelihood", help="gaussian, bernoulli, poisson or binomial")
    f.add_argument("--noise", help="column of known observation sds (meta-analysis)")
    f.add_argument("--trials", help="column of trial counts (binomial)")
    f.add_argument("--standardize", action="store_true", help="standardise features (replayed on predict)")
    f.add_argument("--out", required=True, help="run directory to write")
    _fit_args(f)
    f.set_defaults(func=cmd_fit)

    pr = sub.add_parser("predict", help="posterior predictive for new rows, known or new tasks")
    pr.add_argument("run", help="run directory")
    pr.add_argument("--data", required=True, help="CSV with the feature and task columns")
    pr.add_argument("--out", required=True, help="CSV to write: one row per input row")
    pr.add_argument("--seed", type=int, default=0)
    pr.set_defaults(func=cmd_predict)

    s = sub.add_parser("summary", help="print a run's posterior summary and diagnostics")
    s.add_argument("run")
    s.add_argument("--max-rows", type=int, default=60)
    s.set_defaults(func=cmd_summary)

    d = sub.add_parser("demo", help="fit the hierarchical model to built-in synthetic data")
    d.add_argument("--out", default=None, help="also write a run directory here")
    _fit_args(d)
    d.set_defaults(func=cmd_demo, warmup=500, draws=500)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return args.func(args)
    except (UserError, ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"bayesmtl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bayesmtl: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
