"""MultiTaskModel = task prior + likelihood (+ intercept and shared coefficients).

For row n of task t = task[n]:

    eta_n = x_n^varying . w_t  +  x_n^shared . coef,      y_n ~ likelihood(eta_n)

where ``w`` (T, D) comes from the task prior (an intercept column comes first when
``intercept=True``) and ``coef`` are coefficients common to all tasks. The model is a Pyro
program with plates ``task`` and ``data`` at dim -1 (``max_plate_nesting = 1``), so any outer
plate at dim -2 batches chains or particles.
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from .data import MultiTaskData
from .likelihoods import Gaussian, Likelihood, get_likelihood
from .priors.base import TaskPrior, as_distribution, move_distribution
from .pyro_util import batch_condition, site_shapes, squeeze_to

__all__ = ["MultiTaskModel"]

INTERCEPT = "intercept"


class MultiTaskModel:
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
    shared_prior : pyro distribution, default Normal(0, 10)
        Prior of each shared coefficient.
    """

    name = "multitask"
    max_plate_nesting = 1

    def __init__(self, prior: TaskPrior, likelihood: str | Likelihood = "gaussian",
                 intercept: bool = True, shared: Sequence[str] = (), shared_prior=None):
        if not isinstance(prior, TaskPrior):
            raise TypeError(f"prior must be a bayesmtl TaskPrior; got {type(prior).__name__}")
        self.prior = prior
        self.likelihood = get_likelihood(likelihood)
        self.intercept = bool(intercept)
        self.shared = list(shared)
        self.shared_prior = (dist.Normal(0.0, 10.0) if shared_prior is None
                             else as_distribution(shared_prior, "shared_prior"))

    # ------------------------------------------------------------------ structure
    def varying_names(self, data: MultiTaskData) -> list[str]:
        names = [f for f in data.feature_names if f not in self.shared]
        return ([INTERCEPT] if self.intercept else []) + names

    def likelihood_for(self, data: MultiTaskData) -> Likelihood:
        lik = self.likelihood
        return lik.bind(data) if isinstance(lik, Gaussian) else lik

    def check(self, data: MultiTaskData) -> None:
        """Raise ValueError/TypeError naming the problem when the data cannot feed this model."""
        if not isinstance(data, MultiTaskData):
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
        self.likelihood_for(data).check(data)

    def design(self, data: MultiTaskData) -> tuple[torch.Tensor, torch.Tensor]:
        """Varying design (N, D) with the intercept first, and shared design (N, Ds)."""
        vary = [j for j, f in enumerate(data.feature_names) if f not in self.shared]
        Xv = data.X[:, vary]
        if self.intercept:
            # not ones_like(X[:, :1]): that has 0 columns when the data have no features
            Xv = torch.cat([data.X.new_ones(data.X.shape[0], 1), Xv], dim=-1)
        Xs = data.X[:, [data.feature_names.index(f) for f in self.shared]]
        return Xv, Xs

    def coords(self, data: MultiTaskData) -> dict[str, list[str]]:
        names = self.varying_names(data)
        return {"task": list(data.task_names), "feature": names, "feature_": names,
                "shared_feature": list(self.shared)}

    def site_dims(self, data: MultiTaskData) -> dict[str, tuple[str, ...]]:
        dims = dict(self.prior.site_dims())
        if self.shared:
            dims["coef"] = ("shared_feature",)
        dims.update(self.likelihood_for(data).site_dims())
        return dims

    # ------------------------------------------------------------------ the Pyro program
    def pyro_model(self, data: MultiTaskData, subsample_size: int | None = None,
                   observe: bool = True) -> Callable[[], None]:
        """The model as a Pyro callable with no arguments (data bound in)."""
        Xv, Xs = self.design(data)
        lik = self.likelihood_for(data)
        T, N, D, Ds = data.n_tasks, data.n_rows, Xv.shape[-1], Xs.shape[-1]
        like = torch.zeros((), dtype=data.dtype, device=data.device)
        task, y, noise, trials = data.task, data.y, data.noise, data.trials
        # built once per program, not per evaluation; a minibatch changes the rows, so it gathers instead
        rows = task_rows(Xv, task, T) if observe and subsample_size is None else None

        def model() -> None:
            task_plate = pyro.plate("task", T, dim=-1)
            w = self.prior.sample(T, D, task_plate, like)
            coef = None
            if Ds:
                coef = pyro.sample("coef", move_distribution(self.shared_prior, like).expand([Ds]).to_event(1))
            params = lik.sample_params(T, task_plate, like)
            if not observe:
                return
            with pyro.plate("data", N, dim=-1, subsample_size=subsample_size) as idx:
                # without minibatches idx is arange(N): indexing would copy X every step
                pick = (lambda t: t) if subsample_size is None else (lambda t: None if t is None else t[idx])
                eta = linear_predictor(w, coef, pick(Xv), pick(Xs), pick(task), rows)
                pyro.sample("y", lik.distribution(eta, params, pick(task), pick(noise), pick(trials)),
                            obs=pick(y))

        return model

    # ------------------------------------------------------------------ after inference
    def complete(self, data: MultiTaskData, samples: dict[str, torch.Tensor],
                 chunk: int = 1000) -> dict[str, torch.Tensor]:
        """Add deterministic sites (e.g. ``w`` of a non-centred prior) to flat draws (S, ...)."""
        fn = self.pyro_model(data, observe=False)
        shapes = site_shapes(fn)
        dims = self.site_dims(data)
        S = next(iter(samples.values())).shape[0]
        out: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for lo in range(0, S, chunk):
                part = {k: v[lo:lo + chunk] for k, v in samples.items()}
                n = next(iter(part.values())).shape[0]
                tr = batch_condition(fn, part, n, self.max_plate_nesting, shapes)
                for name, site in tr.nodes.items():
                    if site["type"] != "sample" or name.startswith("_") or name not in dims:
                        continue
                    out.setdefault(name, []).append(squeeze_to(site["value"], 1 + len(dims[name])))
        full = {k: torch.cat(v) for k, v in out.items()}
        full.update(samples)
        return full

    def predict(self, train: MultiTaskData, new: MultiTaskData, samples: dict[str, torch.Tensor],
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Posterior predictive draws for the rows of ``new``.

        ``samples`` are flat draws (S, ...), deterministic sites included. Tasks unseen in
        training (indices >= ``new.n_known_tasks``) get parameters from the prior's population.
        Returns ``mean`` (S, N), E[y | draw], and ``y`` (S, N), a predictive draw.
        """
        Xv, Xs = self.design(new)
        w = samples["w"]
        n_new = len(new.task_names) - new.n_known_tasks
        lik = self.likelihood_for(train)
        params = {k: samples[k] for k in lik.site_dims()}
        if n_new:
            w = torch.cat([w, self.prior.sample_new(samples, n_new, w.shape[-1], generator)], dim=-2)
            params = lik.new_task_params(params, n_new, generator)
        eta = linear_predictor(w, samples.get("coef"), Xv, Xs, new.task, task_rows(Xv, new.task, w.shape[-2]))
        d = lik.distribution(eta, params, new.task, new.noise, new.trials)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            y = d.sample()
        return {"mean": lik.mean(eta, new.trials), "y": y}

    def log_likelihood(self, data: MultiTaskData, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pointwise log-likelihood of the rows, shape (S, N)."""
        Xv, Xs = self.design(data)
        lik = self.likelihood_for(data)
        eta = linear_predictor(samples["w"], samples.get("coef"), Xv, Xs, data.task,
                               task_rows(Xv, data.task, data.n_tasks))
        params = {k: samples[k] for k in lik.site_dims()}
        return lik.distribution(eta, params, data.task, data.noise, data.trials).log_prob(data.y)

    def collapsed(self, data: MultiTaskData):
        """The task parameters integrated out in closed form (``infer.base.Collapsed``), or None."""
        from .collapsed import hierarchical_gaussian
        return hierarchical_gaussian(self, data)

    def written_density(self, data: MultiTaskData):
        """The Pyro program's density with its gradient written out (``log_density_and_grad``), or None."""
        from .hierarchical_glm import hierarchical_glm
        return hierarchical_glm(self, data)

    def relations(self, samples: dict[str, torch.Tensor]) -> tuple[np.ndarray, str]:
        """Draws of the (T, T) task relation, shape (S, T, T), and what they measure."""
        return self.prior.relations(samples), self.prior.relation_kind

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(prior={self.prior!r}, likelihood={self.likelihood!r}, "
                f"intercept={self.intercept}, shared={self.shared})")


def linear_predictor(w: torch.Tensor, coef: torch.Tensor | None, Xv: torch.Tensor,
                     Xs: torch.Tensor, task: torch.Tensor, rows: TaskRows | None = None) -> torch.Tensor:
    """eta (..., N) from w (..., T, D), coef (..., 1, Ds) or (..., Ds), Xv (N, D), Xs (N, Ds).

    ``rows``, the same Xv and task as a ``TaskRows``, computes the varying part faster.
    """
    eta = rows(w) if rows is not None else (Xv * w[..., task, :]).sum(-1)
    if coef is not None and Xs.shape[-1]:
        if coef.dim() >= 2 and coef.shape[-2] == 1:
            coef = coef.squeeze(-2)
        eta = eta + (coef @ Xs.T if coef.dim() > 1 else Xs @ coef)
    return eta


def task_rows(X: torch.Tensor, task: torch.Tensor, n_tasks: int) -> TaskRows | None:
    """A ``TaskRows`` where the device has sparse CSR products (CPU, CUDA), else None."""
    return TaskRows(X, task, n_tasks) if X.device.type in ("cpu", "cuda") else None


class TaskRows:
    """x_n . w_{task[n]} for every row n as one sparse product: A (N, T*D) @ w.flatten(-2).

    Gathering w[..., task, :] into (..., N, D) and its scatter-add backward cost 3-7x more
    (4 to 1024 chains, 5000 rows; measured in benchmarks/mcmc.py's set-up). Both directions
    are CSR x dense products; A' is stored too so the backward needs no transpose.
    """

    def __init__(self, X: torch.Tensor, task: torch.Tensor, n_tasks: int):
        N, D = X.shape
        self.D = D
        self.shape = (N, n_tasks * D)
        cols = (task.unsqueeze(-1) * D + torch.arange(D, device=X.device)).reshape(-1)
        row_of = torch.arange(N, device=X.device).repeat_interleave(D)
        idx = torch.int32 if N * D < 2**31 - 1 else torch.int64
        vals = X.reshape(-1)
        order = torch.argsort(cols, stable=True)
        crow = torch.cat([cols.new_zeros(1), torch.bincount(cols, minlength=n_tasks * D).cumsum(0)])
        with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice: not the user's concern
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            self.A = torch.sparse_csr_tensor(torch.arange(0, N * D + 1, D, device=X.device).to(idx),
                                             cols.to(idx), vals, self.shape, check_invariants=True)
            self.At = torch.sparse_csr_tensor(crow.to(idx), row_of[order].to(idx), vals[order], self.shape[::-1],
                                              check_invariants=True)
        self.key = next(_KEYS)
        _ROWS[self.key] = self

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        """eta (..., N) from w (..., T, D)."""
        batch = w.shape[:-2]
        flat = w.reshape(-1, self.shape[1])
        return _task_rows(flat, self.key).reshape(*batch, self.shape[0])

    def columns(self, w: torch.Tensor) -> torch.Tensor:
        """eta as columns, (N, C) from w (C, T, D): no transposed copies of the (C, N) result.
        For code that computes the gradient itself; ``__call__`` is the autograd-aware form."""
        return self.A @ w.reshape(w.shape[0], -1).T.contiguous()

    def adjoint(self, g: torch.Tensor) -> torch.Tensor:
        """sum over each task's rows of g_n x_n: (C, T, D) from columns g (N, C)."""
        return (self.At @ g).T.reshape(g.shape[1], -1, self.D)


# A custom op taking a key, not the sparse tensors: torch.jit.trace records it as one node
# (a traced graph cannot hold sparse constants) and replays it through the registry.
_ROWS: weakref.WeakValueDictionary[int, TaskRows] = weakref.WeakValueDictionary()
_KEYS = itertools.count()


@torch.library.custom_op("bayesmtl::task_rows", mutates_args=())
def _task_rows(flat: torch.Tensor, key: int) -> torch.Tensor:
    return (_ROWS[key].A @ flat.T).T.contiguous()


def _task_rows_setup(ctx, inputs, output):
    ctx.key = inputs[1]


def _task_rows_backward(ctx, g):
    return (_ROWS[ctx.key].At @ g.T).T.contiguous(), None


_task_rows.register_autograd(_task_rows_backward, setup_context=_task_rows_setup)
