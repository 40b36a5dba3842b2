"""Pyro helpers shared by the model and the back ends: batched evaluation of a model over
a leading dim of draws (chains, particles) through one outer plate."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

__all__ = ["site_shapes", "batch_condition", "squeeze_to"]


def site_shapes(model: Callable[[], None]) -> dict[str, tuple[torch.Size, torch.Size, bool]]:
    """For every sample site: (batch_shape, event_shape, observed), from one unbatched trace."""
    with pyro.poutine.block(), torch.no_grad():
        tr = poutine.trace(model).get_trace()
    return {n: (s["fn"].batch_shape, s["fn"].event_shape, s["is_observed"])
            for n, s in tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}


def batch_condition(model: Callable[[], None], values: dict[str, torch.Tensor], n: int,
                    max_plate_nesting: int, shapes: dict | None = None) -> poutine.Trace:
    """Trace ``model`` with latent sites fixed to ``values`` (each with leading dim n).

    The model runs inside a plate of size n at dim ``-(max_plate_nesting + 1)``; each value is
    reshaped so its batch dims line up with that plate. Returns the trace (deterministic
    sites included, values with the plate's dim at the left).
    """
    shapes = site_shapes(model) if shapes is None else shapes
    dim = -(max_plate_nesting + 1)
    fixed = {}
    for name, v in values.items():
        if name not in shapes or shapes[name][2]:  # deterministic sites follow from the latent ones
            continue
        batch, event, _ = shapes[name]
        pad = max_plate_nesting - len(batch)
        fixed[name] = v.reshape((n,) + (1,) * pad + tuple(batch) + tuple(event))
    with poutine.trace() as tracer, pyro.plate("_draws", n, dim=dim):
        poutine.condition(model, data=fixed)()
    return tracer.trace


def squeeze_to(value: torch.Tensor, ndim: int) -> torch.Tensor:
    """Drop size-1 dims right after the leading one until ``value`` has ``ndim`` dims."""
    while value.dim() > ndim and value.shape[1] == 1:
        value = value.squeeze(1)
    return value
