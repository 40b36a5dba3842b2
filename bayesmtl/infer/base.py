"""The back-end protocol: ``run(model, data, settings) -> Draws``.

A back end sees a model only through ``model.pyro_model(data, ...)`` (its log density, as a Pyro
program) and ``model.max_plate_nesting``; it returns draws of the latent sites with a
leading (chain, draw) shape and per-draw statistics. Everything after that (deterministic
sites, labels, ArviZ, prediction) is the posterior's job, the same for every back end.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

__all__ = ["Settings", "Draws", "Backend", "Collapsed", "torch_threads"]


@dataclass(frozen=True)
class Settings:
    """What every back end is told. ``options`` holds back-end specific settings."""

    chains: int = 4
    warmup: int = 1000
    draws: int = 1000
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)


class Draws(NamedTuple):
    """A back end's output.

    samples : site name -> Tensor of shape (chains, draws, *site_shape), on the host
    sample_stats : stat name -> array of shape (chains, draws) (e.g. ``diverging``)
    info : anything worth recording in run.json (timings, step sizes, ELBO trace, path taken)
    """

    samples: dict[str, torch.Tensor]
    sample_stats: dict[str, np.ndarray]
    info: dict[str, Any]


class Backend(Protocol):
    name: str

    def run(self, model, data, settings: Settings) -> Draws: ...


class Collapsed(Protocol):
    """A model with some latent sites integrated out in closed form (``model.collapsed(data)``).

    Back ends sample ``pyro_model()`` (the remaining sites only, with the marginal likelihood
    as a ``pyro.factor``); ``conditional`` then draws the integrated-out sites exactly from
    their conditional given each draw, so the result has every latent site of the full model.
    """

    max_plate_nesting: int

    def pyro_model(self) -> Any: ...

    def conditional(self, samples: dict[str, torch.Tensor],
                    generator: torch.Generator) -> dict[str, torch.Tensor]: ...


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op threads (None: leave as is)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
