"""Joint sparsity across tasks: which features matter, shared by the tasks (group sparsity,
Argyriou et al. 2007; Lounici et al. 2009), optionally plus task-private ones ("dirty" models,
Jalali et al. 2010), as a regularised horseshoe (Piironen & Vehtari 2017).

Every coefficient is measured in its data-scaled unit u_j = sd(y) / sd(x_j) (``Tasks.scale``),
so the prior does not depend on the features' units. For the F sparse features (every
task-varying parameter but the intercept):

    tau ~ global_scale,  c^2 = slab_scale^2 * slab,  slab ~ InvGamma(slab_df / 2, slab_df / 2)
    lambda_j ~ HalfCauchy(1),  lt_j = c lambda_j / sqrt(c^2 + tau^2 lambda_j^2)    (shared by all tasks)
    w_tj / u_j = tau lt_j (z_j + r_j e_tj),  z_j, e_tj ~ N(0, 1),  r_j ~ HalfNormal(1)

so a feature is switched on or off for every task at once (lambda_j), with a shared effect
(z_j) and a task spread (r_j) both under the switch. ``private=True`` adds a task-private sparse
part, tau_p ltp_tj v_tj with its own global scale and one local scale per (task, feature).
The intercept, when the model has one, is hierarchical: w_t0 = m + s e_t0. Everything is
non-centred, which is what NUTS needs on a horseshoe; each half-Cauchy scale is one site
(``_half_cauchy`` says why). With a Gaussian likelihood the shared effects and the w_t are
integrated out (``marginals.sparsity_gaussian``), so a sampler moves the scales alone.

Sites: ``global_scale`` (), ``slab`` (), ``local_scale`` (F,), ``effect_raw`` (F,), ``spread`` (F,), ``deviation_raw``
(T, D) (the intercept's column first), with ``private``: ``private_global_scale`` (),
``private_local_scale`` (T, F), ``private_raw`` (T, F); the intercept's ``intercept_mean`` (),
``intercept_scale`` (); deterministic ``effect`` (F,) (the shared coefficients in the data's
units), ``inclusion`` (F,), ``private_inclusion`` (T, F) and ``w`` (T, D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import MappingProxyType

import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from ..protocol import Tasks
from .base import TaskPrior, as_distribution, move_distribution
from .hierarchical import LOCATION_SCALE

__all__ = ["SharedSparsity", "INCLUSION_RULE", "pad"]

INTERCEPT = "intercept"

#: how ``inclusion`` turns draws into a probability (stated on every table)
INCLUSION_RULE = ("inclusion = posterior mean of 1 - kappa, kappa = 1 / (1 + n scale^2): the horseshoe's "
                  "shrinkage factor (Carvalho, Polson & Scott 2010; Piironen & Vehtari 2017) with the noise "
                  "taken as sd(y) (1 on a link scale), scale the coefficient's learned prior scale in units of "
                  "sd(y) / sd(x) and n the rows per task; a feature is in a task's support when above 0.5")


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number; got {value!r}")
    return float(value)


def _scale_prior(value, name: str):
    if value is None:
        return None
    d = as_distribution(value, name)
    sup = d.support
    if isinstance(d, dist.Delta):
        _positive(float(d.v), name)
    elif not (isinstance(sup, (constraints._GreaterThan, constraints._GreaterThanEq))
              and float(sup.lower_bound) >= 0):
        raise ValueError(f"{name} must be a distribution on (0, inf) such as HalfCauchy(0.1); got {d!r} "
                         f"with support {d.support}")
    if d.batch_shape != torch.Size() or d.event_shape != torch.Size():
        raise ValueError(f"{name} must be a scalar distribution; got batch shape {tuple(d.batch_shape)}")
    return d


class SharedSparsity(TaskPrior):
    """Features that matter are shared by the tasks: a regularised horseshoe with one local
    scale per feature for all tasks (joint sparsity); ``private=True`` adds task-private sparse
    parts (a "dirty" model).

    Parameters
    ----------
    global_scale : pyro distribution, default HalfCauchy(tau0)
        Prior of the global scale tau (in units of sd(y) / sd(x)). Default: Piironen &
        Vehtari's tau0 = p0 / (F - p0) / sqrt(n) with n the rows per task and p0
        ``expected_features``.
    slab_scale : float
        Scale of the slab that bounds the largest coefficients (same units); 2 lets an effect of
        two sd(y) per sd(x) through unshrunk.
    slab_df : float
        Degrees of freedom of the slab (Student-t slab; InvGamma(df / 2, df / 2) on c^2 / slab_scale^2).
    private : bool
        Add task-private sparse parts (Jalali et al. 2010): feature j may matter in task t alone.
    expected_features : float, optional
        Prior guess p0 of the number of features that matter (default: a tenth of them, at least 1).
    private_global_scale : pyro distribution, default HalfCauchy(tau0_p)
        Prior of the private parts' global scale, tau0_p = 1 / (F - 1) / sqrt(n): about one
        private feature a task.

    Notes
    -----
    Shapes: T tasks, D task-varying parameters (intercept first when the model has one), F =
    D - 1 sparse features with an intercept, D without.
    """

    reparam = False  # non-centred by hand
    # the horseshoe's funnels: at NUTS's 0.8 and ChEES's 0.651 the planted dirty problem diverged
    # (21 and 7 times); ChEES at 0.9 did not (docs/benchmarks.md, issue 19)
    sampler_defaults = MappingProxyType({"target_accept": 0.9})
    relation_kind = ("overlap of supports: the share of features in either task's support that are in both "
                     "(Jaccard index; a feature is in a task's support when its inclusion is above 0.5)")

    def __init__(self, global_scale=None, slab_scale: float = 2.0, slab_df: float = 4.0, private: bool = False,
                 expected_features: float | None = None, private_global_scale=None):
        self.global_scale = _scale_prior(global_scale, "global_scale")
        self.slab_scale = _positive(slab_scale, "slab_scale")
        self.slab_df = _positive(slab_df, "slab_df")
        self.private = bool(private)
        self.expected_features = None if expected_features is None else _positive(expected_features,
                                                                                  "expected_features")
        self.private_global_scale = _scale_prior(private_global_scale, "private_global_scale")

    # ------------------------------------------------------------------ structure
    def check(self, n_tasks: int, n_dims: int) -> None:
        """Raise ValueError when there is no feature to select or p0 does not fit."""
        if n_dims < 2:
            raise ValueError(f"SharedSparsity selects features, but the model has {n_dims} task-varying "
                             "parameter(s); give it features (and keep them out of shared=)")
        if self.expected_features is not None and not self.expected_features < n_dims - 1:
            raise ValueError(f"expected_features must be below the number of features ({n_dims - 1} besides "
                             f"an intercept); got {self.expected_features}")

    def coords(self, feature_names: Sequence[str] = ()) -> dict[str, list[str]]:
        """Labels of the sparse features (every task-varying parameter but the intercept)."""
        return {"sparse_feature": _sparse(list(feature_names))}

    def site_dims(self) -> dict[str, tuple[str, ...]]:
        dims = {"global_scale": (), "slab": (),
                "local_scale": ("sparse_feature",), "effect_raw": ("sparse_feature",),
                "spread": ("sparse_feature",), "deviation_raw": ("task", "feature"),
                "effect": ("sparse_feature",), "inclusion": ("sparse_feature",), "w": ("task", "feature"),
                "intercept_mean": (), "intercept_scale": ()}
        if self.private:
            dims.update({"private_global_scale": (), "private_local_scale": ("task", "sparse_feature"),
                         "private_raw": ("task", "sparse_feature"),
                         "private_inclusion": ("task", "sparse_feature")})
        return dims

    def tau0(self, n_features: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Default global scales (shared, private): p0 / (F - p0) / sqrt(n), p0 = 1 for the
        private parts, n the mean rows per task, a 0-d tensor (no host sync inside a compiled program)."""
        p0 = self.expected_features if self.expected_features is not None else max(1.0, 0.1 * n_features)
        p0 = min(p0, n_features - 0.5)
        root = rows.clamp_min(1.0).sqrt()
        return p0 / (n_features - p0) / root, 1.0 / max(n_features - 1.0, 0.5) / root

    # ------------------------------------------------------------------ the program
    def population(self, tasks: Tasks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Sample everything but the tasks' Gaussian draws; returns the prior of ``w``:

            w = mean + shared_sd * deviation_raw + pad(private_sd * private_raw),

        mean and shared_sd (..., D) (the intercept first), private_sd (..., T, F) or None.
        """
        m0, p, sd, private_sd = self.scales(tasks)
        has_icpt = _has_intercept(tasks.feature_names)
        ones = tasks.like.new_ones(p.shape[-1] - int(has_icpt))
        z = pyro.sample("effect_raw", dist.Normal(0 * ones, ones).to_event(1))
        effect = p[..., int(has_icpt):] * z
        pyro.deterministic("effect", effect, event_dim=1)
        mean = effect
        if has_icpt:
            like = tasks.like
            m = pyro.sample("intercept_mean", dist.Normal(tasks.loc[0].to(like),
                                                          LOCATION_SCALE * tasks.scale[0].to(like)))
            mean = torch.cat([m.unsqueeze(-1).expand(*effect.shape[:-1], 1), effect], dim=-1)
        return mean, sd, private_sd

    def scales(self, tasks: Tasks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Sample the scales only (global, slab, local, spread, private; the intercept's spread);
        returns (m0, p, shared_sd, private_sd): the shared mean is N(m0, diag(p)^2), m0 and p
        (..., D), which the collapsed Gaussian form integrates out with the tasks' draws
        (``marginals.sparsity_gaussian``); ``population`` samples it."""
        like = tasks.like
        has_icpt = _has_intercept(tasks.feature_names)
        F = tasks.dims - int(has_icpt)
        if F < 1:
            raise ValueError("SharedSparsity needs at least one feature besides the intercept")
        n_t = tasks.rows.to(like) if tasks.rows is not None else like.new_ones(tasks.n)
        rows = n_t.mean()
        t0, tp0 = self.tau0(F, rows)
        unit = tasks.scale[int(has_icpt):].to(like)
        if self.global_scale is None:
            tau = _half_cauchy("global_scale", t0, like.new_ones(())).unsqueeze(-1)
        else:
            tau = _given_scale("global_scale", self.global_scale, like)
        half = like.new_tensor(self.slab_df / 2)
        c2 = self.slab_scale ** 2 * pyro.sample("slab", dist.InverseGamma(half, half)).unsqueeze(-1)
        ones = like.new_ones(F)
        lam = _half_cauchy("local_scale", 1.0, ones)
        lt = tau * _regularised(lam, tau, c2)
        r = pyro.sample("spread", dist.HalfNormal(ones).to_event(1))
        pyro.deterministic("inclusion", 1 - 1 / (1 + rows * lt ** 2 * (1 + r ** 2)), event_dim=1)
        p, sd = unit * lt, unit * lt * r
        m0 = torch.zeros_like(p)
        if has_icpt:
            s = pyro.sample("intercept_scale", dist.HalfNormal(tasks.scale[0].to(like)))
            lead = p.shape[:-1] + (1,)
            m0 = torch.cat([tasks.loc[0].to(like).expand(lead), m0], dim=-1)
            p = torch.cat([(LOCATION_SCALE * tasks.scale[0].to(like)).expand(lead), p], dim=-1)
            sd = torch.cat([s.unsqueeze(-1).expand(lead), sd], dim=-1)
        private_sd = None
        if self.private:
            if self.private_global_scale is None:
                tau_p = _half_cauchy("private_global_scale", tp0, like.new_ones(())).unsqueeze(-1)
            else:
                tau_p = _given_scale("private_global_scale", self.private_global_scale, like)
            with tasks.plate:
                kap = _half_cauchy("private_local_scale", 1.0, ones)
                scale_p = tau_p * _regularised(kap, tau_p, c2)  # (..., T, F): batch hyperparameters broadcast
                pyro.deterministic("private_inclusion", 1 - 1 / (1 + n_t.unsqueeze(-1) * scale_p ** 2), event_dim=1)
            private_sd = unit * scale_p
        return m0, p, sd, private_sd

    def sample(self, tasks: Tasks) -> torch.Tensor:
        mean, sd, private_sd = self.population(tasks)
        ones = tasks.like.new_ones(tasks.dims)
        with tasks.plate:
            w = mean + sd * pyro.sample("deviation_raw", dist.Normal(0 * ones, ones).to_event(1))
            if private_sd is not None:
                v = pyro.sample("private_raw", dist.Normal(0 * ones[:private_sd.shape[-1]],
                                                           ones[:private_sd.shape[-1]]).to_event(1))
                w = w + pad(private_sd * v, tasks.dims)
        return pyro.deterministic("w", w, event_dim=2)

    # ------------------------------------------------------------------ after inference
    def inclusion(self, samples: dict[str, torch.Tensor], task_names: Sequence[str],
                  feature_names: Sequence[str]) -> pd.DataFrame:
        """Posterior inclusion probability of each sparse feature (rule: ``INCLUSION_RULE``):
        a DataFrame indexed by feature with ``shared`` (every task) and, with ``private=True``,
        one column per task for its private part."""
        out = {"shared": samples["inclusion"].mean(0).cpu().numpy()}
        if self.private:
            inc = samples["private_inclusion"].mean(0).cpu().numpy()
            out.update({str(name): inc[t] for t, name in enumerate(task_names)})
        frame = pd.DataFrame(out, index=pd.Index(_sparse(list(feature_names)), name="feature"))
        frame.attrs["rule"] = INCLUSION_RULE
        return frame

    def relations(self, samples):
        sup = samples["inclusion"].unsqueeze(-2) > 0.5  # (S, 1, F)
        if self.private:
            sup = sup | (samples["private_inclusion"] > 0.5)
        sup = sup.expand(-1, samples["w"].shape[-2], -1).to(torch.float64)
        both = sup @ sup.transpose(-1, -2)
        size = sup.sum(-1)
        either = size.unsqueeze(-1) + size.unsqueeze(-2) - both
        return torch.where(either > 0, both / either.clamp_min(1), torch.ones_like(both)).cpu().numpy()

    def relation_null(self, n_dims, n=4000, seed=0):
        return None  # overlap is read against 0: tasks that share no feature

    def __repr__(self):
        gs = "data-scaled HalfCauchy" if self.global_scale is None else self.global_scale
        return (f"SharedSparsity(global_scale={gs}, slab_scale={self.slab_scale}, slab_df={self.slab_df}, "
                f"private={self.private}, expected_features={self.expected_features})")


def _given_scale(name: str, d: dist.Distribution, like: torch.Tensor) -> torch.Tensor:
    """A user's prior of a global scale as a site, or the number itself when fixed; shape (..., 1)."""
    if isinstance(d, dist.Delta):
        return like.new_tensor([float(d.v)])
    return pyro.sample(name, move_distribution(d, like)).unsqueeze(-1)


def _half_cauchy(name: str, scale, ones: torch.Tensor) -> torch.Tensor:
    """A HalfCauchy(scale) site ``name`` of ``ones``' shape.

    Sampled directly, not as Piironen & Vehtari's scale * a sqrt(b) (a ~ HalfNormal(1),
    b ~ InvGamma(1/2, 1/2)): the log of a half-Cauchy is close to Gaussian, which SVI's guides
    fit, whereas log a and log b are skewed and doubled the sites. On issue 19's planted problem
    (20 tasks, 60 features) SVI's private AUC went from 0.68 to 1.00 and its test MSE from 1.81
    to 1.23; the cost is NUTS's min ESS on a small planted problem, 381 against 508."""
    d = dist.HalfCauchy(scale * ones)
    return pyro.sample(name, d.to_event(ones.dim()) if ones.dim() else d)


def _regularised(lam: torch.Tensor, tau: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Piironen & Vehtari's regularised local scale, c lam / sqrt(c^2 + tau^2 lam^2)."""
    return lam * torch.sqrt(c2 / (c2 + tau ** 2 * lam ** 2))


def _has_intercept(feature_names: Sequence[str]) -> bool:
    return bool(feature_names) and feature_names[0] == INTERCEPT


def _sparse(feature_names: list[str]) -> list[str]:
    return feature_names[1:] if _has_intercept(feature_names) else feature_names


def pad(private: torch.Tensor, dims: int) -> torch.Tensor:
    """(..., F) -> (..., D): zeros in front for the intercept (which has no private part)."""
    extra = dims - private.shape[-1]
    return torch.nn.functional.pad(private, (extra, 0)) if extra else private
