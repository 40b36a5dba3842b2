"""Multi-task Gaussian processes: exact ICM (``icm``) and variational LMC (``lmc``).

The user-facing model is ``bayesmtl.models.MultitaskGP``; these modules hold the linear algebra.
"""

from . import icm

__all__ = ["icm"]
