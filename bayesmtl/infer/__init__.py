"""Inference back ends behind one protocol (``base.Backend``); ``get_backend`` maps a method name,
or a back end's options object (``NUTS(...)``, ``ChEES(...)``, ``SVI(...)``, ``MAP(...)``,
``PyroNUTS(...)``), to its back end.

Layout: ``options.py`` (the typed options), ``hmc_util.py`` (pure HMC helpers), ``adapt.py``
(warmup adaptation), ``driver.py`` (the loop the batched samplers share), ``nuts.py`` and
``chees.py`` (their kernels and back ends), ``groups.py`` (chain groups in processes),
``potential.py`` (the batched log density), ``pyro_nuts.py``, ``svi.py``, ``map.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .base import Backend, Draws, Settings
from .options import MAP, NUTS, SVI, ChEES, Configured, Options, PyroNUTS

__all__ = ["Backend", "Draws", "Settings", "get_backend", "with_model_defaults", "METHODS", "OPTIONS",
           "Options", "NUTS", "ChEES", "SVI", "MAP", "PyroNUTS"]


def _pyro_nuts():
    from .pyro_nuts import PyroNUTSBackend
    return PyroNUTSBackend()


def _nuts():
    from .nuts import BatchedNUTS
    return BatchedNUTS()


def _chees():
    from .chees import ChEESBackend
    return ChEESBackend()


def _svi():
    from .svi import SVIBackend
    return SVIBackend()


def _map():
    from .map import MAPBackend
    return MAPBackend()


#: method name -> factory of its back end; later back ends register here
METHODS = {"nuts": _nuts, "chees": _chees, "pyro_nuts": _pyro_nuts, "svi": _svi, "map": _map}

#: method name -> its options class
OPTIONS: dict[str, type[Options]] = {o.method: o for o in (NUTS, ChEES, PyroNUTS, SVI, MAP)}


def get_backend(method: str | Options) -> Backend:
    """The back end of a method name (its options come as ``settings.options``, a dict of
    keywords) or of an options object such as ``NUTS(target_accept=0.9)`` (which it runs with)."""
    if isinstance(method, Options):
        return method.backend()
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)} or pass an options object "
                         f"such as bayesmtl.infer.NUTS(...)")
    return METHODS[method]()


def with_model_defaults(backend: Backend, options: dict[str, Any],
                        defaults: Mapping[str, Any]) -> tuple[Backend, dict[str, Any], dict[str, Any]]:
    """Fill a model's ``sampler_defaults`` into the back end's options where the back end knows
    the option and the user left it unset; returns (back end, keyword options, what was filled).

    A back end bound to an options object (``Configured``) gets a copy with the filled fields;
    fields the object sets to other than the class default count as set."""
    if isinstance(backend, Configured):
        given, known = backend.options.given(), type(backend.options).known()
        filled = {k: v for k, v in defaults.items() if k in known and k not in given}
        if filled:
            backend = Configured(dataclasses.replace(backend.options, **filled), backend.inner)
        return backend, options, filled
    cls = OPTIONS.get(backend.name)
    known = cls.known() if cls is not None else []
    filled = {k: v for k, v in defaults.items() if k in known and k not in options}
    return backend, {**options, **filled}, filled
