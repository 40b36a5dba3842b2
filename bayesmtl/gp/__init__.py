"""Multi-task Gaussian processes: the engine behind ``bayesmtl.models.MultitaskGP``.

``icm``: exact ICM algebra (kernels, Kronecker and Hadamard marginal likelihoods, prediction
factors); ``hierarchical``: the hierarchical GP (a shared function plus task deviations) in the
ICM's form, with its grid path; ``program``: the Pyro program; ``typeii``: type-II MAP or
maximum likelihood (``method="map"``); ``predict``: per-draw predictive algebra; ``lmc``: the
variational LMC.
"""

from . import icm

__all__ = ["icm"]
