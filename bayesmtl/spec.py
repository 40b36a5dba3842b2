"""Models as data: a JSON-able description of a model object and back, with no code run on load.

``to_spec(obj)`` walks an object's attributes (the package's models, priors and likelihoods keep
their settings as plain attributes): numbers, strings, lists, dicts, tensors, Pyro distributions
(by name and parameters) and objects of allowed classes (by ``module:qualname`` and their
attributes). ``from_spec(spec, classes)`` rebuilds it, creating objects only of classes in the
package (``bayesmtl``, its ``models``), of ``pyro.distributions`` / ``torch.distributions``, or
given by the caller in ``classes``: a spec naming anything else is refused, so a crafted file
cannot make loading call arbitrary code. What cannot be described (a lambda, a gpytorch kernel
object) raises ``SpecError`` when writing.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .nn_spec import build_module, module_spec

__all__ = ["to_spec", "from_spec", "SpecError", "class_path"]

#: modules whose classes may be created on load without the caller naming them
SAFE_PREFIXES = ("bayesmtl.", "models.")


class SpecError(ValueError):
    """An object cannot be written as data, or a spec cannot be read back safely."""


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _is_safe_module(module: str) -> bool:
    return module == "bayesmtl" or module.startswith(SAFE_PREFIXES)


def to_spec(obj: Any, where: str = "model") -> Any:
    """A JSON-able description of ``obj`` (see the module docstring); ``where`` names the
    attribute path in errors."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return obj if np.isfinite(obj) else {"float": repr(float(obj))}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return to_spec(obj.item(), where)
    if isinstance(obj, (list, tuple)):
        return {"list" if isinstance(obj, list) else "tuple": [to_spec(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, Mapping):
        if not all(isinstance(k, str) for k in obj):
            raise SpecError(f"{where}: only string keys can be saved")
        return {"dict": {k: to_spec(v, f"{where}.{k}") for k, v in obj.items()}}
    if isinstance(obj, torch.Tensor):
        return {"tensor": obj.detach().cpu().tolist(), "dtype": str(obj.dtype).replace("torch.", "")}
    if isinstance(obj, torch.Size):
        return {"tuple": list(obj)}
    if isinstance(obj, torch.dtype):
        return {"dtype": str(obj).replace("torch.", "")}
    if isinstance(obj, torch.distributions.Distribution):
        return _dist_spec(obj, where)
    if isinstance(obj, type):
        return {"class": class_path(obj)}  # e.g. Custom(dist.Gamma, ...): checked again on load
    if isinstance(obj, torch.nn.Module):  # a network's weights as tensors (``nn_spec``)
        return module_spec(obj, where)
    cls = type(obj)
    if isinstance(obj, (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)):
        raise SpecError(f"{where}: a function ({getattr(obj, '__qualname__', obj)!r}) cannot be saved as data")
    if not hasattr(obj, "__dict__") or cls.__module__.startswith(("torch.", "gpytorch.", "pyro.")):
        raise SpecError(f"{where}: a {cls.__module__}.{cls.__qualname__} cannot be saved as data")
    return {"object": class_path(cls), "attrs": {k: to_spec(v, f"{where}.{k}") for k, v in vars(obj).items()}}


def _dist_spec(d: torch.distributions.Distribution, where: str) -> dict:
    cls = type(d)
    if isinstance(d, torch.distributions.Independent):
        return {"independent": _dist_spec(d.base_dist, where), "ndims": d.reinterpreted_batch_ndims}
    params = {}
    for k in d.arg_constraints:
        v = d.__dict__.get(k)
        if v is None and isinstance(d, torch.distributions.TransformedDistribution):
            v = getattr(d, k, None)
        if v is not None:
            params[k] = to_spec(v, f"{where}.{k}")
    out = {"dist": class_path(cls), "params": params, "batch_shape": list(d.batch_shape)}
    for k in ("event_dim", "n"):  # Delta's event_dim; OrderedNormal's size
        if k in d.__dict__ and isinstance(d.__dict__[k], int):
            out[k] = d.__dict__[k]
    return out


def _imported(module: str, name: str, bases: tuple[type, ...]) -> type | None:
    """A class of a module this process has imported already (no code runs to get it) that
    subclasses one of ``bases`` (the package's prior, likelihood and model types), else None."""
    obj: Any = sys.modules.get(module)
    for part in name.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and bases and issubclass(obj, bases) else None


def _resolve(path: str, classes: Mapping[str, type], allow_dists: bool = False,
             bases: tuple[type, ...] = ()) -> type:
    if path in classes:
        return classes[path]
    module, _, name = path.partition(":")
    safe = _is_safe_module(module) or (allow_dists and module.startswith(("pyro.distributions",
                                                                           "torch.distributions")))
    if not safe and (found := _imported(module, name, bases)) is not None:
        return found  # e.g. the user's own prior class, defined in this session
    if not safe:
        raise SpecError(f"the saved model needs the class {path}, which is not part of bayesmtl; load with "
                        f"classes={{{path!r}: YourClass}} (or trust_code=True to import it by that path)")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise SpecError(f"the saved model names {path}, which this version of bayesmtl does not have")
    if not isinstance(obj, type):
        raise SpecError(f"the saved model names {path}, which is not a class")
    return obj


def from_spec(spec: Any, classes: Mapping[str, type] | None = None, trust_code: bool = False,
              bases: tuple[type, ...] = (), modules: Mapping[str, torch.nn.Module] | None = None) -> Any:
    """The object ``to_spec`` described. Classes outside the package come from ``classes``
    (``{"module:Name": cls}``), from modules already imported when they subclass one of
    ``bases``, or with ``trust_code=True`` are imported by their path. A torch module is rebuilt
    by ``nn_spec.build_module`` (``modules``: the architecture of a user's own network)."""
    classes = dict(classes or {})

    def build(s: Any) -> Any:
        if s is None or isinstance(s, (bool, int, float, str)):
            return s
        if isinstance(s, list):
            return [build(v) for v in s]
        if not isinstance(s, dict):
            raise SpecError(f"not a model description: {type(s).__name__}")
        if "float" in s:
            return float(s["float"])
        if "list" in s:
            return [build(v) for v in s["list"]]
        if "tuple" in s:
            return tuple(build(v) for v in s["tuple"])
        if "dict" in s:
            return {str(k): build(v) for k, v in s["dict"].items()}
        if "tensor" in s:
            dtype = getattr(torch, str(s.get("dtype", "float64")), None)
            if not isinstance(dtype, torch.dtype):
                raise SpecError(f"unknown tensor dtype {s.get('dtype')!r}")
            return torch.tensor(s["tensor"], dtype=dtype)
        if "dtype" in s:
            dtype = getattr(torch, str(s["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise SpecError(f"unknown dtype {s['dtype']!r}")
            return dtype
        if "independent" in s:
            return build(s["independent"]).to_event(int(s["ndims"]))
        if "module" in s:
            try:
                return build_module(s, modules)
            except (ValueError, TypeError, KeyError) as e:
                raise SpecError(str(e)) from None
        if "dist" in s:
            cls = get(s["dist"], allow_dists=True)
            if not issubclass(cls, torch.distributions.Distribution):
                raise SpecError(f"{s['dist']} is not a distribution")
            params = {k: build(v) for k, v in s.get("params", {}).items()}
            extra = {k: int(s[k]) for k in ("event_dim", "n") if k in s}
            try:
                d = cls(**params, **extra)
            except (TypeError, ValueError) as e:
                raise SpecError(f"cannot rebuild {s['dist']} from {sorted(params)}: {e}") from None
            shape = torch.Size(s.get("batch_shape", []))
            return d.expand(shape) if shape != d.batch_shape else d
        if "class" in s:
            return get(s["class"], allow_dists=True)
        if "object" in s:
            cls = get(s["object"])
            obj = cls.__new__(cls)
            obj.__dict__.update({k: build(v) for k, v in s.get("attrs", {}).items()})
            return obj
        raise SpecError(f"not a model description: keys {sorted(s)}")

    def get(path: str, allow_dists: bool = False) -> type:
        if trust_code and path not in classes:
            module, _, name = path.partition(":")
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
            return obj
        return _resolve(path, classes, allow_dists, bases)

    return build(spec)
