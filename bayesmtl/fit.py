"""The driver: validate settings, place data on the device, run a back end, build the Posterior."""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .data import MultiTaskData
from .devices import keep_rng, on_host
from .diagnostics import DiagnosticWarning, diagnose
from .infer import Settings, get_backend, with_model_defaults
from .posterior import Posterior
from .protocol import Target, default_dtype
from .pyro_util import squeeze_to
from .streamed import StreamedData
from .validate import check_count, check_seed

__all__ = ["fit", "resolve_device", "choose_target"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A torch device from a name, with a clear error when it is not available."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def fit(model, data: MultiTaskData | StreamedData, method: str | None = None, *, chains: int = 4, warmup: int = 1000,
        draws: int = 1000, seed: int = 0, device: str | torch.device = "cpu",
        progress: bool = True, collapse: bool | None = None, checkpoint: str | Path | None = None,
        checkpoint_every: float = 60.0, resume: str | Path | None = None, **options) -> Posterior:
    """Fit ``model`` to ``data`` and return its Posterior.

    Parameters
    ----------
    data : MultiTaskData, or StreamedData (a file read in chunks: models that fit from per-task
        sums only, ``bayesmtl/streamed.py``)
    method : {"nuts", "chees", "pyro_nuts", "svi", "map", ...} or None
        Back end (see ``bayesmtl.infer.METHODS``); None: the model's choice for these data
        (``model.method_for(data)``): "nuts"; for ``MultitaskGP`` "map" (type-II ML), or "svi"
        where its inputs are too few for type-II ML, the reason recorded as
        ``info["method_chosen"]``.
    chains, warmup, draws : int
        MCMC settings; SVI draws ``draws`` samples from its fitted guide.
    seed : int
        Same seed, same device: same result.
    device : "cpu", "cuda", "cuda:N" or "auto"
    collapse : bool or None
        Integrate task parameters out in closed form where the model allows it (Gaussian
        likelihood with a Gaussian task prior) and draw them exactly afterwards. None: as the
        back end prefers (samplers and SVI use it whenever the model offers it, SVI not with
        ``batch_size``; MAP does not).
        ``info["path"]`` records which ran.
    checkpoint : folder, optional
        Save the sampler's or optimiser's whole state there every ``checkpoint_every`` seconds
        (NUTS, ChEES and SVI; ``infer/checkpoint.py``), so a killed run loses at most that much.
        The folder stays after the fit (the CLI removes its own once the run is written).
    resume : folder, optional
        Continue from the checkpoint in this folder (and keep checkpointing there). The model,
        data and settings must be those of the run that wrote it; with the same seed the result
        is the one the uninterrupted run would have given.
    **options
        Back-end options (e.g. ``guide="mvn"``, ``batch_size=256`` for SVI;
        ``target_accept=0.9`` for NUTS).

    Notes
    -----
    The model offers its targets (``Model.targets``: registered fast paths, then its plain
    program); the back end runs the first one it uses by default, recorded as ``info["path"]``.
    """
    with on_host():
        chains = check_count("chains", chains, 1)
        warmup = check_count("warmup", warmup, 0)
        draws = check_count("draws", draws, 1)
        seed = check_seed(seed)
        if not isinstance(data, (MultiTaskData, StreamedData)):
            raise TypeError(f"data must be a bayesmtl.MultiTaskData (e.g. MultiTaskData.from_frame(df, task=..., "
                            f"target=...)) or StreamedData (a file read in chunks); got {type(data).__name__}")
        from .protocol import Model

        if isinstance(model, type):
            raise TypeError(f"model must be a model instance, e.g. {model.__name__}(); got the class itself")
        if not isinstance(model, Model):
            raise TypeError(f"model must be a bayesmtl model (e.g. bayesmtl.models.Hierarchical()); "
                            f"got {type(model).__name__}")
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be bool; got {progress!r}")
        if collapse is not None and not isinstance(collapse, bool):
            raise TypeError(f"collapse must be bool or None; got {collapse!r}")
        method, why = model.method_for(data) if method is None else (method, "")
        backend, options, model_options = with_model_defaults(get_backend(method), options, model.sampler_defaults())
        dev = resolve_device(device)
        ckpt = _checkpoint_folder(checkpoint, resume, checkpoint_every)
        if resume is not None and not any(Path(ckpt).rglob(f"{backend.name}.npz")):
            found = sorted({f.stem for f in Path(ckpt).rglob("*.npz")})
            raise ValueError(f"resume={str(resume)!r} holds a checkpoint of {', '.join(found)}, not of method "
                             f"{backend.name!r}: resume with the method (and settings) that wrote it")
        holdout, full, given = None, data, model  # (the refit binds the model as given, its trunk untrained)
        by_tasks = _option(backend, options, "validate_by") == "tasks"
        refit = by_tasks or bool(_option(backend, options, "refit"))
        if (fraction := _option(backend, options, "validation")) is None:
            by_tasks = refit = False
        elif by_tasks:  # whole tasks out, scored as new tasks; then a refit on every row
            _check_task_holdout(model, data)
            data, holdout = data.split_tasks(fraction, seed=seed)
        else:
            train, holdout = data.split(fraction, seed=seed, min_train=2)  # the fit sees only the rest
            if holdout.n_rows > 0:
                data = train
            elif "validation" in model_options:  # the model's default, on data too small to spare rows: no early stop
                options, model_options, holdout = dict(options), dict(model_options), None
                del options["validation"], model_options["validation"]
            else:
                raise ValueError(f"validation={fraction}: no task has enough rows to hold any out (each keeps 2)")
            if refit and holdout is not None:
                _check_refit(data)
        settings = Settings(chains=chains, warmup=warmup, draws=draws, seed=seed, device=str(dev),
                            progress=progress, options=dict(options), checkpoint=ckpt,
                            checkpoint_every=float(checkpoint_every), resume=resume is not None,
                            fingerprint=data.digest() if ckpt else "")
        # checking a model runs its program once: that draws too. The data's dtype is the default
        # throughout, so a traced program replays a user's torch.zeros(...) as it was traced; the device
        # is the default only inside the model's program (data_context there).
        with seeded(seed, dev), default_dtype(data.dtype):
            model.check(data)
            for message in data.warnings():
                warnings.warn(message, UserWarning, stacklevel=2)
            model = model.bind(data)  # default priors scaled to the data; the caller's model is not changed
            on_device = data.to(dev)
            target = choose_target(model.targets(on_device), backend, collapse, type(model).__name__, settings.options)
            if target.trains and backend.kind == "mcmc":
                raise ValueError(f"{type(model).__name__} trains {', '.join(target.trains)} by optimisation, which "
                                 f"method {method!r} (a sampler) cannot: fit with method='svi' or 'map', then sample "
                                 f"the heads of the trained network with post.model.frozen()")
            if holdout is not None:
                target = replace(target, score=_holdout_score(model, data, holdout, target, seed, by_tasks))
            if refit and holdout is not None:  # this fit only finds the number of steps: no Posterior of its own
                found = _steps_found(backend, target, settings, holdout.n_rows, "tasks" if by_tasks else "rows")
                return _refit(given, full, found, backend, options, settings, method, model_options, collapse)
            post = _run(model, data, on_device, target, backend, settings, method, model_options,
                        {"method_chosen": why} if why else None)
            if holdout is not None:
                post.info["validation"] = {**post.info.get("validation", {}), "rows": holdout.n_rows, "by": "rows"}
            return post


def _check_task_holdout(model, data) -> None:
    from .model import MultiTaskModel

    if not isinstance(model, MultiTaskModel):
        raise ValueError(f"validate_by='tasks' scores held-out tasks as new tasks, which {type(model).__name__} "
                         "does not do yet; use validate_by='rows'")
    if not isinstance(data, MultiTaskData):
        raise ValueError("validate_by='tasks' needs data in memory (MultiTaskData), not streamed data")


def _check_refit(data) -> None:
    if not isinstance(data, MultiTaskData):
        raise ValueError("refit=True fits twice (rows held out, then every row), which needs data in memory "
                         "(MultiTaskData), not streamed data; fit with refit=False")


#: under a checkpoint, the held-out fit's folder and the record of the steps it found
SELECT, FOUND = "select", "found.json"


def _steps_found(backend, target, settings: Settings, rows: int, by: str) -> dict:
    """The held-out fit's ``info["validation"]``, with ``rows`` and ``by``. Under a checkpoint
    that fit checkpoints in ``<checkpoint>/select`` and its record is written there once it ends,
    so a resumed fit that finds the record goes straight to the refit."""
    if not settings.checkpoint:
        return {**backend.run(target, settings).info["validation"], "rows": rows, "by": by}
    folder = Path(settings.checkpoint) / SELECT
    options = settings.options if isinstance(settings.options, dict) else {}
    key = {"fingerprint": settings.fingerprint, "seed": settings.seed, "by": by,
           "options": {k: v for k, v in sorted(options.items()) if isinstance(v, (bool, int, float, str, type(None)))}}
    if settings.resume and (folder / FOUND).exists():
        saved = json.loads((folder / FOUND).read_text())
        if saved.get("key") != key:
            raise ValueError(f"{str(folder / FOUND)!r} was written by a different fit; resume with the same model, "
                             "data and settings")
        return saved["found"]
    info = backend.run(target, replace(settings, checkpoint=str(folder))).info
    found = {**info["validation"], "rows": rows, "by": by}
    tmp = folder / f".{FOUND}.tmp"
    folder.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps({"key": key, "found": found}, default=float))
    os.replace(tmp, folder / FOUND)
    return found


def _refit(model, data: MultiTaskData, val: dict, backend, options: dict, settings: Settings, method: str,
           model_options: dict, collapse: bool | None) -> Posterior:
    """The fit again on every row (every task), for the number of steps at which the held-out
    rows or tasks scored best (``val``: the first fit's ``info["validation"]``), holding nothing out."""
    steps = max(int(val["best_step"]), 1)
    change = {"validation": None, "validate_by": "rows", "refit": False, "steps": steps, "min_steps": steps,
              "anneal": 0}
    if hasattr(backend, "options"):  # a back end bound to an options object
        backend, options = type(backend)(replace(backend.options, **change), backend.inner), options
    else:
        options = {**options, **change}
    model.check(data)
    model = model.bind(data)
    on_device = data.to(torch.device(settings.device))
    target = choose_target(model.targets(on_device), backend, collapse, type(model).__name__, options)
    # the steps were chosen, not run to a settled loss: no "did not converge" for them
    extra = {"converged": None, "validation": {**val, "refit_steps": steps}}
    settings = replace(settings, options=dict(options), fingerprint=data.digest() if settings.checkpoint else "")
    return _run(model, data, on_device, target, backend, settings, method, model_options, extra, stacklevel=4)


def _option(backend, options: dict, name: str):
    """The SVI option ``name`` the back end's options ask for (an options object or keywords),
    checked; None when unset."""
    from .infer.options import _SVI_CHECKS

    value = options.get(name, getattr(getattr(backend, "options", None), name, None))
    return None if value is None else _SVI_CHECKS[name](value)


#: new-task parameter draws per guide draw when held-out tasks are scored (``validate_by="tasks"``)
NEW_TASK_DRAWS = 8


def _holdout_score(model, train: MultiTaskData, holdout: MultiTaskData, target: Target, seed: int,
                   new_tasks: bool = False):
    """``Target.score``: latent draws {site: (S, ...)} -> mean log predictive density of the
    held-out rows (each row's density averaged over the draws). ``new_tasks``: the held-out
    rows are of tasks unseen in ``train``, each draw's population giving ``NEW_TASK_DRAWS`` sets
    of their parameters, from one seeded stream so that scores of successive windows compare."""
    dims = model.site_dims(train)
    host = train.to("cpu")

    def score(draws: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            flat = {k: v.detach() for k, v in draws.items()}
            if target.conditional is not None:
                dev = next(iter(flat.values())).device
                flat = target.conditional(flat, torch.Generator(device=dev).manual_seed(seed))
            flat = model.complete(host, _squeezed({k: v.cpu() for k, v in flat.items()}, dims))
            if new_tasks:
                flat = {k: v.repeat_interleave(NEW_TASK_DRAWS, 0) for k, v in flat.items()}
                gen = torch.Generator().manual_seed(seed)
                ll = model.log_likelihood(holdout, flat, train=host, generator=gen).double()
            else:
                ll = model.log_likelihood(holdout, flat).double()
            return float((torch.logsumexp(ll, 0) - np.log(ll.shape[0])).mean())

    return score


def _checkpoint_folder(checkpoint, resume, every) -> str | None:
    """The checkpoint folder asked for (``resume`` wins), checked."""
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0:
        raise ValueError(f"checkpoint_every must be a number of seconds > 0; got {every!r}")
    if resume is not None:
        if checkpoint is not None and Path(checkpoint) != Path(resume):
            raise ValueError("give checkpoint= or resume=, not both (resume keeps checkpointing where it reads)")
        folder = Path(resume)
        if not folder.is_dir() or not any(folder.rglob("*.npz")):
            raise FileNotFoundError(f"resume={str(resume)!r}: no checkpoint there to resume from")
        return str(folder)
    if checkpoint is None:
        return None
    folder = Path(checkpoint)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint={str(checkpoint)!r} is a file, not a folder")
    return str(folder)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Every random draw inside comes from ``seed``; the caller's global RNG states (torch, CUDA,
    numpy, random) are as they were afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with keep_rng(device):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _run(model, data, on_device, target, backend, settings, method: str, model_options: dict,
         extra: dict | None = None, stacklevel: int = 3) -> Posterior:
    """Run the back end and build the Posterior; ``extra`` goes into ``info`` before the
    diagnostics read it, whose warnings point ``stacklevel`` frames up (at the caller of fit)."""
    seed, chains, warmup, draws, dev = (settings.seed, settings.chains, settings.warmup, settings.draws,
                                        torch.device(settings.device))
    options = settings.options
    t0 = time.perf_counter()
    out = backend.run(target, settings)
    host = data.to("cpu")
    C, S = next(iter(out.samples.values())).shape[:2]
    if target.conditional is not None:
        gen = torch.Generator(device=on_device.device).manual_seed(seed)
        full = {k: v.reshape((C * S,) + v.shape[2:]).to(on_device.device) for k, v in out.samples.items()}
        full = target.conditional(full, gen)
        out = out._replace(samples={k: v.reshape((C, S) + v.shape[1:]) for k, v in full.items()})
    seconds = time.perf_counter() - t0
    dims = model.site_dims(host)
    flat = _squeezed({k: v.detach().cpu().reshape((C * S,) + v.shape[2:]) for k, v in out.samples.items()}, dims)
    flat = model.complete(host, flat)
    samples = {k: v.reshape((C, S) + v.shape[1:]).numpy() for k, v in flat.items()}
    info = {"method": method, "backend": backend.name, "draws_kind": backend.kind, "chains": chains, "warmup": warmup,
            "draws": draws, "seed": seed, "device": str(dev), "options": dict(options),
            "seconds": seconds, "path": target.path, **out.info, **(extra or {})}
    info.update(target.info)
    if model_options:
        info["model_options"] = model_options  # filled in from the model's sampler_defaults, not the user's
    if target.reparam:
        info["reparam"] = {"non_centred": list(target.reparam)}
    info["prior_scales"] = {**model.prior_scales(host), "defaults": model.defaults()}
    post = Posterior(model, host, samples, out.sample_stats, info)
    info["priors"] = post.prior_summary().to_dict(orient="records")
    problems = diagnose(post)
    info["diagnostics"] = {**post.diagnostics(), "problems": [p.to_dict() for p in problems]}
    for p in problems:
        warnings.warn(p.message, DiagnosticWarning, stacklevel=stacklevel)
    return post


def _squeezed(flat: dict[str, torch.Tensor], dims: dict) -> dict[str, torch.Tensor]:
    """Flat draws (S, ...) with the plate-batch 1s dropped: each site at 1 + its named dims."""
    return {k: squeeze_to(v, 1 + len(dims[k])) if k in dims else v for k, v in flat.items()}


def choose_target(targets: list[Target], backend, collapse: bool | None, model_name: str,
                  options=None) -> Target:
    """The first target the back end uses by default (``backend.paths``, or
    ``backend.paths_for(options)`` where the options decide, in the model's order: fastest
    first); ``collapse=True`` demands the collapsed form, ``False`` the first of the others."""
    if collapse:
        found = [t for t in targets if t.path == "collapsed"]
        if not found:
            raise ValueError(f"{model_name} with this likelihood has no collapsed form")
        return found[0]
    paths = backend.paths_for(options) if hasattr(backend, "paths_for") else backend.paths
    if (getattr(options, "task_batch_size", None) if not isinstance(options, dict)
            else options.get("task_batch_size")) is not None:
        targets = [t for t in targets if t.task_batches]  # (a form that needs every task at once)
    if collapse is False:
        paths = tuple(p for p in paths if p != "collapsed")
    return next((t for t in targets if t.path in paths), targets[-1])
