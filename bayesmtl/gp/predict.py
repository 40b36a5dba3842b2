"""A ``MultitaskGP``'s algebra after inference, per draw of flat draws (site -> (S, ...)): the task
covariance B and correlation, the predictive moments of y at new rows (ICM: exact, from the
training data's factors; LMC: ``lmc.moments_lmc``), predictive draws and pointwise log densities."""

from __future__ import annotations

import copy
import math

import pyro.distributions as dist
import torch

from . import hierarchical, icm

__all__ = ["shared_task_cov", "with_task_cov", "kernel_of_draw", "moments", "draws_of_y", "log_density",
           "loo_log_density", "MAX_LOO_ROWS", "integrated_means_prior"]


def integrated_means_prior(model, n_tasks: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(location, variance), each (n_tasks,), of an ICM's task means when type-II MAP integrates
    them out: its ``mean_prior`` if that is a Normal (on ``like``'s device and dtype), else None
    (the means are then maximised)."""
    from ..priors.base import move_distribution

    prior = model.mean_prior
    if model.kind != "icm" or not isinstance(prior, dist.Normal):
        return None
    prior = move_distribution(prior, like)
    try:
        return (torch.broadcast_to(prior.loc, (n_tasks,)).to(like),
                torch.broadcast_to(prior.scale, (n_tasks,)).to(like) ** 2)
    except RuntimeError:  # a prior shaped for something else: keep maximising the means
        return None


def shared_task_cov(samples: dict[str, torch.Tensor]) -> torch.Tensor:
    """The shared process's B, (S, T, T): W W^T + diag(v), diag(s) C diag(s) or A^T A (LMC), from
    whichever sites the draws hold (not ``task_cov``, which adds private variances)."""
    if "task_W" in samples:
        return icm.task_covariance(samples["task_W"], samples["task_v"])
    if "outputscale" in samples:
        F = samples["outputscale"].unsqueeze(-1) * samples["corr_chol"]
        return F @ F.transpose(-1, -2)
    if "lmc_coef" in samples:
        A = samples["lmc_coef"]  # (S, Q, T)
        return A.transpose(-1, -2) @ A
    if "shared_scale" in samples:  # the hierarchical GP: the shared function's variance, every pair
        return hierarchical.parts(samples, samples["noise"].shape[-1])[0]
    return samples["task_cov"]


def with_task_cov(samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``samples`` plus ``task_cov`` (S, T, T), the covariance of f at one input (B, plus
    diag(private_var) with private kernels), and ``task_corr`` (S, T, T)."""
    out = dict(samples)
    B = shared_task_cov(samples)
    if "private_var" in samples:
        B = B + torch.diag_embed(samples["private_var"])
    if "deviation_scale" in samples:  # each task's own deviation and constant
        own = samples["deviation_scale"].pow(2) + samples["offset_scale"].pow(2)
        B = B + own[..., None, None] * torch.eye(B.shape[-1], dtype=B.dtype, device=B.device)
    d = B.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).rsqrt()
    out["task_cov"] = B
    out["task_corr"] = d.unsqueeze(-1) * B * d.unsqueeze(-2)
    return out


def kernel_of_draw(kernel, samples: dict[str, torch.Tensor], s: int, like: torch.Tensor):
    """The kernel for ``icm.ard_kernel`` at draw ``s`` of flat ``samples``: ``kernel`` itself when
    it is a name; for a gpytorch kernel object, a callable (X1 (N1, D), X2 (N2, D), ls) -> (N1, N2)
    on a copy holding that draw's sites ``kernel.<name>``, on ``like``'s device and dtype (the
    object itself is left as it is)."""
    if isinstance(kernel, str):
        return kernel
    # .to first: copying float64 draws into a float32 kernel would round them
    k = copy.deepcopy(kernel).to(device=like.device, dtype=like.dtype)
    with torch.no_grad():
        for n, p in k.named_parameters():
            if f"kernel.{n}" not in samples:
                raise ValueError(f"the draws lack site 'kernel.{n}' of the kernel object; refit the model")
            p.copy_(samples[f"kernel.{n}"][s].reshape(p.shape))
    return lambda X1, X2, ls: k(X1, X2).to_dense()


def moments(model, train, new, samples: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-draw predictive mean and variance of y (noise included) at the rows of ``new``, each
    (S, N), from the training data and the flat draws alone (``model``, a MultitaskGP, gives the
    settings: kind, kernel, private)."""
    if model.kind == "lmc":
        from . import lmc

        return lmc.moments_lmc(samples, new, model.kernel)
    out_m, out_v = [], []
    dt, dev = train.dtype, train.device
    grid, cells = icm.training_layout(train.X, train.y, train.task, train.n_tasks, model.private)
    new = new.to(dev)
    for s in range(samples["lengthscale"].shape[0]):
        kfn = kernel_of_draw(model.kernel, samples, s, train.X)
        B, ls, noise, mean, priv, offset = _draw(model, samples, s, max(train.n_tasks, new.n_tasks), dev, dt)
        with torch.no_grad():
            if grid is not None and model.kind == "hierarchical":
                h = {k: samples[k][s].to(device=dev, dtype=dt) for k in hierarchical.SITE_DIMS}
                mu, var = hierarchical.grid_predict(hierarchical.grid_cache(grid.X, grid.Y, h, kfn), grid.X, new.X,
                                                    new.task, h, kfn)
            elif grid is not None:
                c = icm.kronecker_cache(grid.X, grid.Y, B, ls, noise, mean, kfn)
                mu, var = icm.kronecker_predict(c, grid.X, new.X, new.task, B, ls, mean, kfn)
            else:
                c = icm.hadamard_cache(cells.X, cells.y, cells.task, B, ls, noise, mean, kfn, cells.count, priv,
                                       offset)
                mu, var = icm.hadamard_predict(c, cells.X, cells.task, new.X, new.task, B, ls, mean, kfn, priv, offset)
        out_m.append(mu)
        out_v.append(var + noise[new.task])
    return torch.stack(out_m), torch.stack(out_v)


def _draw(model, samples: dict[str, torch.Tensor], s: int, n_tasks: int, dev, dt):
    """Draw s as the ICM's (B, lengthscale, noise, mean, private or None, offset or None) on
    ``dev``/``dt``; the hierarchical GP's for ``n_tasks`` tasks (new ones after the known). Draws
    holding ``mean_sd`` (type-II MAP on the Hadamard path) integrated the task means out: mean and
    offset are then their prior's location and variance (``integrated_means_prior``)."""
    get = lambda k: samples[k][s].to(device=dev, dtype=dt)  # noqa: E731
    if model.kind == "hierarchical":
        B, priv, mean, noise = hierarchical.parts({k: get(k) for k in hierarchical.SITE_DIMS}, n_tasks)
        return B, get("lengthscale"), noise, mean, priv, None
    B = shared_task_cov({k: v[s:s + 1] for k, v in samples.items()})[0].to(device=dev, dtype=dt)
    priv = (get("private_lengthscale"), get("private_var")) if model.private else None
    mean, offset = get("mean"), None
    if "mean_sd" in samples:
        fixed = integrated_means_prior(model, mean.shape[-1], mean)
        if fixed is None:
            raise ValueError("these draws integrated the task means out under a Normal mean_prior, but the model's "
                             f"mean_prior is {type(model.mean_prior).__name__}; predict with the model they were "
                             "fitted with")
        mean, offset = fixed
    return B, get("lengthscale"), get("noise"), mean, priv, offset


def draws_of_y(mu: torch.Tensor, var: torch.Tensor, generator: torch.Generator, draws_per_sample: int) -> torch.Tensor:
    """K = ``draws_per_sample`` draws of y ~ N(mu, var) per posterior draw: mu, var (S, N) ->
    (S * K, N), draw s giving rows s*K .. s*K+K-1 (noise drawn on the generator's device)."""
    S, N = mu.shape
    K = int(draws_per_sample)
    eps = torch.randn((S, K, N), generator=generator, dtype=mu.dtype, device=generator.device).to(mu.device)
    y = mu.unsqueeze(1) + var.sqrt().unsqueeze(1) * eps
    return y.reshape(S * K, N)


def log_density(y: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(y_n | mu, var) per row and draw: y (N,), mu and var (S, N) -> (S, N)."""
    y = y.to(mu)
    return -0.5 * ((y - mu) ** 2 / var + torch.log(2 * math.pi * var))


#: rows above which exact leave-one-out (one n x n inverse per draw) is refused
MAX_LOO_ROWS = 5000


def loo_log_density(model, data, samples: dict[str, torch.Tensor], by: str = "row") -> torch.Tensor:
    """Exact leave-one-out predictive log density of each row (``by="row"``, (S, N)) or of each
    task's rows together (``"task"``, (S, T)) given each draw's hyperparameters (not refitted):
    with P = K^-1 and a = P (y - mean), a row's is log N(a_i / P_ii; 0, 1 / P_ii) and a block's
    log N(P_bb^-1 a_b; 0, P_bb^-1) (Rasmussen & Williams 2006, sec. 5.4.2). Exact ICM only."""
    if model.kind == "lmc":
        raise NotImplementedError("exact leave-one-out needs the exact ICM; kind='lmc' is variational")
    if data.n_rows > MAX_LOO_ROWS:
        raise ValueError(f"exact GP leave-one-out inverts an n x n covariance per draw; {data.n_rows} rows is "
                         f"above {MAX_LOO_ROWS}")
    dt, dev = data.dtype, data.device
    X, y, task = data.X, data.y, data.task
    out = []
    for s in range(samples["lengthscale"].shape[0]):
        B, ls, noise, mean, priv, offset = _draw(model, samples, s, data.n_tasks, dev, dt)
        with torch.no_grad():
            K = icm._hadamard_cov(X, task, B, ls, noise, kernel_of_draw(model.kernel, samples, s, X), private=priv,
                                  offset=offset)
            P = torch.cholesky_inverse(icm.robust_cholesky(K, "ICM covariance (leave-one-out)"))
            a = P @ (y - mean[task])
            if by == "row":
                p = P.diagonal()
                out.append(-0.5 * (math.log(2 * math.pi) - p.log() + a * a / p))
                continue
            terms = []
            for t in range(data.n_tasks):
                idx = (task == t).nonzero().squeeze(-1)
                L = torch.linalg.cholesky(P[idx][:, idx])
                v = torch.cholesky_solve(a[idx].unsqueeze(-1), L).squeeze(-1)
                terms.append(-0.5 * len(idx) * math.log(2 * math.pi) + L.diagonal().log().sum() - 0.5 * (a[idx] @ v))
            out.append(torch.stack(terms))
    return torch.stack(out)
