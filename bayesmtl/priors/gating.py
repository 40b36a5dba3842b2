"""Task clustering with gating by task features (Bakker & Heskes 2003, JMLR, "Task clustering
and gating for Bayesian multitask learning").

K = ``clusters`` components (an upper bound). Each task's cluster probabilities come from a
softmax gate on its task-level features:

    alpha ~ Gamma(1, 1),   pi ~ Dirichlet(alpha / K, ..., alpha / K)
                                               (symmetric: a finite mixture whose alpha means what
                                               a DP's does, Ishwaran & Zarepour 2002; small
                                               alpha / K empties the clusters not needed)
    gate_scale_f ~ HalfNormal(gate_scale)      (one per gate input: ARD, an input that does not
                                               predict the cluster is shrunk away)
    G_kf ~ Normal(0, gate_scale_f)             (``gate``, (K, F))
    p(z_t = k) = softmax_k(log pi_k + x_t . G_k)   (``task_weights``, (T, K))
    theta_1..K ~ base measure;  w_t = theta_{z_t}

x_t are the task features (``MultiTaskData.from_frame(..., task_features=[...])``): numeric ones
standardised with the training tasks' mean and sd, categorical ones one-hot (first level
dropped). The assignments are summed out exactly, as in the DP model; a new task's cluster
probabilities come from its features through the gate, before any of its rows are seen.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from ..protocol import Tasks
from .base import TaskPrior
from .dirichlet import DirichletProcess, _Float

__all__ = ["GatedClusters"]


class GatedClusters(DirichletProcess):
    """Clusters of tasks whose probabilities depend on task-level features through a softmax gate.

    Parameters
    ----------
    features : str or sequence of str
        Task-level columns the gate reads (declared as ``task_features`` of the data);
        ``"size,denomination"`` names two.
    clusters : int, default 5
        Number of clusters K, an upper bound (>= 2).
    gate_scale : float, default 2.0
        Scale of the half-normal prior on each gate input's spread: a unit change of a
        standardised feature moves a cluster's log-odds by about this much at most.
    alpha : pyro distribution or positive number, default Gamma(1, 1)
        Concentration of the weights under the gate: pi ~ Dirichlet(alpha / K, ..., alpha / K),
        the finite mixture that tends to a DP(alpha) as K grows.
    base : TaskPrior, default ``Hierarchical()``
        Base measure of the cluster atoms.
    """

    truncated = False  # a finite mixture: K is the model's upper bound, not an approximation

    relation_kind = ("co-clustering probability P(z_i = z_j | data) (task clustering with gating by task "
                     "features; 1 on the diagonal)")

    def __init__(self, features: str | Sequence[str], clusters: int = 5, gate_scale: float = 2.0, alpha=None,
                 base: TaskPrior | None = None):
        if isinstance(clusters, bool) or not isinstance(clusters, (int, np.integer)) or clusters < 2:
            raise ValueError(f"clusters must be an integer >= 2; got {clusters!r}")
        cols = [c.strip() for c in features.split(",")] if isinstance(features, str) else \
            list(features) if isinstance(features, Sequence) else []
        if not cols or not all(isinstance(c, str) and c for c in cols):
            raise ValueError(f"features must name the task-level columns the gate reads, e.g. ['size', "
                             f"'denomination']; got {features!r}")
        if isinstance(gate_scale, bool) or not isinstance(gate_scale, (int, float)) or not np.isfinite(gate_scale) \
                or gate_scale <= 0:
            raise ValueError(f"gate_scale must be a positive number; got {gate_scale!r}")
        super().__init__(alpha=alpha, base=base, truncation=int(clusters))
        self.features = cols
        self.gate_scale = float(gate_scale)
        #: (mean, sd) of each numeric gate input over the training tasks; set by ``standardised``
        self.centre: dict[str, tuple[float, float]] | None = None

    def standardised(self, tasks: Tasks) -> GatedClusters:
        """A copy that standardises the numeric gate inputs with these (training) tasks' mean
        and sd, so new tasks are put on the same scale."""
        out = copy.copy(self)
        out.centre = {}
        for col in self.features:
            if col not in tasks.levels:
                v = tasks.features[col].double()
                sd = float(v.std()) if v.numel() > 1 else 1.0
                out.centre[col] = (float(v.mean()), sd if sd > 0 else 1.0)
        return out

    def inputs(self, tasks: Tasks) -> torch.Tensor:
        """The gate's inputs x_t, (T, F): standardised numeric columns, one-hot categories."""
        centre = self.centre if self.centre is not None else self.standardised(tasks).centre
        cols = []
        for col in self.features:
            v = tasks.features[col]  # a column not declared: one error naming those that are
            if col in tasks.levels:
                n = len(tasks.levels[col])
                cols.append(torch.nn.functional.one_hot(v.long(), n)[:, 1:].to(tasks.like))
            else:
                m, s = centre[col]
                cols.append(((v - m) / s).to(tasks.like).unsqueeze(-1))
        return torch.cat(cols, -1)

    def site_dims(self) -> dict[str, tuple[str, ...]]:
        dims = super().site_dims()
        del dims["v"]  # weights are drawn directly, not broken off a stick
        dims.update({"gate_scale": ("gate_input",), "gate": ("cluster", "gate_input"),
                     "task_weights": ("task", "cluster")})
        return dims

    def sample_clusters(self, n_dims: int, like: torch.Tensor, tasks: Tasks | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights, atoms and the gate; returns each task's cluster probabilities (..., T, K)
        and the atoms (..., K, D).

        The weights are symmetric in the clusters, not stick-broken: a stick's order ties alpha
        to which label the chain gave the large cluster, so chains that labelled it differently
        disagreed on alpha (NUTS on the planted gate: alpha's r_hat 1.11 and bulk ESS 26 of 2,000
        draws with sticks; 1.01 and 314 symmetric)."""
        if tasks is None:
            raise ValueError("GatedClusters needs the tasks' features (tasks=...)")
        K = self.truncation
        a = self.concentration(like)
        with _Float():
            weights = pyro.sample("weights", dist.Dirichlet((a / K).unsqueeze(-1).expand(a.shape + (K,))))
        atoms = self.atoms(n_dims, like)
        x = self.inputs(tasks)
        F = x.shape[-1]
        spread = pyro.sample("gate_scale", dist.HalfNormal(like.new_full((F,), self.gate_scale)).to_event(1))
        with pyro.plate("gate_cluster", self.truncation, dim=-1):  # "cluster" is the atoms' plate
            gate = pyro.sample("gate", dist.Normal(torch.zeros_like(spread), spread).to_event(1))  # (..., K, F)
        # weights (K,), or (C, 1, K) under a batch of chains: broadcasts against (..., T, K) as it is
        logits = torch.log(weights.clamp_min(1e-300)) + x @ gate.transpose(-1, -2)
        with _Float():
            return pyro.deterministic("task_weights", torch.softmax(logits, -1), event_dim=2), atoms

    def assignment_weights(self, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each task's prior cluster probabilities from flat draws, (S, T, K)."""
        return samples["task_weights"]

    def sample_new(self, samples, tasks, generator):
        """New tasks: a cluster drawn from the gate at their features per draw, its atom as parameters."""
        p = self.gate_probabilities(samples, tasks).double()            # (S, n, K)
        S, n, K = p.shape
        k = torch.multinomial(p.reshape(S * n, K), 1, generator=generator).reshape(S, n)
        atoms = samples["atom_w"]
        return atoms.gather(-2, k.unsqueeze(-1).expand(-1, -1, atoms.shape[-1]))

    def gate_probabilities(self, samples: dict[str, torch.Tensor], tasks: Tasks) -> torch.Tensor:
        """Cluster probabilities the gate gives tasks with these features, (S, T, K)."""
        x = self.inputs(tasks).to(samples["gate"])
        logits = torch.log(samples["weights"].clamp_min(1e-300)).unsqueeze(-2) \
            + x @ samples["gate"].transpose(-1, -2)
        return torch.softmax(logits, -1)

    def __repr__(self):
        return (f"GatedClusters(features={self.features}, clusters={self.truncation}, gate_scale={self.gate_scale}, "
                f"alpha={self.alpha}, base={self.base!r})")
