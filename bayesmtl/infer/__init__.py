"""Inference back ends behind one protocol (``base.Backend``); ``get_backend`` maps names."""

from __future__ import annotations

from .base import Backend, Draws, Settings

__all__ = ["Backend", "Draws", "Settings", "get_backend", "METHODS"]


def _pyro_nuts():
    from .pyro_nuts import PyroNUTS
    return PyroNUTS()


def _nuts():
    from .nuts import BatchedNUTS
    return BatchedNUTS()


def _chees():
    from .chees import ChEES
    return ChEES()


def _svi():
    from .svi import SVIBackend
    return SVIBackend()


def _map():
    from .map import MAPBackend
    return MAPBackend()


#: method name -> factory; later back ends register here
METHODS = {"nuts": _nuts, "chees": _chees, "pyro_nuts": _pyro_nuts, "svi": _svi, "map": _map}


def get_backend(method: str) -> Backend:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method]()
