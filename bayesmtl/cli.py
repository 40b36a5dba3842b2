"""Command line: ``bayesmtl fit | predict | summary | demo``.

Errors a user can fix (bad data, bad settings, missing files) print one line and exit with
status 2; nothing is written when a command fails.

``fit --prior my_priors.py:MyPrior`` fits ``MultiTaskModel(MyPrior(**prior_args))`` with a task
prior the user wrote (a ``bayesmtl.priors.TaskPrior`` subclass); run.json records where it came
from, and ``predict``/``summary`` import it from there again.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

from .likelihoods import _BY_NAME
from .validate import check_count, check_prob, check_seed

__all__ = ["main"]


class UserError(Exception):
    """An error in the user's input, reported as one line."""


def _arg_type(check, name: str, cast=float):
    """An argparse type: ``cast`` then ``check`` (validate.py), its message as argparse's error."""
    def parse(text: str):
        try:
            return check(cast(text), name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = name  # argparse names the type in "invalid <name> value"
    return parse


def _seconds(value: float, name: str) -> float:
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds >= 0 (0: never); got {value!r}")
    return value


def _csv_list(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def _options(pairs: list[str], flag: str = "--option") -> dict:
    """``key=value`` options; values parsed as int, float, bool or str."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise UserError(f"{flag} expects key=value; got {p!r}")
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


def _build_model(name: str, likelihood: str | None, shared: list[str] | None, options: dict | None = None):
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
    own = {k: v for k, v in (options or {}).items() if k in params and k not in ("likelihood", "shared", "prior")}
    rest = {k: v for k, v in (options or {}).items() if k not in own}
    try:
        model = cls(**kwargs, **own)
        if rest:  # settings of the model's task prior (rank, truncation, covariance, ...)
            prior_cls = type(model.prior) if "prior" in params else None
            prior_params = inspect.signature(prior_cls).parameters if prior_cls else {}
            unknown = [k for k in rest if k not in prior_params]
            if unknown:
                settable = sorted(k for k in list(params) + list(prior_params)
                                  if k not in ("likelihood", "shared", "prior", "kwargs") and not k.endswith("_prior"))
                raise UserError(f"--model-option {unknown[0]}: model {name!r} has no such setting; "
                                f"it has {settable}")
            model = cls(**kwargs, **own, prior=prior_cls(**rest))
    except (TypeError, ValueError) as e:
        raise UserError(f"model {name!r} with {options}: {_first_line(e)}") from None
    return model


#: distributions a --set-prior may name (numbers only: nothing is evaluated)
_PRIOR_FAMILIES = ("Normal", "HalfNormal", "HalfCauchy", "Cauchy", "StudentT", "Laplace",
                   "LogNormal", "Gamma", "Exponential", "Uniform", "Beta")


def _parse_prior(text: str):
    """``Name(a, b)`` with numbers, or a number (a fixed value), as a distribution or float."""
    import math
    import re

    import pyro.distributions as dist

    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = re.fullmatch(r"([A-Za-z]+)\(([^()]*)\)", text)
    if not m or m.group(1) not in _PRIOR_FAMILIES:
        raise UserError(f"--set-prior: {text!r} is not a prior; write e.g. HalfNormal(2) or Normal(0, 10) "
                        f"(families: {', '.join(_PRIOR_FAMILIES)}) or a number")
    try:
        args = [float(a) for a in m.group(2).split(",") if a.strip()]
    except ValueError:
        raise UserError(f"--set-prior: the arguments of {text!r} must be numbers") from None
    if not all(math.isfinite(a) for a in args):
        raise UserError(f"--set-prior: the arguments of {text!r} must be finite numbers")
    family = m.group(1)
    try:
        return getattr(dist, family)(*args)
    except (TypeError, ValueError) as e:
        raise UserError(f"--set-prior: {text!r}: {_first_line(e)}") from None


#: site names a user sees in the summary -> the setting that holds their prior
_SITE_ALIASES = {"mu": "mean", "tau": "scale", "sigma": "noise", "coef": "shared"}


def _prior_slot(model, key: str) -> tuple[str, str] | None:
    """Where setting ``key``'s prior lives: (part, attribute), part one of "likelihood", "prior",
    "model"; None if the model has no such prior setting."""
    prior, lik = getattr(model, "prior", None), getattr(model, "likelihood", None)
    if key == "noise" and lik is not None and hasattr(lik, "noise_prior"):
        return "likelihood", "noise_prior"
    if lik is not None and (key == getattr(lik, "param", None) or (key == "nu" and hasattr(lik, "df_prior"))):
        return "likelihood", "df_prior" if key == "nu" else "prior"  # phi, shape, gate; Student-t's nu
    if key == "shared" and hasattr(model, "shared_prior"):
        return "model", "shared_prior"
    if prior is not None and key in vars(prior) and key not in ("covariance", "centered", "rank", "eta",
                                                                "truncation", "loading_scale"):
        return "prior", key
    if key.endswith("_prior") and key in vars(model):
        return "model", key
    return None


def _positive_support(d) -> bool:
    from torch.distributions import constraints

    support = getattr(d, "support", None)
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return (support is constraints.positive or support is constraints.nonnegative
            or (isinstance(support, (constraints.greater_than, constraints.greater_than_eq))
                and float(support.lower_bound) >= 0))


def _set_priors(model, pairs: list[str] | None, data=None):
    """A copy of ``model`` with ``SETTING=Prior`` pairs applied: ``noise`` (the Gaussian noise
    prior), ``shared`` (shared coefficients), or a setting of the task prior (``mean``, ``scale``,
    ``feature_scale``, ...) or of the model (``lengthscale_prior``, ...); the site names ``mu``,
    ``tau``, ``sigma`` and ``coef`` stand for ``mean``, ``scale``, ``noise`` and ``shared``.
    With ``data``, a setting whose default prior lies on positive values (a scale) must get one
    that does too; a setting given twice, or a number that is not finite, is refused."""
    import copy
    import math

    from bayesmtl.priors.base import as_distribution

    bound = None
    if data is not None and pairs:
        try:
            bound = model.bind(data)  # the data-scaled defaults, to read their supports
        except Exception:  # noqa: BLE001 - the fit itself reports what is wrong with model and data
            bound = None
    model = copy.copy(model)
    seen: dict[str, str] = {}
    for pair in pairs or []:
        name, eq, text = pair.partition("=")
        key = _SITE_ALIASES.get(name.strip(), name.strip())
        if not eq or not key:
            raise UserError(f"--set-prior expects SETTING=Prior, e.g. scale=HalfNormal(2); got {pair!r}")
        if key in seen:
            raise UserError(f"--set-prior: {key!r} is set twice ({seen[key]!r} and {pair!r}); give it once")
        seen[key] = pair
        value = _parse_prior(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--set-prior {pair!r}: a fixed value must be a finite number")
        slot = _prior_slot(model, key)
        if slot is None:
            prior = getattr(model, "prior", None)
            names = ["noise", "shared"] + sorted(k for k, v in vars(prior or object()).items()
                                                 if v is None or hasattr(v, "log_prob"))
            names += sorted(k for k in vars(model) if k.endswith("_prior"))
            raise UserError(f"--set-prior: {type(model).__name__} has no prior setting {key!r}; "
                            f"settable: {sorted(set(names))}")
        part, attr = slot
        default = getattr(bound if part == "model" else getattr(bound, part, None), attr, None) if bound else None
        if default is not None and _positive_support(default):
            ok = value > 0 if isinstance(value, float) else _positive_support(value)
            if not ok:
                raise UserError(f"--set-prior {pair!r}: {key!r} is a positive quantity (its default prior is a "
                                f"{type(default).__name__}); give a prior on positive values, e.g. HalfNormal(2), "
                                "or a number > 0")
        if part == "model":
            setattr(model, attr, as_distribution(value, key))
            continue
        holder = copy.copy(getattr(model, part))
        setattr(model, part, holder)
        setattr(holder, attr, value if isinstance(value, float) and key == "mean" and part == "prior"
                else as_distribution(value, key))
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _prior_args(text: str | None) -> dict:
    if text is None:
        return {}
    try:
        args = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--prior-args is not valid JSON ({e}): {text!r}") from None
    if not isinstance(args, dict):
        raise UserError(f"--prior-args must be a JSON object of keyword arguments, e.g. '{{\"df\": 4}}'; "
                        f"got {text!r}")
    return args


def _import_prior_module(where: str, flag: str = "--prior"):
    """The module named by the part of --prior (or ``flag``) before ':' (a .py file or an
    importable module), and how run.json records it."""
    from bayesmtl.runs import file_module_name, import_file, sha256_of

    is_module = (not where.endswith(".py") and all(part.isidentifier() for part in where.split("."))
                 and not Path(where).is_file())
    if not is_module:
        file = Path(where).expanduser()
        if not file.exists():
            raise UserError(f"{flag}: file {where!r} does not exist")
        if not file.is_file() or file.suffix != ".py":
            raise UserError(f"{flag}: {where!r} is not a .py file (expected FILE.py:ClassName)")
        file = file.resolve()
        name = file_module_name(file)
        try:
            module = import_file(file, name)
        except (Exception, SystemExit) as e:
            raise UserError(f"{flag}: importing {file} failed: {_first_line(e)}") from None
        return module, {"file": str(file), "import_name": name, "sha256": sha256_of(file)}
    try:
        module = importlib.import_module(where)
    except (Exception, SystemExit) as e:
        if isinstance(e, ModuleNotFoundError) and e.name and (where + ".").startswith(e.name + "."):
            hint = f"; did you mean {where}.py:ClassName?" if Path(where + ".py").is_file() else \
                " (a file is given as FILE.py:ClassName)"
            raise UserError(f"{flag}: no module named {e.name!r}{hint}") from None
        try:
            origin = importlib.util.find_spec(where).origin
        except Exception:
            origin = None
        raise UserError(f"{flag}: importing module {where}{f' ({origin})' if origin else ''} failed: "
                        f"{_first_line(e)}") from None
    origin = getattr(module, "__file__", None)
    return module, {"module": where, **({"sha256": sha256_of(origin)} if origin else {})}


def _build_prior(spec: str, args_text: str | None):
    """A TaskPrior instance from ``FILE.py:ClassName`` or ``package.module:ClassName`` and a JSON
    object of constructor arguments, and its ``prior_source`` record for run.json."""
    from bayesmtl.priors import TaskPrior

    where, colon, name = spec.rpartition(":")
    if not colon or not where or not name.isidentifier():
        raise UserError(f"--prior expects FILE.py:ClassName or package.module:ClassName; got {spec!r}")
    args = _prior_args(args_text)
    module, source = _import_prior_module(where)
    origin = source.get("file") or f"module {where}"
    defined = sorted(k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, TaskPrior)
                     and v is not TaskPrior and v.__module__ == module.__name__)
    cls = getattr(module, name, None)
    if cls is None:
        found = (f"it defines the TaskPrior subclass(es) {', '.join(defined)}" if defined
                 else "it defines no TaskPrior subclass")
        raise UserError(f"--prior: {origin} has no class {name!r}; {found}")
    if cls is TaskPrior:
        raise UserError("--prior: TaskPrior is the base class; give your subclass of it")
    if not (isinstance(cls, type) and issubclass(cls, TaskPrior)):
        what = f"class {name}" if isinstance(cls, type) else f"{name} ({type(cls).__name__})"
        raise UserError(f"--prior: {what} in {origin} is not a subclass of bayesmtl.priors.TaskPrior"
                        + (f"; TaskPrior subclasses there: {', '.join(defined)}" if defined else ""))
    if cls.sample is TaskPrior.sample:
        raise UserError(f"--prior: {name} in {origin} does not implement sample(tasks)")
    try:
        signature = inspect.signature(cls)
        signature.bind(**args)
    except TypeError as e:
        raise UserError(f"--prior-args {json.dumps(args)} do not fit {name}{signature}: {e}") from None
    except ValueError:  # no signature to check against
        pass
    try:
        prior = cls(**args)
    except Exception as e:
        raise UserError(f"--prior: {name}(**{json.dumps(args)}) from {origin} raised {_first_line(e)}") from None
    return prior, {**source, "class": name, "args": args}


def _build_trunk(spec: str, n_features: int):
    """The torch module ``FILE.py:function`` (or ``package.module:function``) returns, called with
    the data's number of features when it takes an argument, and its ``trunk_source`` record."""
    import torch

    where, colon, name = spec.rpartition(":")
    if not colon or not where or not name.isidentifier():
        raise UserError(f"--trunk expects FILE.py:function or package.module:function; got {spec!r}")
    module, source = _import_prior_module(where, "--trunk")
    make = getattr(module, name, None)
    if not callable(make):
        raise UserError(f"--trunk: {source.get('file') or where} has no function {name!r}")
    try:
        takes = [p for p in inspect.signature(make).parameters.values()
                 if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        takes = []
    args = [n_features] if takes else []
    try:
        trunk = make(*args)
    except Exception as e:
        raise UserError(f"--trunk: {name}({', '.join(map(str, args))}) raised {_first_line(e)}") from None
    if not isinstance(trunk, torch.nn.Module):
        raise UserError(f"--trunk: {name} returned a {type(trunk).__name__}, not a torch.nn.Module")
    return trunk, {**source, "function": name, "args": args}


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=None, help="nuts, chees, pyro_nuts, svi or map (default: the model's, nuts; "
                   "map, type-II ML, for multitask-gp)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--seed", type=_arg_type(check_seed, "--seed", int), default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="back-end option, e.g. --option guide=mvn --option target_accept=0.9")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--checkpoint-every", type=_arg_type(_seconds, "--checkpoint-every"), default=60.0,
                   metavar="SECONDS",
                   help="nuts, chees and svi save their state beside --out this often (default 60; 0: never); "
                   "a killed fit continues with 'bayesmtl resume OUT'")


def _read_training_data(a):
    """--data as MultiTaskData (CSV or parquet, told apart by the file's first bytes), or as
    StreamedData with --stream (read in chunks; only per-task sums are kept)."""
    import bayesmtl as bm
    from bayesmtl.streamed import StreamedData, file_kind

    kw = dict(features=_csv_list(a.features), standardize=a.standardize,
              task_features=_csv_list(a.task_features) or ())
    if a.stream:
        for flag, value in (("--noise", a.noise), ("--trials", a.trials)):
            if value is not None:
                raise UserError(f"{flag} is not read with --stream (a Gaussian fit from per-task sums); "
                                "leave out --stream to load the rows")
        return StreamedData.scan(a.data, task=a.task, target=a.target, **kw)
    kw.update(noise=a.noise, trials=a.trials)
    path = Path(a.data)
    if path.is_file() and file_kind(path) == "parquet":
        return bm.MultiTaskData.from_parquet(path, task=a.task, target=a.target, **kw)
    return bm.MultiTaskData.from_csv(a.data, task=a.task, target=a.target, **kw)


def cmd_fit(a: argparse.Namespace) -> int:
    import bayesmtl as bm

    source = None
    for flag, value in (("--model", a.model), ("--features", a.features), ("--shared", a.shared),
                        ("--task-features", a.task_features), ("--likelihood", a.likelihood)):
        if value is not None and not _csv_list(value):
            raise UserError(f"{flag} is empty; leave it out for the default, or name "
                            f"{'columns' if 'feature' in flag or flag == '--shared' else 'one'}")
    if a.prior_args is not None and a.prior is None:
        raise UserError("--prior-args needs --prior FILE.py:ClassName")
    if a.trunk is not None and a.model not in (None, "neural"):
        raise UserError(f"--trunk is the network of --model neural, not of --model {a.model}")
    if a.model == "neural" and a.trunk is None:
        raise UserError("--model neural needs --trunk FILE.py:function (a function returning a torch.nn.Module)")
    data = _read_training_data(a)
    trunk_source = None
    if a.trunk is not None:
        trunk, trunk_source = _build_trunk(a.trunk, data.n_features)
        prior = None
        if a.prior is not None:
            prior, source = _build_prior(a.prior, a.prior_args)
        options = _options(a.model_option, "--model-option")
        if a.shared:
            raise UserError("--shared: the trunk takes every feature (--model neural has no shared coefficients)")
        own = {k: options.pop(k) for k in ("intercept", "train_trunk", "trunk_prior", "precision") if k in options}
        heads = options.pop("prior", None)
        if heads is not None or options:  # the heads' prior as a built-in model's (--model-option prior=...)
            if prior is not None:
                raise UserError("--model-option prior=... and --prior both set the heads' prior; give one")
            prior = _build_model(str(heads or "hierarchical"), None, None, options).prior
        try:
            model = bm.models.NeuralMultiTask(trunk, prior=prior, likelihood=a.likelihood or "gaussian", **own)
        except (TypeError, ValueError) as e:
            raise UserError(f"--model neural: {_first_line(e)}") from None
    elif a.prior is not None:
        prior, source = _build_prior(a.prior, a.prior_args)
        model = bm.MultiTaskModel(prior, likelihood=a.likelihood or "gaussian", shared=_csv_list(a.shared) or ())
    else:
        model = _build_model(a.model or "hierarchical", a.likelihood, _csv_list(a.shared),
                             _options(a.model_option, "--model-option"))
    model = _set_priors(model, a.set_prior, data)
    given = a.method  # None: fit picks the model's method for these data and records why
    a.method = a.method or model.method_for(data)[0]
    from bayesmtl.runs import checkpoint_path, reserve

    # under torchrun every process fits (infer/distributed.py); the first alone writes the run
    first = int(os.environ.get("RANK", "0") or 0) == 0 or int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1
    with reserve(a.out, overwrite=a.overwrite) if first else contextlib.nullcontext():  # refused or locked now
        ckpt = checkpoint_path(a.out)
        resume = getattr(a, "resume", False)
        if first and not resume and any(ckpt.rglob("*.npz")):
            raise UserError(f"{str(a.out)!r} has an unfinished fit's checkpoint ({str(ckpt)!r}): continue it with "
                            f"'bayesmtl resume {a.out}', or remove that folder to start again")
        keep = a.checkpoint_every > 0 and a.method in _CHECKPOINTED
        if keep and not resume and first:
            shutil.rmtree(ckpt, ignore_errors=True)  # a fit that failed before its first checkpoint
            ckpt.mkdir()
            (ckpt / "command.json").write_text(json.dumps({"argv": a.argv, "cwd": os.getcwd()}))
        _FitState.checkpoint = ckpt if keep else None
        more = {}
        if keep:
            more = {"checkpoint_every": a.checkpoint_every, ("resume" if resume else "checkpoint"): str(ckpt)}
        try:
            post = bm.fit(model, data, method=given, chains=a.chains, warmup=a.warmup, draws=a.draws,
                          seed=a.seed, device=a.device, progress=not a.quiet, **more, **_options(a.option))
        except Exception:
            if first and keep and not any(ckpt.rglob("*.npz")):
                shutil.rmtree(ckpt, ignore_errors=True)  # no progress to keep
            raise
        if not first:
            return 0
        if source is not None:
            post.info["prior_source"] = source
        if trunk_source is not None:
            post.info["trunk_source"] = trunk_source
        post.save(a.out, overwrite=a.overwrite)
        shutil.rmtree(ckpt, ignore_errors=True)
        _FitState.checkpoint = None
    problems = post.info["diagnostics"]["problems"]
    verdict = "all checks passed" if not problems else f"{len(problems)} diagnostic warning(s) above"
    print(f"wrote {a.out}: {post.describe_draws()} in {post.info['seconds']:.1f} s; {verdict}; "
          f"see: bayesmtl summary {a.out}")
    return 0


#: methods that checkpoint (``infer/checkpoint.py``)
_CHECKPOINTED = ("nuts", "chees", "svi")


class _FitState:
    """The checkpoint folder of the fit running now, for the line an interrupted fit prints."""

    checkpoint = None


def cmd_resume(a: argparse.Namespace) -> int:
    """Continue the fit whose checkpoint sits beside run directory ``a.run``."""
    from bayesmtl.runs import checkpoint_path

    ckpt = checkpoint_path(a.run)
    try:
        command = json.loads((ckpt / "command.json").read_text())
        argv, cwd = list(command["argv"]), str(command["cwd"])
    except FileNotFoundError:
        raise UserError(f"no unfinished fit to resume at {str(a.run)!r} (no {str(ckpt)!r})") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{str(ckpt / 'command.json')!r} is not a readable fit command ({e})") from None
    if not all(isinstance(x, str) for x in argv) or not argv or argv[0] != "fit":
        raise UserError(f"{str(ckpt / 'command.json')!r} does not hold a 'bayesmtl fit' command")
    if not any(ckpt.rglob("*.npz")):
        raise UserError(f"nothing to resume at {str(a.run)!r}: the fit stopped before its first checkpoint; "
                        "run the fit again")
    if not os.path.isdir(cwd):
        raise UserError(f"the fit ran in {cwd!r}, which no longer exists; its paths are relative to it")
    fit = build_parser().parse_args(argv)
    fit.argv, fit.resume = argv, True
    if a.quiet:
        fit.quiet = True
    here = os.getcwd()
    os.chdir(cwd)
    try:
        return cmd_fit(fit)
    finally:
        os.chdir(here)


def cmd_predict(a: argparse.Namespace) -> int:
    import bayesmtl as bm
    from bayesmtl.data import read_csv
    from bayesmtl.runs import write_atomic_csv

    if Path(a.out).exists() and Path(a.data).exists() and Path(a.out).resolve() == Path(a.data).resolve():
        raise UserError(f"--out {a.out!r} is the input --data file; choose another path for the predictions")
    post = bm.load(a.run, trust_pickle=a.trust_pickle, trust_code=a.trust_code)
    if not Path(a.data).exists():
        raise UserError(f"data file {a.data!r} does not exist")
    pred = post.predict(read_csv(Path(a.data), post.data.task_column), seed=a.seed)
    write_atomic_csv(pred, a.out)
    print(f"wrote {a.out}: {len(pred)} rows ({int(pred['new_task'].sum())} of tasks unseen in training)")
    return 0


def cmd_summary(a: argparse.Namespace) -> int:
    import pandas as pd

    import bayesmtl as bm

    post = bm.load(a.run, trust_pickle=a.trust_pickle, trust_code=a.trust_code)
    summary = post.summary(prob=a.prob)
    with pd.option_context("display.max_rows", a.max_rows, "display.max_columns", None, "display.width", 10_000):
        print(post)
        print(f"draws: {summary.attrs['draws']}")
        print(summary.round(3).to_string() if a.max_rows is None or len(summary) <= a.max_rows
              else summary.round(3))
    priors = post.prior_summary()
    scales = {k: v for k, v in priors.attrs["scales"].items() if k != "defaults"}
    scales = ", ".join(f"{k} {v:.4g}" for k, v in scales.items()) or "none"
    print(f"\npriors (left at data-scaled defaults: {', '.join(priors.attrs['defaults']) or 'none'}; "
          f"linear predictor {scales}):")
    print(priors.to_string(index=False))
    problems = post.diagnose()
    print("\ndiagnostics: " + ("all checks passed" if not problems else f"{len(problems)} problem(s)"))
    for p in problems:
        print(f"  - {p.message}")
    return 0


def _existing_runs(runs: list[str]) -> None:
    for run in runs:
        if not Path(run).is_dir():
            raise UserError(f"{run!r} is not a run directory (no such folder)")


def cmd_compare(a: argparse.Namespace) -> int:
    import pandas as pd

    from bayesmtl.compare import compare

    _existing_runs(a.runs)
    if a.refit == "all" and a.by != "task":
        raise ValueError("--refit all refits one task at a time: use it with --by task")
    table = compare(a.runs, by=a.by, refit=a.refit, trust_pickle=a.trust_pickle, trust_code=a.trust_code,
                    progress=True)
    refitted = bool(table.attrs["refitted"])
    what = ("leave one row out" if a.by == "row" else "leave one task out (" + (
        "exact refits where the notes say, importance sampling elsewhere" if refitted else "importance sampling") + ")")
    print(f"PSIS-LOO, {what}: {table.attrs['n']} {a.by}s; elpd_diff and dse against the best run; "
          "a difference within 2 dse is not a clear preference")
    with pd.option_context("display.max_columns", None, "display.width", 10_000):
        print(table.round(3).to_string())
    for note in table.attrs["notes"]:
        print(f"note: {note}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from bayesmtl.report import report

    _existing_runs(a.runs)
    out = Path(a.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {a.out!r} must name an .html file")
    if out.exists() and not a.overwrite:
        raise UserError(f"--out {a.out!r} exists; pass --overwrite to replace it")
    report(a.runs, out, by=a.by, trust_pickle=a.trust_pickle, trust_code=a.trust_code)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB): open it in any browser")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    import contextlib

    from bayesmtl.runs import reserve

    # refused or locked now, not after the fit
    with reserve(a.out, overwrite=a.overwrite) if a.out else contextlib.nullcontext():
        return _demo(a)


def _demo(a: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    a.method = a.method or "nuts"

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
        problems = post.diagnose()
        print("\ndiagnostics: " + ("all checks passed" if not problems else "; ".join(map(str, problems))))
    if a.out:
        post.save(a.out, overwrite=a.overwrite)
        rel.plot(Path(a.out) / "relations.png")
        print(f"wrote {a.out} (relations heatmap: {a.out}/relations.png)")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors (unknown option, --model with --prior, ...) in one line, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _trust_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", action="store_true", help="import the run's own prior class from the file or "
                   "module the fit used (that runs its code)")
    p.add_argument("--trust-pickle", action="store_true", help="read a run kept as a pickle (model.pt: older "
                   "runs, or models that cannot be written as data); this can run code: only for runs you trust")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bayesmtl", description="Bayesian multi-task learning")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fit a model to a long-format CSV and write a run directory",
                       description="Fit a built-in model (--model) or your own task prior (--prior) to a "
                       "long-format CSV and write a run directory.")
    which = f.add_mutually_exclusive_group()
    which.add_argument("--model", help="built-in model: hierarchical (default), independent, pooled, "
                       "dp-clustering, multitask-gp, task-relationship, ..., neural (with --trunk)")
    which.add_argument("--prior", metavar="FILE.py:CLASS", help="your own task prior, a subclass of "
                       "bayesmtl.priors.TaskPrior, from a Python file (my_priors.py:StudentTPopulation) or an "
                       "importable module (package.module:Class); fitted as MultiTaskModel(prior, likelihood). "
                       "run.json records the file and its sha256; predict and summary import it from there again")
    f.add_argument("--trunk", metavar="FILE.py:FUNCTION", help="the shared network of --model neural: a function "
                   "returning a torch.nn.Module that maps the features to H outputs (given the number of features "
                   "when it takes an argument); each task gets a Bayesian head on them, under the prior of "
                   "--prior, or of a built-in model (--model-option prior=task-relationship --model-option rank=3; "
                   "default hierarchical). Weights are saved as tensors; a network of your own layer classes "
                   "loads again with --trust-code")
    f.add_argument("--prior-args", metavar="JSON", help="keyword arguments of the --prior class as a JSON "
                   "object, e.g. '{\"df\": 4}'")
    f.add_argument("--data", required=True, help="long-format CSV or parquet file: one row per observation")
    f.add_argument("--stream", action="store_true", help="read --data in chunks, never whole: memory grows with "
                   "the tasks, not the rows (a hierarchical Gaussian fit from per-task sums); the run keeps a "
                   "reference to the file and its fingerprint, not a copy")
    f.add_argument("--task", required=True, help="task column")
    f.add_argument("--target", required=True, help="target column")
    f.add_argument("--features", help="comma-separated feature columns (default: all others)")
    f.add_argument("--task-features", help="comma-separated task-level columns, constant within each task "
                   "(e.g. size,region); a --prior gets them as tasks.features")
    f.add_argument("--shared", help="comma-separated features whose coefficients all tasks share")
    f.add_argument("--likelihood", help=f"one of {', '.join(sorted(_BY_NAME))} (default gaussian with --prior)")
    f.add_argument("--noise", help="column of known observation sds (meta-analysis)")
    f.add_argument("--trials", help="column of trial counts (binomial)")
    f.add_argument("--standardize", action="store_true", help="standardise features (replayed on predict)")
    f.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="a setting of the --model, e.g. --model-option rank=3 (multitask-gp, task-relationship), "
                   "--model-option truncation=30 (dp-clustering)")
    f.add_argument("--set-prior", action="append", metavar="SETTING=PRIOR",
                   help="replace a default prior, e.g. --set-prior scale=HalfNormal(2) (population scales), "
                   "mean=Normal(0,100), noise=HalfNormal(10), shared=Normal(0,5); defaults are scaled to the "
                   "data (see bayesmtl summary RUN)")
    f.add_argument("--out", required=True, help="run directory to write (a new or empty folder; see --overwrite)")
    f.add_argument("--overwrite", action="store_true", help="replace the run already at --out (kept until the "
                   "new one is complete); a folder that is not a run is never replaced")
    _fit_args(f)
    f.set_defaults(func=cmd_fit)

    r = sub.add_parser("resume", help="continue a killed or interrupted fit from its last checkpoint",
                       description="Continue the 'bayesmtl fit' that was writing RUN from its last checkpoint "
                       "(the same command, data and settings; with the same seed the result is the one the "
                       "uninterrupted fit would have written).")
    r.add_argument("run", help="the --out of the unfinished fit")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_resume)

    pr = sub.add_parser("predict", help="posterior predictive for new rows, known or new tasks")
    pr.add_argument("run", help="run directory")
    _trust_flags(pr)
    pr.add_argument("--data", required=True, help="CSV with the feature and task columns")
    pr.add_argument("--out", required=True, help="CSV to write: one row per input row")
    pr.add_argument("--seed", type=_arg_type(check_seed, "--seed", int), default=0)
    pr.set_defaults(func=cmd_predict)

    s = sub.add_parser("summary", help="print a run's posterior summary and diagnostics")
    s.add_argument("run")
    _trust_flags(s)
    s.add_argument("--max-rows", type=_arg_type(lambda v, n: check_count(n, v, 0), "--max-rows", int), default=60,
                   help="rows shown before the table is abbreviated")
    s.add_argument("--prob", type=_arg_type(check_prob, "--prob"), default=0.9,
                   help="mass of the central interval (default 0.9)")
    s.set_defaults(func=cmd_summary)

    c = sub.add_parser("compare", help="rank runs fitted to the same data by PSIS-LOO (elpd)",
                       description="Compare runs of different model families fitted to the same data by "
                       "Pareto-smoothed importance-sampling leave-one-out (ArviZ).")
    c.add_argument("runs", nargs="+", help="run directories written by `bayesmtl fit`")
    c.add_argument("--by", choices=["row", "task"], default="row",
                   help="leave out one row (predicting new rows of known tasks) or one task (a new task)")
    c.add_argument("--refit", choices=["auto", "all", "none"], default="auto",
                   help="--by task: refit exactly the tasks with high Pareto k when a run has at most "
                        "10 tasks (auto), every task (all: one fit per task and run), or none")
    _trust_flags(c)
    c.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="write one self-contained HTML report of one run or of several",
                        description="One HTML file (no server, no network): settings, diagnostics, summaries, "
                        "trace plots, task relations, clusters, predictive checks, priors; with several runs "
                        "also their PSIS-LOO comparison and relations side by side.")
    rp.add_argument("runs", nargs="+", help="run directories written by `bayesmtl fit`")
    rp.add_argument("--out", required=True, help="the .html file to write")
    rp.add_argument("--by", choices=["row", "task"], default="row", help="comparison: leave out a row or a task")
    rp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _trust_flags(rp)
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="fit the hierarchical model to built-in synthetic data")
    d.add_argument("--out", default=None, help="also write a run directory here")
    d.add_argument("--overwrite", action="store_true", help="replace the run already at --out")
    _fit_args(d)
    d.set_defaults(func=cmd_demo, warmup=500, draws=500)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"bayesmtl: warning: {message}", file=sys.stderr if file is None else file)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (a cluster's wall-time kill, ``kill PID``)."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal

    from bayesmtl.runs import PriorSourceError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (main() called from a thread): leave it
        pass
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.showwarning = _one_line_warning
        try:
            return args.func(args)
        except (UserError, ValueError, TypeError, OSError, ArithmeticError, PriorSourceError) as e:
            # one line: the first (Pyro appends its trace shapes to errors raised inside a model).
            # OSError: unreadable, unwritable or missing files; ArithmeticError: a non-finite ELBO
            print(f"bayesmtl: error: {(str(e).strip() or type(e).__name__).splitlines()[0]}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            what = "terminated" if isinstance(e, _Terminated) else "interrupted"
            ck = _FitState.checkpoint
            if ck is not None and any(ck.rglob("*.npz")):
                run = ck.with_name(ck.name[1:-len(".checkpoint")])
                print(f"bayesmtl: {what}; no run was written, the progress is kept: continue with "
                      f"'bayesmtl resume {run}'", file=sys.stderr)
            else:
                print(f"bayesmtl: {what}; nothing was written", file=sys.stderr)
            return 143 if isinstance(e, _Terminated) else 130
        except Exception as e:  # a bug of ours: the trace, and what to do with it
            import traceback

            if type(e).__module__.startswith(("bayesmtl.", "models.")):  # our own numeric errors (GP)
                print(f"bayesmtl: error: {(str(e).strip() or type(e).__name__).splitlines()[0]}", file=sys.stderr)
                return 2
            traceback.print_exc()
            print("bayesmtl: internal error (a bug in bayesmtl, not in your input): please report it with the "
                  "lines above and the command you ran; nothing was written", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
