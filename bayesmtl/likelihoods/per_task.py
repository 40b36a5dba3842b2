"""A likelihood per task: regression and classification tasks in one model
(``likelihood={"depth": "gaussian", "is_road": "bernoulli"}``).

Tasks named with the same likelihood name (or the same object) form a group that shares one
likelihood, bound to the group's rows: a Gaussian group's noise prior is scaled to its own
target, and with ``noise="per_task"`` each of its tasks has its own sigma, which is the
uncertainty weighting of Kendall, Gal & Cipolla (2018) inside the likelihood. A group's sites
carry its name (``sigma_gaussian``, over the dim ``task_gaussian``). A Bernoulli or Poisson
task has no free noise: its weight is fixed by its likelihood.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.util import broadcast_shape
from pyro.poutine.messenger import Messenger
from torch.distributions import constraints

from ..data import MultiTaskData
from .base import Likelihood, LocationScale

__all__ = ["PerTask"]


class _Suffix(Messenger):
    """Renames the sample sites inside: ``name`` -> ``name_suffix``."""

    def __init__(self, suffix: str):
        super().__init__()
        self.suffix = suffix

    def _pyro_sample(self, msg):
        msg["name"] = f"{msg['name']}_{self.suffix}"


class PerTask(Likelihood):
    """One likelihood per task.

    Parameters
    ----------
    likelihoods : mapping of task name -> likelihood name or ``Likelihood``
        Every task of the data must be named. Tasks given the same name (or object) share it.
    """

    kind = "per_task"

    def __init__(self, likelihoods: Mapping[str, str | Likelihood]):
        from . import get_likelihood

        if not isinstance(likelihoods, Mapping) or not likelihoods:
            raise ValueError("likelihood per task: give a non-empty {task name: likelihood} mapping")
        self.tasks = {str(k): v if isinstance(v, str) else get_likelihood(v) for k, v in likelihoods.items()}
        groups: dict[str, Likelihood] = {}
        self.group_of: dict[str, str] = {}
        for task, spec in self.tasks.items():
            lik = get_likelihood(spec)
            if isinstance(spec, str):
                key = spec.lower().replace("-", "_")
            else:
                same = next((g for g, v in groups.items() if v is spec), None)
                key = same or _fresh(type(spec).__name__.lower(), groups)
            groups.setdefault(key, lik)
            self.group_of[task] = key
        self.groups = groups
        self.group_tasks: dict[str, list[str]] = {}   # filled by ``bind``: each group's tasks in data order
        self.row_group: torch.Tensor | None = None    # (T,) group index of each training task
        self.local: dict[str, torch.Tensor] = {}      # per group: each task's position in it (``bind``)
        self.inert: dict[str, tuple] = {}             # per group: (y, noise, trials) of one of its rows (``bind``)

    # ------------------------------------------------------------------ binding to the data
    def _rows(self, data: MultiTaskData, group: str) -> torch.Tensor:
        ids = [i for i, n in enumerate(data.task_names) if self.group_of.get(str(n)) == group]
        return torch.isin(data.task, torch.tensor(ids, dtype=data.task.dtype, device=data.task.device))

    def _named(self, data: MultiTaskData) -> None:
        missing = [str(n) for n in data.task_names[:data.n_known_tasks] if str(n) not in self.group_of]
        if missing:
            raise ValueError(f"task {missing[0]!r} has no likelihood in the per-task mapping "
                             f"(it names {sorted(self.group_of)[:8]})")

    def check(self, data: MultiTaskData) -> None:
        """Each group's likelihood checks its own rows (a Bernoulli group's target is 0/1, ...)."""
        self._named(data)
        for g, lik in self.groups.items():
            rows = self._rows(data, g)
            if bool(rows.any()):
                try:
                    lik.check(data.subset(rows))
                except ValueError as e:
                    raise ValueError(f"tasks with the {g} likelihood: {e}") from None

    def bind(self, data: MultiTaskData, residual_df: float | None = None) -> PerTask:
        """A copy whose groups are bound to their own rows, in the data's task order."""
        self._named(data)
        out = copy.copy(self)
        out.groups, out.group_tasks, out.inert = {}, {}, {}
        for g, lik in self.groups.items():
            names = [str(n) for n in data.task_names if self.group_of.get(str(n)) == g]
            if not names:
                continue
            sub = data.subset(self._rows(data, g))
            out.groups[g] = lik.bind(sub, residual_df) if isinstance(lik, LocationScale) else lik.bind(sub)
            out.group_tasks[g] = names
            out.inert[g] = tuple(None if v is None else v[0].item() for v in (sub.y, sub.noise, sub.trials))
        order = list(out.groups)
        out.row_group = torch.tensor([order.index(out.group_of[str(n)]) for n in data.task_names], dtype=torch.long)
        # each training task's position within its group (-1 outside it): once here, not per step
        out.local = {}
        for j, g in enumerate(out.groups):
            inside = out.row_group == j
            out.local[g] = torch.where(inside, inside.long().cumsum(0) - 1, torch.full_like(out.row_group, -1))
        return out

    def location_scale(self, data: MultiTaskData) -> tuple[float, float]:
        """The widest group's scale; location 0 unless one group holds every task."""
        pairs = [lik.location_scale(data.subset(self._rows(data, g)))
                 for g, lik in self.groups.items() if bool(self._rows(data, g).any())]
        if len(pairs) == 1:
            return pairs[0]
        return 0.0, max(s for _, s in pairs)

    def defaults(self) -> list[str]:
        return [f"{g}.{k}" for g, lik in self.groups.items() for k in lik.defaults()]

    # ------------------------------------------------------------------ the model's pieces
    def sample_params(self, n_tasks, task_plate, like):
        out = {}
        for g, lik in self.groups.items():
            plate = pyro.plate(f"task_{g}", len(self.group_tasks[g]), dim=-1)
            with _Suffix(g):
                params = lik.sample_params(len(self.group_tasks[g]), plate, like)
            out.update({f"{k}_{g}": v for k, v in params.items()})
        return out

    def site_dims(self):
        return {f"{k}_{g}": tuple(f"task_{g}" if d == "task" else d for d in dims)
                for g, lik in self.groups.items() for k, dims in lik.site_dims().items()}

    def coords(self) -> dict[str, list[str]]:
        """Labels of each group's task dim (``task_<group>``)."""
        return {f"task_{g}": list(names) for g, names in self.group_tasks.items()}

    def _row_groups(self, task: torch.Tensor) -> torch.Tensor:
        """Each row's group index (N,)."""
        if int(task.max()) >= len(self.row_group):
            raise ValueError("a task unseen in training has no likelihood in the per-task mapping: per-task "
                             "likelihoods predict the tasks they name")
        return self.row_group.to(task.device)[task]

    def _groups(self, eta, task, noise, trials):
        """Per group: (its name, the mask of its rows (N,), its likelihood, each row's position among
        its tasks (0 on the other rows), then eta, noise and trials made inert on the other rows)."""
        rg = self._row_groups(task)
        for j, (g, lik) in enumerate(self.groups.items()):
            mask = rg == j
            _, noise0, trials0 = self.inert[g]
            loc = self.local[g].to(task.device)[task].clamp(min=0)
            yield (g, mask, lik, loc, torch.where(mask, eta, 0.0), _inert(noise, mask, noise0),
                   _inert(trials, mask, trials0))

    def distribution(self, eta, params, task, noise, trials):
        """Each group's distribution over every row, kept on its own rows (``_Rows``): shapes that
        do not follow which rows a batch holds, so a JIT trace replays on any batch. On the other
        rows a group sees inert inputs (eta 0, one of its own rows' target, noise and trials), so
        its density and gradient there are finite and the mask's zero gradient stays zero."""
        return _Rows([(mask, lik.distribution(eta_, _own(params, g), loc, noise_, trials_), self.inert[g][0])
                      for g, mask, lik, loc, eta_, noise_, trials_ in self._groups(eta, task, noise, trials)],
                     eta.shape)

    def mean(self, eta, params, task, trials=None):
        out = torch.zeros_like(eta)
        for g, mask, lik, loc, eta_, _, trials_ in self._groups(eta, task, None, trials):
            out = torch.where(mask, lik.mean(eta_, _own(params, g), loc, trials_).to(out), out)
        return out

    def new_task_params(self, params, n_new, generator):
        raise ValueError("a task unseen in training has no likelihood in the per-task mapping: per-task "
                         "likelihoods predict the tasks they name")

    def __repr__(self) -> str:
        return f"PerTask({ {t: repr(self.groups.get(g, g)) for t, g in self.group_of.items()} })"


def _fresh(base: str, taken) -> str:
    k = 1
    while f"{base}{k}" in taken:
        k += 1
    return f"{base}{k}"


def _own(params: dict, group: str) -> dict:
    """The group's parameters, without its suffix."""
    return {k[: -len(group) - 1]: v for k, v in params.items() if k.endswith(f"_{group}")}


def _inert(v: torch.Tensor | None, mask: torch.Tensor, fill) -> torch.Tensor | None:
    return None if v is None else torch.where(mask, v, fill)


class _Rows(dist.TorchDistribution):
    """Rows drawn from different distributions: ``parts`` [(mask (N,), distribution over every
    row, an inert value in its support)], each distribution kept where its mask is set."""

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, parts, batch_shape):
        self.parts = parts
        super().__init__(torch.Size(batch_shape), validate_args=False)

    def log_prob(self, value):
        shape = broadcast_shape(tuple(self.batch_shape), tuple(value.shape))
        dtype = value.dtype if value.is_floating_point() else torch.get_default_dtype()
        out = torch.zeros(shape, dtype=dtype, device=value.device)
        for mask, d, inert in self.parts:
            out = torch.where(mask, d.log_prob(torch.where(mask, value, inert)).to(dtype), out)
        return out

    def sample(self, sample_shape=()):
        shape = torch.Size(sample_shape) + self.batch_shape
        out = None
        for mask, d, _ in self.parts:
            part = d.sample(sample_shape)
            if out is None:
                out = part.new_zeros(shape, dtype=torch.promote_types(part.dtype, torch.float32))
            out = torch.where(mask, part.to(out.dtype), out)
        return out

    def expand(self, batch_shape, _instance=None):
        if tuple(batch_shape) == tuple(self.batch_shape):
            return self
        raise NotImplementedError("per-task rows do not expand")

    @property
    def mean(self):
        out = None
        for mask, d, _ in self.parts:
            m = d.mean
            if out is None:
                out = m.new_zeros(self.batch_shape)
            out = torch.where(mask, m.to(out.dtype), out)
        return out
