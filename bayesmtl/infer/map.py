"""Point estimates (``method="map"``): a model's own optimiser when it offers one
(``Target.point_estimate``, e.g. a GP's type-II maximum likelihood, ``gp.typeii``), else Pyro SVI with an
AutoDelta guide.

Options: ``options.MAP`` (``bm.infer.MAP(steps=800)`` or the same keywords to ``fit``): SVI's
options for the delta guide; a model's own optimiser gets them as keywords, with ``model_options``
(keywords that are not MAP's fields land there) added, and checks them itself.
"""

from __future__ import annotations

from dataclasses import replace

from .base import Draws, Settings
from .options import MAP
from .svi import SVIBackend

__all__ = ["MAPBackend"]


class MAPBackend:
    """``method="map"``: see the module docstring."""

    name = "map"
    paths = ("plain",)
    kind = "point"

    def run(self, target, settings: Settings) -> Draws:
        o = MAP.of(settings.options)
        if target.point_estimate is not None:
            return target.point_estimate(replace(settings, options=o.given()))
        return SVIBackend(label="map").run(target, replace(settings, options=o.svi()))
