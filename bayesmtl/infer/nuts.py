"""Batched NUTS: all chains advance in lock-step as a batch dimension (``method="nuts"``).

This module holds the NUTS kernel and its back end; the helpers it is built from are in
``hmc_util``, its warmup in ``adapt.window_adaptation`` and the loop around it in ``driver``.

- Multinomial NUTS (Betancourt 2017) with iterative tree building (NumPyro's checkpoint scheme
  for the U-turn checks inside a subtree) and Stan's extra checks across the halves of every
  merged subtree. Chains whose trajectory has stopped keep computing but their state is masked,
  so one doubling costs the same for every chain and a transition costs the largest tree among
  the chains.
- The tree is built one leaf at a time (``leaf``), and a subtree is merged into the tree
  (``merge``) where it ends. Under ``compile="inductor"`` a whole leaf (leapfrog, gradient,
  U-turn checks against every checkpoint slot through masks, and the merge for the chains whose
  subtree ends there) is one traced graph over the trajectory packed into three tensors, first
  compiled as one call per leaf (``CompiledLeaf``). On a CPU, checked every ``TREE_CHECK``
  iterations, where the rest of the run pays for a second compile (``_tree_pays``), the whole transition
  becomes one compiled call (``CompiledTree``): the leaves run in a ``while_loop`` inside
  inductor's C++ wrapper, with no Python between them, 1.6-2x faster per leapfrog. Op by op
  (written-out gradients, ``compile="jit"``) a leaf touches only the slots it reads and the
  merge runs once per doubling. All draw the same random numbers: the same draws.
- Per-chain step size by dual averaging and a per-chain diagonal (or dense) mass matrix from
  Stan-style windows (75 / 25, 50, 100, ... / 50 iterations).
- Divergence when the energy error exceeds ``max_delta_energy`` (1000) or is not finite.
- Draws are copied to host memory in chunks; the progress bar shows draws/s and divergences.

Options: ``options.NUTS`` (``bm.infer.NUTS(target_accept=0.9, ...)`` or the same keywords to
``fit``): ``target_accept`` (0.8), ``max_tree_depth`` (10), ``dense_mass`` (False: a diagonal
inverse mass matrix per chain; True: dense, (C, P, P), worth it for strongly correlated
posteriors of modest dimension), ``metric`` ("fisher" or "stan", see ``run_nuts``), and the
options of every batched sampler: ``compile`` ("auto": "inductor" for runs of at least
``driver.INDUCTOR_FROM`` iterations, else "jit"; "jit": the potential is traced once with
``torch.jit.trace``, 1.5-2.5x faster per evaluation than plain tracing on small models;
"inductor": a whole leaf, potential and gradient included, is traced once into one aten graph
(``make_fx``) and compiled by inductor, on a CPU inside a compiled loop over the whole
transition (``driver.Gradient.compile_loop``), else one call per leaf (``Gradient.compile``),
for a one-off compile of about 10 s, falling back to op by op with a warning where compiling
fails (``info["compiled"]``: "whole transition", "one leaf" or "nothing"); None: plain Pyro
tracing on every call; none applies where the target has a written-out gradient,
``info["gradient"]``), ``dtype`` ("float64" or "float32", plain path only),
``threads`` (torch threads on CPU, default 1), ``chunk`` (draws per host copy, 100),
``init_radius`` (2: initial points uniform in (-r, r) unconstrained), ``max_delta_energy``
(1000), ``processes`` (1: all chains in one batch; k > 1 on a CPU: k chain groups in k forked
worker processes, one core each, see ``groups.py``; group 0 keeps the seed, so results depend
on the seed and k).
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from typing import NamedTuple

import numpy as np
import torch

from .adapt import window_adaptation
from .base import Draws, Settings
from .checkpoint import Checkpoint, flatten, restore
from .driver import DrawBuffer, progress_bar, run_batched, tick, timings
from .hmc_util import HMCState, draw_momentum, is_turning, kinetic, leapfrog
from .options import NUTS

__all__ = ["BatchedNUTS", "Trajectory", "StepInfo", "begin", "leaf", "merge", "leaf_masks", "nuts_step", "run_nuts"]


# ---------------------------------------------------------------------- states
class Trajectory(NamedTuple):
    """One NUTS transition being built, per chain: the tree so far, the subtree being added to it
    and the U-turn checkpoints of that subtree. A point is a (C, 3, P) stack of z, r, g."""

    left: torch.Tensor        # (C, 3, P) the tree's two ends
    right: torch.Tensor
    prop: torch.Tensor        # (C, 3, P) the tree's proposal, and its potential (C,)
    U_prop: torch.Tensor
    log_w: torch.Tensor       # (C,) log of the tree's summed weights exp(-H)
    r_sum: torch.Tensor       # (C, P) the tree's momentum sum
    forward: torch.Tensor     # (C,) bool: the subtree grows to the right
    s_first: torch.Tensor     # (C, 3, P) the subtree's first leaf, its current end, its proposal
    s_end: torch.Tensor
    s_prop: torch.Tensor
    s_U: torch.Tensor
    s_log_w: torch.Tensor
    s_r_sum: torch.Tensor
    r_ck: torch.Tensor        # (C, D, P) momentum and momentum sum at the first leaf of each open sub-subtree
    rs_ck: torch.Tensor
    r_end: torch.Tensor       # (C, D, P) the same at the last leaf of each completed left half, by level
    rs_end: torch.Tensor
    building: torch.Tensor    # (C,) bool: still extending the subtree
    active: torch.Tensor      # (C,) bool: the transition goes on
    diverging: torch.Tensor   # (C,) bool
    s_stop: torch.Tensor      # (C,) bool: the subtree turned or diverged (op by op: merged after the doubling)
    s_div: torch.Tensor       # (C,) bool: it diverged
    sum_acc: torch.Tensor     # (C,) summed acceptance probabilities of the leaves
    n_steps: torch.Tensor     # (C,) leapfrog steps
    depth: torch.Tensor       # (C,) doublings
    H0: torch.Tensor          # (C,) the energy at the start


class StepInfo(NamedTuple):
    """Per-chain statistics of one transition, all shape (C,)."""

    accept: torch.Tensor
    n_steps: torch.Tensor
    depth: torch.Tensor
    diverging: torch.Tensor
    energy: torch.Tensor


# ---------------------------------------------------------------------- the kernel
def _ckpt_idxs(n: int) -> tuple[int, int]:
    """Checkpoints to compare leaf n with (NumPyro's ``_leaf_idx_to_ckpt_idxs``)."""
    idx_max = bin(n >> 1).count("1")
    k, tail = n, 0
    while k & 1:
        k >>= 1
        tail += 1
    return idx_max - tail + 1, idx_max


def leaf_masks(n: int, slots: int) -> list[list[bool]]:
    """Which checkpoint slots leaf n of a subtree reads and writes, as four masks over ``slots``:
    U-turn checks against the first leaves of the sub-subtrees it ends (even n > 0: the left
    half just ended plus this leaf), checks against the left halves' last leaves (odd n), and
    the slots where it is stored as a first leaf (even n) or as a left half's last leaf (odd n)."""
    check, ends, w_ck, w_end = ([False] * slots for _ in range(4))
    lo, hi = _ckpt_idxs(n)
    if n % 2 == 0:
        if n > 0:
            check[_ckpt_idxs(n - 1)[0]] = True
        w_ck[hi] = True
    else:
        for s in range(lo, hi + 1):
            check[s] = True
        k = hi - lo + 1
        for s in range(1, k):
            ends[s] = True
        if k < slots:
            w_end[k] = True
    return [check, ends, w_ck, w_end]


def begin(state: HMCState, r: torch.Tensor, inv_mass: torch.Tensor, forward: torch.Tensor,
          slots: int) -> Trajectory:
    """A transition from ``state`` with momentum r (C, P): the tree is the one point, and the
    first subtree (one leaf) grows in direction ``forward`` (C,) bool."""
    z, U, g = state
    C, P = z.shape
    pt = torch.stack((z, r, g), 1)
    false = torch.zeros(C, dtype=torch.bool, device=z.device)
    zero = torch.zeros(C, dtype=torch.long, device=z.device)
    ck = [z.new_zeros(C, max(slots, 1), P) for _ in range(4)]
    return Trajectory(pt, pt, pt, U, torch.zeros_like(U), r, forward, pt, pt, pt, U,
                      torch.full_like(U, -math.inf), torch.zeros_like(r), *ck,
                      ~false, ~false, false, false, false, torch.zeros_like(U), zero, zero, U + kinetic(r, inv_mass))


def leaf(vg, T: Trajectory, eps: torch.Tensor, inv_mass: torch.Tensor, u: torch.Tensor, masks: torch.Tensor | int,
         first: torch.Tensor, last: torch.Tensor, depth: torch.Tensor, max_delta: float = 1000.0,
         traced: bool = False, um: torch.Tensor | None = None) -> Trajectory:
    """Add one leaf to every building chain's subtree; where a chain's subtree ends here (it
    turned, diverged, or this is its last leaf), merge it into the tree and, where the
    transition goes on, start the next subtree.

    eps (C,), u (C,) uniforms, masks: (4, D) from ``leaf_masks`` when ``traced``, else the
    leaf's index n in its subtree; first / last: 0-dim bool, this leaf is the subtree's first /
    last; depth: 0-dim, the tree depth once this subtree is merged. ``traced``: no branching on
    values (one graph serves every leaf of every subtree), and the merge (``merge``, with the
    doubling's uniforms ``um`` (C, 2)) runs here for the chains whose subtree ends at this leaf.
    Op by op, only the checkpoint slots this leaf reads are touched and ``nuts_step`` merges
    once per doubling.
    """
    C, _, P = T.left.shape
    b = T.building
    e = torch.where(T.forward, eps, -eps).unsqueeze(-1)
    z, r, g = T.s_end.unbind(1)
    z1, r1, U1, g1 = leapfrog(vg, z, r, g, e, inv_mass)
    pt = torch.stack((z1, r1, g1), 1)
    b3 = b.view(C, 1, 1)
    delta = torch.nan_to_num(U1 + kinetic(r1, inv_mass) - T.H0, nan=math.inf, posinf=math.inf)
    s_end = torch.where(b3, pt, T.s_end)
    s_first = torch.where(b3 & first, pt, T.s_first)
    sum_acc = torch.addcmul(T.sum_acc, b, torch.exp(-delta).clamp(max=1.0))
    n_steps = T.n_steps + b
    new_log_w = torch.logaddexp(T.s_log_w, -delta)
    take = b & (u.log() < -delta - new_log_w)
    s_prop = torch.where(take.view(C, 1, 1), pt, T.s_prop)
    s_U = torch.where(take, U1, T.s_U)
    s_log_w = torch.where(b, new_log_w, T.s_log_w)
    s_r_sum = torch.addcmul(T.s_r_sum, b.view(C, 1), r1)
    # U-turns of the sub-subtrees this leaf ends, plus (Stan's extra checks) each left half with
    # the first leaf of its right half and each right half with the last leaf of its left half
    if traced:
        turn, r_ck, rs_ck, r_end, rs_end = _checks_masked(T, r1, s_r_sum, inv_mass, masks)
    else:
        turn, r_ck, rs_ck, r_end, rs_end = _checks_indexed(T, r1, s_r_sum, inv_mass, masks)
    div = b & (delta > max_delta)
    stop = div | (b & turn)
    T = T._replace(s_first=s_first, s_end=s_end, s_prop=s_prop, s_U=s_U, s_log_w=s_log_w, s_r_sum=s_r_sum,
                   r_ck=r_ck, rs_ck=rs_ck, r_end=r_end, rs_end=rs_end, building=b & ~stop, sum_acc=sum_acc,
                   n_steps=n_steps, s_stop=T.s_stop | stop, s_div=T.s_div | div)
    if not traced:  # nuts_step merges once, after the doubling
        return T
    return merge(T, b & (stop | last), um, inv_mass, depth)


def _checks_masked(T: Trajectory, r1, s_r_sum, inv_mass, masks: torch.Tensor):
    """The U-turn checks of one leaf and the checkpoints after it, from ``leaf_masks`` (4, D):
    every slot computed, the masks pick (no branching: one graph for every leaf)."""
    w_ck, w_end = masks[2].view(1, -1, 1), masks[3].view(1, -1, 1)
    r1_ = r1.unsqueeze(1)
    rs = s_r_sum.unsqueeze(1)
    turn = ((is_turning(inv_mass, T.r_ck, r1_, rs - T.rs_ck + T.r_ck) & masks[0]).any(-1)
            | (is_turning(inv_mass, T.r_end, r1_, rs - T.rs_end) & masks[1]).any(-1))
    return (turn, torch.where(w_ck, r1_, T.r_ck), torch.where(w_ck, rs, T.rs_ck), torch.where(w_end, r1_, T.r_end),
            torch.where(w_end, T.s_r_sum.unsqueeze(1), T.rs_end))


def _checks_indexed(T: Trajectory, r1, s_r_sum, inv_mass, n: int):
    """``_checks_masked`` op by op for leaf index n: only the slots leaf n reads, and its
    checkpoints written in place (the arrays belong to this transition alone)."""
    lo, hi = _ckpt_idxs(n)
    turn = torch.zeros_like(T.building)
    if n % 2 == 0:
        if n > 0:
            j = _ckpt_idxs(n - 1)[0]
            rc = T.r_ck[:, j]
            turn = is_turning(inv_mass, rc, r1, s_r_sum - T.rs_ck[:, j] + rc)
        T.r_ck[:, hi] = r1
        T.rs_ck[:, hi] = s_r_sum
    else:
        rc = T.r_ck[:, lo:hi + 1]
        r1_, rs = r1.unsqueeze(1), s_r_sum.unsqueeze(1)
        turn = is_turning(inv_mass, rc, r1_, rs - T.rs_ck[:, lo:hi + 1] + rc).any(-1)
        k = hi - lo + 1
        if k >= 2:
            turn = turn | is_turning(inv_mass, T.r_end[:, 1:k], r1_, rs - T.rs_end[:, 1:k]).any(-1)
        if k < T.r_end.shape[1]:
            T.r_end[:, k] = r1
            T.rs_end[:, k] = T.s_r_sum
    return turn, T.r_ck, T.rs_ck, T.r_end, T.rs_end


@functools.lru_cache(maxsize=4096)
def _slots(n: int, slots: int) -> list[list[bool]]:
    """``leaf_masks``, remembered."""
    return leaf_masks(n, slots)


def merge(T: Trajectory, done: torch.Tensor, u: torch.Tensor, inv_mass: torch.Tensor,
          depth: torch.Tensor) -> Trajectory:
    """Merge the subtree into the tree where ``done`` (C,); start the next subtree where the
    transition goes on (no U-turn or divergence in it, none across the merged tree).
    u (C, 2) uniforms, depth: 0-dim, the tree's depth after the merge."""
    C = done.shape[0]
    stop, div = T.s_stop, T.s_div
    fwd = T.forward.view(C, 1, 1)
    start = torch.where(fwd, T.right, T.left)       # where the subtree grew from
    far = torch.where(fwd, T.left, T.right)         # the tree's other end
    d3 = done.view(C, 1, 1)
    left = torch.where(d3 & ~fwd, T.s_end, T.left)
    right = torch.where(d3 & fwd, T.s_end, T.right)
    r_sum = T.r_sum + T.s_r_sum
    # multinomial sampling biased towards the new subtree; none from a subtree that stopped
    prob = torch.where(stop, 0.0, torch.exp(torch.clamp(T.s_log_w - T.log_w, max=0.0)))
    take = done & (u[:, 0] < prob)
    r0, rf, s_r1, s_rn = start[:, 1], far[:, 1], T.s_first[:, 1], T.s_end[:, 1]
    turn = (is_turning(inv_mass, left[:, 1], right[:, 1], r_sum)
            | is_turning(inv_mass, rf, s_r1, T.r_sum + s_r1)
            | is_turning(inv_mass, r0, s_rn, T.s_r_sum + r0))
    go_on = done & ~stop & ~turn
    forward = torch.where(go_on, u[:, 1] < 0.5, T.forward)
    next_start = torch.where(forward.view(C, 1, 1), right, left)
    g3 = go_on.view(C, 1, 1)
    return T._replace(
        left=left, right=right,
        prop=torch.where(take.view(C, 1, 1), T.s_prop, T.prop), U_prop=torch.where(take, T.s_U, T.U_prop),
        log_w=torch.where(done, torch.logaddexp(T.log_w, T.s_log_w), T.log_w),
        r_sum=torch.where(done.view(C, 1), r_sum, T.r_sum), forward=forward,
        s_end=torch.where(g3, next_start, T.s_end),
        s_log_w=torch.where(go_on, -math.inf, T.s_log_w),
        s_r_sum=torch.where(go_on.view(C, 1), 0.0, T.s_r_sum),
        building=torch.where(done, go_on, T.building), active=torch.where(done, go_on, T.active),
        s_stop=T.s_stop & ~done, s_div=T.s_div & ~done,
        diverging=T.diverging | (done & div), depth=torch.where(done, depth, T.depth))


class Leaves(NamedTuple):
    """The per-leaf inputs that do not change between transitions, as tensors made once: the
    flags False / True and the depths 0..max_depth, and for the compiled leaf, per doubling d and
    leaf n, all of a leaf's inputs in one int64 vector ``codes[d][n]``: its four ``leaf_masks``,
    first, last, d + 1."""

    flags: list
    depths: list
    codes: list


@functools.lru_cache(maxsize=8)
def leaves(max_depth: int, device: torch.device) -> Leaves:
    """``Leaves`` for trees of up to ``max_depth`` doublings on ``device``."""
    slots = max(max_depth, 1)
    codes = [[torch.tensor([*itertools.chain(*_slots(n, slots)), n == 0, n == 2 ** d - 1, d + 1], device=device)
              for n in range(2 ** d)] for d in range(max_depth)]
    return Leaves([torch.tensor(v, device=device) for v in (False, True)],
                  [torch.tensor(d, device=device) for d in range(max_depth + 1)], codes)


class Packing:
    """A trajectory as three tensors, (C, k) each: its floating, bool and int64 fields flattened and
    side by side. A compiled leaf with three state inputs and outputs instead of 24 spends far
    less per call outside its kernel."""

    def __init__(self, T: Trajectory):
        self.C = T.left.shape[0]
        self.groups = [[(i, x.shape[1:]) for i, x in enumerate(T) if kind(x)]
                       for kind in (torch.Tensor.is_floating_point, lambda x: x.dtype == torch.bool,
                                    lambda x: x.dtype == torch.int64)]
        assert sum(map(len, self.groups)) == len(T)
        self.sizes = [[math.prod(s) for _, s in g] for g in self.groups]
        bools = [i for i, _ in self.groups[1]]
        self.building, self.active = bools.index(Trajectory._fields.index("building")), \
            bools.index(Trajectory._fields.index("active"))

    def pack(self, T: Trajectory) -> tuple[torch.Tensor, ...]:
        """The trajectory as (floating, bool, int64) tensors, (C, k) each."""
        return tuple(torch.cat([T[i].reshape(self.C, -1) for i, _ in g], 1) for g in self.groups)

    def unpack(self, parts) -> Trajectory:
        """The trajectory back from ``pack``'s tensors (views into them)."""
        out: list = [None] * len(Trajectory._fields)
        for g, sizes, x in zip(self.groups, self.sizes, parts, strict=True):
            for (i, shape), v in zip(g, x.split(sizes, 1), strict=True):
                out[i] = v.reshape((self.C, *shape))
        return Trajectory._make(out)


class CompiledLeaf:
    """``leaf`` over a packed trajectory as one compiled call (``Gradient.compile``) for the
    shapes of the example: ``step(parts, eps, inv_mass, u, um, code) -> parts`` with ``Packing``'s
    parts, the leaf's and the doubling's uniforms and a ``Leaves.codes`` entry."""

    def __init__(self, vg, T: Trajectory, eps: torch.Tensor, inv_mass: torch.Tensor, u: torch.Tensor,
                 um: torch.Tensor, code: torch.Tensor, max_delta: float):
        self.packing = p = Packing(T)
        D = T.r_ck.shape[1]

        def fn(vg, f, b, i, eps, inv_mass, u, um, code):
            masks, flags = (code[:4 * D] != 0).view(4, D), code[4 * D:]
            T = leaf(vg, p.unpack((f, b, i)), eps, inv_mass, u, masks, flags[0] != 0, flags[1] != 0, flags[2],
                     max_delta, traced=True, um=um)
            return p.pack(T)
        self.fn = vg.compile(fn, *p.pack(T), eps, inv_mass, u, um, code)

    def __call__(self, parts, eps, inv_mass, u, um, code):
        return self.fn(*parts, eps, inv_mass, u, um, code)

    def building(self, parts) -> torch.Tensor:
        """The packed trajectory's ``building`` (C,)."""
        return parts[1][:, self.packing.building]

    def active(self, parts) -> torch.Tensor:
        """The packed trajectory's ``active`` (C,)."""
        return parts[1][:, self.packing.active]


def _example(state: HMCState, inv_mass: torch.Tensor, max_depth: int) -> Trajectory:
    """A trajectory to compile a step for: ``begin`` with a fixed momentum (no global random state)."""
    z = state.z
    gen = torch.Generator(device=z.device).manual_seed(0)
    r = torch.randn(z.shape, generator=gen, device=z.device, dtype=z.dtype)
    return begin(state, r, inv_mass, torch.ones(z.shape[0], dtype=torch.bool, device=z.device), max_depth)


def compiled_leaf(vg, state: HMCState, eps: torch.Tensor, inv_mass: torch.Tensor, max_depth: int,
                  max_delta: float) -> CompiledLeaf | None:
    """``leaf`` as one compiled call for these shapes (``nuts_step``'s ``step``), or None where
    ``vg`` compiles nothing (``Gradient.mode`` other than "inductor") or compiling failed."""
    if getattr(vg, "mode", None) != "inductor":
        return None
    C = state.z.shape[0]
    T = _example(state, inv_mass, max_depth)
    u = torch.full((C,), 0.5, dtype=state.z.dtype, device=state.z.device)
    step = CompiledLeaf(vg, T, eps, inv_mass, u, torch.full((C, 2), 0.5, dtype=state.z.dtype, device=state.z.device),
                        leaves(max_depth, state.z.device).codes[0][0], max_delta)
    return step if vg.mode == "inductor" else None


def _row(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """x[k] for a 0-dim index tensor, without reading k on the host (traceable)."""
    return x.index_select(0, k.view(1)).squeeze(0)


class CompiledTree:
    """A whole transition as one compiled call: ``begin``, then ``leaf`` (with its merges) in a
    loop compiled with it (``Gradient.compile_loop``: on a CPU, inductor's C++ wrapper runs the
    loop, so no Python runs between leaves), each leaf's inputs read from tables by its doubling
    d and index n. ``tree(z, U, g, r, forward, eps, inv_mass, u, um) -> (HMCState, StepInfo)``
    with the uniforms of every leaf ``u`` (2^max_depth - 1, C) and merge ``um`` (max_depth, C, 2),
    drawn as ``nuts_step`` draws them: the transition it would make leaf by leaf."""

    def __init__(self, vg, state: HMCState, eps: torch.Tensor, inv_mass: torch.Tensor, max_depth: int,
                 max_delta: float):
        z = state.z
        C = z.shape[0]
        T = _example(state, inv_mass, max_depth)
        self.packing = p = Packing(T)
        self.codes = torch.stack([c for row in leaves(max_depth, z.device).codes for c in row])
        D = T.r_ck.shape[1]

        def body(vg, d, n, f, b, i, eps, inv_mass, u, um, codes):
            size = torch.bitwise_left_shift(torch.ones_like(d), d)
            k = size - 1 + n
            code = _row(codes, k)
            masks, flags = (code[:4 * D] != 0).view(4, D), code[4 * D:]
            T = leaf(vg, p.unpack((f, b, i)), eps, inv_mass, _row(u, k), masks, flags[0] != 0, flags[1] != 0,
                     flags[2], max_delta, traced=True, um=_row(um, d))
            f, b, i = p.pack(T)
            ends = (n == size - 1) | ~b[:, p.building].any()  # as nuts_step: a doubling ends early
            return d + ends.long(), torch.where(ends, torch.zeros_like(n), n + 1), f, b, i

        def cond(d, n, f, b, i, eps, inv_mass, u, um, codes):
            return (d < max_depth) & b[:, p.active].any()

        def outer(loop, z, U, g, r, forward, eps, inv_mass, u, um, codes):
            T = begin(HMCState(z, U, g), r, inv_mass, forward, max_depth)
            zero = torch.zeros((), dtype=torch.int64, device=z.device)
            _, _, *parts = loop((zero, zero.clone(), *p.pack(T)), (eps, inv_mass, u, um, codes))
            T = p.unpack(parts)
            return (T.prop[:, 0].contiguous(), T.U_prop.contiguous(), T.prop[:, 2].contiguous(),
                    T.sum_acc / T.n_steps.clamp_min(1), T.n_steps, T.depth, T.diverging,
                    T.U_prop + kinetic(T.prop[:, 1], inv_mass))

        u = torch.full((2 ** max_depth - 1, C), 0.5, dtype=z.dtype, device=z.device)
        um = torch.full((max_depth, C, 2), 0.5, dtype=z.dtype, device=z.device)
        zero = torch.zeros((), dtype=torch.int64, device=z.device)
        self.fn = vg.compile_loop(outer, body, cond, (z, state.U, state.g, T.s_end[:, 1], T.forward, eps, inv_mass,
                                                      u, um, self.codes),
                                  (zero, zero.clone(), *p.pack(T), eps, inv_mass, u, um, self.codes))

    def __call__(self, state: HMCState, r, forward, eps, inv_mass, u, um) -> tuple[HMCState, StepInfo]:
        out = self.fn(state.z, state.U, state.g, r, forward, eps, inv_mass, u, um, self.codes)
        return HMCState(*out[:3]), StepInfo(*out[3:])


#: NUTS runs with one compiled call per leaf and, every this many iterations, judges on them
#: whether compiling the whole transition would pay for the rest of the run (``_tree_pays``)
TREE_CHECK = 30

#: projected lock-step leapfrogs left in a run from which compiling the whole transition pays:
#: in a fit it saved about 0.05 ms a leapfrog (0.13-0.15 -> 0.09-0.11 ms on the benchmark priors)
#: and cost 6-10 s more compiling than a leaf
TREE_FROM_STEPS = 200_000


def _tree_pays(remaining_steps: float) -> bool:
    """Whether a whole transition compiled as one call (``CompiledTree``) pays for its compile on
    ``remaining_steps`` lock-step leapfrogs. Counted, not timed: the switch happens at the same
    iteration on every run with the same seed, so the draws are reproducible."""
    return remaining_steps > TREE_FROM_STEPS


def nuts_step(vg, state: HMCState, eps: torch.Tensor, inv_mass: torch.Tensor, gen: torch.Generator,
              max_depth: int = 10, max_delta: float = 1000.0,
              step: CompiledTree | CompiledLeaf | None = None) -> tuple[HMCState, StepInfo]:
    """One multinomial NUTS transition for every chain. eps (C,), inv_mass (C, P) or (C, P, P).

    ``step``: a compiled whole transition (``CompiledTree``) or leaf (``compiled_leaf``); default: ``leaf`` op by op
    on ``vg``. Every one draws the same random numbers (the momentum, the first direction, then
    one uniform per possible leaf and two per doubling), so all give the same transition.
    """
    z = state.z
    C, P = z.shape
    fixed = leaves(max_depth, z.device)
    r = draw_momentum(inv_mass, gen)
    forward = torch.rand(C, generator=gen, device=z.device, dtype=z.dtype) < 0.5
    u_all = torch.rand(2 ** max_depth - 1, C, generator=gen, device=z.device, dtype=z.dtype)
    um_all = torch.rand(max_depth, C, 2, generator=gen, device=z.device, dtype=z.dtype)
    if isinstance(step, CompiledTree):
        return step(state, r, forward, eps, inv_mass, u_all, um_all)
    T = begin(state, r, inv_mass, forward, max_depth)
    parts = step.packing.pack(T) if step is not None else None
    for d in range(max_depth):
        size = 2 ** d
        started = T.active if step is None else None
        um = um_all[d]  # the merge's
        for n in range(size):
            u = u_all[size - 1 + n]
            if step is not None:
                parts = step(parts, eps, inv_mass, u, um, fixed.codes[d][n])
                building = step.building(parts)
            else:
                T = leaf(vg, T, eps, inv_mass, u, n, fixed.flags[n == 0], fixed.flags[n == size - 1],
                         fixed.depths[d + 1], max_delta)
                building = T.building
            if n < size - 1 and not bool(building.any()):
                break
        if step is None:
            T = merge(T, started, um, inv_mass, fixed.depths[d + 1])
        if not bool((step.active(parts) if step is not None else T.active).any()):
            break
    if step is not None:
        T = step.packing.unpack(parts)
    info = StepInfo(T.sum_acc / T.n_steps.clamp_min(1), T.n_steps, T.depth, T.diverging,
                    T.U_prop + kinetic(T.prop[:, 1], inv_mass))
    return HMCState(T.prop[:, 0], T.U_prop, T.prop[:, 2]), info


# ---------------------------------------------------------------------- warmup and draws
def run_nuts(vg, state: HMCState, warmup: int, draws: int, gen: torch.Generator, target: float = 0.8,
             max_depth: int = 10, max_delta: float = 1000.0, chunk: int = 100, on_chunk=None,
             progress: bool = False, dense: bool = False, metric: str = "fisher",
             report=None, checkpoint=None) -> tuple[dict[str, np.ndarray], dict]:
    """Adapt for ``warmup`` iterations, then draw ``draws`` per chain.

    ``vg`` maps z (C, P) to (U (C,), dU/dz (C, P)). Warmup is ``adapt.window_adaptation``: step
    size by dual averaging, the diagonal inverse mass matrix adapted in Stan's windows.
    ``metric="fisher"`` (default) starts from 1/|gradient| at the initial point, adds short
    windows inside the initial buffer (ending at iterations 5, 10, 20, 40) and estimates each
    window's metric as sqrt(var(z) / var(gradient)), nutpie's estimate: exact for a Gaussian and
    good from few draws. On the hierarchical logistic benchmark it cut the lock-step leapfrogs
    of warmup by 30%. The last window, the longest, takes its draws' variance instead (see
    ``adapt.window_adaptation``). ``metric="stan"``: identity start, the windows' sample variance. ``dense``:
    adapt a dense (C, P, P) inverse mass matrix (the windows' sample covariance) instead of a
    diagonal one. ``report(i, divergences)`` after every iteration. Every ``chunk`` draws,
    ``on_chunk(z)`` gets the chunk's positions (C, k, P) on the device (default: keep them,
    copied to the host). ``checkpoint`` (``checkpoint.Checkpoint``): save the whole state when
    due, and start from the saved one when resuming; the generator's state is saved too, so a
    resumed run gives the draws an uninterrupted one would. Returns the sample stats, each
    (C, draws), and a dict with the final step size, inverse mass matrix and timings.
    """
    C, P = state.z.shape
    kept: list[np.ndarray] = []
    if on_chunk is None:
        def on_chunk(z):
            kept.append(z.cpu().numpy())
    adapt = window_adaptation(vg, gen, warmup, target, metric, dense)
    warm = adapt.init(state)
    eps, inv_mass = warm.step_size, warm.inv_mass
    step = compiled_leaf(vg, state, eps, inv_mass, max_depth, max_delta)  # before the clock: set-up
    lock_steps, trying = 0, isinstance(step, CompiledLeaf)
    buf = DrawBuffer(("diverging", "tree_depth", "n_steps", "energy", "step_size", "acceptance_rate"), chunk,
                     on_chunk, keep_z=checkpoint is not None)
    start, t_loop, t_warm = 0, time.perf_counter(), 0.0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        arrays, head = saved
        start, t_warm = head["iteration"], head["seconds_warmup"]
        t_loop -= head["seconds"]
        state = restore(state, "state", arrays)
        warm = restore(warm, "warm", arrays)
        eps, inv_mass = restore(eps, "eps", arrays), restore(inv_mass, "inv_mass", arrays)
        gen.set_state(torch.from_numpy(arrays["generator"]))
        buf.restore(arrays, state.z.device, state.z.dtype)
    bar = progress_bar(warmup + draws, f"nuts {C} chain{'s' if C > 1 else ''}", progress)
    bar.update(start)
    n_div = buf.divergences
    for i in range(start, warmup + draws):
        state, info = nuts_step(vg, state, eps, inv_mass, gen, max_depth, max_delta, step)
        if trying:  # worth compiling the whole transition for the rest of the run?
            lock_steps += int(info.n_steps.max())
            if (i + 1 - start) % TREE_CHECK == 0:  # judged on the last TREE_CHECK iterations' trees
                if _tree_pays(lock_steps / TREE_CHECK * (warmup + draws - i - 1)):
                    trying, t0 = False, time.perf_counter()
                    tree = CompiledTree(vg, state, eps, inv_mass, max_depth, max_delta)
                    t_loop += time.perf_counter() - t0  # compiling is set-up (info["seconds_compile"]), not sampling
                    step = tree if tree.fn is not None else step
                lock_steps = 0
        if i < warmup:
            warm = adapt.update(i, warm, state, info.accept)
            eps, inv_mass = warm.step_size, warm.inv_mass
            if i == warmup - 1:
                eps, inv_mass = adapt.final(warm)
                t_warm = time.perf_counter() - t_loop
        else:
            buf.add(state.z, (info.diverging, info.depth, info.n_steps, info.energy, eps, info.accept),
                    i == warmup + draws - 1)
            n_div = buf.divergences
        tick(bar, report, i, C, t_loop, n_div)
        if checkpoint is not None and i < warmup + draws - 1 and checkpoint.due():
            buf.flush()
            arrays = {**flatten(state, "state"), **flatten(warm, "warm"), **flatten(eps, "eps"),
                      **flatten(inv_mass, "inv_mass"), "generator": gen.get_state().numpy(), **buf.state()}
            checkpoint.save(arrays, iteration=i + 1, seconds=time.perf_counter() - t_loop, seconds_warmup=t_warm)
    bar.close()
    sample_stats = buf.stats()
    extra = {"step_size": eps, "inv_mass": inv_mass, **timings(t_loop, t_warm),
             "compiled": {CompiledTree: "whole transition", CompiledLeaf: "one leaf"}.get(type(step), "nothing")}
    if checkpoint is not None:
        extra["checkpoint"] = {"resumed_at": start, "saves": checkpoint.saves}
    if kept:
        extra["z"] = np.concatenate(kept, axis=1)
    return sample_stats, extra


# ---------------------------------------------------------------------- the back end
class BatchedNUTS:
    """``method="nuts"``: multinomial NUTS with chains as a batch dimension."""

    name = "nuts"
    paths = ("collapsed", "plain")
    kind = "mcmc"

    def run(self, target, settings: Settings, report=None) -> Draws:
        """Sample; ``report(iteration, divergences)`` is called after every iteration (worker
        processes use it for the parent's progress bar)."""
        o = NUTS.of(settings.options)

        def runner(vg, state, gen, keep, report):
            ckpt = Checkpoint.of(settings, "nuts", options=o.given(), dim=state.z.shape[1])
            stats, extra = run_nuts(vg, state, settings.warmup, settings.draws, gen, o.target_accept,
                                    o.max_tree_depth, o.max_delta_energy, o.chunk, keep, settings.progress,
                                    o.dense_mass, o.metric, report, ckpt)
            info = {"sampler": "batched multinomial NUTS", "target_accept": o.target_accept,
                    "max_tree_depth": o.max_tree_depth, "dense_mass": o.dense_mass,
                    "metric": "dense covariance" if o.dense_mass else o.metric,
                    "mean_tree_depth": float(stats["tree_depth"].mean()), "compiled": extra["compiled"]}
            return stats, extra, info

        return run_batched(self, target, settings, o, runner, report)
