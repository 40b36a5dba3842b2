"""How much optimisation noise an averaged SVI guide still carries (``svi.py``).

SVI ends at the mean of the guide's parameters over its annealing steps (Polyak-Ruppert
averaging). That mean is itself random: two seeds end at different guides. Under task
minibatches the difference is large, because a step's gradient sums a random B of T tasks: the
averaged guide's noise, in posterior sds, falls only as 1 / sqrt(the passes over the tasks that
were averaged: about 0.04 sd per value after 1,000 passes and 0.02-0.025 after 3,000 (2,000
and 5,000 planted tasks, a tenth of them a step).

The estimate is the batch-means one of MCMC: the averaging steps are cut into ``BLOCKS`` equal
blocks, each block's mean guide gives its median of every population site, and the standard
error of the overall mean is the spread of those medians over sqrt(BLOCKS). Divided by the
posterior sd of the fit's draws, it says how far a fit at another seed would likely land, in
the units the comparisons use. Measured against the spread of fits at other seeds: about right
where the blocks are long (10,000 averaging steps, blocks of 1,000: about 0.035 from a
recorded trajectory's blocks against 0.04 per value between two seeds; 2,000 planted tasks at
200 a step); low by up to 2x where they are short (1,000 steps, blocks of 100: 0.05-0.12
against 0.08-0.15 over six seeds; 400 tasks at 20 a step), because neighbouring blocks are then
correlated. It cannot see an offset that is set before the averaging and outlasts it (5,000
tasks at 500 a step, one seed: 0.13 sd from the full-batch fit while reporting 0.025). Read it
as a lower bound.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import torch
from pyro import poutine

__all__ = ["BLOCKS", "BlockMeans", "average_noise", "guide_medians", "record_noise"]

#: blocks of the averaging steps (batch means); 10 gives the standard error to within about 25%
BLOCKS = 10


class BlockMeans:
    """Running sums of the guide's parameters over ``BLOCKS`` blocks of ``length`` steps in all
    (sizes differing by at most one); ``add()`` once a step after the optimiser moved them."""

    def __init__(self, params: dict[str, torch.Tensor], length: int):
        self.length = max(int(length), BLOCKS)
        self.sums = {k: torch.zeros((BLOCKS, *p.shape), dtype=p.dtype, device=p.device) for k, p in params.items()}
        self.counts = torch.zeros(BLOCKS, dtype=torch.long)
        self.n = 0

    def add(self, params: dict[str, torch.Tensor]) -> None:
        """Add this step's parameters to their block (steps past ``length`` to the last)."""
        b = min(self.n * BLOCKS // self.length, BLOCKS - 1)
        with torch.no_grad():
            for k, p in params.items():
                self.sums[k][b] += p
        self.counts[b] += 1
        self.n += 1

    def means(self) -> dict[str, torch.Tensor] | None:
        """Each block's mean (BLOCKS, *shape) per parameter; None while a block has no step."""
        if bool((self.counts == 0).any()):
            return None
        return {k: s / self.counts.to(s).reshape(-1, *[1] * (s.dim() - 1)) for k, s in self.sums.items()}

    def state(self) -> dict[str, np.ndarray]:
        """Checkpoint arrays."""
        return {**{f"blocks.{k}": v.cpu().numpy() for k, v in self.sums.items()},
                "blocks_counts": self.counts.numpy(), "blocks_length": np.asarray(self.length)}

    @classmethod
    def load(cls, arrays: dict, params: dict[str, torch.Tensor]) -> BlockMeans | None:
        """From ``state()``'s arrays (None where the checkpoint has none)."""
        if "blocks_counts" not in arrays:
            return None
        out = cls(params, int(arrays["blocks_length"]))
        out.counts = torch.from_numpy(np.asarray(arrays["blocks_counts"])).long()
        out.n = int(out.counts.sum())
        out.sums = {k: torch.from_numpy(arrays[f"blocks.{k}"]).to(p) for k, p in params.items()}
        return out


def guide_medians(guide, blocks: dict[str, torch.Tensor], sites: list[str]) -> dict[str, torch.Tensor] | None:
    """site -> (BLOCKS, n) medians of a Pyro autoguide at each block's mean parameters
    (``BlockMeans.means()``), for the ``sites`` it has; the param store is left as it was.
    None where the guide has no median."""
    if not hasattr(guide, "median"):
        return None
    named = dict(pyro.get_param_store().named_parameters())
    kept = {k: p.detach().clone() for k, p in named.items() if k in blocks}
    medians = []
    try:
        with torch.no_grad(), poutine.block():
            for b in range(BLOCKS):
                for k in kept:
                    named[k].copy_(blocks[k][b])
                m = guide.median()
                medians.append({s: m[s].detach().reshape(-1).cpu() for s in sites if s in m})
    finally:
        with torch.no_grad():
            for k, p in kept.items():
                named[k].copy_(p)
    return {s: torch.stack([m[s] for m in medians]) for s in medians[0]}


def average_noise(medians: dict[str, torch.Tensor] | None, draws: dict[str, torch.Tensor]
                  ) -> tuple[float, str] | None:
    """(worst noise in posterior sds, its site): the standard error of the averaged guide's
    median, from ``medians`` (site -> (BLOCKS, ...) at each block's mean guide), over the sd of
    ``draws`` (site -> draws with any leading dims). None where no site varies."""
    worst = None
    for s, m in (medians or {}).items():
        m = m.reshape(BLOCKS, -1).double().cpu()
        se = m.std(0) / math.sqrt(BLOCKS)
        if s not in draws or draws[s].numel() % se.numel():
            continue
        sd = draws[s].reshape(-1, se.numel()).double().cpu().std(0)
        ok = sd > 0
        if not bool(ok.any()):
            continue
        z = float((se[ok] / sd[ok]).max())
        if worst is None or z > worst[0]:
            worst = (z, s)
    return worst


def record_noise(info: dict, medians: dict[str, torch.Tensor] | None, draws: dict[str, torch.Tensor]) -> None:
    """Put ``average_noise``'s answer in a fit's ``info`` (``average_noise``, ``average_noise_site``),
    where there is one."""
    found = average_noise(medians, draws)
    if found is not None:
        info.update(average_noise=found[0], average_noise_site=found[1])
