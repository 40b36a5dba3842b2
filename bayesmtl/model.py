"""MultiTaskModel = task prior + likelihood (+ intercept and shared coefficients).

For row n of task t = task[n]:

    eta_n = x_n^varying . w_t  +  x_n^shared . coef,      y_n ~ likelihood(eta_n)

where ``w`` (T, D) comes from the task prior (an intercept column comes first when
``intercept=True``) and ``coef`` are coefficients common to all tasks. The model is a Pyro
program with plates ``task`` and ``data`` at dim -1 (``max_plate_nesting = 1``), so any outer
plate at dim -2 batches chains or particles (a prior with plates of its own nests deeper; the
nesting is read from a trace).

The prior is written once, as ``sample(tasks)`` in plain Pyro; everything else is derived here
from a trace of that program: site dims, the draws of tasks never seen in training (the same
program run for the new tasks with the sites outside the task plate fixed to each posterior
draw), and the automatic non-centring of a user prior's location-scale sites.
"""

from __future__ import annotations

import copy
import functools
import inspect
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.reparam import LocScaleReparam
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.util import site_is_subsample

from . import marginals
from .data import MultiTaskData
from .design import exact_fits, linear_predictor, task_gram, task_rows
from .devices import keep_rng
from .likelihoods import Likelihood, check_shapes, get_likelihood
from .likelihoods.base import MIN_TASK_DF, LocationScale
from .priors.base import TaskPrior, as_distribution, move_distribution
from .protocol import (
    ModelBase,
    RelationDraws,
    Target,
    TaskFeatures,
    Tasks,
    data_context,
    derive_dims,
    in_plate,
    plate_nesting,
)
from .pyro_util import batch_condition, site_shapes, squeeze_to
from .streamed import StreamedData

__all__ = ["MultiTaskModel", "linear_predictor", "task_rows"]

INTERCEPT = "intercept"
#: ``exact_tasks`` results by (model, data) identity (weak references check both are still those)
_EXACT: dict[tuple[int, int], tuple] = {}
#: location-scale families the package may non-centre (LocScaleReparam) in a user's prior
_LOC_SCALE = (dist.Normal, dist.StudentT, dist.Cauchy, dist.Laplace)


class MultiTaskModel(ModelBase):
    """A task prior and a likelihood, composed into a Pyro model.

    Parameters
    ----------
    prior : TaskPrior
        Prior of the (T, D) matrix of task-varying parameters.
    likelihood : str or Likelihood
        "gaussian", "bernoulli", "poisson", "binomial" or a ``Likelihood`` object.
    intercept : bool
        Add a task-varying intercept (first column of ``w``).
    shared : sequence of str
        Feature columns whose coefficients are common to all tasks (fixed effects).
    shared_prior : pyro distribution, default data-scaled
        Prior of each shared coefficient; default Normal(0, 2.5 sd(y) / sd(x)) per feature
        (``scaling``).
    reparam : {"auto", False}
        "auto": non-centre every location-scale site (Normal, StudentT, Cauchy, Laplace) that a
        prior samples inside a plate, unless the prior manages its own parametrisation
        (``TaskPrior.reparam = False``, as the built-in priors do). Hierarchies with little
        data per task then sample without a funnel. The sites are recorded in ``run.json``.
    """

    name = "multitask"
    #: attributes that are torch modules the program trains as point estimates (``pyro.module``):
    #: fast paths, which precompute from a fixed design, then do not apply (``Target.trains``)
    trained_modules: tuple[str, ...] = ()

    @property
    def fixed_design(self) -> bool:
        """True where eta is linear in the task parameters over a design fixed before the fit,
        which is what fast paths precompute from (not so for a trunk trained or sampled with them)."""
        return not self.trained_modules

    @property
    def unidentified_sites(self) -> tuple[str, ...]:
        """The prior's sites identified only up to a symmetry (left out of summaries and r_hat)."""
        return tuple(self.prior.unidentified_sites)

    @property
    def outcome(self) -> str:
        """The likelihood's kind ("gaussian", "bernoulli", ...)."""
        return self.likelihood.kind

    def __init__(self, prior: TaskPrior, likelihood: str | Likelihood = "gaussian",
                 intercept: bool = True, shared: Sequence[str] = (), shared_prior=None,
                 reparam: str | bool = "auto"):
        if not isinstance(prior, TaskPrior):
            raise TypeError(f"prior must be a bayesmtl TaskPrior; got {type(prior).__name__}")
        if reparam not in ("auto", False):
            raise ValueError(f"reparam must be 'auto' or False; got {reparam!r}")
        self.prior = prior
        self.likelihood = get_likelihood(likelihood)
        self.intercept = bool(intercept)
        self.shared = list(shared)
        self.shared_prior = None if shared_prior is None else as_distribution(shared_prior, "shared_prior")
        self.reparam = reparam
        self.bound_defaults: list[str] | None = None  # set on the copy ``bind`` returns

    # ------------------------------------------------------------------ structure
    def varying_names(self, data: MultiTaskData) -> list[str]:
        """Names of the D task-varying parameters: the intercept (if any), then the features not in ``shared``."""
        names = [f for f in data.feature_names if f not in self.shared]
        return ([INTERCEPT] if self.intercept else []) + names

    def likelihood_for(self, data: MultiTaskData) -> Likelihood:
        """The likelihood bound to these data (noise mode resolved, default priors scaled to the target)."""
        return self.bind_likelihood(self.likelihood, data)

    def bind_likelihood(self, lik: Likelihood, data: MultiTaskData) -> Likelihood:
        """``lik`` bound to ``data``; a noise mode left to the data reads ``residual_df`` (computed
        only then: a bound likelihood has its mode already)."""
        if isinstance(lik, LocationScale) and lik.noise is None:
            df = self.residual_df(data)
            if lik.resolved_noise(data, df) == "per_task" and self.exact_tasks(data):
                df = 0.0  # a task its own design fits exactly has no lower bound on its own sigma: share one
            return lik.bind(data, residual_df=df)
        return lik.bind(data)

    def exact_tasks(self, data: MultiTaskData) -> list[int]:
        """Tasks with more rows than parameters whose target their own design fits exactly
        (``design.exact_fits``): with a sigma of their own the posterior is improper."""
        if not data.has_target:
            return []
        key = (id(self), id(data))
        hit = _EXACT.get(key)
        if hit is not None and hit[0]() is self and hit[1]() is data:
            return hit[2]  # likelihood_for asks often, on the same data; the sums cost O(N D^2)
        found = exact_fits(self.task_sums(data))
        if len(_EXACT) > 64:
            _EXACT.clear()
        _EXACT[key] = (weakref.ref(self), weakref.ref(data), found)
        return found

    def task_sums(self, data: MultiTaskData, weighted: bool = False) -> dict[str, torch.Tensor]:
        """Per-task sums of the rows through this model's design (``design.task_gram``), each row
        weighted by 1 / noise^2 when ``weighted``. Data streamed from a file sum them chunk by
        chunk, once per setting (``reduce``)."""
        T = data.n_tasks

        def sums(d: MultiTaskData) -> dict[str, torch.Tensor]:
            Xv, Xs = self.design(d)
            return task_gram(Xv, d.y, d.task, T, Xs, d.noise ** 2 if weighted else None)

        # kept on the data (a fit's targets read them up to four times, 1 s each at 400k rows) where
        # the key says what they are: a design of a subclass's own (a trunk's features) it does not
        key = (("task_sums", type(self).__qualname__, self.intercept, tuple(self.shared), weighted)
               if type(self).design is MultiTaskModel.design else None)
        return data.reduce(key, sums)

    def residual_df(self, data: MultiTaskData) -> float:
        """Rows minus task-varying parameters of the median task: how well a sigma per task is
        identified (the default noise mode reads it; ``likelihoods.base.MIN_TASK_DF``)."""
        rows = data.rows_per_task()
        return float(np.median(rows)) - len(self.varying_names(data)) if rows.size else 0.0

    def check(self, data: MultiTaskData) -> None:
        """Raise ValueError/TypeError naming the problem when the data cannot feed this model."""
        if not isinstance(data, (MultiTaskData, StreamedData)):
            raise TypeError(f"data must be a MultiTaskData; got {type(data).__name__}")
        missing = [c for c in self.shared if c not in data.feature_names]
        if missing:
            raise ValueError(f"shared feature {missing[0]!r} is not a feature of the data "
                             f"(features: {data.feature_names})")
        if self.intercept and INTERCEPT in data.feature_names:
            raise ValueError(f"a feature is named {INTERCEPT!r}; rename it or pass intercept=False")
        n_dims = len(self.varying_names(data))
        if n_dims == 0:
            raise ValueError("the model has no task-varying parameters (no intercept, every feature shared)")
        self.prior.check(data.n_tasks, n_dims)
        lik = self.likelihood_for(data)
        lik.check(data)
        check_shapes(lik, data.head())  # a parameter broadcast along the wrong dim: an error, not a wrong result
        open_noise = getattr(self.likelihood, "noise", None) is None and data.noise is None
        chose = isinstance(lik, LocationScale) and open_noise
        if isinstance(lik, LocationScale) and (lik.noise == "per_task" or chose) and data.has_target:
            exact = self.exact_tasks(data)
            if exact:
                names = ", ".join(repr(data.task_names[t]) for t in exact[:5]) + (" ..." if len(exact) > 5 else "")
                what = (f"{len(exact)} task(s) ({names}) have more rows than free parameters yet their target is "
                        f"fitted exactly (residual 0): with a noise sd per task their posterior has no lower bound "
                        f"on it (improper; SVI may stop with a NaN ELBO). ")
                if lik.noise == "per_task":
                    warnings.warn(what + f"Use {type(lik).__name__}(noise='shared'), or check those tasks' data",
                                  UserWarning, stacklevel=3)
                elif self.residual_df(data) >= MIN_TASK_DF:  # (short tasks share a sigma anyway)
                    warnings.warn(what + "The default noise is therefore one sigma for all tasks; check those "
                                  "tasks' data", UserWarning, stacklevel=3)
        self._prior_trace(data)  # a prior that cannot run, or returns the wrong shape, fails here

    def design(self, data: MultiTaskData) -> tuple[torch.Tensor, torch.Tensor]:
        """Varying design (N, D) with the intercept first, and shared design (N, Ds)."""
        vary = [j for j, f in enumerate(data.feature_names) if f not in self.shared]
        Xv = data.X[:, vary]
        if self.intercept:
            # not ones_like(X[:, :1]): that has 0 columns when the data have no features
            Xv = torch.cat([data.X.new_ones(data.X.shape[0], 1), Xv], dim=-1)
        Xs = data.X[:, [data.feature_names.index(f) for f in self.shared]]
        return Xv, Xs

    def scaling(self, data: MultiTaskData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The data's scales that default priors use (rstanarm's autoscale; ``protocol.Tasks``):
        loc (D,) and scale (D,) of the task parameters, and scale (Ds,) of the shared coefficients.

        With the likelihood's location m and scale s of the linear predictor (the target's mean
        and sd for a Gaussian, 0 and 1 on a link scale): a coefficient has loc 0 and scale
        s / sd(x); the intercept has loc m and scale s sqrt(1 + sum_j (mean(x_j) / sd(x_j))^2),
        wide enough for features that are not centred."""
        m, s = self.likelihood_for(data).location_scale(data)
        mean, sd = data.feature_moments()
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))  # a constant column keeps its units
        slope = s / sd
        names = data.feature_names
        on = dict(dtype=torch.long, device=slope.device)  # (the prior's program may run in a CUDA context)
        vary = torch.tensor([j for j, f in enumerate(names) if f not in self.shared], **on)
        shared = torch.tensor([names.index(f) for f in self.shared], **on)
        loc, scale = slope.new_zeros(len(vary)), slope[vary]
        if self.intercept:
            wide = s * torch.sqrt(1 + ((mean / sd) ** 2).sum())
            loc, scale = torch.cat([loc.new_tensor([m]), loc]), torch.cat([wide.reshape(1), scale])
        to = dict(dtype=data.dtype, device=data.device)
        return loc.to(**to), scale.to(**to), slope[shared].to(**to)

    def shared_prior_for(self, data: MultiTaskData) -> dist.Distribution:
        """The prior of the shared coefficients: the given one, else Normal(0, 2.5 scale) (Ds,)."""
        if self.shared_prior is not None:
            return self.shared_prior
        scale = self.scaling(data)[2]
        return dist.Normal(torch.zeros_like(scale), 2.5 * scale)

    def bind(self, data: MultiTaskData) -> MultiTaskModel:
        """A copy whose priors left at their defaults are set from ``data`` (``scaling``); the
        priors given stay. ``fit`` fits the bound copy: this model is not changed."""
        loc, scale, _ = self.scaling(data)
        out = copy.copy(self)
        sized = self.prior.sized(data.n_tasks)
        out.prior = sized.bind(loc, scale)
        out.likelihood = self.likelihood_for(data)
        if data.has_target:
            out.prior = out.prior.learn_structure(out, data)  # e.g. a learned tree (seeded by fit)
        out.shared_prior = self.shared_prior_for(data) if self.shared else self.shared_prior
        out.bound_defaults = self._defaults(out.likelihood, sized)
        return out

    def prior_scales(self, data: MultiTaskData) -> dict[str, float]:
        """The linear predictor's location and scale read from ``data`` (``scaling``)."""
        m, s = self.likelihood_for(data).location_scale(data)
        return {"location": m, "scale": s}

    def sampler_defaults(self) -> dict[str, Any]:
        """The prior's ``sampler_defaults`` (e.g. the horseshoe's ``target_accept``)."""
        return dict(self.prior.sampler_defaults)

    def problems(self) -> list:
        """The prior's (``TaskPrior.problems``: what it learned before the fit)."""
        return self.prior.problems()

    def defaults(self) -> list[str]:
        """Settings left at their data-scaled defaults: ``prior.mean``, ``likelihood.noise_prior``, ..."""
        if self.bound_defaults is not None:  # a bound copy remembers what it set
            return list(self.bound_defaults)
        return self._defaults(self.likelihood)

    def _defaults(self, likelihood: Likelihood, prior: TaskPrior | None = None) -> list[str]:
        out = [f"prior.{k}" for k in (prior or self.prior).defaults()]
        out += [f"likelihood.{k}" for k in likelihood.defaults()]
        return out + (["shared_prior"] if self.shared and self.shared_prior is None else [])

    def coords(self, data: MultiTaskData) -> dict[str, list[str]]:
        """Coordinate labels of every dim the model's sites use (task, feature, ...), for ArviZ."""
        names = self.varying_names(data)
        out = {"task": list(data.task_names), "task_": list(data.task_names), "feature": names,
               "feature_": names, "shared_feature": list(self.shared)}
        out.update({k: list(v) for k, v in data.task_levels.items()})  # a plate named after a task feature
        out.update(self.prior.sized(data.n_tasks).coords(names))
        out.update(self.likelihood_for(data).coords())
        return out

    def site_dims(self, data: MultiTaskData) -> dict[str, tuple[str, ...]]:
        """Named dims of every site: the prior's own ``site_dims`` where it names them, else read
        from a trace of its program (see ``protocol.derive_dims``)."""
        tr = self._prior_trace(data)
        dims = derive_dims(tr, data.n_tasks, len(self.varying_names(data)))
        dims.update(self.prior.sized(data.n_tasks).site_dims())
        if self.shared:
            dims["coef"] = ("shared_feature",)
        dims.update(self.likelihood_for(data).site_dims())
        return dims

    # ------------------------------------------------------------------ the task prior's program
    def tasks(self, data: MultiTaskData, plate=None, start: int = 0, scaled_by: MultiTaskData | None = None) -> Tasks:
        """What the prior sees for tasks ``start..T-1`` of ``data`` (all of them by default);
        ``loc`` and ``scale`` come from ``scaled_by`` (the training data; default ``data``)."""
        T = len(data.task_names) - start
        loc, scale, _ = self.scaling(data if scaled_by is None else scaled_by)
        rows = torch.as_tensor(data.rows_per_task())[start:]
        return Tasks(n=T, dims=len(self.varying_names(data)), plate=plate, loc=loc, scale=scale,
                     features=TaskFeatures({k: v[start:] for k, v in data.task_features.items()}),
                     levels=dict(data.task_levels), names=list(data.task_names[start:]),
                     feature_names=self.varying_names(data),
                     like=torch.zeros((), dtype=data.dtype, device=data.device),
                     rows=rows.to(dtype=data.dtype, device=data.device))

    def _sample_prior(self, tasks: Tasks, reparam: dict | None) -> torch.Tensor:
        """Run the prior for ``tasks``; its return value checked to be (..., T, D)."""
        fn = self.prior.sample if not reparam else poutine.reparam(self.prior.sample, config=reparam)
        w = fn(tasks)
        if not torch.is_tensor(w) or w.dim() < 2 or tuple(w.shape[-2:]) != (tasks.n, tasks.dims):
            got = tuple(w.shape) if torch.is_tensor(w) else type(w).__name__
            raise ValueError(f"{type(self.prior).__name__}.sample must return the task parameters, shape "
                             f"(..., {tasks.n}, {tasks.dims}) = (tasks, {tasks.feature_names}); got {got}")
        return w

    def _sample_batched(self, tasks: Tasks, reparam: dict | None) -> torch.Tensor:
        """``_sample_prior`` under the back end's batch plates (chains, particles): a prior whose
        hyperparameters do not broadcast over them fails here with a line that names it."""
        name = type(self.prior).__name__
        hint = ("hyperparameters carry leading batch dims (chains, particles): gather per task with "
                "m[..., index, :] and keep matrix-valued hyperparameters inside a plate (docs/extending.md)")
        try:
            w = self._sample_prior(tasks, reparam)
        except RuntimeError as e:
            raise ValueError(f"{name}.sample failed under a batch of chains or particles "
                             f"({str(e).splitlines()[0]}); {hint}") from e
        # pyro keeps the active plates on its stack; the batch ones sit left of the program's own
        outer = [f.dim for f in _PYRO_STACK if isinstance(f, pyro.plate) and f.dim is not None]
        allowed = 2 + max([-d - 1 for d in outer if d < -1], default=0)
        if w.dim() > allowed:
            raise ValueError(f"{name}.sample returned task parameters of shape {tuple(w.shape)} under a "
                             f"batch of shape {tuple(w.shape[:allowed - 2])}: more dims than the batch and "
                             f"({tasks.n}, {tasks.dims}) allow; {hint}")
        return w

    def _prior_trace(self, data: MultiTaskData, reparam: bool = True):
        """One unbatched trace of the prior's program on ``data``'s tasks (reparametrised as fitted)."""
        config = self.reparam_config(data) if reparam else None

        def prog():
            self._sample_prior(self.tasks(data, pyro.plate("task", data.n_tasks, dim=-1)), config)

        try:
            with poutine.block(), torch.no_grad(), data_context(data.dtype, data.device):
                tr = poutine.trace(prog).get_trace()
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
            # a user's prior that fails is bad input, not our bug: one line at the CLI (ValueError)
            kind = TypeError if isinstance(e, TypeError) else ValueError
            raise kind(f"{type(self.prior).__name__}.sample failed on {data.n_tasks} tasks x "
                       f"{len(self.varying_names(data))} parameters: {e}") from e
        return tr

    def reparam_config(self, data: MultiTaskData) -> dict[str, LocScaleReparam]:
        """Sites to non-centre (see ``reparam``): {site: LocScaleReparam(centered=0)}."""
        if self.reparam is False or not self.prior.reparam:
            return {}
        tr = self._prior_trace(data, reparam=False)
        out = {}
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or not site["cond_indep_stack"]:
                continue
            fn = site["fn"]
            while isinstance(fn, (dist.Independent, torch.distributions.Independent, dist.ExpandedDistribution)):
                fn = fn.base_dist
            if type(fn) not in _LOC_SCALE:
                continue
            if bool((fn.loc == 0).all()) and bool((fn.scale == 1).all()):
                continue  # already standard
            out[name] = LocScaleReparam(0.0)
        return out

    # ------------------------------------------------------------------ the Pyro program
    def pyro_model(self, data: MultiTaskData, subsample_size: int | None = None,
                   observe: bool = True) -> Callable[[], None]:
        """The model as a Pyro callable with no arguments (data bound in); ``subsample_size``
        rows per minibatch (tasks per minibatch: ``task_minibatches``)."""
        lik = self.likelihood_for(data)
        T, N, Ds = data.n_tasks, data.n_rows, len(self.shared)
        # without observing, the rows are not read (data streamed from a file have none in memory)
        task, y, noise, trials = (data.task, data.y, data.noise, data.trials) if observe else (None,) * 4
        eta_of = self.row_predictor(data, subsample_size) if observe else None
        latents = self.global_latents(data)
        config = self.reparam_config(data)
        name_w = "w" not in self._prior_trace(data).nodes  # record w when the prior returns it unnamed
        tasks = self.tasks(data)
        dt, dev = data.dtype, data.device
        shared_prior = self.shared_prior_for(data) if Ds else None

        def model() -> None:
            task_plate = pyro.plate("task", T, dim=-1)
            with data_context(dt, dev):
                w, coef, params = self._parameters(replace(tasks, plate=task_plate), config, name_w, shared_prior, lik)
                z = None if latents is None else latents()
            if not observe:
                return
            with pyro.plate("data", N, dim=-1, subsample_size=subsample_size) as idx:
                # without minibatches idx is arange(N): indexing would copy X every step
                pick = (lambda t: t) if subsample_size is None else (lambda t: None if t is None else t[idx])
                eta = eta_of(w, coef, pick, z)
                pyro.sample("y", lik.distribution(eta, params, pick(task), pick(noise), pick(trials)),
                            obs=pick(y))

        return model

    def _parameters(self, tasks: Tasks, config: dict, name_w: bool, shared_prior, lik: Likelihood):
        """Inside a program: the task parameters w (..., n, D) of ``tasks`` (named "w" where the
        prior leaves them unnamed), the shared coefficients (or None) and the likelihood's own
        parameters, for ``tasks.n`` tasks under ``tasks.plate``."""
        w = self._sample_batched(tasks, config)
        if name_w:
            w = pyro.deterministic("w", w, event_dim=2)
        coef = None
        if shared_prior is not None:
            coef = pyro.sample("coef", move_distribution(shared_prior, tasks.like).expand([len(self.shared)])
                               .to_event(1))
        return w, coef, lik.sample_params(tasks.n, tasks.plate, tasks.like)

    def task_minibatches(self, data: MultiTaskData, batch: int) -> Callable[[], None]:
        """The program on ``batch`` tasks drawn at random each evaluation, with all their rows:
        the task plate subsamples (Pyro scales the per-task sites by T / batch) and the rows'
        log likelihood is scaled by T / batch too, so the ELBO is unbiased for the full data's.
        Each task's rows are found through one sort of the rows by task, made here once.

        Needs a prior whose tasks are independent given what sits outside the task plate (a
        hierarchical population, a user prior that samples its per-task sites inside
        ``tasks.plate``) and the model's own linear predictor; anything else is one error."""
        if self.prior.centered is False:
            # the guide is mean field over the tasks: centred, the population's sds come out near
            # the full-data fit's (0.9-1.2x on a planted 200-task problem); non-centred, 0.3x
            return self._centred_by_hand().task_minibatches(data, batch)
        name = type(self.prior).__name__
        if type(self).row_predictor is not MultiTaskModel.row_predictor or self.trained_modules:
            raise ValueError(f"task minibatches need the linear predictor; {type(self).__name__} has its own: "
                             "use batch_size (rows) instead")
        T = data.n_tasks
        if not 1 <= batch < T:
            raise ValueError(f"task_batch_size must be from 1 to {T - 1} (the data have {T} tasks); got {batch}")
        prior_trace = self._prior_trace(data)
        for site_name, site in prior_trace.nodes.items():
            if (site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
                    and all(f.name != "task" for f in site["cond_indep_stack"]) and T in site["value"].shape):
                raise ValueError(f"task minibatches: {name} samples {site_name!r} (shape "
                                 f"{tuple(site['value'].shape)}) across all {T} tasks outside tasks.plate, so a "
                                 "subset of tasks cannot stand in for them; fit on all tasks (or batch_size for rows)")
        lik = self.likelihood_for(data)
        if any(d.startswith("task_") for dims in lik.site_dims().values() for d in dims):
            raise ValueError(f"task minibatches: the likelihood {type(lik).__name__} has task groups of its own; "
                             "use batch_size (rows) instead")
        config = self.reparam_config(data)
        name_w = "w" not in prior_trace.nodes
        tasks = self.tasks(data)
        dt, dev = data.dtype, data.device
        shared_prior = self.shared_prior_for(data) if self.shared else None
        Xv, Xs = self.design(data)
        order = torch.argsort(data.task, stable=True)
        counts = torch.bincount(data.task, minlength=T)
        starts = torch.cumsum(counts, 0) - counts
        y, noise, trials = data.y, data.noise, data.trials

        def sub(tasks: Tasks, idx: torch.Tensor, plate) -> Tasks:
            return replace(tasks, n=len(idx), plate=plate, rows=tasks.rows[idx],
                           features=TaskFeatures({k: v[idx] for k, v in tasks.features.items()}),
                           names=[tasks.names[i] for i in idx.tolist()])

        def model() -> None:
            task_plate = pyro.plate("task", T, dim=-1, subsample_size=batch)
            idx = task_plate.indices
            with data_context(dt, dev):
                w, coef, params = self._parameters(sub(tasks, idx, task_plate), config, name_w, shared_prior, lik)
            n = counts[idx]
            local = torch.repeat_interleave(torch.arange(len(idx), device=dev), n)
            first = torch.repeat_interleave(starts[idx] - (torch.cumsum(n, 0) - n), n)
            rows = order[first + torch.arange(int(n.sum()), device=dev)]
            eta = linear_predictor(w, coef, Xv[rows], Xs[rows], local)
            extra = [None if t is None else t[rows] for t in (noise, trials)]
            with pyro.plate("data", len(rows), dim=-1), poutine.scale(scale=T / len(idx)):
                pyro.sample("y", lik.distribution(eta, params, local, *extra), obs=y[rows])

        with torch.random.fork_rng(devices=[]), poutine.block(), torch.no_grad():
            try:
                model()
            except (RuntimeError, IndexError) as e:
                raise ValueError(f"task minibatches: {name}.sample does not run on a subset of the tasks "
                                 f"({str(e).splitlines()[0]}); its tasks must be independent given the sites "
                                 "outside tasks.plate") from e
        return model

    def global_latents(self, data: MultiTaskData) -> Callable[[], Any] | None:
        """None, or a function the program calls outside the data plate (after the task prior)
        that samples sites outside every plate and returns what ``row_predictor``'s eta reads as
        ``z`` (a Bayesian trunk's weights)."""
        return None

    def row_predictor(self, data: MultiTaskData, subsample_size: int | None = None) -> Callable:
        """``eta(w, coef, pick, z)`` -> (..., n) for the rows ``pick`` selects (``pick(tensor)``
        indexes the minibatch's rows; the identity without minibatches; ``z`` what
        ``global_latents`` returned), called inside the program."""
        Xv, Xs = self.design(data)
        # built once per program, not per evaluation; a minibatch changes the rows, so it gathers instead
        rows = task_rows(Xv, data.task, data.n_tasks) if subsample_size is None else None
        task = data.task
        return lambda w, coef, pick, z=None: linear_predictor(w, coef, pick(Xv), pick(Xs), pick(task), rows)

    def _centred(self) -> MultiTaskModel:
        """A copy that runs the prior as written (no automatic non-centring)."""
        plain = copy.copy(self)
        plain.reparam = False
        return plain

    def _as_drawn(self, data: MultiTaskData, samples: dict[str, torch.Tensor]) -> MultiTaskModel:
        """The model in the parametrisation ``samples`` were drawn in: draws of a centred target
        have no ``*_decentered`` sites."""
        config = self.reparam_config(data)
        if self.prior.centered is False and "w_raw" not in samples and "w" in samples:
            return self._centred_by_hand()  # fitted on task minibatches (``task_minibatches``)
        return self if all(f"{k}_decentered" in samples for k in config) else self._centred()

    def _centred_by_hand(self) -> MultiTaskModel:
        """A copy whose prior, non-centred by its own ``centered=False``, samples w directly."""
        out = copy.copy(self)
        out.prior = copy.copy(self.prior)
        out.prior.centered = True
        return out

    def prior_program(self, data: MultiTaskData) -> Callable[[], None]:
        """The priors as written (no automatic non-centring), without the observations."""
        return self._centred().pyro_model(data, observe=False)

    def nesting(self, data: MultiTaskData) -> int:
        """Plate dims of the program (1 unless the prior nests plates of its own)."""
        return plate_nesting(self._prior_trace(data))

    def targets(self, data: MultiTaskData) -> list[Target]:
        """Registered fast paths that apply (``bayesmtl.marginals``), then the plain program."""
        nest = self.nesting(data)
        reparam = sorted(self.reparam_config(data))
        out = []
        written = None
        trains = tuple(self.trained_modules)
        streamed = isinstance(data, StreamedData)  # only a form that reduces the rows to sums fits from a file
        hint = (f"the rows of {data.path!r} stay in the file: use task_batch_size= (tasks a step) instead"
                if streamed else "pass collapse=False to use batch_size")
        for path, form in (marginals.forms(self, data) if self.fixed_design else []):
            if path == "written":
                written = written or form
                continue
            out.append(Target(program=_no_minibatch(form.pyro_model, path, hint),
                              max_plate_nesting=form.max_plate_nesting,
                              task_batches=_takes_task_batch(form.pyro_model) and not self.shared,
                              n_rows=data.n_rows, path=path, log_density=form.log_density,
                              log_density_grad=form.log_density_and_grad, conditional=form.conditional,
                              rebuild=lambda d, p=path: _pick(self.targets(d), p), data=data))
        if streamed:
            if not out:
                data._no_rows(f"{type(self.prior).__name__} with a {type(self.likelihood_for(data)).__name__} "
                              "likelihood (it has no form that reduces the rows to per-task sums)")
            return out
        # the prior centred (w drawn directly) for back ends whose paths take it (SVI), where the
        # tasks are informative: a target on its own scale with the residual degrees of freedom a
        # sigma per task needs, and no trained trunk. There a Gaussian guide fits the centred
        # posterior far better (Student-t tasks: tau 2 NUTS sds low non-centred, 0.2 centred);
        # elsewhere worse (landmine's binary rows: tau up to 3.5 sds high). docs/benchmarks.md
        informative = (not self.trained_modules and isinstance(self.likelihood_for(data), LocationScale)
                       and self.residual_df(data) >= MIN_TASK_DF)
        by_hand = self.prior.centered is False
        if informative and (reparam or by_hand):
            centred = self._centred_by_hand() if by_hand else self._centred()
            # (its written-out density too: a step of O(T D^2), not O(N D); 8x faster on 400k rows)
            own = marginals.form(centred, data, "written") if self.fixed_design else None
            out.append(Target(program=functools.partial(_program, centred, data),
                              max_plate_nesting=nest, n_rows=data.n_rows, path="centred",
                              log_density_grad=None if own is None else own.log_density_and_grad,
                              rebuild=lambda d: _pick(self.targets(d), "centred"), data=data, trains=trains))
        out.append(Target(program=functools.partial(_program, self, data), max_plate_nesting=nest,
                          n_rows=data.n_rows, path="plain",
                          log_density_grad=None if written is None else written.log_density_and_grad,
                          rebuild=lambda d: _pick(self.targets(d), "plain"), data=data, reparam=reparam,
                          trains=trains))
        return out

    # ------------------------------------------------------------------ after inference
    def complete(self, data: MultiTaskData, samples: dict[str, torch.Tensor],
                 chunk: int = 1000) -> dict[str, torch.Tensor]:
        """Add deterministic sites (e.g. ``w`` of a non-centred prior) to flat draws (S, ...)."""
        dims = self.site_dims(data)
        if all(k in samples for k in dims if not k.startswith("_")):
            return dict(samples)  # (a collapsed form's draws hold every site: no rerun over 50,000 tasks' draws)
        fn = self._as_drawn(data, samples).pyro_model(data, observe=False)
        shapes = site_shapes(fn)
        nest = self.nesting(data)
        S = next(iter(samples.values())).shape[0]
        out: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for lo in range(0, S, chunk):
                part = {k: v[lo:lo + chunk] for k, v in samples.items()}
                n = next(iter(part.values())).shape[0]
                tr = batch_condition(fn, part, n, nest, shapes)
                for name, site in tr.nodes.items():
                    if site["type"] != "sample" or name.startswith("_") or name not in dims or name in samples:
                        continue  # (a site drawn already is kept as drawn: no copy of 50,000 tasks' draws)
                    out.setdefault(name, []).append(squeeze_to(site["value"], 1 + len(dims[name])))
        full = {k: torch.cat(v) for k, v in out.items()}
        full.update(samples)
        return full

    def new_task_params(self, train: MultiTaskData, new: MultiTaskData, samples: dict[str, torch.Tensor],
                        generator: torch.Generator) -> torch.Tensor:
        """Parameters (S, n_new, D) of the tasks of ``new`` unseen in training, one per draw.

        The prior's closed form (``sample_new``) where it has one; otherwise its own program
        run for the new tasks (with their task-level features), every site outside the task
        plate fixed to the posterior draw: the population the model learned, nothing written twice.
        """
        tasks = self.tasks(new, start=new.n_known_tasks, scaled_by=train)
        own = self.prior.sample_new(samples, tasks, generator)
        if own is not None:
            return own
        drawn = self._as_drawn(train, samples)
        tr = drawn._prior_trace(train)
        fixed = {k: samples[k] for k, s in tr.nodes.items()
                 if s["type"] == "sample" and not s["is_observed"] and not in_plate(s, "task") and k in samples}
        S = samples["w"].shape[0]
        config = drawn.reparam_config(train)
        box = []

        def prog():
            box.append(self._sample_prior(replace(tasks, plate=pyro.plate("task", tasks.n, dim=-1)), config))

        with torch.no_grad(), poutine.block(), keep_rng(generator.device), \
                data_context(train.dtype, samples["w"].device):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            if fixed:
                batch_condition(prog, fixed, S, plate_nesting(tr))
            else:  # nothing learned outside the task plate: plain prior draws
                with pyro.plate("_draws", S, dim=-(plate_nesting(tr) + 1)):
                    prog()
        w = box[-1]
        return torch.broadcast_to(squeeze_to(w, 3) if w.dim() > 3 else w, (S, tasks.n, tasks.dims))

    def _eta_params(self, train: MultiTaskData, new: MultiTaskData, samples: dict[str, torch.Tensor],
                    generator: torch.Generator | None):
        w = samples["w"]
        n_new = len(new.task_names) - new.n_known_tasks
        lik = self.likelihood_for(train)
        params = {k: samples[k] for k in lik.site_dims()}
        if n_new:
            w = torch.cat([w, self.new_task_params(train, new, samples, generator).to(w)], dim=-2)
            params = lik.new_task_params(params, n_new, generator)
        return self.draws_eta(new, w, samples), params, lik

    def draws_eta(self, data: MultiTaskData, w: torch.Tensor, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """eta (S, N) of ``data``'s rows for task parameters w (S, T, D) and the other flat
        draws in ``samples`` (shared coefficients, a Bayesian trunk's weights)."""
        Xv, Xs = self.design(data)
        return linear_predictor(w, samples.get("coef"), Xv, Xs, data.task, task_rows(Xv, data.task, w.shape[-2]))

    def predict(self, train: MultiTaskData, new: MultiTaskData, samples: dict[str, torch.Tensor],
                generator: torch.Generator, draws_per_sample: int = 1) -> dict[str, torch.Tensor]:
        """Posterior predictive draws for the rows of ``new``.

        ``samples`` are flat draws (S, ...), deterministic sites included. Tasks unseen in
        training (indices >= ``new.n_known_tasks``) get parameters from the learned population.
        Returns ``mean`` (S, N), E[y | draw], and ``y`` (S * draws_per_sample, N), predictive
        draws (``draws_per_sample`` consecutive rows per posterior draw).
        """
        K = int(draws_per_sample)
        if K > 1 and len(new.task_names) > new.n_known_tasks:
            # a new task's parameters are drawn per predictive draw, not once per posterior draw: a
            # point estimate (S = 1) must still show the spread between tasks
            samples = {k: v.repeat_interleave(K, 0) for k, v in samples.items()}
            out = self.predict(train, new, samples, generator)
            return {"mean": out["mean"].reshape(-1, K, out["mean"].shape[-1]).mean(1), "y": out["y"]}
        eta, params, lik = self._eta_params(train, new, samples, generator)
        d = lik.distribution(eta, params, new.task, new.noise, new.trials)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            y = d.sample((K,))  # (K, S, N)
        return {"mean": lik.mean(eta, params, new.task, new.trials), "y": y.transpose(0, 1).reshape(-1, y.shape[-1])}

    def log_likelihood(self, data: MultiTaskData, samples: dict[str, torch.Tensor],
                       train: MultiTaskData | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pointwise log-likelihood of the rows, shape (S, N). Rows of tasks unseen in ``train``
        (index >= ``data.n_known_tasks``) get parameters drawn from the learned population with
        ``generator``, one set per draw: averaged over draws, a new task's predictive density."""
        if len(data.task_names) > data.n_known_tasks and (train is None or generator is None):
            raise ValueError("the data hold tasks unseen in training: pass train= and generator= to draw them")
        eta, params, lik = self._eta_params(data if train is None else train, data, samples, generator)
        return lik.distribution(eta, params, data.task, data.noise, data.trials).log_prob(data.y)

    def inclusion(self, post) -> pd.DataFrame:
        """Posterior inclusion probabilities of the features (sparsity priors, ``TaskPrior.inclusion``)."""
        names = self.varying_names(post.data)
        return self.prior.inclusion(post.flat(), post.task_names, names)

    def relations(self, samples: dict[str, torch.Tensor], data: MultiTaskData | None = None) -> RelationDraws:
        """Draws of the (T, T) task relation (S, T, T), what they measure, and whether signed
        (the prior's; ``data`` is not needed)."""
        return RelationDraws(self.prior.relations(samples), self.prior.relation_kind, self.prior.relation_signed,
                             self.prior.relation_null(samples["w"].shape[-1]), self.prior.cluster_counts(samples),
                             self.prior.relation_tree())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(prior={self.prior!r}, likelihood={self.likelihood!r}, "
                f"intercept={self.intercept}, shared={self.shared})")


def _program(model: MultiTaskModel, data: MultiTaskData, subsample_size: int | None = None,
             task_batch: int | None = None) -> Callable[[], None]:
    """``Target.program`` of a model's own program: rows or tasks per minibatch."""
    if task_batch is not None:
        return model.task_minibatches(data, task_batch)
    return model.pyro_model(data, subsample_size=subsample_size)


def _no_minibatch(program: Callable[..., Callable[[], None]], path: str, hint: str):
    """A form's program as a target's: no row minibatches; task minibatches where the form's
    ``pyro_model`` takes ``task_batch``."""
    def make(subsample_size: int | None = None, task_batch: int | None = None):
        if subsample_size is not None or (task_batch is not None and not _takes_task_batch(program)):
            raise ValueError(f"the {path} form needs every row at once; {hint}")
        return program() if task_batch is None else program(task_batch=task_batch)
    return make


def _takes_task_batch(program) -> bool:
    return "task_batch" in inspect.signature(program).parameters


def _pick(targets: list[Target], path: str) -> Target:
    return next(t for t in targets if t.path == path)
