"""Inference back ends behind one protocol (``base.Backend``); ``get_backend`` maps a method name,
or a back end's options object (``NUTS(...)``, ``ChEES(...)``, ``SVI(...)``, ``MAP(...)``,
``PyroNUTS(...)``), to its back end.

Layout: ``options.py`` (the typed options), ``hmc_util.py`` (pure HMC helpers), ``adapt.py``
(warmup adaptation), ``driver.py`` (the loop the batched samplers share), ``nuts.py`` and
``chees.py`` (their kernels and back ends), ``groups.py`` (chain groups in processes),
``potential.py`` (the batched log density), ``pyro_nuts.py``, ``svi.py``, ``map.py``.
"""

from __future__ import annotations

from .base import Backend, Draws, Settings
from .options import MAP, NUTS, SVI, ChEES, Options, PyroNUTS

__all__ = ["Backend", "Draws", "Settings", "get_backend", "METHODS", "OPTIONS",
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
