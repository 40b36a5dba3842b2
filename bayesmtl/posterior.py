"""Posterior: draws + model + data. The same object whatever back end produced it."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .data import MultiTaskData
from .devices import keep_rng, on_host
from .protocol import data_context
from .relations import TaskRelations
from .validate import check_prob, check_seed

__all__ = ["Posterior", "quantile_label"]

#: most entries (draws x rows) of an in-memory posterior-predictive or log-likelihood array
MAX_POINTWISE = 5e7
#: predictive draws per row at least (each posterior draw gives several when there are fewer draws)
PREDICTIVE_DRAWS = 500


def quantile_label(p: float) -> str:
    """Column name of the p-quantile, exact: 0.05 -> "q05", 0.025 -> "q2.5", 0.975 -> "q97.5"."""
    v = round(100 * p, 6)
    return f"q{int(v):02d}" if v == int(v) else f"q{v:g}"


class Posterior:
    """Posterior draws of a multi-task model, labelled with task and feature names.

    Attributes
    ----------
    model, data
        The model and the training data (on the host).
    samples : dict of str -> ndarray, shape (chains, draws, *site_shape)
        Every site, deterministic ones included.
    sample_stats : dict of str -> ndarray, shape (chains, draws)
    info : dict
        Method, settings, timings and what the back end recorded; saved to run.json.
    """

    def __init__(self, model, data: MultiTaskData, samples: dict[str, np.ndarray],
                 sample_stats: dict[str, np.ndarray], info: dict[str, Any]):
        self.model = model
        self.data = data
        self.samples = samples
        self.sample_stats = sample_stats
        self.info = info
        self._idata: dict[bool, Any] = {}
        self._summaries: dict[tuple, pd.DataFrame] = {}

    # ------------------------------------------------------------------ basics
    @property
    def num_chains(self) -> int:
        """Number of chains (1 for SVI and point estimates)."""
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        """Draws per chain."""
        return next(iter(self.samples.values())).shape[1]

    @property
    def task_names(self) -> list[str]:
        """The task labels, in the order of the task dim."""
        return list(self.data.task_names)

    def flat(self) -> dict[str, torch.Tensor]:
        """Draws with chains and draws merged: site -> Tensor (S, *site_shape)."""
        with on_host():
            return {k: torch.as_tensor(v).reshape((-1,) + v.shape[2:]) for k, v in self.samples.items()}

    def __repr__(self) -> str:
        return (f"Posterior({type(self.model).__name__}, method={self.info.get('method')!r}, "
                f"{self.num_chains} chain(s) x {self.num_draws} draws, {self.data.n_tasks} tasks)")

    def dims(self) -> dict[str, tuple[str, ...]]:
        """Dims of every drawn site, by name, e.g. ``{'w': ('task', 'param')}``."""
        with keep_rng(self.data.device):  # reading a fit runs the prior's program, which draws
            return self.model.site_dims(self.data)

    # ------------------------------------------------------------------ ArviZ and summaries
    def to_arviz(self, predictive: bool = True):
        """ArviZ InferenceData: posterior, sample_stats, observed_data, constant_data and (when
        it fits in memory) posterior_predictive and log_likelihood, with a ``task`` coordinate."""
        with on_host():
            from .convert import to_inference_data

            if predictive in self._idata:
                return self._idata[predictive]
            dims = self.dims()
            coords = dict(self.model.coords(self.data))
            observed = constant = pp = ll = None
            if self.data.in_memory:  # rows streamed from a file stay there: the groups of the rows are left out
                coords["row"] = np.arange(self.data.n_rows)
            if self.data.in_memory and self.data.y is not None:
                observed = {"y": self.data.y.cpu().numpy()}
                constant = {"task": np.asarray(self.data.task_names, dtype=object)[self.data.task.cpu().numpy()]}
            C, S = self.num_chains, self.num_draws
            if predictive and observed is not None and C * S * self.data.n_rows <= MAX_POINTWISE:
                flat = self.flat()
                gen = torch.Generator().manual_seed(int(self.info.get("seed", 0)))
                pred = self.model.predict(self.data, self.data, flat, gen)
                pp = {"y": pred["y"].reshape(C, S, -1).numpy().astype(np.float32)}
                ll = {"y": self.model.log_likelihood(self.data, flat).reshape(C, S, -1).numpy()}
            attrs = {"method": str(self.info.get("method")), "model": type(self.model).__name__}
            self._idata[predictive] = to_inference_data(
                {k: np.asarray(v) for k, v in self.samples.items()}, dims, coords,
                sample_stats=self.sample_stats, observed=observed, constant=constant, predictive=pp,
                log_likelihood=ll, attrs=attrs)
            return self._idata[predictive]

    def summarised_sites(self) -> list[str]:
        """The sites ``summary()`` shows by default: all but non-centred auxiliaries (``*_raw``,
        ``*_decentered``), Cholesky factors and a model's ``unidentified_sites``."""
        skip = set(self.model.unidentified_sites)  # e.g. factor loadings (sign, rotation)
        return [k for k in self.samples if not k.endswith(("_raw", "_decentered")) and k != "corr_chol"
                and k not in skip]

    def summary(self, var_names: list[str] | None = None, prob: float = 0.9) -> pd.DataFrame:
        """Per-entry mean, sd, quantiles, mcse_mean, ess_bulk, ess_tail, r_hat, labelled like
        ``w[school_3, intercept]`` (sites: ``summarised_sites()`` by default).

        Draws from SVI's guide have no ESS or r_hat to report (NaN) and an mcse of sd / sqrt(n),
        n the draws or, where they were importance-resampled, the weights' effective sample
        size; ``attrs["draws"]`` says what the draws are."""
        with on_host():
            from .convert import summary

            var_names = self.summarised_sites() if var_names is None else list(var_names)
            missing = [v for v in var_names if v not in self.samples]
            if missing:
                raise ValueError(f"no site {missing[0]!r} in the posterior; sites: {sorted(self.samples)}")
            key = (tuple(var_names), check_prob(prob))
            if key not in self._summaries:
                kind = self.info.get("draws_kind", "mcmc")
                # no chains to diagnose: the per-entry ESS and r_hat (NaN below) would cost minutes at 50k tasks
                out = summary(self.to_arviz(predictive=False), var_names, prob, chains=kind == "mcmc")
                if kind != "mcmc":  # (ess and r_hat came back NaN)
                    n = self.num_chains * self.num_draws
                    if self.info.get("resampled"):
                        n = min(n, self.info.get("psis_ess", n))
                    out["mcse_mean"] = out["sd"] / np.sqrt(n) if kind == "independent" else np.nan
                out.attrs["draws"] = self.describe_draws()
                self._summaries[key] = out
            return self._summaries[key].copy()

    def describe_draws(self) -> str:
        """One line saying what the draws are: MCMC chains, independent guide draws or a point."""
        kind, i = self.info.get("draws_kind", "mcmc"), self.info
        if kind == "independent":
            if i.get("resampled"):
                return (f"{self.num_draws} draws from the fitted {i.get('guide')} guide ({i.get('method')}), "
                        f"importance-resampled from {i.get('psis_draws')} (effective size {i.get('psis_ess', 0):.0f})")
            return f"{self.num_draws} independent draws from the fitted {i.get('guide')} guide ({i.get('method')})"
        if kind == "point":
            return f"a point estimate ({i.get('method')})"
        return f"{self.num_chains} chain(s) x {self.num_draws} draws ({i.get('method')})"

    def diagnostics(self) -> dict[str, Any]:
        """Divergences, max r_hat and min bulk/tail ESS over the summarised entries (NaN-free:
        None where not defined, e.g. for independent draws)."""
        with on_host():
            out: dict[str, Any] = {"divergences": int(np.asarray(self.sample_stats.get("diverging", 0)).sum())}
            if self.num_draws >= 4 and self.info.get("draws_kind", "mcmc") != "mcmc":
                out.update(max_r_hat=None, min_ess_bulk=None, min_ess_tail=None)  # not chains: nothing to compute
            elif self.num_draws >= 4:
                s = self.summary()
                for key, col, fn in (("max_r_hat", "r_hat", "max"), ("min_ess_bulk", "ess_bulk", "min"),
                                     ("min_ess_tail", "ess_tail", "min")):
                    out[key] = None if s[col].isna().all() else float(getattr(s[col], fn)())
            return out

    def diagnose(self, **thresholds) -> list:
        """Every failed check (``bayesmtl.diagnostics``): r_hat, ESS, divergences, tree depth and
        E-BFMI for MCMC; ELBO convergence and the guide's Pareto k for SVI. Empty when all pass.
        ``thresholds``: ``r_hat``, ``min_ess``, ``min_bfmi``, ``max_pareto_k`` (see ``THRESHOLDS``)."""
        with on_host():
            from .diagnostics import diagnose

            return diagnose(self, **thresholds)

    def prior_summary(self) -> pd.DataFrame:
        """The priors the fit used, with their numbers: one row per site (or per entry where the
        entries differ), e.g. ``mu | intercept | Normal(loc=54.1, scale=33.2)``. ``attrs``:
        ``defaults``, the settings left at their data-scaled defaults, and ``scales``, the data
        scales they were set from (``MultiTaskModel.scaling``)."""
        with on_host():
            from .pyro_util import describe_priors

            try:
                with data_context(self.data.dtype, self.data.device), keep_rng(self.data.device):
                    rows = describe_priors(self.model.prior_program(self.data), self.dims(),
                                           self.model.coords(self.data))
            except NotImplementedError:  # a model fitted without a Pyro program (e.g. a variational LMC)
                rows = []
            out = pd.DataFrame(rows, columns=["site", "entry", "prior"])
            out.attrs["defaults"] = self.model.defaults()
            out.attrs["scales"] = self.info.get("prior_scales", {})
            return out

    # ------------------------------------------------------------------ prediction and relations
    def predict(self, new: pd.DataFrame | MultiTaskData, seed: int = 0, prob: float = 0.9, draws: bool = False):
        """Posterior predictive summary per input row: mean, sd, q05, q95 of y (and
        ``probability`` for binary targets). Rows of tasks unseen in training get parameters
        drawn from the learned population; ``new_task`` marks them. ``draws=True`` returns the
        predictive draws instead, an ``xarray.DataArray`` (draw, row) with each row's task."""
        with on_host():
            check_prob(prob)
            seed = check_seed(seed)
            if isinstance(new, pd.DataFrame):
                new = self.data.prepare(new)
            elif not isinstance(new, MultiTaskData):
                raise TypeError(f"new data must be a DataFrame or MultiTaskData; got {type(new).__name__}")
            elif new.feature_names != self.data.feature_names:
                raise ValueError(f"the new data have features {new.feature_names}, the model was fitted on "
                                 f"{self.data.feature_names}; build them with post.data.prepare(frame)")
            flat = self.flat()
            gen = torch.Generator().manual_seed(seed)
            S = next(iter(flat.values())).shape[0]
            K = -(-PREDICTIVE_DRAWS // S)  # a point estimate or few draws still get predictive quantiles
            step = max(1, int(MAX_POINTWISE // 4 // max(S * K, 1)))
            means, ys = [], []
            with torch.no_grad():
                for lo in range(0, new.n_rows, step):
                    part = new.subset(np.arange(lo, min(lo + step, new.n_rows)))
                    p = self.model.predict(self.data, part, flat, gen, draws_per_sample=K)
                    means.append(p["mean"])
                    ys.append(p["y"])
            mean, y = torch.cat(means, -1).numpy(), torch.cat(ys, -1).numpy()
            if draws:
                from .predictive import draws_array

                return draws_array(y, new)
            lo_q, hi_q = (1 - prob) / 2, (1 + prob) / 2
            names = np.asarray(new.task_names, dtype=object)
            tidx = new.task.cpu().numpy()
            out = pd.DataFrame({new.task_column: names[tidx], "new_task": tidx >= new.n_known_tasks,
                                "mean": mean.mean(0), "sd": y.std(0),
                                quantile_label(lo_q): np.quantile(y, lo_q, axis=0),
                                quantile_label(hi_q): np.quantile(y, hi_q, axis=0)})
            if self.model.outcome == "bernoulli":
                out["probability"] = mean.mean(0)
            return out

    def ppc(self, seed: int = 0, prob: float = 0.9) -> pd.DataFrame:
        """Posterior predictive check of the training rows, per task (``predictive.ppc``):
        observed against replicated means and sds with their p-values, and interval coverage
        (``attrs["coverage"]`` over all rows)."""
        with on_host():
            from .predictive import ppc

            if self.data.y is None:
                raise ValueError("the data have no target to check against")
            return ppc(self.predict(self.data, seed=seed, draws=True).values, self.data, prob)

    def relations(self, tasks: Sequence[str] | None = None) -> TaskRelations:
        """Posterior draws of the T x T task relation, with task names (see ``kind``); ``tasks``:
        only among these (names). The draws take S x T^2 numbers: past ``relations.MAX_VALUES``
        they are thinned (with a warning), and where fewer than ``relations.MIN_DRAWS`` would be
        left the relation of that many tasks is refused, naming how many tasks fit."""
        with on_host():
            from .relations import MAX_VALUES, MIN_DRAWS, TooManyTasks

            names = self.task_names
            flat = self.flat()
            if tasks is not None:
                if isinstance(tasks, str):
                    raise TypeError(f"tasks must be a list of task names; got the string {tasks!r} (write [{tasks!r}])")
                pos = {n: i for i, n in enumerate(names)}
                unknown = [t for t in map(str, tasks) if t not in pos]
                if unknown:
                    raise ValueError(f"task {unknown[0]!r} is not a task of this fit (e.g. {names[:3]})")
                idx = torch.tensor([pos[str(t)] for t in tasks], dtype=torch.long)
                if len(idx) < 2:
                    raise ValueError("tasks must name at least 2 tasks to relate")
                flat = _tasks_of(flat, self.dims(), idx)
                names = [names[i] for i in idx.tolist()]
            S, T = next(iter(flat.values())).shape[0], len(names)
            keep = min(S, MAX_VALUES // (T * T))
            if keep < S:
                if keep < min(MIN_DRAWS, S):
                    fit = int((MAX_VALUES // min(MIN_DRAWS, S)) ** 0.5)
                    raise TooManyTasks(f"relations among {T:,} tasks take {S:,} x {T:,}^2 numbers, too many to hold; "
                                       f"pass tasks=[...] naming up to {fit:,} tasks")
                warnings.warn(f"relations among {T:,} tasks use {keep} of the {S} draws (S x T^2 numbers are held)",
                              UserWarning, stacklevel=2)
                pick = torch.linspace(0, S - 1, keep).round().long()
                flat = {k: v[pick] for k, v in flat.items()}
            out = self.model.relations(flat, self.data)
            return TaskRelations(out.draws, names, out.kind,
                                 point_estimate=self.num_chains * self.num_draws == 1, signed=out.signed,
                                 null=getattr(out, "null", None), cluster_counts=getattr(out, "cluster_counts", None),
                                 tree=getattr(out, "tree", None))

    def inclusion(self) -> pd.DataFrame:
        """Posterior inclusion probability of each feature, shared and per task (sparsity priors
        such as ``priors.SharedSparsity``); ``attrs["rule"]`` says how it is computed."""
        with on_host():
            return self.model.inclusion(self)

    def num_clusters(self) -> pd.DataFrame:
        """Posterior of the number of occupied clusters (clustering models only, e.g. DPClustering)."""
        with on_host():
            return self.model.num_clusters(self)

    def gate(self, new: pd.DataFrame | None = None, prob: float = 0.9) -> pd.DataFrame:
        """Each task's cluster probabilities from its task features alone, with a central
        ``prob`` interval (``GatedClusters`` only): task, cluster, mean, lower, upper; ``new``:
        a frame of other tasks instead of the training ones."""
        with on_host():
            check_prob(prob)
            return self.model.gate(self, new, prob)

    def tree(self) -> pd.DataFrame:
        """The learned tree's nodes with their clade probabilities (``TreeHierarchy(tree="learn")``
        only): level, node, size, probability, together, tasks."""
        with on_host():
            return self.model.tree(self)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write a run directory (see ``bayesmtl.runs``); nothing half-written on error. A
        path that holds anything is refused, naming it, unless it is a run and ``overwrite``."""
        with on_host():
            from .runs import save_run

            return save_run(self, path, overwrite=overwrite)


def _tasks_of(flat: dict[str, torch.Tensor], dims: dict, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Flat draws (S, ...) with every task dim (named "task" or "task_") cut to tasks ``idx``."""
    out = {}
    for k, v in flat.items():
        for axis, d in enumerate(dims.get(k, ())):
            if d in ("task", "task_"):
                v = v.index_select(axis + 1, idx)
        out[k] = v
    return out
