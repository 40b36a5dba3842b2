"""The default SVI guide: full rank over the population, mean field over the tasks, each task
leaning linearly on the population (``guide="structured"``).

A mean-field guide cannot see that a task's parameters move with the population's scale (the
funnel of a hierarchical prior), so it shrinks the population's posterior sds to a fraction of
NUTS's. A full-rank guide over every site sees it, but costs (T D)^2. This guide keeps the cost
linear in the number of tasks: in unconstrained space,

    z_pop  = m_pop  + L eps_pop                       (full-rank Gaussian, P sites' values)
    z_task = m_task + C eps_pop + s * eps_task        (per-task means shifted by the population)

with eps standard normal, L lower triangular (P x P), C (Q x P) and s (Q,) for the Q per-task
values. C couples through the standardised eps_pop, not through L eps_pop: coupled through L
eps_pop, the optimiser's jitter in C was multiplied by the population's sds, and Adam kept
those sds small to protect tightly determined per-task values (on a planted Gaussian whose
posterior lies in this family, population sds of 0.12-0.17 against 0.2-3.0). Sites inside the
``task`` plate are per-task; all others are population-level (a structured guide in the sense
of Hoffman & Blei 2015; Pyro's ``AutoStructured`` with ``conditionals`` mvn/normal and
``linear`` dependencies is the same family, site by site).
"""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.nn import PyroParam
from torch.distributions.transforms import Transform

from ..protocol import in_plate

__all__ = ["AutoStructuredNormal", "StructuredAffine"]

#: above this many population values the population block is diagonal (its factor grows as P^2)
MAX_FULL_RANK = 1000
#: above this many entries of C the per-task sites do not lean on the population
MAX_COUPLING = 4_000_000


class StructuredAffine(Transform):
    """x (..., n) -> loc + the structured scale times x; see the module docstring.

    ``pop`` and ``task`` index the population and per-task entries of the latent vector;
    ``tril`` is the population's scale factor, (P, P) lower triangular or (P,) for a diagonal
    one, ``coupling`` (Q, P) or None is C, ``scale`` (Q,) the per-task sds.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, loc, pop, task, tril, coupling, scale, order=None):
        super().__init__(cache_size=1)
        self.loc, self.pop, self.task = loc, pop, task
        self.tril, self.coupling, self.scale = tril, coupling, scale
        # [pop; task] -> the latent's order (the guide passes it in: computed once, not every step)
        self.order = torch.argsort(torch.cat([pop, task])) if order is None else order

    def _call(self, x):
        x_pop = x[..., self.pop]
        d_pop = x_pop * self.tril if self.tril.dim() == 1 else x_pop @ self.tril.T
        d_task = x[..., self.task] * self.scale
        if self.coupling is not None:
            d_task = d_task + x_pop @ self.coupling.T
        return self.loc + torch.cat([d_pop, d_task], -1)[..., self.order]

    def _inverse(self, z):
        d = z - self.loc
        d_pop, d_task = d[..., self.pop], d[..., self.task]
        if self.tril.dim() == 1:
            x_pop = d_pop / self.tril
        else:
            x_pop = torch.linalg.solve_triangular(self.tril, d_pop.unsqueeze(-1), upper=False).squeeze(-1)
        if self.coupling is not None:
            d_task = d_task - x_pop @ self.coupling.T
        return torch.cat([x_pop, d_task / self.scale], -1)[..., self.order]

    def log_abs_det_jacobian(self, x, z):
        diag = self.tril if self.tril.dim() == 1 else self.tril.diagonal()
        value = diag.abs().log().sum() + self.scale.log().sum()
        return value.expand(x.shape[:-1])

    def marginal_sd(self) -> torch.Tensor:
        """Each latent entry's sd under the guide, (n,) in the latent's order."""
        sd_pop = self.tril.pow(2) if self.tril.dim() == 1 else self.tril.pow(2).sum(-1)
        sd_task = self.scale.pow(2)
        if self.coupling is not None:
            sd_task = sd_task + self.coupling.pow(2).sum(-1)
        return torch.cat([sd_pop, sd_task])[self.order].sqrt()


class AutoStructuredNormal(AutoContinuous):
    """Full-rank Gaussian over the population-level sites, mean field over the sites in the
    ``task`` plate, with each per-task mean shifted linearly by the population's deviation
    (see the module docstring). With no per-task sites (a collapsed target) it is
    ``AutoMultivariateNormal``; with no population sites, ``AutoDiagonalNormal``.

    Parameters
    ----------
    model : a Pyro model
    init_loc_fn : per-site initialisation (default: the prior's median)
    init_scale : initial sd of every unconstrained value
    task_plate : the name of the plate whose sites are per-task
    """

    scale_constraint = constraints.softplus_positive

    def __init__(self, model, init_loc_fn=init_to_median, init_scale: float = 0.1, task_plate: str = "task"):
        if not isinstance(init_scale, float) or not init_scale > 0:
            raise ValueError(f"init_scale must be a float > 0; got {init_scale!r}")
        self._init_scale, self._task_plate = init_scale, task_plate
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        pop, task, pos = [], [], 0
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            size = self._unconstrained_shapes[name].numel()
            (task if in_plate(site, self._task_plate) else pop).extend(range(pos, pos + size))
            pos += size
        self.loc = torch.nn.Parameter(self._init_loc())
        like = self.loc
        self._pop = torch.tensor(pop, dtype=torch.long, device=like.device)
        self._task = torch.tensor(task, dtype=torch.long, device=like.device)
        self._order = torch.argsort(torch.cat([self._pop, self._task]))
        P, Q = len(pop), len(task)
        self.pop_scale = PyroParam(like.new_full((P,), self._init_scale), self.scale_constraint)
        self.full_rank = P <= MAX_FULL_RANK
        if self.full_rank:
            self.pop_tril = PyroParam(torch.eye(P, dtype=like.dtype, device=like.device),
                                      constraints.unit_lower_cholesky)
        self.task_scale = PyroParam(like.new_full((Q,), self._init_scale), self.scale_constraint)
        self.coupled = 0 < P * Q <= MAX_COUPLING
        if self.coupled:
            self.coupling = torch.nn.Parameter(like.new_zeros(Q, P))

    def get_base_dist(self):
        import pyro.distributions as dist

        return dist.Normal(torch.zeros_like(self.loc), torch.ones_like(self.loc)).to_event(1)

    def get_transform(self, *args, **kwargs) -> StructuredAffine:
        # above MAX_FULL_RANK a vector: a dense diagonal would be P x P (2.6 GB at P = 18,000)
        tril = self.pop_scale.unsqueeze(-1) * self.pop_tril if self.full_rank else self.pop_scale
        return StructuredAffine(self.loc, self._pop, self._task, tril,
                                self.coupling if self.coupled else None, self.task_scale, self._order)

    def _loc_scale(self, *args, **kwargs):
        return self.loc, self.get_transform().marginal_sd()
