"""Which structure do my tasks have? Runs of different model families compared by PSIS-LOO.

``compare(runs)`` scores each fitted run by its expected log predictive density (elpd) under
Pareto-smoothed importance-sampling leave-one-out (Vehtari, Gelman & Gabry 2017; ArviZ's
``loo`` and ``compare``), on the pointwise log likelihoods every model gives through the
contract (``log_likelihood(data, samples)``, (S, N)):

- ``by="row"``: leave one row out, the question "which model predicts new rows of these tasks";
- ``by="task"``: leave one task out, "which model predicts a new task": each task's rows are
  summed into one term and left out together, by importance sampling with a Pareto k per task.
  k above ArviZ's threshold (0.7, lower for under 2,200 draws) marks a task whose estimate is
  unreliable; with few tasks (``REFIT_TASKS``) those tasks are refitted exactly (the run's
  model, method, settings and seed on the data without the task), as brms's ``reloo`` does;
  ``refit="all"`` refits every task, ``refit="none"`` none. The notes say which terms are which.

Runs must be fitted to the same data (their fingerprints, ``MultiTaskData.digest``, agree) and
hold posterior draws: a point estimate (``method="map"``) has no posterior to leave a row out of.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .design import add_at
from .devices import on_host
from .posterior import MAX_POINTWISE, Posterior

__all__ = ["compare", "collect", "exact_loo", "pointwise_log_likelihood", "refit_task_terms", "REFIT_TASKS"]

#: with refit="auto", tasks with high Pareto k are refitted exactly in runs of at most this many tasks
REFIT_TASKS = 10


def pointwise_log_likelihood(post: Posterior, by: str = "row") -> np.ndarray:
    """log p(y_i | draw) as (chain, draw, N) for ``by="row"``, or summed over each task's rows as
    (chain, draw, T) for ``by="task"``. Draws are thinned evenly when chain x draw x N would
    exceed ``MAX_POINTWISE`` values."""
    if by not in ("row", "task"):
        raise ValueError(f"by must be 'row' or 'task'; got {by!r}")
    data = post.data
    if not data.in_memory:
        data._no_rows("PSIS-LOO (it scores every training row)")
    if data.y is None:
        raise ValueError("the run's data have no target: there is nothing to predict")
    C = post.num_chains
    samples, kept = _thinned(post, max(int(MAX_POINTWISE // (C * data.n_rows)), 2))
    with torch.no_grad():
        ll = post.model.log_likelihood(data, {k: v.to(data.device) for k, v in samples.items()})  # (C * S', N)
    ll = ll.reshape(C, kept, data.n_rows).double()
    if by == "task":
        ll = add_at(ll.new_zeros(C, kept, data.n_tasks), -1, data.task, ll)
    return ll.cpu().numpy()


def _thinned(post: Posterior, per_chain: int) -> tuple[dict[str, torch.Tensor], int]:
    """``post.flat()`` (chain-major) keeping at most ``per_chain`` evenly spaced draws of each
    chain, and how many each chain kept."""
    C, S = post.num_chains, post.num_draws
    keep = np.linspace(0, S - 1, min(S, per_chain)).round().astype(np.int64)
    idx = torch.from_numpy((np.arange(C)[:, None] * S + keep).ravel())
    return {k: v[idx] for k, v in post.flat().items()}, len(keep)


def _named(run, name: str | None, trust: Mapping) -> tuple[str, Posterior]:
    """(name, Posterior) of a Posterior or a run directory; unnamed runs take the folder's name
    or the model class and method."""
    if isinstance(run, (str, Path)):
        from .runs import load_run

        return name or Path(run).name or str(run), load_run(run, **trust)
    if isinstance(run, Posterior):
        return name or f"{type(run.model).__name__} ({run.info.get('method', '?')})", run
    raise TypeError(f"each run must be a Posterior or a run directory path; got {type(run).__name__}")


def collect(runs: Sequence | Mapping, trust_pickle: bool = False, trust_code: bool = False) -> dict[str, Posterior]:
    """Name -> Posterior for a list of runs (Posteriors or run directories) or a dict of them;
    unnamed runs take their folder's name, or the model class and method (primed if repeated)."""
    trust = {"trust_pickle": trust_pickle, "trust_code": trust_code}
    items = runs.items() if isinstance(runs, Mapping) else [(None, r) for r in runs]
    posts: dict[str, Posterior] = {}
    for given, run in items:
        name, post = _named(run, None if given is None else str(given), trust)
        while name in posts:  # two unnamed runs of one model and method
            name += "'"
        posts[name] = post
    return posts


def _check_runs(posts: dict[str, Posterior]) -> None:
    if len(posts) < 2:
        raise ValueError(f"compare needs at least two runs; got {len(posts)}")
    digests = {name: p.data.digest() for name, p in posts.items()}
    first = next(iter(digests))
    for name, d in digests.items():
        if d != digests[first]:
            raise ValueError(f"runs {first!r} and {name!r} were fitted to different data (fingerprints "
                             f"{digests[first]} and {d}): elpd is comparable only on the same rows")
    for name, p in posts.items():
        point = p.info.get("draws_kind") == "point" or p.num_chains * p.num_draws < 2
        if point and p.model.rows_independent:  # (a GP's exact leave-one-out works at a point too)
            raise ValueError(f"run {name!r} is a point estimate (method={p.info.get('method')!r}): leave-one-out "
                             "needs posterior draws; refit it with nuts, chees or svi")


def exact_loo(post: Posterior, by: str = "row", max_draws: int = 100):
    """ELPDData of a model's exact leave-one-out (``loo_log_density``), averaged over up to
    ``max_draws`` draws of its parameters (each an O(n^3) solve for a GP); p_loo against the
    in-sample log predictive density."""
    from . import convert

    flat, _ = _thinned(post, max(1, max_draws // post.num_chains))
    with torch.no_grad():
        terms = post.model.loo_log_density(post.data, flat, by).double()  # (S', n)
        inside = post.model.log_likelihood(post.data, flat).double()  # (S', N)
    if by == "task":
        inside = add_at(inside.new_zeros(inside.shape[0], post.data.n_tasks), -1, post.data.task, inside)
    log_s = np.log(terms.shape[0])
    elpd_i = (torch.logsumexp(terms, 0) - log_s).cpu().numpy()
    lppd = float((torch.logsumexp(inside, 0) - log_s).sum())
    return convert.exact_loo(elpd_i, lppd, terms.shape[0])


def refit_task_terms(post: Posterior, tasks: Sequence[int],
                     say: Callable[[str], None] | None = None) -> tuple[np.ndarray, list[str]]:
    """Exact leave-one-task-out terms log p(y_t | y_-t), one per task index in ``tasks``.

    Each task's rows are dropped and the run's model is fitted again with the run's method,
    chains, warmup, draws, seed, device, options and inference path. The task stays in the data
    with no rows, so the refit draws its parameters from the learned population: the draws of
    a new task. The term is log mean_s prod_i p(y_ti | draw s), over the refit's draws.

    ``say``, when given, is called with one line before each refit (the CLI prints them).
    Returns the (len(tasks),) terms and the refits' diagnostic warnings, one line each.
    """
    from .fit import fit

    info, data = post.info, post.data
    settings = dict(method=info["method"], chains=info["chains"], warmup=info["warmup"], draws=info["draws"],
                    seed=info["seed"], device=info.get("device", "cpu"), progress=False,
                    collapse=info.get("path") == "collapsed", **info.get("options", {}))
    terms, problems = [], []
    for n, t in enumerate(tasks, 1):
        if say is not None:
            say(f"refitting without {data.task_names[t]} ({n} of {len(tasks)}, method {info['method']})")
        rows = (data.task == int(t)).cpu().numpy()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            refit = fit(post.model, data.subset(~rows), **settings)
        problems += [f"refit without {data.task_names[t]}: {w.message}" for w in caught
                     if issubclass(w.category, UserWarning)]
        with torch.no_grad():
            flat = {k: v.to(data.device) for k, v in refit.flat().items()}
            ll = refit.model.log_likelihood(data.subset(rows), flat).double().sum(-1)  # (S,)
        terms.append(float(torch.logsumexp(ll, 0) - np.log(ll.shape[0])))
    return np.asarray(terms), problems


def _refitted(post: Posterior, loo, refit: str, name: str, notes: list[str],
              say: Callable[[str], None] | None = None):
    """``loo`` (by task) with the terms of the tasks ``refit`` asks for replaced by exact refits,
    and the names of those tasks."""
    from . import convert

    k, good = np.asarray(loo.pareto_k), float(loo.good_k)
    T = k.size
    if refit == "all":
        tasks = np.arange(T)
    elif refit == "auto" and T <= REFIT_TASKS:
        tasks = np.flatnonzero(k > good)
    else:
        return loo, []
    if not len(tasks):
        return loo, []
    t0 = time.perf_counter()
    exact, problems = refit_task_terms(post, tasks, None if say is None else (lambda m: say(f"{name}: {m}")))
    elpd_i = np.asarray(loo.loo_i, dtype=float).copy()
    lppd = float(loo.elpd_loo + loo.p_loo)
    elpd_i[tasks] = exact
    k = k.copy()
    k[tasks] = 0.0
    labels = [post.task_names[t] for t in tasks]
    notes.append(f"{name}: {len(tasks)} task(s) refitted exactly ({', '.join(map(str, labels[:5]))}"
                 f"{', ...' if len(labels) > 5 else ''}) in {time.perf_counter() - t0:.0f} s; "
                 + ("the others by importance sampling" if len(tasks) < T else "no importance sampling"))
    notes.extend(f"{name}: {p}" for p in problems[:3])
    return convert.exact_loo(elpd_i, lppd, int(loo.n_samples), pareto_k=k, good_k=good), labels


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def compare(runs: Sequence[Posterior | str | Path] | Mapping[str, Posterior | str | Path], by: str = "row",
            refit: str = "auto", trust_pickle: bool = False, trust_code: bool = False,
            progress: bool = False) -> pd.DataFrame:
    """PSIS-LOO comparison of fitted runs: one row per run, best first.

    Parameters
    ----------
    runs : Posteriors or run directories (a list, named by folder or model, or a dict name -> run)
    by : "row" (leave one row out) or "task" (leave one task out)
    refit : "auto", "all" or "none"
        ``by="task"`` only: which tasks are left out by exact refits rather than importance
        sampling. "auto": those with high Pareto k, in runs of at most ``REFIT_TASKS`` tasks;
        "all": every task (one fit per task and run); "none": no refit.
    trust_pickle, trust_code : passed to ``bayesmtl.load`` for run directories
    progress : print a line to stderr before each refit (they can take as long as the fits)

    Returns
    -------
    DataFrame indexed by run name with ``rank``, ``elpd_loo``, ``se``, ``elpd_diff`` and
    ``dse`` (difference to the best and its standard error), ``p_loo`` (effective number of
    parameters), ``weight`` (stacking weights), ``n_high_k`` (rows or tasks with Pareto k >
    0.7), ``max_k``, ``draws`` (the back end's kind of draws) and ``model``. ``attrs``: ``by``,
    ``n`` (rows or tasks), ``notes`` (one line per caveat: high Pareto k, exact GP leave-one-out,
    refits), ``refitted`` (run name -> the tasks left out by exact refits).

    Models whose rows are not independent given the parameters (a GP: ``rows_independent``
    False) are scored by their exact leave-one-out density instead (``exact_loo``), also from
    a point estimate (type-II ML), which the notes say.
    """
    with on_host():
        from . import convert

        if refit not in ("auto", "all", "none"):
            raise ValueError(f"refit must be 'auto', 'all' or 'none'; got {refit!r}")
        if refit == "all" and by != "task":
            raise ValueError("refit='all' refits one task at a time: use it with by='task'")
        posts = collect(runs, trust_pickle=trust_pickle, trust_code=trust_code)
        _check_runs(posts)
        notes: list[str] = []
        loo, refitted = {}, {}
        for name, p in posts.items():
            if not p.model.rows_independent:
                loo[name] = exact_loo(p, by)
                continue
            loo[name] = convert.loo(pointwise_log_likelihood(p, by))
            if by == "task":
                loo[name], refitted[name] = _refitted(p, loo[name], refit, name, notes, _say if progress else None)
        table = convert.compare(loo)
        rows = []
        for name, p in posts.items():
            if not p.model.rows_independent:
                hyper = ("its hyperparameters are a point estimate (type-II ML)" if p.info.get("draws_kind") == "point"
                         else "averaged over draws of its hyperparameters")
                notes.append(f"{name}: exact {type(p.model).__name__} leave-one-out, hyperparameters not refitted; "
                             f"{hyper}")
        for name in table.index:
            k, good = np.asarray(loo[name].pareto_k), float(loo[name].good_k)  # min(1 - 1/log10(S), 0.7)
            high = int((k > good).sum())
            p = posts[name]
            rows.append({"n_high_k": high, "max_k": float(k.max()), "draws": p.info.get("draws_kind", "?"),
                         "model": type(p.model).__name__})
            if high:
                what = "rows" if by == "row" else "tasks"
                worst = np.argsort(-k)[:3]
                labels = (list(np.asarray(p.task_names)[worst]) if by == "task" else [int(i) for i in worst])
                notes.append(f"{name}: {high} {what} with Pareto k > {good:.2f} (worst: {labels}); their elpd terms "
                             "are unreliable" + ("; refit='all' refits each task exactly" if by == "task" else
                                                 "; consider K-fold cross-validation"))
        extra = pd.DataFrame(rows, index=table.index)
        out = table[["rank", "elpd_loo", "se", "elpd_diff", "dse", "p_loo", "weight"]].join(extra)
        out.attrs.update(by=by, n=int(np.asarray(next(iter(loo.values())).pareto_k).size), notes=notes,
                         refitted={name: tasks for name, tasks in refitted.items() if tasks})
        return out
