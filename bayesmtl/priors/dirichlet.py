"""Dirichlet-process task clustering (Xue, Liao, Carin & Krishnapuram 2007, JMLR).

Truncated stick-breaking DP with K = ``truncation`` components:

    alpha ~ Gamma(a, b) (or fixed),   v_k ~ Beta(1, alpha), k < K,   v_K = 1
    pi_k = v_k prod_{j<k} (1 - v_j)                                   (weights, (K,))
    theta_1..K ~ base measure (any bayesmtl prior, its hyperparameters learned)   (atoms, (K, D))
    z_t ~ Categorical(pi)  (enumerated, summed out),   w_t = theta_{z_t}

Sites: ``alpha`` () when learned, ``v`` (K-1,), ``weights`` (K,) deterministic, the base
measure's sites renamed ``atom_<name>`` with its task dim renamed ``cluster`` (``atom_w`` (K, D)
are the atoms). ``z`` (T,), ``z_prob`` (T, K) (exact conditional of z given a draw) and ``w``
(T, D) are added after inference by ``DPClustering.complete``. The prior is used by
``bayesmtl.models.DPClustering``, which writes the likelihood with z marginalised.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

from ..protocol import Tasks
from .base import TaskPrior, move_distribution
from .hierarchical import Hierarchical

__all__ = ["DirichletProcess", "stick_breaking"]

#: expected stick weight beyond the truncation level above which a warning is issued
TRUNCATION_TOLERANCE = 0.01


class _Prefix(Messenger):
    """Rename every sample site of the base measure to ``atom_<name>``."""

    def _pyro_sample(self, msg):
        if not site_is_subsample(msg):  # leave the cluster plate's own site alone
            msg["name"] = f"atom_{msg['name']}"


class _Float(Messenger):
    """Give deterministic sites an unmasked Delta, whose zero log-density has the value's dtype.

    ``pyro.deterministic`` masks its Delta, which scores as a float32 zero; the enumerating ELBO
    contracts that against the float64 terms and fails on the dtype mismatch.
    """

    def _pyro_sample(self, msg):
        if msg["infer"].get("_deterministic") and msg["value"] is not None:
            msg["fn"] = dist.Delta(msg["value"], event_dim=msg["fn"].event_dim)


def stick_breaking(v: torch.Tensor) -> torch.Tensor:
    """Weights (..., K) from K-1 stick fractions v (..., K-1); the last stick takes the rest."""
    one = torch.ones_like(v[..., :1])
    rest = torch.cumprod(torch.cat([one, 1 - v], dim=-1), dim=-1)  # prod_{j<k} (1 - v_j), (..., K)
    return torch.cat([v, one], dim=-1) * rest


class DirichletProcess(TaskPrior):
    """Truncated stick-breaking Dirichlet-process prior over the task parameter vectors.

    Parameters
    ----------
    alpha : pyro distribution or positive number, default Gamma(1, 1)
        Concentration, learned under this prior, or fixed when a number.
    base : TaskPrior, default ``Hierarchical()``
        Base measure over one task's (D,) parameter vector; the cluster atoms are drawn from it
        as if they were tasks, so its own hyperparameters (e.g. ``mu``, ``tau``) are learned.
    truncation : int, default 20
        Number of stick-breaking components K (>= 2).
    """

    reparam = False  # parametrised by hand (centred / non-centred options)
    #: the sticks approximate an infinite process: warn when weight is left beyond the last one
    truncated = True

    relation_kind = ("co-clustering probability P(z_i = z_j | data) (Dirichlet-process task clustering; "
                     "1 on the diagonal)")

    def __init__(self, alpha=None, base: TaskPrior | None = None, truncation: int = 20):
        if isinstance(truncation, bool) or not isinstance(truncation, (int, np.integer)) or truncation < 2:
            raise ValueError(f"truncation must be an integer >= 2; got {truncation!r}")
        if alpha is None:
            alpha = dist.Gamma(1.0, 1.0)
        if isinstance(alpha, bool):
            raise TypeError("alpha (concentration) must be a positive number or a pyro distribution; got a bool")
        if isinstance(alpha, (int, float, np.integer, np.floating)):
            if not (np.isfinite(alpha) and alpha > 0):
                raise ValueError(f"alpha (DP concentration) must be > 0; got {alpha}")
            alpha = float(alpha)
        elif isinstance(alpha, dist.Distribution):
            sup = alpha.support
            positive = isinstance(sup, (constraints._GreaterThan, constraints._GreaterThanEq)) \
                and float(sup.lower_bound) >= 0
            if not positive or alpha.batch_shape != torch.Size() or alpha.event_shape != torch.Size():
                raise ValueError(f"alpha (DP concentration) prior must be a scalar distribution on (0, inf), "
                                 f"e.g. Gamma(1, 1); got {alpha!r} with support {sup}")
        else:
            raise TypeError(f"alpha (DP concentration) must be a positive number or a pyro distribution; "
                            f"got {type(alpha).__name__}")
        if base is None:
            base = Hierarchical()
        if not isinstance(base, TaskPrior) or isinstance(base, DirichletProcess):
            raise TypeError(f"base must be a bayesmtl TaskPrior other than DirichletProcess; got {type(base).__name__}")
        self.alpha = alpha
        self.base = base
        self.truncation = int(truncation)

    # ------------------------------------------------------------------ structure
    def site_dims(self) -> dict[str, tuple[str, ...]]:
        dims = {"v": ("stick",), "weights": ("cluster",), "z": ("task",), "z_prob": ("task", "cluster"),
                "w": ("task", "feature")}
        if not isinstance(self.alpha, float):
            dims["alpha"] = ()
        for name, d in self.base.site_dims().items():
            dims[f"atom_{name}"] = tuple("cluster" if x == "task" else x for x in d)
        return dims

    def bind(self, loc, scale):
        out = copy.copy(self)
        out.base = self.base.bind(loc, scale)
        return out

    def defaults(self):
        return [f"base.{k}" for k in self.base.defaults()]

    def coords(self, feature_names=()) -> dict[str, list]:
        """Coordinate labels of the prior's own dims (the clusters)."""
        K = self.truncation
        return {"cluster": list(range(K)), "stick": list(range(K - 1))}

    def expected_tail_weight(self, n_mc: int = 20000) -> float:
        """Prior expected stick weight beyond the truncation level, E[(alpha / (1 + alpha))^K]."""
        if isinstance(self.alpha, float):
            a = torch.tensor([self.alpha], dtype=torch.float64)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                a = self.alpha.sample((n_mc,)).double()
        return float(((a / (1 + a)) ** self.truncation).mean())

    def check(self, n_tasks: int, n_dims: int) -> None:
        """Check that the base measure gives (K, D) atoms and warn when the truncation is too low."""
        like = torch.zeros((), dtype=torch.float64)
        K = self.truncation
        try:
            with pyro.poutine.block(), torch.no_grad():
                atoms = self.base.sample(Tasks(K, n_dims, pyro.plate("cluster", K, dim=-1), like=like))
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"base measure {self.base!r} cannot draw {n_dims}-dimensional task parameter "
                             f"vectors (the model has {n_dims} task-varying parameters): {e}") from e
        if tuple(atoms.shape) != (K, n_dims):
            raise ValueError(f"base measure {self.base!r} draws parameter vectors of shape {tuple(atoms.shape[1:])}, "
                             f"but the model has {n_dims} task-varying parameters")
        tail = self.expected_tail_weight() if self.truncated else 0.0
        if tail > TRUNCATION_TOLERANCE:
            warnings.warn(f"DirichletProcess truncation={K}: the prior expected stick weight beyond the "
                          f"truncation level is {tail:.3f} (> {TRUNCATION_TOLERANCE:.0%}); raise truncation",
                          UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ inside the model
    def sample_clusters(self, n_dims: int, like: torch.Tensor, tasks: Tasks | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample concentration, sticks and atoms; returns weights (..., K) and atoms (..., K, D).
        ``tasks`` (their task-level features) serve priors whose weights differ by task, which
        return (..., T, K)."""
        K = self.truncation
        a = self.concentration(like).unsqueeze(-1)
        v = pyro.sample("v", dist.Beta(torch.ones_like(a), a).expand(a.shape[:-1] + (K - 1,)).to_event(1))
        with _Float():
            weights = pyro.deterministic("weights", stick_breaking(v), event_dim=1)
        return weights, self.atoms(n_dims, like)

    def concentration(self, like: torch.Tensor) -> torch.Tensor:
        """alpha, () (or (C,) under a batch of chains): the ``alpha`` site, or the fixed value."""
        if isinstance(self.alpha, float):
            return torch.full((), self.alpha, dtype=like.dtype, device=like.device)
        return pyro.sample("alpha", move_distribution(self.alpha, like))

    def atoms(self, n_dims: int, like: torch.Tensor) -> torch.Tensor:
        """The K atoms (..., K, D) from the base measure, its sites prefixed ``atom_``."""
        K = self.truncation
        with _Prefix(), _Float():
            return self.base.sample(Tasks(K, n_dims, pyro.plate("cluster", K, dim=-1), like=like))

    def assignment_weights(self, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each task's prior cluster probabilities from flat draws: (S, 1, K), the same for all."""
        return samples["weights"].unsqueeze(-2)

    def sample(self, tasks):
        raise TypeError("DirichletProcess marginalises the discrete cluster assignments; use it through "
                        "bayesmtl.models.DPClustering(prior=...), not another model")

    # ------------------------------------------------------------------ after inference
    def sample_new(self, samples, tasks, generator):
        """New tasks: a cluster drawn from the stick weights per draw, its atom as parameters."""
        n_new = tasks.n
        weights, atoms = samples["weights"], samples["atom_w"]  # (S, K), (S, K, D)
        k = torch.multinomial(weights.clamp_min(0).double(), n_new, replacement=True, generator=generator)
        return atoms.gather(-2, k.unsqueeze(-1).expand(-1, -1, atoms.shape[-1]))

    def relation_null(self, n_dims, n=4000, seed=0):
        return None  # not a cosine: see relations

    def cluster_counts(self, samples):
        """Occupied clusters per draw, from the drawn z (as ``DPClustering.num_clusters``)."""
        z = samples["z"].reshape(samples["z"].shape[0], -1)
        return np.array([len(torch.unique(row)) for row in z])

    def relations(self, samples):
        """Co-clustering draws P(z_i = z_j | draw) = sum_k p_ik p_jk (z independent given a draw), (S, T, T)."""
        p = samples["z_prob"].double()
        r = p @ p.transpose(-1, -2)
        idx = torch.arange(r.shape[-1])
        r[..., idx, idx] = 1.0
        return r.clamp(0, 1).cpu().numpy()

    def __repr__(self):
        return f"DirichletProcess(alpha={self.alpha}, base={self.base!r}, truncation={self.truncation})"
