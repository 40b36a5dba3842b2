"""Predictive checks: draws of the target before seeing it (``prior_predictive``) and a
per-task comparison of replicated with observed targets (``ppc``, behind ``Posterior.ppc``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr
from pyro.infer import Predictive

from .data import MultiTaskData
from .devices import on_host
from .fit import seeded
from .protocol import data_context
from .pyro_util import squeeze_to

__all__ = ["prior_predictive", "ppc", "draws_array"]


def draws_array(y: np.ndarray, data: MultiTaskData) -> xr.DataArray:
    """Predictive draws (draws, rows) labelled by row and each row's task."""
    names = np.asarray(data.task_names, dtype=object)[data.task.cpu().numpy()]
    return xr.DataArray(y, dims=("draw", "row"),
                        coords={"draw": np.arange(y.shape[0]), "row": np.arange(y.shape[1]),
                                data.task_column: ("row", names)}, name=data.target_name or "y")


def prior_predictive(model, data: MultiTaskData, draws: int = 500, seed: int = 0) -> tuple[dict, xr.DataArray]:
    """Draws from the prior (with its data-scaled defaults bound to ``data``) and of the target
    they imply for ``data``'s rows: ({site: (draws, ...)}, y as (draws, rows)). Shows what
    the priors say before the data do: e.g. whether y's range is plausible."""
    with on_host():
        if int(draws) != draws or draws < 1:
            raise ValueError(f"draws must be an integer >= 1; got {draws!r}")
        host = data.to("cpu")
        with seeded(int(seed), torch.device("cpu")), data_context(host.dtype, torch.device("cpu")):
            model.check(host)
            bound = model.bind(host)
            with torch.no_grad():
                samples = Predictive(bound.prior_program(host), num_samples=int(draws), parallel=False)()
            dims = bound.site_dims(host)
            samples = {k: squeeze_to(v, 1 + len(dims[k])) if k in dims else v for k, v in samples.items()}
            gen = torch.Generator().manual_seed(int(seed))
            with torch.no_grad():
                y = bound.predict(host, host, samples, gen)["y"]
        return {k: v.numpy() for k, v in samples.items()}, draws_array(y.numpy(), host)


def ppc(y_rep: np.ndarray, data: MultiTaskData, prob: float = 0.9) -> pd.DataFrame:
    """Per task: rows, observed mean and sd, the replicated draws' mean, the posterior
    predictive p-values P(rep mean >= observed mean) and P(rep sd >= observed sd) (near 0 or 1:
    the model misses the task), and the share of its rows inside the central ``prob``
    predictive interval. ``attrs["coverage"]`` is that share over all rows."""
    y = data.y.cpu().numpy()
    task = data.task.cpu().numpy()
    lo, hi = np.quantile(y_rep, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    inside = (lo <= y) & (y <= hi)
    rows = []
    for t, name in enumerate(data.task_names[:data.n_known_tasks]):
        m = task == t
        if not m.any():
            continue
        rep = y_rep[:, m]
        rep_mean, rep_sd = rep.mean(1), rep.std(1) if m.sum() > 1 else np.zeros(len(rep))
        obs_sd = float(y[m].std()) if m.sum() > 1 else 0.0
        rows.append({data.task_column: name, "rows": int(m.sum()), "y_mean": float(y[m].mean()),
                     "rep_mean": float(rep_mean.mean()), "p_mean": float((rep_mean >= y[m].mean()).mean()),
                     "y_sd": obs_sd, "p_sd": float((rep_sd >= obs_sd).mean()),
                     "coverage": float(inside[m].mean())})
    out = pd.DataFrame(rows).set_index(data.task_column)
    out.attrs["coverage"] = float(inside.mean())
    out.attrs["prob"] = prob
    return out
