"""Optimisers for SVI (``svi.py``).

``LazyClippedAdam`` is Pyro's ``ClippedAdam`` (Adam with gradients clamped to ``clip_norm`` and
the learning rate times ``lrd`` each step) except that an entry whose gradient is exactly zero
this step is left alone: its moments do not decay and it does not move. Under task minibatches
the per-task variational parameters of the tasks outside the batch get a zero gradient; plain
Adam would keep moving them on stale momentum and shrink their next real step (the second
moment decays less than the first between visits), so a task visited every 100 steps barely
learned. Entries that always have a gradient (the population's) get Adam's steps exactly.
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import Optimizer

__all__ = ["LazyClippedAdam", "CLIP_NORM"]

#: ClippedAdam's elementwise gradient clip (Pyro's default), shared by every SVI engine here
CLIP_NORM = 10.0


class LazyClippedAdam(Optimizer):
    """Adam, clipped and decaying like ``pyro.optim.ClippedAdam``, lazy per entry (see the module)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 clip_norm: float = CLIP_NORM, lrd: float = 1.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, clip_norm=clip_norm, lrd=lrd))

    @torch.no_grad()
    def step(self, closure=None):
        """One step over the entries with a nonzero gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            group["lr"] *= group["lrd"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.clamp(-group["clip_norm"], group["clip_norm"])
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros_like(p)  # per entry: visits so far
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["beta1_t"] = torch.ones_like(p)  # beta ** visits, kept by products: no pow
                    state["beta2_t"] = torch.ones_like(p)  # over every entry each step
                seen = grad != 0
                visit = seen.to(p.dtype)
                state["step"].add_(visit)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                b1 = state["beta1_t"].mul_(visit * (beta1 - 1) + 1)  # in p's dtype: beta1 where seen, else 1
                b2 = state["beta2_t"].mul_(visit * (beta2 - 1) + 1)
                m.copy_(torch.where(seen, beta1 * m + (1 - beta1) * grad, m))
                v.copy_(torch.where(seen, beta2 * v + (1 - beta2) * grad * grad, v))
                size = group["lr"] * torch.sqrt(1 - b2) / (1 - b1).clamp(min=1 - beta1)
                p.sub_(torch.where(seen, size * m / (v.sqrt() + group["eps"]), 0.0))
        return loss
