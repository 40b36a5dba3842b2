"""Task priors over the heads of a shared torch network: a Bayesian last layer per task.

Hard parameter sharing (Caruana 1997) with Bayesian heads: a trunk maps each row's features to
H learned features, and each task's head (an intercept and H weights) is a task parameter under
any task prior. A ``TaskRelationship`` prior over the heads is the Deep Relationship Network of
Long et al. (2017), a matrix-normal prior with the task covariance learned; a noise scale per
task (``noise="per_task"``, the Gaussian likelihood's default where tasks have rows to spare)
is the uncertainty weighting of Kendall, Gal & Cipolla (2018), here inside the likelihood.

The trunk is a point estimate, trained jointly with the posterior of the heads and the prior's
hyperparameters by SVI (or MAP): the uncertainty reported covers the heads, the population
and the noise given the learned features, not the trunk's weights. A sampler can then draw
the heads of the trained network exactly: ``post.model.frozen()`` fixes the trunk, and the
model is a linear multi-task model on its features (every fast path applies).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pyro
import torch
from torch import nn

from bayesmtl.data import MultiTaskData
from bayesmtl.likelihoods import Likelihood
from bayesmtl.model import INTERCEPT, MultiTaskModel
from bayesmtl.priors import hierarchical as hp
from bayesmtl.priors.base import TaskPrior
from bayesmtl.protocol import RelationDraws

__all__ = ["NeuralMultiTask"]

#: SVI guide's initial sd, and ELBO particles, for a network's heads (``sampler_defaults``)
INIT_SCALE = 0.01
PARTICLES = 32
#: SVI/MAP early stopping on held-out rows by default (``sampler_defaults``)
EARLY_STOP = {"validation": 0.1, "window": 100, "patience": 5}


def head_products(h: torch.Tensor, w: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """eta (..., N) = h_n . w[..., task_n, :] for features h (N, D) and heads w (..., T, D).

    With fewer tasks than features, every task's head on every row as one matrix product
    (..., N, T), then each row's own: T/D of the memory of gathering the heads (..., N, D),
    and BLAS speed (a 100k-row PSIS check went from 64 s to a few)."""
    if w.shape[-2] <= w.shape[-1]:
        all_heads = h @ w.transpose(-1, -2)  # (..., N, T)
        index = task.expand(all_heads.shape[:-1]).unsqueeze(-1)
        return all_heads.gather(-1, index).squeeze(-1)
    return (h * w[..., task, :]).sum(-1)


class NeuralMultiTask(MultiTaskModel):
    """A shared trunk and one Bayesian head per task.

    For row n of task t, with h_n = trunk(x_n) of shape (H,):

        eta_n = w_t[0] + h_n . w_t[1:],      w (T, 1 + H) ~ prior,      y_n ~ likelihood(eta_n)

    Parameters
    ----------
    trunk : torch.nn.Module
        Maps features (N, F) to (N, H). Copied at fit time: the fitted copy is
        ``post.model.trunk``; the module passed in is not changed.
    prior : TaskPrior, default ``priors.Hierarchical()``
        Prior of the (T, 1 + H) heads: any task prior, a user's own too.
    likelihood : str or Likelihood
    intercept : bool
        A task-varying intercept (the head's first entry).
    train_trunk : bool
        True: the trunk is trained with the heads (SVI or MAP). False: the trunk is fixed and
        the model is a linear multi-task model on its features (any back end, fast paths).

    Notes
    -----
    Default priors read the target's scale s (``scaling``): the intercept is centred on its
    location with scale s and each head weight has scale s / sqrt(H), so a head on unit-scale
    features moves the prediction by about s.
    """

    name = "neural"

    def __init__(self, trunk: nn.Module, prior: TaskPrior | None = None, likelihood: str | Likelihood = "gaussian",
                 intercept: bool = True, train_trunk: bool = True, reparam: str | bool = "auto"):
        if isinstance(trunk, type) or not isinstance(trunk, nn.Module):
            raise TypeError(f"trunk must be a torch.nn.Module instance; got {trunk!r}")
        super().__init__(prior or hp.Hierarchical(), likelihood, intercept, (), None, reparam)
        self.trunk = trunk
        self.train_trunk = bool(train_trunk)

    def sampler_defaults(self) -> dict:
        """The prior's, and for SVI ``init_scale=INIT_SCALE`` and ``particles=PARTICLES``: the
        trunk learns through the heads' sampled values, so their noise is its gradient's noise.
        A guide that starts at the usual 0.1 on each of 1 + H weights adds noise of sd ~0.1
        sqrt(H) to every prediction; one particle per step left the ELBO too noisy to converge
        (SARCOS, 1,500 steps: test SMSE 0.050 with one particle, 0.036 with 32, which cost
        little: the trunk runs once per minibatch, whatever the particles). And ``EARLY_STOP``:
        the trunk is a point estimate with no prior, which overfits where tasks have few rows;
        SVI and MAP hold a tenth of each task's rows out and stop when their predictive density
        stops improving (SARCOS at 10% of the inputs: test NLPD 11.7 and 90% coverage 0.38
        without (seed 0), 1.89 and 0.90 with (5 seeds, benchmarks/neural.py)). Pass
        ``validation=None`` to fit on every row."""
        if not self.train_trunk:  # a linear model on fixed features: the usual settings
            return super().sampler_defaults()
        return {"init_scale": INIT_SCALE, "particles": PARTICLES, **EARLY_STOP, **super().sampler_defaults()}

    @property
    def default_method(self) -> str:  # type: ignore[override]
        """"svi" while the trunk is trained (samplers cannot train it), else "nuts"."""
        return "svi" if self.train_trunk else "nuts"

    @property
    def trained_modules(self) -> tuple[str, ...]:  # type: ignore[override]
        """("trunk",) while the trunk is trained with the heads."""
        return ("trunk",) if self.train_trunk else ()

    def frozen(self) -> NeuralMultiTask:
        """A copy whose trunk (this one's, trained) is fixed: fit it with any back end to draw
        the heads of the trained network."""
        out = copy.copy(self)
        out.trunk = copy.deepcopy(self.trunk)
        out.train_trunk = False
        return out

    # ------------------------------------------------------------------ features
    def features(self, X: torch.Tensor) -> torch.Tensor:
        """The trunk's output (N, H) for features X (N, F), in X's dtype and device, without
        gradients (for prediction and fixed designs)."""
        p = next(iter(self.trunk.parameters()), None)
        inp = X if p is None else X.to(dtype=p.dtype, device=p.device)
        was = self.trunk.training
        self.trunk.eval()
        try:
            with torch.no_grad():
                h = self.trunk(inp)
        finally:
            self.trunk.train(was)
        return h.to(dtype=X.dtype, device=X.device)

    def width(self, data: MultiTaskData) -> int:
        """H, the trunk's output width (read from one row of ``data``)."""
        return int(self.features(data.X[:1]).shape[-1])

    def varying_names(self, data: MultiTaskData) -> list[str]:
        """The head's entries: the intercept (if any), then h0 .. h{H-1}."""
        return ([INTERCEPT] if self.intercept else []) + [f"h{j}" for j in range(self.width(data))]

    def design(self, data: MultiTaskData) -> tuple[torch.Tensor, torch.Tensor]:
        """Varying design (N, 1 + H): the intercept column and the trunk's features; no shared part."""
        h = self.features(data.X)
        if self.intercept:
            h = torch.cat([h.new_ones(h.shape[0], 1), h], dim=-1)
        return h, data.X.new_zeros(data.X.shape[0], 0)

    def scaling(self, data: MultiTaskData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head loc (D,) and scale (D,): intercept (m, s), weights (0, s / sqrt(H)); see the class."""
        m, s = self.likelihood_for(data).location_scale(data)
        H = self.width(data)
        to = dict(dtype=data.dtype, device=data.device)
        loc, scale = torch.zeros(H, **to), torch.full((H,), s / math.sqrt(max(H, 1)), **to)
        if self.intercept:
            loc, scale = torch.cat([loc.new_tensor([m]), loc]), torch.cat([scale.new_tensor([s]), scale])
        return loc, scale, torch.zeros(0, **to)

    # ------------------------------------------------------------------ checks and binding
    def check(self, data: MultiTaskData) -> None:
        """Raise ValueError/TypeError naming the problem when the trunk or data cannot feed the model."""
        if not isinstance(data, MultiTaskData):
            raise TypeError(f"data must be a MultiTaskData; got {type(data).__name__}")
        if data.n_features == 0:
            raise ValueError("NeuralMultiTask needs features for its trunk; the data have none")
        try:
            h = self.features(data.X[:2])
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise ValueError(f"the trunk failed on the data's {data.n_features} features "
                             f"({', '.join(data.feature_names[:6])}{' ...' if data.n_features > 6 else ''}): "
                             f"{str(e).splitlines()[0]}") from None
        if h.dim() != 2 or h.shape[0] != min(2, data.n_rows):
            raise ValueError(f"the trunk must map features (N, {data.n_features}) to (N, H); on 2 rows it "
                             f"returned shape {tuple(h.shape)}")
        if not bool(torch.isfinite(h).all()):
            raise ValueError("the trunk returned non-finite features on the data's first rows")
        super().check(data)

    def bind(self, data: MultiTaskData) -> NeuralMultiTask:
        """As ``MultiTaskModel.bind``, with the trunk copied into the data's dtype (the copy is
        what the fit trains)."""
        out = super().bind(data)
        out.trunk = copy.deepcopy(self.trunk).to(dtype=data.dtype)
        return out

    def relations(self, samples: dict[str, torch.Tensor], data: MultiTaskData | None = None) -> RelationDraws:
        """Draws (S, T, T) of the correlation of the tasks' functions over the training inputs:
        corr(h . w_t, h . w_s) with h the trunk's features of every training row, i.e.
        w_t' C w_s / sqrt(w_t' C w_t w_s' C w_s), C their covariance (intercepts left out).
        Unlike the prior's own relation (e.g. the correlation of a matrix-normal prior), it does
        not change when the trunk rotates or rescales its features. Without ``data``: the prior's."""
        if data is None:
            return super().relations(samples)
        h = self.features(data.X).double()
        h = h - h.mean(0)
        C = h.T @ h / max(h.shape[0] - 1, 1)
        w = samples["w"].double()[..., 1:] if self.intercept else samples["w"].double()
        G = torch.einsum("std,de,sue->stu", w, C, w)
        d = torch.diagonal(G, dim1=-2, dim2=-1).clamp_min(1e-300).sqrt()
        corr = (G / d.unsqueeze(-1) / d.unsqueeze(-2)).clamp(-1.0, 1.0)
        return RelationDraws(corr.cpu().numpy(), "correlation of the tasks' functions over the training inputs "
                             "(heads on the trunk's features)", True, None,
                             self.prior.cluster_counts(samples), self.prior.relation_tree())

    def row_predictor(self, data: MultiTaskData, subsample_size: int | None = None) -> Callable:
        """eta from the trunk run on the minibatch's rows inside the program (registered with
        ``pyro.module``, so the optimiser trains it); a fixed trunk: the linear predictor."""
        if not self.train_trunk:
            return super().row_predictor(data, subsample_size)
        trunk = self.trunk.to(device=data.device, dtype=data.dtype)
        X, task, intercept = data.X, data.task, self.intercept

        cache: dict = {}

        def eta(w, coef, pick):
            net = pyro.module("trunk", trunk)
            net.train(torch.is_grad_enabled())  # dropout and the like in training steps only
            # evaluations without gradients on every row (SVI's PSIS check: 1000 draws in chunks)
            # share one pass of the trunk while its weights stay as they are
            key = tuple(p._version for p in net.parameters()) if subsample_size is None else None
            if key is not None and not torch.is_grad_enabled() and cache.get("key") == key:
                h = cache["h"]
            else:
                h = net(pick(X))
                if intercept:
                    h = torch.cat([h.new_ones(h.shape[0], 1), h], dim=-1)
                if key is not None and not torch.is_grad_enabled():
                    cache.update(key=key, h=h)
            return head_products(h, w, pick(task))

        return eta
