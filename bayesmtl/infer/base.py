"""The back-end protocol: ``run(target, settings) -> Draws``.

A back end sees a ``protocol.Target`` only (the log density as a Pyro program, its plate
nesting, and whatever closed forms the model registered), never the model; it returns draws
of the latent sites with a leading (chain, draw) shape and per-draw statistics. Everything
after that (deterministic sites, labels, ArviZ, prediction) is the posterior's job, the same
for every back end. ``paths`` says which targets a back end runs by default, in the order the
model offers them (fastest first).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

__all__ = ["Settings", "Draws", "Backend", "torch_threads"]


@dataclass(frozen=True)
class Settings:
    """What every back end is told. ``options`` holds back-end specific settings: the keywords
    given to ``fit`` (a dict), or the back end's options object (``options.NUTS`` and so on);
    a back end reads either with ``TheirOptions.of(settings.options)``. ``checkpoint``: a folder
    where the back end saves its state every ``checkpoint_every`` seconds; ``resume``: continue
    from the checkpoint there (``checkpoint.py``)."""

    chains: int = 4
    warmup: int = 1000
    draws: int = 1000
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    options: Any = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_every: float = 60.0
    resume: bool = False
    fingerprint: str = ""  # what a checkpoint must match besides the settings (a hash of the data)


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
    """An inference back end: ``name`` for run.json, ``paths`` it runs by default, ``kind`` of
    draws it returns: "mcmc" (correlated chains), "independent" (draws from a fitted
    approximation) or "point" (one estimate); the diagnostics and the summary depend on it."""

    name: str
    paths: tuple[str, ...]
    kind: str

    def run(self, target, settings: Settings) -> Draws:
        """Sample ``target`` with ``settings`` and return the draws and their sample stats."""


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
