"""Data-parallel SVI on ``torch.distributed``: started with ``torchrun``, each process holds a
shard of the tasks and the same guide; gradients are averaged over processes every step.

Process r of W keeps the rows of tasks t with t % W == r and runs the model's program on them
with the likelihood scaled by W (observed sites only; priors and guide as they are). The
average over processes of W L_r + log prior - log q is then exactly the full data's ELBO term,
and so is the average of the gradients: every process starts from the same parameters and the
same seed, draws the same noise and applies the same averaged gradient, so the guides stay
identical without being sent anywhere. A sum over tasks splits this way for the plain program
and for a collapsed one (each task's marginal likelihood is its own term). The importance
ratios after the fit are averaged the same way, so the PSIS check sees the full data.

``WORLD_SIZE`` > 1 in the environment (set by torchrun) turns this on; the process group is
made from torchrun's environment (gloo on a CPU, NCCL on CUDA) unless the caller made one.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist
from pyro.poutine.messenger import Messenger

__all__ = ["World", "world", "shard", "ScaleObserved"]


class World:
    """This process's place: ``rank`` of ``size`` processes talking over ``backend``;
    ``seconds`` spent in collectives so far (the communication share of a fit)."""

    def __init__(self, rank: int, size: int, backend: str):
        self.rank, self.size, self.backend = rank, size, backend
        self.seconds, self.calls = 0.0, 0

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of ``t`` over the processes (every process gets it)."""
        t0 = time.perf_counter()
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return t / self.size

    def info(self) -> dict:
        """What ``run.json`` records under ``distributed``."""
        return {"world_size": self.size, "backend": self.backend, "rank": self.rank,
                "all_reduce_calls": self.calls, "seconds_all_reduce": round(self.seconds, 3)}


def world(device: str | torch.device = "cpu") -> World | None:
    """The running ``torchrun`` world (the process group made here if the caller has not), or
    None outside one (no ``WORLD_SIZE``, or a world of one process)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return None
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE is set but this torch has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return World(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))


def check_same_data(w: World, digest: str, n_rows: int, n_tasks: int) -> None:
    """Raise in every process when the processes were given different data."""
    seen: list = [None] * w.size
    dist.all_gather_object(seen, (digest, n_rows, n_tasks))
    bad = [r for r, s in enumerate(seen) if s != seen[0]]
    if bad:
        d0, n0, t0 = seen[0]
        d1, n1, t1 = seen[bad[0]]
        raise ValueError(f"the processes disagree on the data: rank {bad[0]} has {n1} rows of {t1} tasks (digest "
                         f"{d1[:12]}), rank 0 {n0} rows of {t0} tasks (digest {d0[:12]}); give every process "
                         "the same data")


class ScaleObserved(Messenger):
    """Multiply the log density of observed sites (the likelihood) by ``factor``."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"]:
            msg["scale"] = self.factor * msg["scale"]


def _scaled(program, factor: float):
    def scaled_program(*args, **kwargs):
        fn = program(*args, **kwargs)

        def run(*a, **k):
            with ScaleObserved(factor):
                return fn(*a, **k)
        return run
    return scaled_program


def shard(target, w: World):
    """``target`` with its program on this process's tasks (t % size == rank), the likelihood
    scaled by the world's size; written-out densities are dropped (they see every row)."""
    data = target.data
    if data is None or target.rebuild is None:
        raise ValueError(f"the {target.path!r} form of this model cannot be split over processes")
    rows = np.flatnonzero(data.task.cpu().numpy() % w.size == w.rank)
    part = target.rebuild(data.subset(rows))
    return replace(target, program=_scaled(part.program, w.size), log_density=None, log_density_grad=None)
