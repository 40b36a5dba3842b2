"""Task-relationship learning (Zhang & Yeung 2010, "A convex formulation for learning task
relationships in multi-task learning") as a Bayesian model.

The (T, D) task parameters are matrix-normal, W ~ MN(0, Omega (x) Sigma_features), and the
task covariance Omega gets a prior of its own (LKJ correlation and task scales, or low rank
plus diagonal), so the posterior says which tasks are positively related, unrelated or
negatively related, with intervals. With a Gaussian likelihood W is integrated out in closed
form for MCMC (``bayesmtl.marginals.task_relationship_gaussian``) and drawn exactly afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bayesmtl.data import MultiTaskData
from bayesmtl.likelihoods import Likelihood
from bayesmtl.model import MultiTaskModel
from bayesmtl.priors import relationship as rp

__all__ = ["TaskRelationship"]


class TaskRelationship(MultiTaskModel):
    """Multi-task regression with a learned task covariance (MTRL).

    Parameters
    ----------
    likelihood : "gaussian", "bernoulli", "poisson", "binomial" or a Likelihood
    prior : bayesmtl.priors.TaskRelationship, optional
        Default ``TaskRelationship(correlation=LKJ(2), scales=HalfNormal(1))``: a full Omega and
        a mean fixed at the data's location for up to 10 tasks; rank 3 and a learned mean above
        (``rank="auto"``, ``mean="auto"``; ``prior_summary()`` says which).
    intercept, shared, shared_prior
        As in ``MultiTaskModel``. The intercept is a task-varying column of W like any other.

    Notes
    -----
    MCMC uses the collapsed form by default (Gaussian likelihood; T x D for
    the full prior or rank x D for the low-rank prior at most ``MAX_COLLAPSED_DIM``; shared
    coefficients stay sampled). For SVI pass ``collapse=True`` where the collapsed form exists:
    a mean-field guide over W and Omega jointly shrinks the task correlations towards 0 and
    gives too-narrow intervals, while a guide over Omega alone (``guide="mvn"``) matches NUTS
    closely on the planted test.
    """

    name = "task-relationship"
    #: left out of ``Posterior.summary()`` and its diagnostics: low-rank loadings are identified only
    #: up to sign and rotation (chains may settle on different ones); Omega and C are identified
    unidentified_sites = ("loadings",)

    def __init__(self, likelihood: str | Likelihood = "gaussian", prior: rp.TaskRelationship | None = None,
                 intercept: bool = True, shared: Sequence[str] = (), shared_prior=None):
        if prior is not None and not isinstance(prior, rp.TaskRelationship):
            raise TypeError(f"prior must be bayesmtl.priors.TaskRelationship; got {type(prior).__name__}")
        super().__init__(prior or rp.TaskRelationship(), likelihood, intercept, shared, shared_prior)

    def coords(self, data: MultiTaskData) -> dict[str, list[str]]:
        """Coordinate labels of the model's dims (task, feature, rank), for ArviZ."""
        out = super().coords(data)
        out["task_"] = list(data.task_names)
        if "iw_normal" in self.prior.site_dims():  # inverse-Wishart: one Bartlett entry per pair of tasks
            rows, cols = np.tril_indices(data.n_tasks, k=-1)  # the order of torch.tril_indices(T, T, -1)
            names = data.task_names
            out["task_pair"] = [f"{names[i]}|{names[j]}" for i, j in zip(rows, cols, strict=True)]
        rank = self.prior.sized(data.n_tasks).rank
        if rank is not None:
            out["factor"] = [f"factor_{k}" for k in range(rank)]
        return out
