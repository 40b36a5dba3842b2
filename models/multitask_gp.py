"""Multi-task Gaussian processes: ICM (Bonilla, Chai & Williams 2008) and variational LMC.

``MultitaskGP(kind="icm")`` is the exact intrinsic coregionalisation model

    cov(f_i(x), f_j(x')) = B_ij k(x, x'),     y = mean_task + f_task(x) + N(0, noise_task)

on long-format data (GP inputs = features, one task per row). The Kronecker path is used when
every task is observed at every input, the Hadamard path otherwise (``info["gp_path"]``); on the
Hadamard path rows repeating an (input, task) pair are merged into exact cells (categorical
inputs: 11.5k school rows are 3.5k cells). Its cost is one Cholesky of the cells' covariance per
evaluation (about 10 s at 3.5k cells on this 2-core machine): beyond a few thousand cells use
``kind="lmc"``.

Parametrisation of B and priors (for ``nuts``/``svi``; ``map`` is type-II maximum likelihood):

* ``rank == n_tasks``: B = diag(s) C diag(s) with ``C ~ LKJ(task_corr_eta)`` (site ``corr_chol``,
  its Cholesky factor) and task output scales ``s ~ outputscale_prior`` (site ``outputscale``);
* ``rank < n_tasks``: B = W W^T + diag(v), ``W ~ w_prior`` (site ``task_W``, (T, rank)),
  ``v ~ v_prior`` (site ``task_v``).

Other sites: ``lengthscale`` (D,) ARD, ``noise_level`` () and ``noise`` (T,) variances,
LogNormal(log noise_level, ``noise_spread``) each: the tasks' noises spread about a shared level
by an amount estimated from the data (``noise_spread``), so that a task with few rows borrows its
noise from the others; ``mean`` (T,). Deterministic: ``task_cov`` (T, T) and ``task_corr`` (T, T).
Default priors suit standardised features and a standardised target. ``map`` always fits W
(T, rank) and v; on the Hadamard path it integrates the task means out under their Normal prior
(as it does f), and reports their posterior mean and sd given the fitted hyperparameters
(``mean``, ``mean_sd``).

``private=True`` adds each task's own kernel (own ARD lengthscales, site ``private_lengthscale``
(T, D), and variance ``private_var`` (T,)): cov(f_i(x), f_j(x')) = B_ij k(x, x') + delta_ij p_i k_i(x, x'),
an exact LMC with one shared and T private latent processes. It nests independent GPs (B = 0)
and ICM (p = 0), so tasks that differ in smoothness need not share one lengthscale. It runs on
the Hadamard path; ``task_cov`` and ``task_corr`` then describe f at one input (B + diag(p)).

``kind="hierarchical"`` is the hierarchical GP (``bayesmtl.gp.hierarchical``; Lawrence & Platt
2004, Yu, Tresp & Schwaighofer 2005): f_t = g + h_t + c_t, one shared function g plus each task's
own deviation h_t and constant c_t. Tasks are exchangeable, so it predicts tasks never seen in
training (g's posterior plus a deviation from the prior). Sites: ``lengthscale`` (D,) and
``shared_scale`` of g, ``deviation_lengthscale`` (D,) and ``deviation_scale`` of the h_t,
``offset_scale``, ``noise`` (T,), ``mean`` (); ``task_corr`` is then the share of a task's
variance at one input that is shared, s_g^2 / (s_g^2 + s_h^2 + c^2), the same for every pair.

``kind="lmc"`` is the variational linear model of coregionalisation (``bayesmtl.gp.lmc``), fitted
with ``method="map"`` only (inducing points, minibatches). Sites: ``lengthscale`` (Q, D),
``lmc_coef`` (Q, T), ``noise``, ``mean``, and its variational state ``lmc_latent_mean`` (Q,),
``lmc_inducing`` (Q, M, D), ``lmc_var_mean`` (Q, M), ``lmc_var_chol`` (Q, M, M).

Nothing fitted is kept on the model object (it holds settings only): what a fit learns is in
its draws, so a Posterior predicts from its own samples, and saves and reloads with them, however
often the model object is refitted. A gpytorch kernel object is trained as a copy; its trained
raw parameters are the sites ``kernel.<parameter name>``.

This file holds the settings, their validation and the model contract; the engine lives in
``bayesmtl.gp``: the Pyro program (``program``), type-II maximum likelihood (``typeii``; LMC
training in ``lmc``), the predictive algebra (``predict``) and the exact ICM algebra (``icm``).
"""

from __future__ import annotations

import copy

import numpy as np
import pyro.distributions as dist
import torch

from bayesmtl.data import MultiTaskData
from bayesmtl.gp import hierarchical, icm, program, typeii
from bayesmtl.gp import predict as gp_predict
from bayesmtl.likelihoods.base import MIN_TASK_DF
from bayesmtl.priors.base import as_distribution
from bayesmtl.protocol import ModelBase, RelationDraws, Target

__all__ = ["MultitaskGP"]


#: with rank=None, tasks up to which the task covariance is full rank; DEFAULT_RANK beyond
FULL_RANK_TASKS = 10
DEFAULT_RANK = 3
#: ICM's default method is type-II MAP unless it has fewer distinct inputs than this many per
#: ARD lengthscale; then SVI over the hyperparameters. On the computer survey (16 profiles, 13
#: attributes) the MAP took short lengthscales and a noise variance of 0.17, a mode with little
#: posterior mass: held-out residual variance 5.9 and 0.84 coverage, against 3.1 and 0.94 for SVI
#: (NUTS 0.94); see docs/benchmarks.md.
MIN_INPUTS_PER_LENGTHSCALE = 3


#: the spread of the tasks' log noise variances when too few tasks have the residual degrees of
#: freedom (MIN_SPREAD_DF) to estimate it: wide, nearly independent noises
WIDE_SPREAD = 1.0
MIN_SPREAD_DF = 3
#: smallest spread used (0 would be one shared noise, a degenerate LogNormal)
MIN_SPREAD = 0.05


def noise_spread(data: MultiTaskData) -> float:
    """The default ``noise_spread``: the sd of the tasks' log residual variances across tasks,
    less their sampling spread (method of moments: Var(log s2_t) = tau^2 + 2 / df_t), from each
    task's least-squares fit on the features (its mean alone when that leaves under ``MIN_TASK_DF``
    (5) degrees of freedom). Tasks with under ``MIN_SPREAD_DF`` degrees of freedom are left out; under 3 such
    tasks give ``WIDE_SPREAD``. School, 139 schools: 0.23 (30 schools: 0.23)."""
    X, y, task = data.X.double().cpu().numpy(), data.y.double().cpu().numpy(), data.task.cpu().numpy()
    logs, samp = [], []
    for t in range(data.n_tasks):
        yt = y[task == t]
        n = len(yt)
        A = np.c_[np.ones(n), X[task == t]]
        df = n - np.linalg.matrix_rank(A) if n > 0 else 0
        if df < MIN_TASK_DF:  # too few rows for the features: the task's mean alone
            A, df = A[:, :1], n - 1
        if df < MIN_SPREAD_DF:
            continue
        r = yt - A @ np.linalg.lstsq(A, yt, rcond=None)[0]
        ss = float(r @ r)
        if ss > 0:
            logs.append(np.log(ss / df))
            samp.append(2.0 / df)
    if len(logs) < 3:
        return WIDE_SPREAD
    tau2 = float(np.var(logs, ddof=1) - np.mean(samp))
    return max(float(np.sqrt(max(tau2, 0.0))), MIN_SPREAD)


def _scaled_priors(data: MultiTaskData) -> dict[str, dist.Distribution]:
    """The default hyperparameter priors on ``data``'s scales (see ``MultitaskGP``)."""
    y = data.y.double()
    m = float(y.mean())
    s = float(y.std()) if y.numel() > 1 and float(y.std()) > 0 else 1.0
    sd_x = data.X.double().std(0) if data.n_rows > 1 else torch.ones(data.n_features, dtype=torch.float64)
    sd_x = torch.where(sd_x > 0, sd_x, torch.ones_like(sd_x)).to(data.dtype)
    t = lambda v: torch.tensor(v, dtype=data.dtype)  # noqa: E731
    return {"lengthscale_prior": dist.LogNormal(sd_x.log(), t(1.0)),
            "outputscale_prior": dist.LogNormal(t(np.log(s)), t(1.0)),
            "noise_prior": dist.LogNormal(t(2 * np.log(s) - 2.0), t(1.5)),
            "mean_prior": dist.Normal(t(m), t(2.5 * s)),
            "w_prior": dist.Normal(t(0.0), t(s)),
            "v_prior": dist.HalfNormal(t(s * s))}


class MultitaskGP(ModelBase):
    """Multi-task GP regression.

    Given no method, ``fit`` runs type-II MAP, or SVI for an ICM with fewer than
    ``MIN_INPUTS_PER_LENGTHSCALE`` (3) distinct inputs per input feature (``method_for``).

    Parameters
    ----------
    rank : int or None
        Rank of W in B = W W^T + diag(v) (ICM); ``rank == n_tasks`` gives a full-rank B with an
        LKJ prior on the task correlation. For LMC, the default number of latents. None (the
        default): full rank for up to ``FULL_RANK_TASKS`` (10) tasks, where any correlation
        matrix must be representable (one factor cannot hold +0.86, -0.66, -0.52), else
        ``DEFAULT_RANK`` (3); chosen at fit time from the data and recorded (``rank=...`` in
        ``prior_summary().attrs["defaults"]``).
    kernel : "rbf", "matern12", "matern32", "matern52" or a gpytorch Kernel
        Input kernel (ARD). A gpytorch kernel object is fitted with ``method="map"`` only.
    kind : "icm", "hierarchical" or "lmc"
        ICM: a learned task covariance times one kernel; hierarchical: a shared function plus
        task deviations (new tasks predicted); LMC: variational, for large data.
    num_latents, inducing : int
        LMC only: number of latent GPs (default ``rank``) and inducing points.
    lengthscale_prior, outputscale_prior, noise_prior, mean_prior, w_prior, v_prior : pyro distributions
        Default: scaled to the data at fit time (``bind``), with m and s the target's mean and
        sd and sd(x) each feature's: lengthscale LogNormal(log sd(x), 1), outputscale
        LogNormal(log s, 1), noise (a variance) LogNormal(log s^2 - 2, 1.5), mean Normal(m, 2.5 s),
        task_W Normal(0, s), task_v HalfNormal(s^2); on a standardised target and features these
        are the fixed priors LogNormal(0, 1), LogNormal(0, 1), LogNormal(-2, 1.5), Normal(0, 1),
        Normal(0, 1), HalfNormal(1) used without data.
    task_corr_eta : float
        LKJ concentration of the task correlation (1 = uniform over correlation matrices).
    private : bool
        ICM only: add each task's own kernel (see the module docstring).
    noise_spread : float or None
        ICM only: sd of the tasks' log noise variances about their shared level. None (the
        default): estimated from the data at fit time (``noise_spread(data)``; school: 0.23) and
        recorded in ``prior_summary().attrs["defaults"]``. Small values pool the noises (0.05:
        nearly one shared noise), large ones leave each task its own. On school (first 60
        schools), type-II MAP with independent noises covered 0.867 of held-out rows, pooled 0.885.
    """

    name = "multitask-gp"
    rows_independent = False  # rows share f: their log likelihood terms are not separate data points
    # type-II ML, as GPyTorch users expect: NUTS costs O(N^3) per gradient (24 ms at 3 x 250 rows,
    # about 25 minutes for 4 x 2000 iterations); method="nuts" gives the full posterior. With few
    # inputs per lengthscale ``method_for`` picks SVI instead.
    default_method = "map"

    def __init__(self, rank: int | None = None, kernel="rbf", kind: str = "icm", num_latents: int | None = None,
                 inducing: int = 256, *, lengthscale_prior=None, outputscale_prior=None, noise_prior=None,
                 mean_prior=None, w_prior=None, v_prior=None, task_corr_eta: float = 2.0, private: bool = False,
                 noise_spread: float | None = None):
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be None or an integer >= 1; got {rank!r}")
        if kind not in ("icm", "hierarchical", "lmc"):
            raise ValueError(f"kind must be 'icm', 'hierarchical' or 'lmc'; got {kind!r}")
        if kind == "hierarchical" and not isinstance(kernel, str):
            raise ValueError("kind='hierarchical' takes a kernel given by name ('rbf', 'matern52', ...)")
        if isinstance(kernel, str):
            if kernel not in icm.KERNELS:
                raise ValueError(f"kernel must be one of {icm.KERNELS} or a gpytorch Kernel; got {kernel!r}")
        else:
            import gpytorch

            if not isinstance(kernel, gpytorch.kernels.Kernel):
                raise TypeError(f"kernel must be a name or a gpytorch Kernel; got {type(kernel).__name__}")
        if private not in (True, False):
            raise ValueError(f"private must be True or False; got {private!r}")
        if private and (kind != "icm" or not isinstance(kernel, str)):
            raise ValueError("private=True needs kind='icm' and a kernel given by name ('rbf', 'matern52', ...); "
                             "kind='hierarchical' has each task's own kernel already")
        if float(task_corr_eta) <= 0:
            raise ValueError(f"task_corr_eta must be positive; got {task_corr_eta}")
        if noise_spread is not None and (isinstance(noise_spread, bool) or not isinstance(noise_spread, (int, float))
                                         or not np.isfinite(noise_spread) or noise_spread <= 0):
            raise ValueError(f"noise_spread must be None or a positive number; got {noise_spread!r}")
        if noise_spread is not None and kind != "icm":
            raise ValueError(f"noise_spread applies to kind='icm' only; kind={kind!r} gives each task its own noise")
        self.rank = rank
        self.kernel = kernel
        self.kind = kind
        self.num_latents = num_latents
        self.inducing = int(inducing)
        self.lengthscale_prior = as_distribution(lengthscale_prior or dist.LogNormal(0.0, 1.0), "lengthscale_prior")
        self.outputscale_prior = as_distribution(outputscale_prior or dist.LogNormal(0.0, 1.0), "outputscale_prior")
        self.noise_prior = as_distribution(noise_prior or dist.LogNormal(-2.0, 1.5), "noise_prior")
        self.mean_prior = as_distribution(mean_prior or dist.Normal(0.0, 1.0), "mean_prior")
        self.w_prior = as_distribution(w_prior or dist.Normal(0.0, 1.0), "w_prior")
        self.v_prior = as_distribution(v_prior or dist.HalfNormal(1.0), "v_prior")
        # the priors left at their defaults, by identity: ``bind`` scales these (and only these:
        # a prior set later, e.g. by the CLI's --set-prior, is a different object and stays)
        self._unit = {k: getattr(self, k) for k, v in dict(
            lengthscale_prior=lengthscale_prior, outputscale_prior=outputscale_prior, noise_prior=noise_prior,
            mean_prior=mean_prior, w_prior=w_prior, v_prior=v_prior).items() if v is None}
        self.task_corr_eta = float(task_corr_eta)
        self.private = private
        self.noise_spread = None if noise_spread is None else float(noise_spread)
        self.bound_defaults: list[str] | None = None  # set on the copy ``bind`` returns

    def rank_for(self, data: MultiTaskData) -> int:
        """The rank used on ``data``: the one given, else full up to FULL_RANK_TASKS tasks."""
        if self.rank is not None:
            return self.rank
        return data.n_tasks if data.n_tasks <= FULL_RANK_TASKS else min(DEFAULT_RANK, data.n_tasks)

    def method_for(self, data: MultiTaskData) -> tuple[str, str]:
        """Type-II MAP ("map"), except for an ICM with a named kernel whose distinct inputs number
        fewer than ``MIN_INPUTS_PER_LENGTHSCALE`` per input feature: "svi" then, with the reason."""
        if self.kind != "icm" or not isinstance(self.kernel, str) or not isinstance(data, MultiTaskData) \
                or data.n_features == 0:
            return self.default_method, ""
        inputs = int(torch.unique(data.X, dim=0).shape[0])
        if inputs >= MIN_INPUTS_PER_LENGTHSCALE * data.n_features:
            return self.default_method, ""
        return "svi", (f"svi, not type-II MAP: {inputs} distinct inputs for {data.n_features} ARD lengthscales "
                       f"(fewer than {MIN_INPUTS_PER_LENGTHSCALE} each), where a point estimate of the "
                       "hyperparameters overfits; method='map' gives it")

    def bind(self, data: MultiTaskData) -> MultitaskGP:
        """A copy with the default rank chosen for ``data`` (see ``rank``) and the priors left
        at their defaults scaled to the data (see the class docstring)."""
        out = copy.copy(self)
        unit = getattr(self, "_unit", {})
        scaled = [k for k, v in unit.items() if getattr(self, k) is v] if self.bound_defaults is None else []
        if scaled and data.y is not None:
            for name, prior in _scaled_priors(data).items():
                if name in scaled:
                    setattr(out, name, prior)
            out._unit = {}
        rank = [f"rank={self.rank_for(data)}"] if self.rank is None and self.kind != "hierarchical" else []
        spread = []
        if self.kind == "icm" and self.noise_spread is None and data.y is not None:
            out.noise_spread = noise_spread(data)
            spread = [f"noise_spread={out.noise_spread:.3g}"]
        out.bound_defaults = self.defaults() + list(scaled) + rank + spread
        out.rank = self.rank_for(data)
        return out

    def spread_for(self) -> float:
        """The ICM's ``noise_spread`` (``WIDE_SPREAD`` on a model not bound to data)."""
        return WIDE_SPREAD if self.noise_spread is None else self.noise_spread

    def defaults(self) -> list[str]:
        return list(self.bound_defaults) if self.bound_defaults is not None else []

    def __repr__(self) -> str:
        k = self.kernel if isinstance(self.kernel, str) else type(self.kernel).__name__
        extra = f", num_latents={self.num_latents}, inducing={self.inducing}" if self.kind == "lmc" else ""
        extra += ", private=True" if self.private else ""
        if self.kind == "hierarchical":
            return f"MultitaskGP(kernel={k!r}, kind='hierarchical')"
        return f"MultitaskGP(rank={self.rank}, kernel={k!r}, kind={self.kind!r}{extra})"

    # ------------------------------------------------------------------ structure
    def check(self, data: MultiTaskData) -> None:
        """Raise ValueError/TypeError naming the problem when the data cannot feed this model."""
        if not isinstance(data, MultiTaskData):
            raise TypeError(f"data must be a MultiTaskData; got {type(data).__name__}")
        if data.y is None:
            raise ValueError("the data have no target column")
        if data.n_features == 0:
            raise ValueError("a multi-task GP needs at least one input feature; the data have none")
        counts = data.rows_per_task()
        few = [data.task_names[i] for i in np.flatnonzero(counts < 2)]
        if few:
            raise ValueError(f"task {few[0]!r} has {counts[data.task_names.index(few[0])]} row(s); "
                             "a multi-task GP needs at least 2 rows per task")
        T = data.n_tasks
        if self.kind == "icm" and self.rank is not None and self.rank > T:
            raise ValueError(f"rank {self.rank} exceeds the number of tasks ({T}); use rank <= {T}")
        if not isinstance(self.kernel, str):
            ard = getattr(self.kernel, "ard_num_dims", None)
            base = getattr(self.kernel, "base_kernel", None)
            if ard is None and base is not None:
                ard = getattr(base, "ard_num_dims", None)
            if ard is not None and ard != data.n_features:
                raise ValueError(f"the kernel has ard_num_dims={ard} but the data have {data.n_features} "
                                 f"input feature(s) {data.feature_names}")

    def full_rank(self, data: MultiTaskData) -> bool:
        """Whether the task covariance is full rank for these data (rank >= number of tasks)."""
        return self.rank_for(data) >= data.n_tasks

    def gp_path(self, data: MultiTaskData) -> str:
        """"kronecker" when every task is observed at every input, else "hadamard"."""
        return self.describe(data)["gp_path"]

    def coords(self, data: MultiTaskData) -> dict[str, list]:
        """Coordinate labels of the model's dims (task, feature, rank, latent, ...), for ArviZ."""
        T = data.n_tasks
        q = self._n_latents(data)
        out = {"task": list(data.task_names), "task_": list(data.task_names),
               "feature": list(data.feature_names), "rank": [f"r{i}" for i in range(min(self.rank_for(data), T))],
               "latent": [f"q{i}" for i in range(q)]}
        if self.kind == "lmc":
            m = [f"z{i}" for i in range(self._n_inducing(data))]
            out.update(inducing=m, inducing_=m)
        for name, shape in self._kernel_object_shapes().items():
            out.update({f"{name}_dim_{i}": list(range(n)) for i, n in enumerate(shape)})
        return out

    def _n_inducing(self, data) -> int:
        return min(self.inducing, data.n_rows)  # as fit_lmc chooses

    def _n_latents(self, data) -> int:
        return self.num_latents or self.rank_for(data)

    def site_dims(self, data: MultiTaskData) -> dict[str, tuple[str, ...]]:
        """Dims of every site in the draws, by name (``task``, ``feature``, ...)."""
        if self.kind == "hierarchical":
            return {**hierarchical.SITE_DIMS, "task_cov": ("task", "task_"), "task_corr": ("task", "task_")}
        if self.kind == "lmc":
            # the fitted variational state (see bayesmtl.gp.lmc.STATE_SITES) is part of the draws
            return {"lengthscale": ("latent", "feature"), "lmc_coef": ("latent", "task"), "noise": ("task",),
                    "mean": ("task",), "task_cov": ("task", "task_"), "task_corr": ("task", "task_"),
                    "lmc_latent_mean": ("latent",), "lmc_inducing": ("latent", "inducing", "feature"),
                    "lmc_var_mean": ("latent", "inducing"), "lmc_var_chol": ("latent", "inducing", "inducing_")}
        return {"lengthscale": ("feature",), "outputscale": ("task",), "corr_chol": ("task", "task_"),
                "task_W": ("task", "rank"), "task_v": ("task",), "noise": ("task",), "noise_level": (),
                "mean": ("task",), "mean_sd": ("task",),
                "task_cov": ("task", "task_"), "task_corr": ("task", "task_"),
                "private_lengthscale": ("task", "feature"), "private_var": ("task",),
                **self._kernel_object_dims()}

    @property
    def unidentified_sites(self) -> tuple[str, ...]:
        """Sites left out of ``Posterior.summary()`` and the diagnostics by default: the LMC's
        variational state (thousands of entries, defined only up to the order of inducing
        points); the ICM's factor W (up to sign and rotation; task_cov and task_corr are shown)."""
        if self.kind == "lmc":
            return ("lmc_inducing", "lmc_var_mean", "lmc_var_chol")
        # W is defined up to sign and rotation; B = W W^T + diag(v) is what is learned
        return ("task_W",) if self.kind == "icm" else ()

    # ------------------------------------------------------------------ a gpytorch kernel object
    # Its trained hyperparameters are draws (sites "kernel.<parameter name>", raw values), not
    # state of self.kernel, which stays as the user built it.
    def _kernel_object_shapes(self) -> dict[str, tuple[int, ...]]:
        if isinstance(self.kernel, str):
            return {}
        return {f"kernel.{n}": tuple(p.shape) for n, p in self.kernel.named_parameters()}

    def _kernel_object_dims(self) -> dict[str, tuple[str, ...]]:
        shapes = self._kernel_object_shapes()
        return {k: tuple(f"{k}_dim_{i}" for i in range(len(shape))) for k, shape in shapes.items()}

    def describe(self, data: MultiTaskData) -> dict:
        """What run.json records about the structure used: ``gp_path`` and, on the Kronecker path,
        ``kronecker_solver`` ("eigh": one eigendecomposition of the input kernel for all tasks, or
        "cholesky": one factor per task). The grid layout is found once here."""
        if self.kind == "lmc":
            return {"gp_path": "lmc-variational", "kronecker_solver": None}
        grid, _ = icm.training_layout(data.X, data.y, data.task, data.n_tasks, self.private, cells=False)
        if grid is None:
            return {"gp_path": "hadamard", "kronecker_solver": None}
        if self.kind == "hierarchical":
            return {"gp_path": "grid", "kronecker_solver": None}
        return {"gp_path": "kronecker",
                "kronecker_solver": icm.kronecker_solver(grid.X.shape[0], data.n_tasks, data.device)}

    # ------------------------------------------------------------------ the contract, delegating
    def pyro_model(self, data: MultiTaskData, subsample_size: int | None = None, observe: bool = True):
        """Pyro program: hyperparameter priors + the exact GP marginal likelihood as a factor
        (``bayesmtl.gp.program.icm_program``). Broadcasts over a leading batch dim."""
        return program.icm_program(self, data, subsample_size, observe)

    def targets(self, data: MultiTaskData) -> list[Target]:
        """The hyperparameters' Pyro program (exact marginal likelihood; ICM with a named kernel), with
        type-II maximum likelihood (``bayesmtl.gp.typeii.fit_type_ii``) as its point estimate.
        Recorded: ``gp_path``."""
        def prog(subsample_size=None):
            return self.pyro_model(data, subsample_size=subsample_size)

        return [Target(program=prog, max_plate_nesting=1, n_rows=data.n_rows, path="plain",
                       point_estimate=lambda settings: typeii.fit_type_ii(self, data, settings),
                       rebuild=lambda d: self.targets(d)[0], data=data, info=self.describe(data))]

    def complete(self, data: MultiTaskData, samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add ``task_cov`` (covariance of f at one input: B, plus diag(private_var) with private
        kernels) and ``task_corr`` (S, T, T) to flat draws (S, ...)."""
        return gp_predict.with_task_cov(samples)

    def relations(self, samples: dict[str, torch.Tensor], data: MultiTaskData | None = None) -> RelationDraws:
        """Draws of the task correlation B_ij / sqrt(B_ii B_jj), (S, T, T), signed."""
        corr = gp_predict.with_task_cov(samples)["task_corr"]
        if self.kind == "hierarchical":
            return RelationDraws(corr.cpu().numpy(), "share of each task's function that is shared (hierarchical GP: "
                                 "s_g^2 / (s_g^2 + s_h^2 + c^2), one value for every pair)", True)
        return RelationDraws(corr.cpu().numpy(), "task correlation of the latent functions (multi-task GP)", True)

    def log_likelihood(self, data: MultiTaskData, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """log N(y_n | predictive mean, predictive variance) per row given each draw, (S, N): the GP's
        pointwise predictive density at the training inputs (in-sample, hyperparameters as drawn)."""
        mu, var = self.predictive_moments(data, data, samples)
        return gp_predict.log_density(data.y, mu, var)

    def loo_log_density(self, data: MultiTaskData, samples: dict[str, torch.Tensor], by: str = "row") -> torch.Tensor:
        """Exact GP leave-one-out (a row, or a task's rows) given each draw's hyperparameters, (S, N)
        or (S, T) (``bayesmtl.gp.predict.loo_log_density``)."""
        return gp_predict.loo_log_density(self, data, samples, by)

    def predict(self, train: MultiTaskData, new: MultiTaskData, samples: dict[str, torch.Tensor],
                generator: torch.Generator, draws_per_sample: int = 1) -> dict[str, torch.Tensor]:
        """GP predictive at the rows of ``new`` (known tasks only, except for the hierarchical GP,
        whose new tasks get the shared function plus a deviation from the prior), from flat draws (S, ...).

        Returns ``mean`` (S, N), E[y | draw] (f + task mean), and ``y`` (S * K, N) with
        K = ``draws_per_sample``: K predictive draws of y (noise included) per posterior draw,
        draw s giving rows s*K .. s*K+K-1. The caller chooses K (e.g. several per draw so that a
        point estimate still gives a predictive sd and quantiles).
        """
        if isinstance(draws_per_sample, bool) or not isinstance(draws_per_sample, (int, np.integer)) \
                or draws_per_sample < 1:
            raise ValueError(f"draws_per_sample must be an integer >= 1; got {draws_per_sample!r}")
        n_known = new.n_known_tasks
        unseen = sorted({new.task_names[i] for i in new.task.tolist() if i >= n_known})
        if unseen and self.kind != "hierarchical":
            raise ValueError(f"task {unseen[0]!r} was not in the training data; a multi-task GP predicts "
                             "only for tasks it was trained on")
        mu, var = self.predictive_moments(train, new, samples)
        return {"mean": mu, "y": gp_predict.draws_of_y(mu, var, generator, draws_per_sample)}

    def predictive_moments(self, train: MultiTaskData, new: MultiTaskData,
                           samples: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-draw predictive mean and variance of y (noise included), each (S, N), from the
        training data and the flat draws ``samples`` (site -> (S, ...)) alone
        (``bayesmtl.gp.predict.moments``)."""
        return gp_predict.moments(self, train, new, samples)
