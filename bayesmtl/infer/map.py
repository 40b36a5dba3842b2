"""Point estimates: a model's own optimiser when it offers one (``map_estimate``, e.g.
type-II maximum likelihood of a GP), else Pyro SVI with an AutoDelta guide."""

from __future__ import annotations

from .base import Draws, Settings
from .svi import SVIBackend

__all__ = ["MAPBackend"]


class MAPBackend:
    name = "map"
    paths = ("plain",)

    def run(self, target, settings: Settings) -> Draws:
        if target.point_estimate is not None:
            return target.point_estimate(settings)
        return SVIBackend(default_guide="delta").run(target, settings)
