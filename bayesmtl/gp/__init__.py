"""Multi-task Gaussian processes: the engine behind ``bayesmtl.models.MultitaskGP``.

``icm``: exact ICM algebra (kernels, Kronecker and Hadamard marginal likelihoods, prediction
factors); ``program``: the ICM's Pyro program; ``typeii``: type-II maximum likelihood
(``method="map"``); ``predict``: per-draw predictive algebra; ``lmc``: the variational LMC.
"""

from . import icm

__all__ = ["icm"]
