"""Registered fast paths: closed forms a model's Pyro program can be replaced by or sped up with.

Each entry applies to a (task prior type, likelihood type) pair and is one of

- ``"collapsed"``: task parameters integrated out; a ``Marginal`` with its own ``pyro_model()``
  and the exact ``conditional`` of what it integrated out;
- ``"written"``: the plain program's log density with its gradient written out
  (``log_density_and_grad``), so a sampler builds no autograd graph.

A factory may decline (return None) where a case does not apply. ``BatchedPotential`` checks
every form against the Pyro program before using it. A new fast path is one file here that
decorates its factory with ``register`` plus one import line below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch

from ..streamed import RowsNotInMemory

__all__ = ["Marginal", "register", "forms"]


class Marginal:
    """Base of a registered form. Attributes a form does not have stay None."""

    max_plate_nesting: int = 1
    log_density: Callable | None = None
    log_density_and_grad: Callable | None = None

    def pyro_model(self) -> Callable[[], None]:
        raise NotImplementedError

    def conditional(self, samples: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Flat draws (S, ...) with the integrated-out sites added; nothing to add by default."""
        return samples


class _Entry(NamedTuple):
    prior: type | tuple[type, ...]
    likelihood: type | tuple[type, ...]
    path: str
    factory: Callable[[Any, Any], Marginal | None]


_REGISTRY: list[_Entry] = []


def register(prior: type | tuple[type, ...], likelihood: type | tuple[type, ...], path: str):
    """Decorator: ``factory(model, data) -> Marginal | None`` serves models with this prior and
    likelihood; ``path`` is "collapsed" or "written"."""
    if path not in ("collapsed", "written"):
        raise ValueError(f"path must be 'collapsed' or 'written'; got {path!r}")

    def wrap(factory):
        _REGISTRY.append(_Entry(prior, likelihood, path, factory))
        return factory

    return wrap


def forms(model, data, path: str | None = None) -> Iterator[tuple[str, Marginal]]:
    """(path, form) for every registered fast path that serves ``model`` on ``data`` (the model
    bound to the data first: a form reads concrete priors, not defaults still to be set); with
    ``path``, only the forms on that path are built."""
    model = model.bind(data)
    lik = model.likelihood_for(data)
    for e in _REGISTRY:
        if (path is None or e.path == path) and isinstance(model.prior, e.prior) and isinstance(lik, e.likelihood):
            try:
                form = e.factory(model, data)
            except RowsNotInMemory:  # a form that reads the rows themselves: not on streamed data
                continue
            if form is not None:
                yield e.path, form


# registration: one line per fast path
from . import (  # noqa: E402, F401
    hierarchical_gaussian,
    hierarchical_gaussian_rows,
    hierarchical_glm,
    sparsity_gaussian,
    subspace_gaussian,
    task_relationship_gaussian,
    tree_gaussian,
)


def form(model, data, path: str) -> Marginal | None:
    """The first registered form on ``path`` that serves ``model`` on ``data``, or None."""
    return next((f for _, f in forms(model, data, path)), None)
