"""Posterior: draws + model + data. The same object whatever back end produced it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .data import MultiTaskData
from .relations import TaskRelations

__all__ = ["Posterior"]

#: most entries (draws x rows) of an in-memory posterior-predictive or log-likelihood array
MAX_POINTWISE = 5e7
#: predictive draws per row at least (each posterior draw gives several when there are fewer draws)
PREDICTIVE_DRAWS = 500


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

    # ------------------------------------------------------------------ basics
    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1]

    @property
    def task_names(self) -> list[str]:
        return list(self.data.task_names)

    def flat(self) -> dict[str, torch.Tensor]:
        """Draws with chains and draws merged: site -> Tensor (S, *site_shape)."""
        return {k: torch.as_tensor(v).reshape((-1,) + v.shape[2:]) for k, v in self.samples.items()}

    def __repr__(self) -> str:
        return (f"Posterior({type(self.model).__name__}, method={self.info.get('method')!r}, "
                f"{self.num_chains} chain(s) x {self.num_draws} draws, {self.data.n_tasks} tasks)")

    def dims(self) -> dict[str, tuple[str, ...]]:
        return self.model.site_dims(self.data)

    # ------------------------------------------------------------------ ArviZ and summaries
    def to_arviz(self, predictive: bool = True):
        """ArviZ InferenceData: posterior, sample_stats, observed_data, constant_data and (when
        it fits in memory) posterior_predictive and log_likelihood, with a ``task`` coordinate."""
        from .convert import to_inference_data

        if predictive in self._idata:
            return self._idata[predictive]
        dims = self.dims()
        coords = dict(self.model.coords(self.data))
        coords["row"] = np.arange(self.data.n_rows)
        observed = constant = pp = ll = None
        if self.data.y is not None:
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

    def summary(self, var_names: list[str] | None = None, prob: float = 0.9) -> pd.DataFrame:
        """Per-entry mean, sd, quantiles, mcse_mean, ess_bulk, ess_tail, r_hat, labelled like
        ``w[school_3, intercept]``. Non-centred auxiliaries (``*_raw``, ``*_decentered``) and a
        model's ``unidentified_sites`` are left out by default."""
        from .convert import summary

        if var_names is None:
            skip = set(self.model.unidentified_sites)  # e.g. factor loadings (sign, rotation)
            var_names = [k for k in self.samples if not k.endswith(("_raw", "_decentered")) and k != "corr_chol"
                         and k not in skip]
        missing = [v for v in var_names if v not in self.samples]
        if missing:
            raise ValueError(f"no site {missing[0]!r} in the posterior; sites: {sorted(self.samples)}")
        return summary(self.to_arviz(predictive=False), var_names, prob)

    def diagnostics(self) -> dict[str, Any]:
        """Divergences, max r_hat and min bulk/tail ESS over the summarised entries."""
        out: dict[str, Any] = {"divergences": int(np.asarray(self.sample_stats.get("diverging", 0)).sum())}
        if self.num_draws >= 4:
            s = self.summary()
            out["max_r_hat"] = None if s["r_hat"].isna().all() else float(s["r_hat"].max())
            out["min_ess_bulk"] = float(s["ess_bulk"].min())
            out["min_ess_tail"] = float(s["ess_tail"].min())
        return out

    # ------------------------------------------------------------------ prediction and relations
    def predict(self, new: pd.DataFrame | MultiTaskData, seed: int = 0, prob: float = 0.9) -> pd.DataFrame:
        """Posterior predictive summary per input row: mean, sd, q05, q95 of y (and
        ``probability`` for binary targets). Rows of tasks unseen in training get parameters
        drawn from the learned population; ``new_task`` marks them."""
        if isinstance(new, pd.DataFrame):
            new = self.data.prepare(new)
        elif not isinstance(new, MultiTaskData):
            raise TypeError(f"new data must be a DataFrame or MultiTaskData; got {type(new).__name__}")
        flat = self.flat()
        gen = torch.Generator().manual_seed(int(seed))
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
        lo_q, hi_q = (1 - prob) / 2, (1 + prob) / 2
        names = np.asarray(new.task_names, dtype=object)
        tidx = new.task.cpu().numpy()
        out = pd.DataFrame({new.task_column: names[tidx], "new_task": tidx >= new.n_known_tasks,
                            "mean": mean.mean(0), "sd": y.std(0),
                            f"q{round(100 * lo_q):02d}": np.quantile(y, lo_q, axis=0),
                            f"q{round(100 * hi_q):02d}": np.quantile(y, hi_q, axis=0)})
        if self.model.outcome == "bernoulli":
            out["probability"] = mean.mean(0)
        return out

    def relations(self) -> TaskRelations:
        """Posterior draws of the T x T task relation, with task names (see ``kind``)."""
        out = self.model.relations(self.flat())
        return TaskRelations(out.draws, self.task_names, out.kind,
                             point_estimate=self.num_chains * self.num_draws == 1, signed=out.signed)

    def num_clusters(self) -> pd.DataFrame:
        """Posterior of the number of occupied clusters (clustering models only, e.g. DPClustering)."""
        return self.model.num_clusters(self)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write a run directory (see ``bayesmtl.runs``); nothing half-written on error."""
        from .runs import save_run

        return save_run(self, path, overwrite=overwrite)
