"""The one place that reads and writes run directories.

A run directory holds:

- ``posterior.nc``: the InferenceData (netCDF through ArviZ)
- ``summary.csv``: ``Posterior.summary()``
- ``relations.csv``: long format task_a, task_b, mean, q05, q95 (more columns for some models)
- ``run.json``: settings, seed, versions, timings, divergences, max r_hat, min ESS
- ``model.pt``: the model object and the training data (pickled with torch.save; load only
  run directories you trust)

Writing goes to a temporary sibling directory that replaces the target only when complete.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_run", "load_run", "versions", "write_atomic_csv"]


def versions() -> dict[str, str]:
    import arviz
    import gpytorch
    import pyro

    from . import __version__

    return {"bayesmtl": __version__, "torch": torch.__version__, "pyro": pyro.__version__,
            "gpytorch": gpytorch.__version__, "arviz": arviz.__version__,
            "python": platform.python_version()}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def save_run(post, path: str | Path, overwrite: bool = True) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"run directory {str(path)!r} exists (overwrite=False)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        rel = post.relations()
        summary = post.summary()
        idata = post.to_arviz(predictive=False)
        idata.to_netcdf(str(tmp / "posterior.nc"))
        summary.to_csv(tmp / "summary.csv", index_label="parameter")
        frame = rel.to_frame(extra=rel.signed)
        frame.to_csv(tmp / "relations.csv", index=False)
        for name, table in post.model.extra_outputs(post).items():
            table.to_csv(tmp / name, index=False)
        torch.save({"model": post.model, "data": post.data}, tmp / "model.pt")
        run = {"model": type(post.model).__name__, "model_repr": repr(post.model),
               "data": repr(post.data), "tasks": post.task_names,
               "relation_kind": rel.kind, **post.info,
               "diagnostics": post.diagnostics(), "versions": versions()}
        (tmp / "run.json").write_text(json.dumps(_jsonable(run), indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_run(path: str | Path):
    """A Posterior from a run directory written by ``save_run``."""
    from .convert import az, from_inference_data
    from .posterior import Posterior

    path = Path(path)
    for f in ("posterior.nc", "model.pt", "run.json"):
        if not (path / f).exists():
            raise FileNotFoundError(f"{str(path)!r} is not a bayesmtl run directory: {f} is missing")
    info = json.loads((path / "run.json").read_text())
    blob = torch.load(path / "model.pt", weights_only=False)
    idata = az.from_netcdf(str(path / "posterior.nc"))
    samples, stats = from_inference_data(idata)
    keep = {k: info[k] for k in info if k not in ("diagnostics", "versions", "model_repr", "data", "tasks")}
    return Posterior(blob["model"], blob["data"], samples, stats, keep)


def write_atomic_csv(frame, path: str | Path) -> Path:
    """Write a CSV through a temporary file so a failure leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with open(fd, "w") as fh:
            frame.to_csv(fh, index=False)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
