"""The one place that reads and writes run directories.

A run directory holds:

- ``posterior.nc``: the InferenceData (netCDF through ArviZ)
- ``summary.csv``: ``Posterior.summary()``
- ``relations.csv``: long format task_a, task_b, mean, q05, q95 (more columns for some models);
  left out, with the reason in run.json ``relations``, for more tasks than fit in memory
- ``run.json``: settings, seed, versions, timings, divergences, max r_hat, min ESS; for a prior
  written by the user (``bayesmtl fit --prior FILE.py:Class``), ``prior_source``: where it came from
- ``model.json``: the model as data (``spec.to_spec``: classes by name, settings, priors as
  distribution names and numbers) and the training data's names and settings
- ``data.nc``: the training data's arrays (netCDF); for data streamed from a file
  (``StreamedData``), model.json holds a reference to the file and its fingerprint instead
- ``run.json`` ``format_version`` (2; 1 = the model pickled in ``model.pt``) and ``model_format``

Loading runs no code from the directory: ``model.json`` is rebuilt with package classes and Pyro
distributions only (``spec.from_spec``). A user's prior class is found where it is already
imported, given as ``classes``, or with ``trust_code=True`` imported again from where the fit
found it (``prior_source``: a file is imported under ``file_module_name(file)``). A model that
cannot be described as data (a lambda link, a gpytorch kernel object) is pickled to
``model.pt`` with a warning; that file, and format-1 runs, are read only with
``trust_pickle=True``.

Writing goes to a temporary sibling directory that replaces the target only when complete.
A path is never destroyed unless it holds a run and replacing it was asked for
(``overwrite=True``, the CLI's ``--overwrite``); a plain file, or a folder holding anything that
is not a run, is refused. One writer at a time: ``reserve`` takes a lock file beside the run
(``.<name>.lock``, holding the writer's PID; a lock whose process is gone is taken over), and
the CLI takes it before fitting, so a second fit to the same ``--out`` fails at once, and an
unwritable parent is found before any work is done. Temporary folders left by killed writers
are removed by the next writer.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .devices import on_host

__all__ = ["save_run", "load_run", "reserve", "check_out", "versions", "write_atomic_csv", "PriorSourceError",
           "file_module_name", "import_file", "sha256_of"]

#: the files that make a folder a bayesmtl run (one of them is enough to call it a run)
RUN_MARKERS = ("run.json", "posterior.nc")


class PriorSourceError(ImportError):
    """A run's user-written prior cannot be imported again (its file is gone, or no longer
    defines the class)."""


def versions() -> dict[str, str]:
    """Versions of Python, bayesmtl and the libraries a run depends on, for ``run.json``."""
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


def is_run(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``save_run``."""
    return path.is_dir() and any((path / f).is_file() for f in RUN_MARKERS)


def check_out(path: str | Path, overwrite: bool = False) -> Path:
    """Raise, naming the path, unless a run can be written at ``path`` without destroying
    anything: a missing path or an empty folder, or a run when ``overwrite``; its parent must
    be (or can be made) a writable folder."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a folder path (str or pathlib.Path); got {type(path).__name__}")
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise FileExistsError(f"{str(path)!r} is a file, not a run directory; choose another path "
                                  "(nothing was written)")
        if is_run(path):
            if not overwrite:
                raise FileExistsError(f"{str(path)!r} already holds a bayesmtl run; pass overwrite=True "
                                      "(CLI: --overwrite) to replace it, or choose another path")
        elif any(path.iterdir()):
            first = sorted(p.name for p in path.iterdir())[0]
            raise FileExistsError(f"{str(path)!r} holds files that are not a bayesmtl run (e.g. {first!r}); "
                                  "refusing to replace it: choose an empty or new folder")
    _check_parent(path)
    return path


def _check_parent(path: Path) -> None:
    """Raise unless ``path``'s parent is, or can be made, a writable folder."""
    parent = path.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise PermissionError(f"cannot create the folder {str(parent)!r} for {str(path)!r}: "
                              f"{str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into {str(existing)!r}: the folder is not writable")


def _make_parents(path: Path) -> list[Path]:
    """Create ``path``'s missing parent folders; those created, deepest first."""
    made, p = [], path.parent
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create the folder {str(path.parent)!r} for {str(path)!r}: "
                              f"{e.strerror or e}") from None
    return made


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders ``_make_parents`` made (deepest first) that are still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


#: the mark of this package's temporary folders beside a run (``.<name>.bayesmtl-tmp-*``): only
#: those are removed as a killed writer's leftovers, never a user's ``.<name>.keep``
_TMP = "bayesmtl-tmp-"


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def checkpoint_path(path: str | Path) -> Path:
    """The folder beside run ``path`` where the CLI's fit keeps its checkpoints
    (``.<name>.checkpoint``); removed once the run is written."""
    path = Path(path)
    return path.with_name(f".{path.name}.checkpoint")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def reserve(path: str | Path, overwrite: bool = False):
    """Check ``path`` (``check_out``) and hold its lock file while the block runs: a second
    writer gets FileExistsError at once. A lock left by a process that is gone is taken over,
    and temporary folders left by killed writers are removed."""
    path = check_out(path, overwrite)
    made = _make_parents(path)
    try:
        with _locked(path):
            yield path
    finally:
        if not path.exists():
            _remove_empty(made)  # a failed fit leaves no folders it made behind


@contextlib.contextmanager
def _locked(path: Path):
    lock = _lock_path(path)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise FileExistsError(f"another bayesmtl process (PID {pid}) is writing {str(path)!r}; wait for "
                                      f"it, or remove {str(lock)!r} if no fit is running") from None
            if pid == os.getpid():
                yield path  # this process holds it already (save_run inside the CLI's reservation)
                return
            lock.unlink(missing_ok=True)  # stale: its writer is gone
    else:
        raise FileExistsError(f"cannot take the lock {str(lock)!r} for {str(path)!r}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        for stale in path.parent.glob(f".{path.name}.{_TMP}*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)  # a killed writer's temporary folder
        yield path
    finally:
        lock.unlink(missing_ok=True)


def save_run(post, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``post`` as a run directory at ``path`` (see the module docstring): refused, naming
    the path, where that would destroy anything but a run replaced on purpose."""
    with reserve(path, overwrite) as path:
        return _write_run(post, path)


def _write_run(post, path: Path) -> Path:
    from .relations import TooManyTasks

    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_TMP}", dir=path.parent))
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionError(f"cannot write a run into {str(path.parent)!r}: {e.strerror}") from None
        raise
    try:
        note = {}
        try:
            rel = post.relations()
        except TooManyTasks as e:  # 20,000 tasks: no T x T table; the run says why
            rel, note = None, {"relations": f"relations.csv not written: {e}"}
        summary = post.summary()
        idata = post.to_arviz(predictive=False)
        idata.to_netcdf(str(tmp / "posterior.nc"))
        summary.to_csv(tmp / "summary.csv", index_label="parameter")
        if rel is not None:
            rel.to_frame(extra=rel.signed).to_csv(tmp / "relations.csv", index=False)
        for name, table in post.model.extra_outputs(post).items():
            table.to_csv(tmp / name, index=False)
        model_format = _write_model(post.model, post.data, tmp)
        run = {"format_version": FORMAT_VERSION, "model_format": model_format,
               "model": type(post.model).__name__, "model_repr": repr(post.model),
               "data": repr(post.data), "data_digest": post.data.digest(), "tasks": post.task_names,
               "relation_kind": None if rel is None else rel.kind, **post.info, **note,
               "diagnostics": {**post.diagnostics(), "problems": [p.to_dict() for p in post.diagnose()]},
               "versions": versions()}
        (tmp / "run.json").write_text(json.dumps(_jsonable(run), indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.{_TMP}old")
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


def load_run(path: str | Path, trust_pickle: bool = False, trust_code: bool = False,
             classes: dict[str, type] | None = None, modules: dict[str, torch.nn.Module] | None = None):
    """A Posterior from a run directory written by ``save_run``. Nothing in the directory runs
    as code: the model is rebuilt from ``model.json`` (package classes and Pyro distributions
    only; a user's prior class must be imported already, passed in ``classes``
    {"module:Name": cls}, or, with ``trust_code=True``, imported from where the fit found it).
    A ``model.pt`` (a pickle: runs of format 1, or a model that cannot be described as data)
    is read only with ``trust_pickle=True``, which can run code: use it for runs you trust.
    A network (``NeuralMultiTask``'s trunk) comes back with its weights; one built of a user's own
    layer classes needs its architecture given, ``modules={"trunk": net}``."""
    with on_host():
        from .convert import az, from_inference_data
        from .posterior import Posterior
        from .spec import SpecError, from_spec

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{str(path)!r} is not a bayesmtl run directory (no such folder)")
        for f in ("posterior.nc", "run.json"):
            if not (path / f).is_file():
                raise FileNotFoundError(f"{str(path)!r} is not a bayesmtl run directory: {f} is missing")
        try:
            info = json.loads((path / "run.json").read_text())
            if not isinstance(info, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{str(path / 'run.json')!r} is not a valid run file ({_first_line(e)})") from None
        version = info.get("format_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise ValueError(f"{str(path)!r} was written in run format {version!r}, which this bayesmtl "
                             f"(format {FORMAT_VERSION}) cannot read; upgrade bayesmtl")
        source = info.get("prior_source")
        if (path / "model.json").is_file():
            if source and trust_code:
                _import_prior_source(source, path)
            if isinstance(info.get("trunk_source"), dict) and trust_code and "trunk" not in (modules or {}):
                modules = {**(modules or {}), "trunk": _trunk_from_source(info["trunk_source"])}
            try:
                spec = json.loads((path / "model.json").read_text())
                if not (isinstance(spec, dict) and all(isinstance(spec.get(k), dict) for k in ("model", "data"))):
                    raise ValueError("its model and data entries must be objects")
                model = from_spec(spec["model"], classes, trust_code=trust_code, bases=_model_bases(), modules=modules)
                data = _read_data(path, spec["data"])
            except SpecError as e:
                hint = " (CLI: --trust-code)" if "trust_code" in str(e) else ""
                raise ValueError(f"{str(path)!r}: {e}{hint}") from None
            except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
                raise ValueError(f"{str(path)!r} is not a valid run: model.json or data.nc is damaged "
                                 f"({_first_line(e)})") from None
        elif (path / "model.pt").is_file():
            if not trust_pickle:
                raise ValueError(f"{str(path)!r} keeps its model as a pickle (model.pt), which can run code when "
                                 "read; load it with trust_pickle=True (CLI: --trust-pickle) only if you trust "
                                 "where the run came from")
            if source:
                _import_prior_source(source, path)
            try:
                blob = torch.load(path / "model.pt", weights_only=False)
            except (AttributeError, ImportError) as e:  # the user's module changed since the fit
                if not source:
                    raise
                raise PriorSourceError(f"cannot unpickle the run's prior {source['class']} from "
                                       f"{source.get('file') or source.get('module')}: {_first_line(e)}") from e
            model, data = blob["model"], blob["data"]
        else:
            raise FileNotFoundError(f"{str(path)!r} is not a bayesmtl run directory: model.json is missing")
        try:
            idata = az.from_netcdf(str(path / "posterior.nc"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{str(path / 'posterior.nc')!r} is not a valid posterior file "
                             f"({_first_line(e)})") from None
        try:
            samples, stats = from_inference_data(idata)
        except (AttributeError, KeyError, ValueError) as e:
            raise ValueError(f"{str(path / 'posterior.nc')!r} is not a bayesmtl posterior ({_first_line(e)})") from None
        digest = info.get("data_digest")
        if digest is not None and digest != data.digest():
            raise ValueError(f"{str(path)!r}: data.nc does not hold the data this run was fitted on (its digest "
                             "differs from run.json's; files from different runs?)")
        _check_matches(path, idata, model, data)
        keep = {k: info[k] for k in info if k not in ("diagnostics", "versions", "model_repr", "data", "tasks",
                                                     "data_digest")}
        return Posterior(model, data, samples, stats, keep)


def _check_matches(path: Path, idata, model, data) -> None:
    """posterior.nc must be the posterior of this model on this data: its labels (tasks,
    features, ...) and its sites' shapes agree with what model.json and data.nc rebuild."""
    post = idata.posterior
    try:
        coords = model.coords(data)
        dims = model.site_dims(data)
    except Exception as e:  # noqa: BLE001 - a model that cannot describe these data: they do not belong together
        raise ValueError(f"{str(path)!r}: model.json and data.nc do not belong together ({_first_line(e)})") from None
    for dim, labels in coords.items():
        if dim in post.coords and [str(x) for x in post.coords[dim].values] != [str(x) for x in labels]:
            raise ValueError(f"{str(path)!r}: posterior.nc does not match data.nc and model.json: its {dim!r} labels "
                             f"are {[str(x) for x in post.coords[dim].values][:5]}, theirs {list(labels)[:5]} "
                             "(files from different runs?)")
    for site, site_dims in dims.items():
        if site in post and tuple(post[site].dims[2:]) != tuple(site_dims):
            raise ValueError(f"{str(path)!r}: posterior.nc does not match model.json: site {site!r} has dims "
                             f"{tuple(post[site].dims[2:])}, the model {tuple(site_dims)} (files from different runs?)")


#: the run directory format this version writes (run.json ``format_version``); 1 = model.pt pickle
FORMAT_VERSION = 2

#: MultiTaskData fields kept as arrays in data.nc (the rest, names and settings, in model.json)
_ARRAYS = ("X", "y", "task", "noise", "trials", "feature_mean", "feature_scale")


def _model_bases() -> tuple[type, ...]:
    from .likelihoods import Likelihood
    from .priors.base import TaskPrior
    from .protocol import ModelBase

    return (TaskPrior, Likelihood, ModelBase)


def _write_model(model, data, folder: Path) -> str:
    """model.json (the model as data) and data.nc (the training data): "spec"; a model that
    cannot be described as data is pickled to model.pt instead, with a warning: "pickle"."""
    import dataclasses

    import xarray as xr

    from .spec import SpecError, to_spec

    try:
        spec = to_spec(model)
    except SpecError as e:
        warnings.warn(f"the model cannot be saved as data ({e}); model.pt is a pickle, which loads only with "
                      "trust_pickle=True", UserWarning, stacklevel=4)
        torch.save({"model": model, "data": data}, folder / "model.pt")
        return "pickle"
    if not data.in_memory:  # data streamed from a file: a reference to it and its fingerprint, not a copy
        (folder / "model.json").write_text(json.dumps({"model": spec, "data": {"streamed": data.to_reference()}},
                                                      indent=1))
        return "spec"
    arrays, meta = {}, {}
    for f in dataclasses.fields(data):
        v = getattr(data, f.name)
        if f.name in _ARRAYS:
            if v is not None:
                arrays[f.name] = v.detach().cpu()
        elif f.name == "task_features":
            arrays.update({f"task_feature:{k}": t.detach().cpu() for k, t in v.items()})
            meta["task_features"] = list(v)
        else:
            meta[f.name] = v
    dims = {"X": ("row", "feature"), "y": ("row",), "task": ("row",), "noise": ("row",), "trials": ("row",),
            "feature_mean": ("feature",), "feature_scale": ("feature",)}
    ds = xr.Dataset({k: (dims.get(k, ("task",)), v.numpy()) for k, v in arrays.items()})
    ds.attrs["dtypes"] = json.dumps({k: str(v.dtype).replace("torch.", "") for k, v in arrays.items()})
    ds.to_netcdf(folder / "data.nc")
    (folder / "model.json").write_text(json.dumps({"model": spec, "data": _jsonable(meta)}, indent=1))
    return "spec"


def _read_data(path: Path, meta: dict):
    import xarray as xr

    from .data import MultiTaskData

    if "streamed" in meta:
        from .streamed import StreamedData

        return StreamedData.from_reference(meta["streamed"])
    with xr.open_dataset(path / "data.nc") as ds:
        ds = ds.load()
    dtypes = json.loads(ds.attrs.get("dtypes", "{}"))

    def tensor(name):
        dtype = getattr(torch, dtypes.get(name, "float64"), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype of {name}")
        return torch.as_tensor(ds[name].values).to(dtype)

    fields = {k: v for k, v in meta.items() if k != "task_features"}
    fields.update({k: tensor(k) if k in ds else None for k in _ARRAYS})
    fields["task_features"] = {k: tensor(f"task_feature:{k}") for k in meta.get("task_features", [])}
    return MultiTaskData(**fields)


def write_atomic_csv(frame, path: str | Path) -> Path:
    """Write a CSV through a temporary file so a failure leaves no partial file."""
    return write_atomic(path, lambda fh: frame.to_csv(fh, index=False), "a CSV file")


def write_atomic(path: str | Path, write, what: str = "a file") -> Path:
    """Call ``write(text_file)`` on a temporary file beside ``path``, then move it into place:
    a failure leaves no partial file. The file gets the usual permissions (umask), not
    mkstemp's private 0600."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder, not {what} to write; choose a file name")
    _check_parent(path)
    made = _make_parents(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_TMP}", dir=path.parent)
    except OSError as e:
        _remove_empty(made)
        raise PermissionError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    try:
        with open(fd, "w", encoding="utf-8") as fh:
            write(fh)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------- user-written priors
def file_module_name(file: str | Path) -> str:
    """The module name a prior file is imported under: the file stem plus a short hash of its
    absolute path, so the same file always gets the same name and no real module is shadowed."""
    file = Path(file).resolve()
    stem = re.sub(r"\W", "_", file.stem)
    digest = hashlib.sha256(str(file).encode()).hexdigest()[:8]
    return f"bayesmtl_user_{stem}_{digest}"


def sha256_of(file: str | Path) -> str:
    """Hex SHA-256 digest of a file's bytes."""
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()


def import_file(file: str | Path, name: str) -> ModuleType:
    """Run a .py file as module ``name`` and register it in ``sys.modules`` (pickle finds
    classes there). Its folder is on ``sys.path`` while it runs, so it may import its neighbours."""
    file = Path(file)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if str(file.parent) in sys.path:
            sys.path.remove(str(file.parent))
    return module


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _import_prior_source(source: dict, run: Path) -> None:
    """Import the module of a run's user-written prior (see ``prior_source`` in run.json)."""
    cls = source["class"]
    if "file" in source:
        file, name = Path(source["file"]), source["import_name"]
        where = str(file)
        module = sys.modules.get(name)  # imported already in this process (e.g. by the fit)
        if module is None:
            if not file.is_file():
                raise PriorSourceError(
                    f"the run's prior {cls} came from {file}, which no longer exists; put it back, "
                    f"or set prior_source.file in {run / 'run.json'} to where it is now")
            _warn_if_changed(source, file)
            try:
                module = import_file(file, name)
            except (Exception, SystemExit) as e:
                raise PriorSourceError(f"the run's prior {cls} comes from {file}, which fails on import: "
                                       f"{_first_line(e)}") from e
    else:
        where = f"module {source['module']}"
        try:
            module = importlib.import_module(source["module"])
        except (Exception, SystemExit) as e:
            raise PriorSourceError(f"the run's prior {cls} came from {where}, which cannot be imported "
                                   f"now ({_first_line(e)}); make it importable (e.g. with PYTHONPATH)") from e
        if getattr(module, "__file__", None):
            _warn_if_changed(source, Path(module.__file__))
    if not hasattr(module, cls):
        if "file" in source:
            sys.modules.pop(source["import_name"], None)
        raise PriorSourceError(f"the run's prior {cls} came from {where}, which no longer defines {cls}; "
                               "put the class back to load this run")


def _trunk_from_source(source: dict):
    """The network a run's ``--trunk`` function builds (``trunk_source`` in run.json): its
    architecture, for weights the run holds."""
    where = source.get("file") or source.get("module")
    try:
        if "file" in source:
            module = sys.modules.get(source["import_name"]) or import_file(Path(source["file"]), source["import_name"])
        else:
            module = importlib.import_module(source["module"])
        return getattr(module, source["function"])(*source.get("args", []))
    except (Exception, SystemExit) as e:
        raise PriorSourceError(f"the run's trunk {source.get('function')} from {where} cannot be built now: "
                               f"{_first_line(e)}") from e


def _warn_if_changed(source: dict, file: Path) -> None:
    if source.get("sha256") and sha256_of(file) != source["sha256"]:
        warnings.warn(f"the run's prior {source['class']} comes from {file}, which has changed since the "
                      "run was fitted (sha256 differs); loading it as it is now", stacklevel=5)  # bm.load's caller
