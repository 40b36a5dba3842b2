"""Observation models: how a row's linear predictor eta becomes its target.

One file per family: ``gaussian.py`` (Gaussian, Student-t), ``glm.py`` (Bernoulli, Poisson,
binomial), ``counts.py`` (negative binomial, zero-inflated Poisson), ``positive.py`` (Gamma,
log-normal), ``beta.py``, ``ordinal.py`` (cumulative logit), ``per_task.py`` (one per task, for mixed
regression and classification tasks), ``custom.py`` (any Pyro
distribution with a named link); what they share is in ``base.py``. A new one is a file here
plus its names in ``_BY_NAME``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch

from .base import LINKS, Likelihood, LocationScale, OneParameter, check_shapes, per_row
from .beta import Beta
from .counts import NegativeBinomial, ZeroInflatedPoisson
from .custom import Custom
from .gaussian import Gaussian, StudentT
from .glm import Bernoulli, Binomial, Poisson
from .ordinal import Ordinal
from .per_task import PerTask
from .positive import Gamma, LogNormal

__all__ = ["Likelihood", "LocationScale", "OneParameter", "Gaussian", "StudentT", "Bernoulli", "Poisson",
           "Binomial", "NegativeBinomial", "ZeroInflatedPoisson", "Gamma", "LogNormal", "Beta", "Ordinal",
           "Custom", "PerTask", "get_likelihood", "check_shapes", "per_row", "LINKS"]

_BY_NAME = {"gaussian": Gaussian, "normal": Gaussian, "student_t": StudentT, "student-t": StudentT,
            "bernoulli": Bernoulli, "logistic": Bernoulli, "poisson": Poisson, "binomial": Binomial,
            "negative_binomial": NegativeBinomial, "negbinomial": NegativeBinomial,
            "zero_inflated_poisson": ZeroInflatedPoisson, "zip": ZeroInflatedPoisson,
            "gamma": Gamma, "lognormal": LogNormal, "log_normal": LogNormal, "beta": Beta,
            "ordinal": Ordinal, "cumulative": Ordinal}


def get_likelihood(spec: str | Likelihood | Mapping[str, str | Likelihood]) -> Likelihood:
    """A likelihood from its name (see ``_BY_NAME``: "gaussian", "student_t", "bernoulli",
    "poisson", "binomial", "negative_binomial", "zip", "gamma", "lognormal", "beta", "ordinal")
    or itself; a {task: likelihood} mapping gives one per task (``PerTask``)."""
    if isinstance(spec, Likelihood):
        return spec
    if isinstance(spec, Mapping):
        return PerTask(spec)
    if isinstance(spec, str) and spec.lower() in _BY_NAME:
        return _BY_NAME[spec.lower()]()
    if isinstance(spec, torch.distributions.Distribution) or (
            inspect.isclass(spec) and issubclass(spec, torch.distributions.Distribution)):
        name = spec.__name__ if inspect.isclass(spec) else type(spec).__name__
        raise ValueError(f"a pyro distribution ({name}) is not a likelihood: wrap it, e.g. "
                         f"bm.likelihoods.Custom(dist.{name}, mean_arg='loc', link='identity', params={{...}}), "
                         f"or name a built-in one ({', '.join(sorted(_BY_NAME))})")
    raise ValueError(f"unknown likelihood {spec!r}; choose one of {', '.join(sorted(_BY_NAME))}")
