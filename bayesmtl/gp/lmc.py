"""Variational linear model of coregionalisation (LMC) for large multi-task data.

    f_t(x) = sum_q A_qt g_q(x),   g_q ~ GP(c_q, k_q) with its own ARD kernel,   y = mean_t + f_t(x) + N(0, noise_t)

GPyTorch's ``LMCVariationalStrategy`` over Q independent sparse variational GPs (inducing points
shared in number, learned in location), evaluated per row (``task_indices``) so data stay in
long format. Trained on minibatches with Adam on the ELBO (expected log-likelihood computed in
closed form with per-task noise). Implied task covariance at zero distance: B = A^T A.
"""

from __future__ import annotations

import math
import time

import gpytorch
import numpy as np
import torch

from ..design import add_at
from ..infer.base import Draws, Settings
from ..infer.driver import progress_bar

__all__ = ["LMCModule", "STATE_SITES", "fit_lmc", "draw_of_module", "module_from_draw", "moments_lmc"]


class LMCModule(gpytorch.models.ApproximateGP):
    """Q latent sparse GPs mixed into T tasks. inducing (Q, M, D)."""

    def __init__(self, inducing: torch.Tensor, n_tasks: int, kernel: str = "rbf"):
        Q, M, D = inducing.shape
        vd = gpytorch.variational.CholeskyVariationalDistribution(M, batch_shape=torch.Size([Q]))
        base = gpytorch.variational.VariationalStrategy(self, inducing, vd, learn_inducing_locations=True)
        strategy = gpytorch.variational.LMCVariationalStrategy(base, num_tasks=n_tasks, num_latents=Q, latent_dim=-1)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=torch.Size([Q]))
        if kernel == "rbf":
            k = gpytorch.kernels.RBFKernel(batch_shape=torch.Size([Q]), ard_num_dims=D)
        elif kernel.startswith("matern"):
            k = gpytorch.kernels.MaternKernel(nu={"matern12": 0.5, "matern32": 1.5, "matern52": 2.5}[kernel],
                                              batch_shape=torch.Size([Q]), ard_num_dims=D)
        else:
            raise ValueError(f"kernel {kernel!r} is not available for kind='lmc'")
        self.covar_module = k
        self.log_noise = torch.nn.Parameter(torch.full((n_tasks,), math.log(0.1)))
        self.task_mean = torch.nn.Parameter(torch.zeros(n_tasks))

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    def moments(self, X: torch.Tensor, task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Variational predictive mean and variance of f + mean at (X, task), each (n,)."""
        # marginal moments straight from the Q latent marginals: f_t = sum_q A_qt g_q with independent
        # g_q, so var f = sum_q A_qt^2 var g_q. GPyTorch's own task_indices path builds the n x n
        # covariance and root-decomposes it (measured 48 s an iteration at a minibatch of 1,024)
        latent = self.variational_strategy.base_variational_strategy(X)
        a = self.variational_strategy.lmc_coefficients[:, task]          # (Q, n)
        mu = (a * latent.mean).sum(0)
        var = (a * a * latent.variance).sum(0)
        return mu + self.task_mean[task], var


#: what ``fit_lmc`` learns besides lengthscale (Q, D), lmc_coef (Q, T), noise (T,) and mean (T,):
#: each latent's constant mean (Q,), inducing inputs (Q, M, D), and the whitened variational
#: distribution N(m, L L^T) of each latent's inducing values: m (Q, M), L (Q, M, M) lower triangular
STATE_SITES = ("lmc_latent_mean", "lmc_inducing", "lmc_var_mean", "lmc_var_chol")


def fit_lmc(model, data, settings: Settings, opts: dict) -> Draws:
    """Fit the variational LMC of ``model`` (a MultitaskGP with kind='lmc'): one draw, samples
    of shape (1, 1, ...).

    Everything learned is in the samples (the model object is only read): lengthscale (Q, D),
    lmc_coef (Q, T), noise (T,), mean (T,) and the ``STATE_SITES``; ``module_from_draw``
    rebuilds the module from them. Options (``opts``, checked by ``typeii.fit_type_ii``): ``steps``
    (2000), ``lr`` (0.01), ``batch_size`` (1024).
    """
    if not isinstance(model.kernel, str):
        raise NotImplementedError("kind='lmc' takes a kernel name ('rbf', 'matern52', ...)")
    T, N = data.n_tasks, data.n_rows
    Q = int(model.num_latents or model.rank_for(data))
    M = min(int(model.inducing), N)
    dev, dt = data.device, data.dtype
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    idx = torch.stack([torch.randperm(N, generator=gen)[:M] for _ in range(Q)])
    module = LMCModule(data.X.cpu()[idx].clone(), T, model.kernel).to(device=dev, dtype=dt)
    with torch.no_grad():
        cnt = torch.bincount(data.task, minlength=T).to(dt)
        module.task_mean.copy_(add_at(torch.zeros(T, dtype=dt, device=dev), 0, data.task, data.y) / cnt)
    steps, lr = int(opts.get("steps", 2000)), float(opts.get("lr", 0.01))
    batch = min(int(opts.get("batch_size", 1024)), N)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    losses = []
    module.train()
    t0 = time.perf_counter()
    bar = progress_bar(steps, "LMC (variational, Adam)", settings.progress, leave=False)
    for i in range(steps):
        rows = torch.randint(N, (batch,), generator=gen).to(dev)
        x, y, t = data.X[rows], data.y[rows], data.task[rows]
        opt.zero_grad()
        mu, var = module.moments(x, t)
        nz = module.log_noise.exp()[t]
        ell = -0.5 * (torch.log(2 * math.pi * nz) + ((y - mu) ** 2 + var) / nz)
        loss = -(ell.mean() - module.variational_strategy.kl_divergence().sum() / N)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not np.isfinite(losses[-1]):
            bar.close()
            raise FloatingPointError(f"the LMC ELBO became {losses[-1]}; lower lr (now {lr})")
        bar.update(1)
        if i % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4g}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - t0
    module.eval()
    samples = {k: v.detach().cpu().reshape((1, 1) + v.shape) for k, v in draw_of_module(module).items()}
    info = {"gp_path": "lmc-variational", "steps": steps, "batch_size": batch, "num_latents": Q,
            "inducing": M, "fit_seconds": seconds, "iterations_per_second": steps / seconds,
            "final_loss": float(np.mean(losses[-50:])),
            "loss_trace": losses[:: max(1, len(losses) // 200)]}
    return Draws(samples, {}, info)


def draw_of_module(module: LMCModule) -> dict[str, torch.Tensor]:
    """The module's learned values as one draw, site -> tensor (no leading dims)."""
    base = module.variational_strategy.base_variational_strategy
    vd = base._variational_distribution
    Q, M, D = base.inducing_points.shape
    with torch.no_grad():
        return {"lengthscale": module.covar_module.lengthscale.reshape(Q, D).clone(),
                "lmc_coef": module.variational_strategy.lmc_coefficients.clone(),    # (Q, T)
                "noise": module.log_noise.exp(), "mean": module.task_mean.clone(),
                "lmc_latent_mean": module.mean_module.constant.reshape(Q).clone(),
                "lmc_inducing": base.inducing_points.clone(),
                "lmc_var_mean": vd.variational_mean.clone(),
                # gpytorch reads only the lower triangle; store the factor it uses
                "lmc_var_chol": vd.chol_variational_covar.tril()}


def module_from_draw(draw: dict[str, torch.Tensor], kernel: str) -> LMCModule:
    """An LMCModule in eval mode holding one draw (site -> tensor without leading dims, as
    written by ``draw_of_module``), on the draw's device and dtype."""
    missing = [k for k in ("lengthscale", "lmc_coef", "noise", "mean", *STATE_SITES) if k not in draw]
    if missing:
        raise ValueError(f"the LMC draws lack site(s) {missing}: they were not written by this version's "
                         "fit_lmc (refit the model)")
    Z = draw["lmc_inducing"]
    Q, M, D = Z.shape
    T = draw["lmc_coef"].shape[-1]
    m = LMCModule(Z.detach().cpu().clone(), T, kernel).to(device=Z.device, dtype=Z.dtype)
    base = m.variational_strategy.base_variational_strategy
    vd = base._variational_distribution
    with torch.no_grad():
        m.covar_module.lengthscale = draw["lengthscale"].reshape(Q, 1, D)
        m.mean_module.constant = draw["lmc_latent_mean"].reshape(m.mean_module.raw_constant.shape)
        m.variational_strategy.lmc_coefficients.copy_(draw["lmc_coef"])
        vd.variational_mean.copy_(draw["lmc_var_mean"])
        vd.chol_variational_covar.copy_(draw["lmc_var_chol"])
        # without this flag the first call would reset the variational distribution to the prior
        base.variational_params_initialized.fill_(1)
        m.log_noise.copy_(draw["noise"].log())
        m.task_mean.copy_(draw["mean"])
    return m.eval()


def moments_lmc(samples: dict[str, torch.Tensor], new, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictive mean and variance of y (noise included) at the rows of ``new``, each (S, N),
    from flat draws ``samples`` (site -> tensor (S, ...)) alone."""
    S = samples["lmc_coef"].shape[0]
    X = new.X
    mus, vs = [], []
    with torch.no_grad():
        for s in range(S):
            draw = {k: v[s].to(device=X.device, dtype=X.dtype) for k, v in samples.items()
                    if k in ("lengthscale", "lmc_coef", "noise", "mean", *STATE_SITES)}
            m = module_from_draw(draw, kernel)
            mu, var = m.moments(X, new.task)
            mus.append(mu)
            vs.append(var + draw["noise"][new.task])
    return torch.stack(mus), torch.stack(vs)
