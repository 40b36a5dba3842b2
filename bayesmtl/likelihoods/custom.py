"""Any Pyro distribution of the rows, with a link named by the user:

    bm.likelihoods.Custom(dist.Weibull, mean_arg="scale", link="log",
                          params={"concentration": dist.Gamma(2.0, 0.5)})

Each row's eta goes through the link into the distribution's argument ``mean_arg``; every other
argument is a parameter with its own prior, shared by the tasks or one per task (``per_task``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import pyro
import torch

from ..data import MultiTaskData
from ..priors.base import as_distribution, move_distribution
from .base import LINKS, Likelihood, per_row

__all__ = ["Custom"]


class Custom(Likelihood):
    """Rows ~ ``family(**{mean_arg: link(eta)}, **params)``.

    Parameters
    ----------
    family : a Pyro distribution class, or a callable (linked eta, **params) -> distribution
    mean_arg : str
        The argument of ``family`` that the linked eta feeds (a class only; e.g. "loc", "rate").
    link : "identity", "log", "logit", "softplus" or a callable eta -> the argument's scale
    params : {name: prior}
        Every other argument and its prior (a pyro distribution, or a number to fix it).
    per_task : names in ``params`` that take one value per task (a new task borrows a known
        task's per draw); the rest are shared.
    kind : the target check (``MultiTaskData.check_target``): "", "counts", "positive",
        "proportion", "bernoulli", ...; besides it every target must lie in the support.
    """

    def __init__(self, family, mean_arg: str | None = None, link: str | Callable = "identity",
                 params: Mapping[str, object] | None = None, per_task=(), kind: str = ""):
        if isinstance(link, str) and link not in LINKS:
            raise ValueError(f"link must be one of {sorted(LINKS)} or a callable; got {link!r}")
        if not callable(link):
            raise TypeError(f"link must be a name or a callable; got {type(link).__name__}")
        if inspect.isclass(family) and issubclass(family, torch.distributions.Distribution):
            if mean_arg is None:
                raise ValueError(f"name the argument of {family.__name__} that eta feeds: mean_arg=...")
        elif not callable(family):
            raise TypeError(f"family must be a pyro distribution class or a callable; got {type(family).__name__}")
        self.family, self.mean_arg, self.link = family, mean_arg, link
        self.params = {k: as_distribution(v, f"params[{k!r}]") for k, v in dict(params or {}).items()}
        self.per_task = tuple(per_task)
        unknown = [k for k in self.per_task if k not in self.params]
        if unknown:
            raise ValueError(f"per_task names {unknown[0]!r}, which is not in params ({sorted(self.params)})")
        self.kind = kind

    def _inverse_link(self, eta: torch.Tensor) -> torch.Tensor:
        return LINKS[self.link](eta) if isinstance(self.link, str) else self.link(eta)

    def sample_params(self, n_tasks, task_plate, like):
        out = {}
        for name, prior in self.params.items():
            prior = move_distribution(prior, like)
            if name in self.per_task:
                with task_plate:
                    out[name] = pyro.sample(name, prior)
            else:
                out[name] = pyro.sample(name, prior)
        return out

    def site_dims(self):
        return {k: ("task",) if k in self.per_task else () for k in self.params}

    def distribution(self, eta, params, task, noise, trials):
        values = {k: (params[k][..., task] if k in self.per_task else per_row(params[k], eta)) for k in self.params}
        m = self._inverse_link(eta)
        if self.mean_arg is not None:
            return self.family(**{self.mean_arg: m}, **values)
        return self.family(m, **values)

    def check(self, data: MultiTaskData) -> None:
        super().check(data)
        like = data.X.new_zeros(())
        with pyro.poutine.block(), torch.no_grad():
            params = {k: move_distribution(p, like).sample() for k, p in self.params.items()}
        params = {k: v.expand(data.n_tasks) if k in self.per_task else v for k, v in params.items()}
        eta = data.X.new_zeros(data.y.shape[0])
        d = self.distribution(eta, params, data.task, data.noise, data.trials)
        ok = d.support.check(data.y)
        if not bool(ok.all()):
            i = int((~ok).nonzero()[0, 0])
            raise ValueError(f"target {data.target_name!r} = {float(data.y[i]):g} at row {i} (task "
                             f"{data.task_names[int(data.task[i])]!r}) is outside the support of "
                             f"{getattr(self.family, '__name__', 'the family')} ({d.support})")

    def __repr__(self):
        name = getattr(self.family, "__name__", repr(self.family))
        link = self.link if isinstance(self.link, str) else getattr(self.link, "__name__", "callable")
        return f"Custom({name}, mean_arg={self.mean_arg!r}, link={link!r}, params={self.params})"


