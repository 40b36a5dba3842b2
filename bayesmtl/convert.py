"""The one place that converts to ArviZ (arviz 0.x ``InferenceData``)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

from .posterior import quantile_label

__all__ = ["to_inference_data", "from_inference_data", "summary", "psis", "loo", "exact_loo", "compare", "az"]

with warnings.catch_warnings():  # arviz 0.23 warns once a day about its 1.0 migration
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

# one chain (SVI, MAP) is a legitimate result here; arviz would log a shape warning for it.
# arviz 0.x keeps its logger outside logging's registry, so getLogger("arviz") cannot reach it.
getattr(az, "_log", logging.getLogger("arviz")).setLevel(logging.ERROR)


def to_inference_data(samples: dict[str, np.ndarray], dims: dict[str, tuple[str, ...]],
                      coords: dict[str, list], sample_stats: dict[str, np.ndarray] | None = None,
                      observed: dict[str, np.ndarray] | None = None,
                      constant: dict[str, np.ndarray] | None = None,
                      predictive: dict[str, np.ndarray] | None = None,
                      log_likelihood: dict[str, np.ndarray] | None = None,
                      attrs: dict | None = None) -> az.InferenceData:
    """Arrays with leading (chain, draw) -> InferenceData with named dims and coords."""
    used = {d for k in samples for d in dims.get(k, ())} | {"row"}
    crd = {k: v for k, v in coords.items() if k in used}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        idata = az.from_dict(
            posterior=samples, sample_stats=sample_stats or None, observed_data=observed,
            constant_data=constant, posterior_predictive=predictive, log_likelihood=log_likelihood,
            coords=crd, dims={**{k: list(v) for k, v in dims.items() if k in samples},
                              **{k: ["row"] for k in (observed or {})},
                              **{k: ["row"] for k in (constant or {})},
                              **{k: ["row"] for k in (predictive or {})},
                              **{k: ["row"] for k in (log_likelihood or {})}},
            attrs=attrs or {},
        )
    return idata


def from_inference_data(idata: az.InferenceData) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """posterior and sample_stats groups back to arrays with leading (chain, draw)."""
    post = {k: v.values for k, v in idata.posterior.data_vars.items()}
    stats = {k: v.values for k, v in idata.sample_stats.data_vars.items()} if "sample_stats" in idata.groups() else {}
    return post, stats


def psis(log_w: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed log importance weights (normalised) and the Pareto k, for log weights
    (n,) (arviz ``psislw``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns itself when k is high: the caller says so
        smoothed, k = az.psislw(np.asarray(log_w, dtype=float).copy())
    return np.asarray(smoothed), float(k)


def summary(idata: az.InferenceData, var_names: list[str] | None, prob: float = 0.9, chains: bool = True):
    """mean, sd, equal-tailed quantiles, mcse, ess_bulk, ess_tail, r_hat per labelled entry
    (``chains=False``: draws that are not Markov chains; the last four NaN, not computed)."""
    lo, hi = (1 - prob) / 2, (1 + prob) / 2
    one_draw = idata.posterior.sizes["draw"] < 4
    if one_draw or not chains:
        full = _stats(idata.posterior, var_names)  # (no chain diagnostics: no per-entry loop of arviz's)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few draws: arviz warns, we report NaN
            full = az.summary(idata, var_names=var_names, kind="all", round_to="none")
    # the quantiles site by site in one call each (arviz's stat_funcs run once per entry: minutes
    # at 50k tasks), in arviz's row order: sites as listed, entries in C order
    post = idata.posterior
    names = list(post.data_vars) if var_names is None else list(var_names)
    q = np.concatenate([np.quantile(post[v].values.reshape(-1, int(np.prod(post[v].shape[2:], dtype=int))),
                                    [lo, 0.5, hi], axis=0) for v in names], axis=1)
    if q.shape[1] != len(full):
        raise RuntimeError(f"summary: {q.shape[1]} quantile columns for {len(full)} rows")
    out = full[["mean", "sd"]].copy()
    for label, row in zip((quantile_label(lo), "q50", quantile_label(hi)), q, strict=True):
        out[label] = row
    for col in ("mcse_mean", "ess_bulk", "ess_tail", "r_hat"):
        out[col] = full[col] if col in full else np.nan
    if idata.posterior.sizes["chain"] < 2:
        out["r_hat"] = np.nan  # one chain (SVI, MAP): r_hat is not defined
    return out


def _stats(post, var_names: list[str] | None) -> pd.DataFrame:
    """mean and sd (ddof 1) of every entry, labelled as arviz labels them (``w[task_a, x1]``),
    vectorised: arviz's summary visits entries one by one (90 s at 20,000 tasks)."""
    import itertools

    labels, mean, sd = [], [], []
    for v in (list(post.data_vars) if var_names is None else list(var_names)):
        da = post[v]
        flat = da.values.reshape(-1, int(np.prod(da.shape[2:], dtype=int)))
        mean.append(flat.mean(0))
        sd.append(flat.std(0, ddof=1) if flat.shape[0] > 1 else np.full(flat.shape[1], np.nan))
        dims = da.dims[2:]
        if not dims:
            labels.append(str(v))
            continue
        coords = [da[d].values.tolist() for d in dims]
        labels += [f"{v}[{', '.join(map(str, combo))}]" for combo in itertools.product(*coords)]
    return pd.DataFrame({"mean": np.concatenate(mean), "sd": np.concatenate(sd)}, index=labels)


def loo(log_lik: np.ndarray):
    """ArviZ's PSIS-LOO (``ELPDData``, pointwise) of log likelihoods (chain, draw, n)."""
    idata = az.from_dict(posterior={"_": np.zeros(log_lik.shape[:2])}, log_likelihood={"y": log_lik})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # high Pareto k: the caller names the rows or tasks
        return az.loo(idata, pointwise=True)


def exact_loo(elpd_i: np.ndarray, lppd: float, n_samples: int, pareto_k: np.ndarray | None = None,
              good_k: float = 0.7):
    """An ``ELPDData`` like ``loo``'s for leave-one-out terms ``elpd_i`` (n,); p_loo = ``lppd``
    (in-sample) - elpd_loo. ``pareto_k`` (n,) holds the k of terms that were importance sampled,
    0 for exact ones (the default: every term exact)."""
    import xarray as xr
    from arviz.stats.stats_utils import ELPDData

    elpd_i = np.asarray(elpd_i, dtype=float)
    n = elpd_i.size
    total = float(elpd_i.sum())
    k = np.zeros(n) if pareto_k is None else np.asarray(pareto_k, dtype=float)
    return ELPDData(data=[total, float(np.sqrt(n * elpd_i.var())), lppd - total, n_samples, n, bool((k > good_k).any()),
                          xr.DataArray(elpd_i, dims=["i"], name="loo_i"), xr.DataArray(k, dims=["i"]),
                          "log", good_k],
                    index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i", "pareto_k",
                           "scale", "good_k"])


def compare(loos: dict) -> pd.DataFrame:
    """ArviZ's ``compare`` of ``loo`` results (name -> ELPDData), best first; stacking weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.compare(loos, ic="loo", method="stacking")
