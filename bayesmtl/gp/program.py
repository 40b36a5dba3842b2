"""The exact ICM's Pyro program (``nuts``, ``svi``): hyperparameter priors and the exact marginal
likelihood as one factor, on the Kronecker or the Hadamard path (``icm.training_layout``)."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch

from ..priors.base import move_distribution
from . import hierarchical, icm

__all__ = ["icm_program"]


def icm_program(model, data, subsample_size: int | None = None, observe: bool = True) -> Callable[[], None]:
    """The Pyro program (no arguments) of ``model``, a ``MultitaskGP`` whose settings (priors,
    rank, kernel, ``private``) it only reads, with ``data`` bound in.

    Sites (T tasks, D input features, r = rank): ``lengthscale`` (D,); full rank (r >= T):
    ``outputscale`` (T,) and ``corr_chol`` (T, T), B = diag(s) C diag(s); else ``task_W`` (T, r)
    and ``task_v`` (T,), B = W W^T + diag(v); with private kernels ``private_lengthscale`` (T, D)
    and ``private_var`` (T,); ``noise_level`` (), ``noise`` (T,) ~ LogNormal(log noise_level,
    noise_spread), ``mean`` (T,); the factor ``gp_mll`` (unless
    ``observe=False``: priors only). ``kind="hierarchical"``: the sites of
    ``bayesmtl.gp.hierarchical``, on the Hadamard path. Broadcasts over a leading batch dim (an
    outer plate at dim -2).
    """
    if model.kind == "lmc":
        raise NotImplementedError("kind='lmc' is fitted by variational inference: use method='map'")
    if not isinstance(model.kernel, str):
        raise NotImplementedError("a gpytorch kernel object is supported with method='map' only; "
                                  "pass kernel='rbf'/'matern52'/... for nuts or svi")
    if subsample_size is not None:
        raise ValueError("the exact GP marginal likelihood does not factorise over rows: "
                         "no minibatches (batch_size) for kind='icm'; use kind='lmc' for large data")
    T, D = data.n_tasks, data.n_features
    like = torch.zeros((), dtype=data.dtype, device=data.device)
    full = model.full_rank(data)
    private = model.private
    grid, cells = icm.training_layout(data.X, data.y, data.task, T, model.private)
    kind = model.kernel
    mv = lambda d: move_distribution(d, like)  # noqa: E731
    eta = model.task_corr_eta

    def hierarchical_program() -> None:
        h = hierarchical.sample_sites(model, T, D, mv)
        if observe:
            pyro.factor("gp_mll", hierarchical.mll(grid, cells, h, kind))

    if model.kind == "hierarchical":
        return hierarchical_program

    def program() -> None:
        ls = pyro.sample("lengthscale", mv(model.lengthscale_prior).expand([D]).to_event(1))
        if full:
            s = pyro.sample("outputscale", mv(model.outputscale_prior).expand([T]).to_event(1))
            Lc = pyro.sample("corr_chol", dist.LKJCholesky(T, like.new_tensor(eta)))
            F = s.unsqueeze(-1) * Lc
            B = F @ F.transpose(-1, -2)
        else:
            W = pyro.sample("task_W", mv(model.w_prior).expand([T, model.rank_for(data)]).to_event(2))
            v = pyro.sample("task_v", mv(model.v_prior).expand([T]).to_event(1))
            B = icm.task_covariance(W, v)
        priv = None
        if private:
            priv = (pyro.sample("private_lengthscale", mv(model.lengthscale_prior).expand([T, D]).to_event(2)),
                    pyro.sample("private_var", mv(model.v_prior).expand([T]).to_event(1)))
        # the tasks' noise variances spread about a shared level (see MultitaskGP's noise_spread)
        level = pyro.sample("noise_level", mv(model.noise_prior))
        noise = pyro.sample("noise", dist.LogNormal(level.log().unsqueeze(-1), like.new_tensor(model.spread_for()))
                            .expand(level.shape + (T,)).to_event(1))
        mean = pyro.sample("mean", mv(model.mean_prior).expand([T]).to_event(1))
        if not observe:
            return
        if grid is not None:
            mll = icm.kronecker_mll(grid.X, grid.Y, B, ls, noise, mean, kind)
        else:
            mll = icm.hadamard_mll(cells.X, cells.y, cells.task, B, ls, noise, mean, kind, cells.count,
                                   cells.ss, priv)
        pyro.factor("gp_mll", mll)

    return program
