"""Reference posteriors from ``<data_dir>/posteriordb`` and the comparison used by the tests.

Each reference folder holds ``data.json`` (posteriordb's data, group indices 1-based) and
``summary.csv`` (mean, sd, mcse_mean, mcse_sd per parameter over 10,000 near-independent Stan
draws). Our draws of a parameter are compared with the reference by

    z_mean = (mean_ours - mean_ref) / sqrt(mcse_mean_ours^2 + mcse_mean_ref^2)
    z_sd   = (sd_ours   - sd_ref)   / sqrt(mcse_sd_ours^2   + mcse_sd_ref^2)

with ArviZ's ``mcse(method="mean")`` and ``mcse(method="sd")`` for ours (both account for
autocorrelation through the effective sample size).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bayesmtl.datasets import data_dir

__all__ = ["reference_dir", "load_reference", "radon_frame", "draws_of", "compare", "svi_mean_error"]

EIGHT_SCHOOLS = "eight_schools-eight_schools_noncentered"
RADON_POOLED = "radon_mn-radon_partially_pooled_noncentered"
RADON_INTERCEPT = "radon_mn-radon_hierarchical_intercept_noncentered"
RADON_SLOPE = "radon_mn-radon_variable_intercept_slope_noncentered"
SEEDS = "seeds_data-seeds_stanified_model"


def reference_dir(name: str) -> Path | None:
    """The folder of reference ``name``, or None when the data are not on this machine."""
    try:
        path = data_dir() / "posteriordb" / name
    except FileNotFoundError:
        return None
    return path if (path / "data.json").is_file() and (path / "summary.csv").is_file() else None


def load_reference(name: str) -> tuple[dict, pd.DataFrame]:
    """``data.json`` as a dict and ``summary.csv`` indexed by parameter name (e.g. ``alpha[3]``)."""
    path = reference_dir(name)
    if path is None:
        raise FileNotFoundError(f"reference posterior {name!r} not found under the data folder's posteriordb/")
    data = json.loads((path / "data.json").read_text())
    summary = pd.read_csv(path / "summary.csv").set_index("parameter")
    return data, summary


def radon_frame(data: dict) -> pd.DataFrame:
    """radon_mn as a long frame: ``county`` label = the 1-based county index as a string."""
    return pd.DataFrame({"county": [str(j) for j in data["county_idx"]],
                         "log_uppm": data["log_uppm"], "floor_measure": data["floor_measure"],
                         "log_radon": data["log_radon"]})


def task_index(post, label) -> int:
    """Position of task ``label`` in the posterior (tasks are kept in order of appearance)."""
    return post.task_names.index(str(label))


def draws_of(post, spec: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]]) -> dict[str, np.ndarray]:
    """Reference name -> our draws of it, shape (chains, draws), from ``post.samples``."""
    out = {}
    for name, fn in spec.items():
        v = np.asarray(fn(post.samples), dtype=float)
        if v.shape != (post.num_chains, post.num_draws):
            raise ValueError(f"draws of {name!r} have shape {v.shape}; expected (chains, draws)")
        out[name] = v
    return out


def compare(ours: dict[str, np.ndarray], reference: pd.DataFrame) -> pd.DataFrame:
    """Per parameter: our mean, sd, their MCSEs, r_hat, bulk ESS, and z_mean, z_sd against the reference.

    ``ours`` maps reference parameter names to draws of shape (chains, draws).
    """
    import arviz as az

    missing = [k for k in reference.index if k not in ours]
    if missing:
        raise KeyError(f"no draws for reference parameter(s) {missing[:5]}")
    ds = az.convert_to_dataset({_safe(k): v for k, v in ours.items()})
    numba, az.utils.Numba.numba_flag = az.utils.Numba.numba_flag, False
    try:  # with numba installed, arviz 0.23's mcse(method="sd") calls float() on a 1-element array,
        mcse_mean = az.mcse(ds, method="mean")  # which NumPy 2.5 refuses (seen on the H200 image)
        mcse_sd = az.mcse(ds, method="sd")
        rhat = az.rhat(ds)
        ess = az.ess(ds, method="bulk")
    finally:
        az.utils.Numba.numba_flag = numba
    rows = []
    for k in reference.index:
        v, s = ours[k], _safe(k)
        ref = reference.loc[k]
        row = {"parameter": k, "mean": v.mean(), "sd": v.std(ddof=1),
               "mcse_mean": float(mcse_mean[s]), "mcse_sd": float(mcse_sd[s]),
               "r_hat": float(rhat[s]), "ess_bulk": float(ess[s]),
               "ref_mean": ref["mean"], "ref_sd": ref["sd"]}
        row["z_mean"] = (row["mean"] - ref["mean"]) / np.hypot(row["mcse_mean"], ref["mcse_mean"])
        row["z_sd"] = (row["sd"] - ref["sd"]) / np.hypot(row["mcse_sd"], ref["mcse_sd"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("parameter")


def svi_mean_error(ours: dict[str, np.ndarray], reference: pd.DataFrame) -> pd.Series:
    """|mean_ours - mean_ref| / sd_ref per parameter (for approximate inference)."""
    return pd.Series({k: abs(np.mean(ours[k]) - reference.loc[k, "mean"]) / reference.loc[k, "sd"]
                      for k in reference.index})


def assert_matches(table: pd.DataFrame, bound: float = 4.0, max_r_hat: float = 1.01) -> None:
    """Every |z_mean|, |z_sd| <= bound and every r_hat < max_r_hat; the message lists offenders."""
    bad = table[(table["z_mean"].abs() > bound) | (table["z_sd"].abs() > bound)]
    assert bad.empty, f"{len(bad)} parameter(s) off the reference by more than {bound} MCSE:\n{bad.to_string()}"
    worst = table["r_hat"].max()
    assert worst < max_r_hat, f"max r_hat {worst:.4f} >= {max_r_hat} ({table['r_hat'].idxmax()})"


def _safe(name: str) -> str:
    return name.replace("[", "_").replace("]", "")
