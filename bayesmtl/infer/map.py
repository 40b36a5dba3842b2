"""Point estimates: a model's own optimiser when it offers one (``map_estimate``, e.g.
type-II maximum likelihood of a GP), else Pyro SVI with an AutoDelta guide."""

from __future__ import annotations

from .base import Draws, Settings
from .svi import SVIBackend

__all__ = ["MAPBackend"]


class MAPBackend:
    name = "map"

    def run(self, model, data, settings: Settings) -> Draws:
        own = getattr(model, "map_estimate", None)
        if own is not None:
            return own(data, settings)
        return SVIBackend(default_guide="delta").run(model, data, settings)
