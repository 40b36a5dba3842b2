"""The default SVI guide: full rank over the population, mean field over the tasks, each task
leaning linearly on the population (``guide="structured"``).

A mean-field guide cannot see that a task's parameters move with the population's scale (the
funnel of a hierarchical prior), so it shrinks the population's posterior sds to a fraction of
NUTS's. A full-rank guide over every site sees it, but costs (T D)^2. This guide keeps the cost
linear in the number of tasks: in unconstrained space,

    z_pop  = m_pop  + L eps_pop                       (full-rank Gaussian, P sites' values)
    z_task = m_task + C eps_pop + B eps_task          (per-task means shifted by the population)

with eps standard normal, L lower triangular (P x P), C (Q x P) for the Q per-task values, and
B block diagonal: one lower-triangular m x m block per task over its m values (Q = T m), so a
task's intercept and slope, or its coefficient and its local scale, keep their correlation. A
mean-field B held the three-level prior's population sds at 0.69-0.70 of NUTS's (seeds 1-2).
C couples through the standardised eps_pop, not through L eps_pop: coupled through L
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

__all__ = ["AutoStructuredNormal", "StructuredAffine", "structured_layout"]

#: above this many population values the population block is diagonal (its factor grows as P^2)
MAX_FULL_RANK = 1000
#: above this many entries of C the per-task sites do not lean on the population
MAX_COUPLING = 4_000_000
#: above this many values per task (or T m^2 entries in all) B is diagonal
MAX_TASK_BLOCK, MAX_BLOCK_ENTRIES = 32, 4_000_000


class StructuredAffine(Transform):
    """x (..., n) -> loc + the structured scale times x; see the module docstring.

    ``pop`` and ``task`` index the population and per-task entries of the latent vector;
    ``tril`` is the population's scale factor, (P, P) lower triangular or (P,) for a diagonal
    one, ``coupling`` (Q, P) or None is C, ``scale`` the per-task factor B: (Q,) for a diagonal
    one, or (T, m, m) lower-triangular blocks when ``task`` lists the T tasks' m values in turn.
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
        d_task = self._task_factor(x[..., self.task])
        if self.coupling is not None:
            d_task = d_task + x_pop @ self.coupling.T
        return self.loc + torch.cat([d_pop, d_task], -1)[..., self.order]

    def _task_factor(self, x_task):
        if self.scale.dim() == 1:
            return x_task * self.scale
        T, m = self.scale.shape[:2]
        blocks = x_task.reshape(*x_task.shape[:-1], T, m).unsqueeze(-2)  # (..., T, 1, m)
        return (blocks * self.scale).sum(-1).reshape(x_task.shape)

    def _inverse(self, z):
        d = z - self.loc
        d_pop, d_task = d[..., self.pop], d[..., self.task]
        if self.tril.dim() == 1:
            x_pop = d_pop / self.tril
        else:
            x_pop = torch.linalg.solve_triangular(self.tril, d_pop.unsqueeze(-1), upper=False).squeeze(-1)
        if self.coupling is not None:
            d_task = d_task - x_pop @ self.coupling.T
        if self.scale.dim() == 1:
            x_task = d_task / self.scale
        else:
            T, m = self.scale.shape[:2]
            blocks = d_task.reshape(*d_task.shape[:-1], T, m, 1)
            x_task = torch.linalg.solve_triangular(self.scale, blocks, upper=False).reshape(d_task.shape)
        return torch.cat([x_pop, x_task], -1)[..., self.order]

    def log_abs_det_jacobian(self, x, z):
        diag = self.tril if self.tril.dim() == 1 else self.tril.diagonal()
        task = self.scale if self.scale.dim() == 1 else self.scale.diagonal(dim1=-2, dim2=-1)
        value = diag.abs().log().sum() + task.abs().log().sum()
        return value.expand(x.shape[:-1])

    def marginal_sd(self) -> torch.Tensor:
        """Each latent entry's sd under the guide, (n,) in the latent's order."""
        sd_pop = self.tril.pow(2) if self.tril.dim() == 1 else self.tril.pow(2).sum(-1)
        sd_task = self.scale.pow(2) if self.scale.dim() == 1 else self.scale.pow(2).sum(-1).reshape(-1)
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
        self.loc = torch.nn.Parameter(self._init_loc())
        like = self.loc
        sites = [(site, self._unconstrained_shapes[name])
                 for name, site in self.prototype_trace.iter_stochastic_nodes()]
        pop, task, blocks = structured_layout(sites, self._task_plate)
        self._pop, self._task = pop.to(like.device), task.to(like.device)
        self._order = torch.argsort(torch.cat([self._pop, self._task]))
        P, Q = len(pop), len(task)
        self.pop_scale = PyroParam(like.new_full((P,), self._init_scale), self.scale_constraint)
        self.full_rank = P <= MAX_FULL_RANK
        if self.full_rank:
            self.pop_tril = PyroParam(torch.eye(P, dtype=like.dtype, device=like.device),
                                      constraints.unit_lower_cholesky)
        self.task_blocks = blocks[1:] if blocks is not None else None
        shape = self.task_blocks or (Q,)
        self.task_scale = PyroParam(like.new_full(shape, self._init_scale), self.scale_constraint)
        if self.task_blocks:
            self.task_tril = torch.nn.Parameter(like.new_zeros(*shape, shape[-1]))
        self.coupled = 0 < P * Q <= MAX_COUPLING
        if self.coupled:
            self.coupling = torch.nn.Parameter(like.new_zeros(Q, P))

    def get_base_dist(self):
        import pyro.distributions as dist

        return dist.Normal(torch.zeros_like(self.loc), torch.ones_like(self.loc)).to_event(1)

    def get_transform(self, *args, **kwargs) -> StructuredAffine:
        # above MAX_FULL_RANK a vector: a dense diagonal would be P x P (2.6 GB at P = 18,000)
        tril = self.pop_scale.unsqueeze(-1) * self.pop_tril if self.full_rank else self.pop_scale
        scale = self.task_scale
        if self.task_blocks:  # unit lower triangle times the sds, row by row
            scale = scale.unsqueeze(-1) * (self.task_tril.tril(-1) + torch.eye(scale.shape[-1], dtype=scale.dtype,
                                                                             device=scale.device))
        return StructuredAffine(self.loc, self._pop, self._task, tril,
                                self.coupling if self.coupled else None, scale, self._order)

    def _loc_scale(self, *args, **kwargs):
        return self.loc, self.get_transform().marginal_sd()


def structured_layout(sites: list[tuple[dict, torch.Size]], task_plate: str = "task"):
    """(pop, task, blocks) of a latent vector laid out site by site: the positions of its
    population and per-task values (long tensors; per-task values task by task where ``blocks``
    is (order, T, m), else in the vector's order), from (site, unconstrained shape) pairs in order."""
    pop, task, task_of, pos = [], [], [], 0
    for site, shape in sites:
        if in_plate(site, task_plate):
            task.extend(range(pos, pos + shape.numel()))
            task_of.append(_task_index(site, shape, task_plate))
        else:
            pop.extend(range(pos, pos + shape.numel()))
        pos += shape.numel()
    task = torch.tensor(task, dtype=torch.long)
    blocks = _task_blocks(torch.cat(task_of) if task_of else task)
    if blocks is not None:  # the T tasks' values in turn, so that B's blocks are contiguous
        task = task[blocks[0]]
    return torch.tensor(pop, dtype=torch.long), task, blocks


def _task_index(site: dict, shape: torch.Size, plate: str) -> torch.Tensor:
    """The task of each of a site's unconstrained values, flattened as the latent vector is."""
    frame = next(f for f in site["cond_indep_stack"] if f.name == plate)
    axis = len(site["fn"].batch_shape) + frame.dim  # the plate's dim counts from the batch's right
    if frame.dim is None or not 0 <= axis < len(shape) or shape[axis] != frame.size:
        return torch.full((shape.numel(),), -1)  # not laid out as expected: B stays diagonal
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return torch.arange(shape[axis]).reshape(view).expand(shape).reshape(-1)


def _task_blocks(task_of: torch.Tensor):
    """(order, T, m): the per-task values sorted task by task, or None when the tasks hold unequal
    numbers of values or the blocks would be too large (B stays diagonal)."""
    if task_of.numel() == 0 or bool((task_of < 0).any()):
        return None
    counts = torch.bincount(task_of)
    T, m = len(counts), int(counts[0])
    if m < 2 or m > MAX_TASK_BLOCK or T * m * m > MAX_BLOCK_ENTRIES or not bool((counts == m).all()):
        return None
    return torch.argsort(task_of, stable=True), T, m
