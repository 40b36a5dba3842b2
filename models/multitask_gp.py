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

Other sites: ``lengthscale`` (D,) ARD, ``noise`` (T,) variances, ``mean`` (T,). Deterministic:
``task_cov`` (T, T) and ``task_corr`` (T, T). Default priors suit standardised features and a
standardised target. ``map`` always fits W (T, rank) and v.

``private=True`` adds each task's own kernel (own ARD lengthscales, site ``private_lengthscale``
(T, D), and variance ``private_var`` (T,)): cov(f_i(x), f_j(x')) = B_ij k(x, x') + delta_ij p_i k_i(x, x'),
an exact LMC with one shared and T private latent processes. It nests independent GPs (B = 0)
and ICM (p = 0), so tasks that differ in smoothness need not share one lengthscale. It runs on
the Hadamard path; ``task_cov`` and ``task_corr`` then describe f at one input (B + diag(p)).

``kind="lmc"`` is the variational linear model of coregionalisation (``bayesmtl.gp.lmc``), fitted
with ``method="map"`` only (inducing points, minibatches). Sites: ``lengthscale`` (Q, D),
``lmc_coef`` (Q, T), ``noise``, ``mean``, and its variational state ``lmc_latent_mean`` (Q,),
``lmc_inducing`` (Q, M, D), ``lmc_var_mean`` (Q, M), ``lmc_var_chol`` (Q, M, M).

Nothing fitted is kept on the model object (it holds settings only): what a fit learns is in
its draws, so a Posterior predicts from its own samples, and saves and reloads with them, however
often the model object is refitted. A gpytorch kernel object is trained as a copy; its trained
raw parameters are the sites ``kernel.<parameter name>``.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from bayesmtl.data import MultiTaskData
from bayesmtl.gp import icm
from bayesmtl.infer.base import Draws, Settings, torch_threads
from bayesmtl.priors.base import as_distribution, move_distribution
from bayesmtl.protocol import ModelBase, RelationDraws, Target

__all__ = ["MultitaskGP"]

_MAP_OPTIONS = {"optimizer", "lr", "steps", "tol", "threads", "restarts", "batch_size",
                "inducing_lr"}


class MultitaskGP(ModelBase):
    """Multi-task GP regression.

    Parameters
    ----------
    rank : int
        Rank of W in B = W W^T + diag(v) (ICM); ``rank == n_tasks`` gives a full-rank B with an
        LKJ prior on the task correlation. For LMC, the default number of latents.
    kernel : "rbf", "matern12", "matern32", "matern52" or a gpytorch Kernel
        Input kernel (ARD). A gpytorch kernel object is fitted with ``method="map"`` only.
    kind : "icm" or "lmc"
    num_latents, inducing : int
        LMC only: number of latent GPs (default ``rank``) and inducing points.
    lengthscale_prior, outputscale_prior, noise_prior, mean_prior, w_prior, v_prior : pyro distributions
    task_corr_eta : float
        LKJ concentration of the task correlation (1 = uniform over correlation matrices).
    private : bool
        ICM only: add each task's own kernel (see the module docstring).
    """

    name = "multitask-gp"

    def __init__(self, rank: int = 1, kernel="rbf", kind: str = "icm", num_latents: int | None = None,
                 inducing: int = 256, *, lengthscale_prior=None, outputscale_prior=None, noise_prior=None,
                 mean_prior=None, w_prior=None, v_prior=None, task_corr_eta: float = 2.0, private: bool = False):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an integer >= 1; got {rank!r}")
        if kind not in ("icm", "lmc"):
            raise ValueError(f"kind must be 'icm' or 'lmc'; got {kind!r}")
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
            raise ValueError("private=True needs kind='icm' and a kernel given by name ('rbf', 'matern52', ...)")
        if float(task_corr_eta) <= 0:
            raise ValueError(f"task_corr_eta must be positive; got {task_corr_eta}")
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
        self.task_corr_eta = float(task_corr_eta)
        self.private = private

    def __repr__(self) -> str:
        k = self.kernel if isinstance(self.kernel, str) else type(self.kernel).__name__
        extra = f", num_latents={self.num_latents}, inducing={self.inducing}" if self.kind == "lmc" else ""
        extra += ", private=True" if self.private else ""
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
        if self.kind == "icm" and self.rank > T:
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
        return self.rank >= data.n_tasks

    def gp_path(self, data: MultiTaskData) -> str:
        """"kronecker" when every task is observed at every input, else "hadamard"."""
        return self.describe(data)["gp_path"]

    def _grid(self, data: MultiTaskData):
        if self.private:  # private kernels break the Kronecker structure
            return None
        return icm.grid_layout(data.X, data.y, data.task, data.n_tasks)

    @staticmethod
    def _cells(data: MultiTaskData) -> icm.Cells:
        """Hadamard-path training rows, repeated (input, task) rows merged into exact cells."""
        return icm.group_cells(data.X, data.y, data.task)

    def coords(self, data: MultiTaskData) -> dict[str, list]:
        T = data.n_tasks
        q = self._n_latents(data)
        out = {"task": list(data.task_names), "task_": list(data.task_names),
               "feature": list(data.feature_names), "rank": [f"r{i}" for i in range(min(self.rank, T))],
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
        return self.num_latents or self.rank

    def site_dims(self, data: MultiTaskData) -> dict[str, tuple[str, ...]]:
        if self.kind == "lmc":
            # the fitted variational state (see bayesmtl.gp.lmc.STATE_SITES) is part of the draws
            return {"lengthscale": ("latent", "feature"), "lmc_coef": ("latent", "task"), "noise": ("task",),
                    "mean": ("task",), "task_cov": ("task", "task_"), "task_corr": ("task", "task_"),
                    "lmc_latent_mean": ("latent",), "lmc_inducing": ("latent", "inducing", "feature"),
                    "lmc_var_mean": ("latent", "inducing"), "lmc_var_chol": ("latent", "inducing", "inducing_")}
        return {"lengthscale": ("feature",), "outputscale": ("task",), "corr_chol": ("task", "task_"),
                "task_W": ("task", "rank"), "task_v": ("task",), "noise": ("task",), "mean": ("task",),
                "task_cov": ("task", "task_"), "task_corr": ("task", "task_"),
                "private_lengthscale": ("task", "feature"), "private_var": ("task",),
                **self._kernel_object_dims()}

    @property
    def unidentified_sites(self) -> tuple[str, ...]:
        """Sites left out of ``Posterior.summary()`` by default: the LMC's variational state
        (thousands of entries, defined only up to the order of inducing points)."""
        return ("lmc_inducing", "lmc_var_mean", "lmc_var_chol") if self.kind == "lmc" else ()

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

    def _kernel_fn(self, samples: dict[str, torch.Tensor], s: int, like: torch.Tensor):
        """The kernel for ``icm.ard_kernel`` at draw ``s`` of flat ``samples``: its name, or for a
        gpytorch kernel object a callable on a copy holding that draw (on ``like``'s device and dtype)."""
        if isinstance(self.kernel, str):
            return self.kernel
        # .to first: copying float64 draws into a float32 kernel would round them
        k = copy.deepcopy(self.kernel).to(device=like.device, dtype=like.dtype)
        with torch.no_grad():
            for n, p in k.named_parameters():
                if f"kernel.{n}" not in samples:
                    raise ValueError(f"the draws lack site 'kernel.{n}' of the kernel object; refit the model")
                p.copy_(samples[f"kernel.{n}"][s].reshape(p.shape))
        return lambda X1, X2, ls: k(X1, X2).to_dense()

    def describe(self, data: MultiTaskData) -> dict:
        """What run.json records about the structure used: ``gp_path`` and, on the Kronecker path,
        ``kronecker_solver`` ("eigh": one eigendecomposition of the input kernel for all tasks, or
        "cholesky": one factor per task). The grid layout is found once here."""
        if self.kind == "lmc":
            return {"gp_path": "lmc-variational", "kronecker_solver": None}
        grid = self._grid(data)
        if grid is None:
            return {"gp_path": "hadamard", "kronecker_solver": None}
        return {"gp_path": "kronecker",
                "kronecker_solver": icm.kronecker_solver(grid.X.shape[0], data.n_tasks, data.device)}

    # ------------------------------------------------------------------ the Pyro program
    def pyro_model(self, data: MultiTaskData, subsample_size: int | None = None,
                   observe: bool = True):
        """Pyro program: hyperparameter priors + the exact GP marginal likelihood as a factor.

        Broadcasts over a leading batch dim (an outer plate at dim -2).
        """
        if self.kind == "lmc":
            raise NotImplementedError("kind='lmc' is fitted by variational inference: use method='map'")
        if not isinstance(self.kernel, str):
            raise NotImplementedError("a gpytorch kernel object is supported with method='map' only; "
                                      "pass kernel='rbf'/'matern52'/... for nuts or svi")
        if subsample_size is not None:
            raise ValueError("the exact GP marginal likelihood does not factorise over rows: "
                             "no minibatches (batch_size) for kind='icm'; use kind='lmc' for large data")
        T, D = data.n_tasks, data.n_features
        like = torch.zeros((), dtype=data.dtype, device=data.device)
        full = self.full_rank(data)
        grid = self._grid(data)
        cells = self._cells(data) if grid is None else None
        kind = self.kernel
        mv = lambda d: move_distribution(d, like)  # noqa: E731
        eta = self.task_corr_eta

        def model() -> None:
            ls = pyro.sample("lengthscale", mv(self.lengthscale_prior).expand([D]).to_event(1))
            if full:
                s = pyro.sample("outputscale", mv(self.outputscale_prior).expand([T]).to_event(1))
                Lc = pyro.sample("corr_chol", dist.LKJCholesky(T, like.new_tensor(eta)))
                F = s.unsqueeze(-1) * Lc
                B = F @ F.transpose(-1, -2)
            else:
                W = pyro.sample("task_W", mv(self.w_prior).expand([T, self.rank]).to_event(2))
                v = pyro.sample("task_v", mv(self.v_prior).expand([T]).to_event(1))
                B = icm.task_covariance(W, v)
            priv = None
            if self.private:
                priv = (pyro.sample("private_lengthscale", mv(self.lengthscale_prior).expand([T, D]).to_event(2)),
                        pyro.sample("private_var", mv(self.v_prior).expand([T]).to_event(1)))
            noise = pyro.sample("noise", mv(self.noise_prior).expand([T]).to_event(1))
            mean = pyro.sample("mean", mv(self.mean_prior).expand([T]).to_event(1))
            if not observe:
                return
            if grid is not None:
                mll = icm.kronecker_mll(grid.X, grid.Y, B, ls, noise, mean, kind)
            else:
                mll = icm.hadamard_mll(cells.X, cells.y, cells.task, B, ls, noise, mean, kind, cells.count,
                                       cells.ss, priv)
            pyro.factor("gp_mll", mll)

        return model

    # ------------------------------------------------------------------ type-II maximum likelihood
    def map_estimate(self, data: MultiTaskData, settings: Settings) -> Draws:
        """Type-II maximum likelihood (Adam or L-BFGS on the exact marginal likelihood).

        Options: ``optimizer`` ("lbfgs" default, or "adam"), ``lr`` (1.0 L-BFGS / 0.05 Adam),
        ``steps`` (100 L-BFGS outer steps / 1000 Adam), ``tol`` (stop when the MLL changes by
        less than tol x |MLL|, 1e-7), ``restarts`` (random initialisations, best kept; 1),
        ``threads`` (default 1 below 1,500 rows, else torch's setting). Returns one draw: samples of shape (1, 1, ...).
        """
        opts = dict(settings.options)
        unknown = set(opts) - _MAP_OPTIONS
        if unknown:
            raise ValueError(f"unknown option(s) for method 'map' with MultitaskGP: {sorted(unknown)}; "
                             f"known: {sorted(_MAP_OPTIONS)}")
        if self.kind == "lmc":
            from bayesmtl.gp import lmc

            with torch_threads(opts.pop("threads", None)):
                return lmc.fit_lmc(self, data, settings, opts)
        optimizer = opts.get("optimizer", "lbfgs")
        if optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam'; got {optimizer!r}")
        restarts = int(opts.get("restarts", 1))
        gen = torch.Generator().manual_seed(settings.seed)
        best = None
        t0 = time.perf_counter()
        # small problems: one thread (thread start-up and waits cost more than they save, and badly
        # so on a loaded machine: 20x measured at 60 rows with 2 threads); large: torch's default
        small = data.n_rows < 1500
        threads = opts.get("threads", 1 if small else None)
        with torch_threads(threads):
            for _ in range(max(1, restarts)):
                out = self._ml_fit(data, optimizer, opts, gen)
                if best is None or out[0] > best[0]:
                    best = out
        mll, params, iters, trace = best
        seconds = time.perf_counter() - t0
        samples = {k: v.detach().cpu().reshape((1, 1) + v.shape) for k, v in params.items()}
        info = {"gp_path": self.gp_path(data), "optimizer": optimizer, "log_marginal_likelihood": float(mll),
                "iterations": iters, "restarts": restarts, "fit_seconds": seconds,
                "mll_trace": trace[:: max(1, len(trace) // 100)]}
        return Draws(samples, {}, info)

    def _init(self, data: MultiTaskData, gen: torch.Generator) -> dict[str, torch.Tensor]:
        T, D, r = data.n_tasks, data.n_features, min(self.rank, data.n_tasks)
        dt, dev = data.dtype, data.device
        y, task = data.y, data.task
        cnt = torch.bincount(task, minlength=T).to(dt)
        m = torch.zeros(T, dtype=dt, device=dev).index_add_(0, task, y) / cnt
        var = torch.zeros(T, dtype=dt, device=dev).index_add_(0, task, (y - m[task]) ** 2) / cnt
        var = var.clamp_min(1e-6)
        sd = var.sqrt()
        rnd = lambda *s: torch.randn(*s, generator=gen, dtype=dt).to(dev)  # noqa: E731
        # signal split: 1/2 in W W^T, 1/4 in v, 1/4 noise; small random spread breaks symmetry
        W = sd.unsqueeze(-1) * rnd(T, r) * math.sqrt(0.5 / r)
        log_ls = torch.ones(D, dtype=dt, device=dev) * math.log(math.sqrt(max(D, 1)))
        out = {"log_ls": (log_ls + 0.1 * rnd(D)).requires_grad_(),
               "task_W": W.requires_grad_(),
               "log_v": (torch.log(0.25 * var) + 0.1 * rnd(T)).requires_grad_(),
               "log_noise": (torch.log(0.25 * var) + 0.1 * rnd(T)).requires_grad_(),
               "mean": m.clone().requires_grad_()}
        if self.private:  # the private processes take a share of the signal like v's
            out["log_pls"] = (log_ls + 0.1 * rnd(T, D)).requires_grad_()
            out["log_pv"] = (torch.log(0.25 * var) + 0.1 * rnd(T)).requires_grad_()
        return out

    def _ml_fit(self, data, optimizer, opts, gen):
        raw = self._init(data, gen)
        params = list(raw.values())
        kfn, kern = self.kernel, None
        if not isinstance(self.kernel, str):
            # train a copy: every restart (and every fit) starts from the user's kernel, and the
            # trained values go to the draws
            kern = copy.deepcopy(self.kernel).to(device=data.device, dtype=data.dtype)
            params += list(kern.parameters())
            kfn = lambda X1, X2, ls: kern(X1, X2).to_dense()  # noqa: E731
        grid = self._grid(data)
        cells = self._cells(data) if grid is None else None

        def mll_of(raw):
            B = icm.task_covariance(raw["task_W"], raw["log_v"].exp())
            ls, noise = raw["log_ls"].exp(), raw["log_noise"].exp()
            if grid is not None:
                return icm.kronecker_mll(grid.X, grid.Y, B, ls, noise, raw["mean"], kfn)
            priv = (raw["log_pls"].exp(), raw["log_pv"].exp()) if self.private else None
            return icm.hadamard_mll(cells.X, cells.y, cells.task, B, ls, noise, raw["mean"], kfn, cells.count,
                                    cells.ss, priv)

        n = data.n_rows
        tol = float(opts.get("tol", 1e-7))
        trace: list[float] = []
        if optimizer == "adam":
            opt = torch.optim.Adam(params, lr=float(opts.get("lr", 0.05)))
            steps = int(opts.get("steps", 1000))
            for _ in range(steps):
                opt.zero_grad()
                loss = -mll_of(raw) / n
                loss.backward()
                opt.step()
                trace.append(-float(loss) * n)
                if len(trace) > 50 and abs(trace[-1] - trace[-51]) < tol * 50 * abs(trace[-1]):
                    break
        else:
            opt = torch.optim.LBFGS(params, lr=float(opts.get("lr", 1.0)), max_iter=20,
                                    line_search_fn="strong_wolfe", tolerance_change=1e-12, history_size=20)
            steps = int(opts.get("steps", 100))

            def closure():
                opt.zero_grad()
                loss = -mll_of(raw) / n
                loss.backward()
                return loss

            for _ in range(steps):
                loss = float(opt.step(closure).detach())
                trace.append(-loss * n)
                if len(trace) > 1 and abs(trace[-1] - trace[-2]) < tol * abs(trace[-1]):
                    break
        with torch.no_grad():
            final = float(mll_of(raw))
        out = {"lengthscale": raw["log_ls"].exp(), "task_W": raw["task_W"], "task_v": raw["log_v"].exp(),
               "noise": raw["log_noise"].exp(), "mean": raw["mean"]}
        if self.private:
            out["private_lengthscale"], out["private_var"] = raw["log_pls"].exp(), raw["log_pv"].exp()
        if kern is not None:
            out.update({f"kernel.{n}": p for n, p in kern.named_parameters()})
        return final, {k: v.detach() for k, v in out.items()}, len(trace), trace

    # ------------------------------------------------------------------ after inference
    @staticmethod
    def _task_cov(samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """The shared process's B, (S, T, T) (not ``task_cov``, which adds private variances)."""
        if "task_W" in samples:
            return icm.task_covariance(samples["task_W"], samples["task_v"])
        if "outputscale" in samples:
            F = samples["outputscale"].unsqueeze(-1) * samples["corr_chol"]
            return F @ F.transpose(-1, -2)
        if "lmc_coef" in samples:
            A = samples["lmc_coef"]  # (S, Q, T)
            return A.transpose(-1, -2) @ A
        return samples["task_cov"]

    def complete(self, data: MultiTaskData, samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add ``task_cov`` (covariance of f at one input: B, plus diag(private_var) with private
        kernels) and ``task_corr`` (S, T, T) to flat draws (S, ...)."""
        out = dict(samples)
        B = self._task_cov(samples)
        if "private_var" in samples:
            B = B + torch.diag_embed(samples["private_var"])
        d = B.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).rsqrt()
        out["task_cov"] = B
        out["task_corr"] = d.unsqueeze(-1) * B * d.unsqueeze(-2)
        return out

    def relations(self, samples: dict[str, torch.Tensor]) -> RelationDraws:
        """Draws of the task correlation B_ij / sqrt(B_ii B_jj), (S, T, T), signed."""
        corr = self.complete(None, samples)["task_corr"]
        return RelationDraws(corr.cpu().numpy(), "task correlation of the latent functions (multi-task GP)", True)

    def targets(self, data: MultiTaskData) -> list[Target]:
        """The hyperparameters' Pyro program (exact marginal likelihood; ICM with a named kernel), with
        type-II maximum likelihood (``map_estimate``) as its point estimate. Recorded: ``gp_path``."""
        def program(subsample_size=None):
            return self.pyro_model(data, subsample_size=subsample_size)

        return [Target(program=program, max_plate_nesting=1, n_rows=data.n_rows, path="plain",
                       point_estimate=lambda settings: self.map_estimate(data, settings),
                       rebuild=lambda d: self.targets(d)[0], data=data, info=self.describe(data))]

    def log_likelihood(self, data: MultiTaskData, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """log N(y_n | predictive mean, predictive variance) per row given each draw, (S, N): the GP's
        pointwise predictive density at the training inputs (in-sample, hyperparameters as drawn)."""
        mu, var = self.predictive_moments(data, data, samples)
        y = data.y.to(mu)
        return -0.5 * ((y - mu) ** 2 / var + torch.log(2 * math.pi * var))

    def predict(self, train: MultiTaskData, new: MultiTaskData, samples: dict[str, torch.Tensor],
                generator: torch.Generator, draws_per_sample: int = 1) -> dict[str, torch.Tensor]:
        """GP predictive at the rows of ``new`` (known tasks only), from flat draws (S, ...).

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
        if unseen:
            raise ValueError(f"task {unseen[0]!r} was not in the training data; a multi-task GP predicts "
                             "only for tasks it was trained on")
        mu, var = self.predictive_moments(train, new, samples)
        S, N = mu.shape
        K = int(draws_per_sample)
        eps = torch.randn((S, K, N), generator=generator, dtype=mu.dtype, device=generator.device).to(mu.device)
        y = mu.unsqueeze(1) + var.sqrt().unsqueeze(1) * eps
        return {"mean": mu, "y": y.reshape(S * K, N)}

    def predictive_moments(self, train: MultiTaskData, new: MultiTaskData,
                           samples: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-draw predictive mean and variance of y (noise included), each (S, N), from the
        training data and the flat draws ``samples`` (site -> (S, ...)) alone."""
        if self.kind == "lmc":
            from bayesmtl.gp import lmc

            return lmc.moments_lmc(samples, new, self.kernel)
        out_m, out_v = [], []
        dt, dev = train.dtype, train.device
        B_all = self._task_cov(samples).to(device=dev, dtype=dt)
        grid = self._grid(train)
        cells = self._cells(train) if grid is None else None
        new = new.to(dev)
        for s in range(B_all.shape[0]):
            kfn = self._kernel_fn(samples, s, train.X)
            B, ls = B_all[s], samples["lengthscale"][s].to(device=dev, dtype=dt)
            noise, mean = samples["noise"][s].to(device=dev, dtype=dt), samples["mean"][s].to(device=dev, dtype=dt)
            priv = ((samples["private_lengthscale"][s].to(device=dev, dtype=dt),
                     samples["private_var"][s].to(device=dev, dtype=dt)) if self.private else None)
            with torch.no_grad():
                if grid is not None:
                    c = icm.kronecker_cache(grid.X, grid.Y, B, ls, noise, mean, kfn)
                    mu, var = icm.kronecker_predict(c, grid.X, new.X, new.task, B, ls, mean, kfn)
                else:
                    c = icm.hadamard_cache(cells.X, cells.y, cells.task, B, ls, noise, mean, kfn, cells.count, priv)
                    mu, var = icm.hadamard_predict(c, cells.X, cells.task, new.X, new.task, B, ls, mean, kfn, priv)
            out_m.append(mu)
            out_v.append(var + noise[new.task])
        return torch.stack(out_m), torch.stack(out_v)
