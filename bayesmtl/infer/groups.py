"""Chain groups in worker processes (``method="nuts"`` or ``"chees"``, ``processes=k``).

The chains are split into k groups, each run by the same back end in its own forked process with
one torch thread, so a k-core CPU advances k lock-step batches at once (PyMC's ``cores``,
NumPyro's ``chain_method="parallel"``). On small models a lock-step leapfrog costs about the
same for 2 chains as for 4 (Python and dispatch overhead dominate), and a batch waits for its
longest tree, so splitting pays on a multi-core CPU; on a GPU keep one batch.

Processes are forked: model and data are inherited, not pickled, and the user's script is not
re-imported (spawn would re-run an unguarded script). Group g runs with the seed
``group_seeds(seed, k)[g]``, so the same seed and k give the same draws.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import time
import traceback
from dataclasses import replace

import numpy as np
import torch

from .base import Draws, Settings

__all__ = ["group_seeds", "run_in_processes"]


def group_seeds(seed: int, k: int) -> list[int]:
    """Seeds of the k chain groups: group 0 keeps ``seed``; the others are drawn from it."""
    if k == 1:
        return [seed]
    extra = np.random.SeedSequence(seed).generate_state(k - 1, dtype=np.uint32)
    return [seed] + [int(s) for s in extra]


def die_with_parent(parent: int) -> None:
    """Make this forked worker exit when its parent does: the kernel's parent-death signal on
    Linux, and a check for a parent already gone (it may die before the signal is armed)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the progress poll in the parent is all there is
        pass
    if os.getppid() != parent:
        os._exit(1)


def _worker(run, target, settings: Settings, conn, done, div, g: int, parent: int) -> None:
    def report(i: int, n_div: int) -> None:
        done[g], div[g] = i, n_div
        if os.getppid() != parent:  # parent gone and no death signal (not Linux): stop sampling
            os._exit(1)

    die_with_parent(parent)
    try:
        torch.set_num_threads(1)
        out = run(target, settings, report=report)
        samples = {k: v.numpy() for k, v in out.samples.items()}  # plain arrays: no shared-memory handles
        conn.send(("ok", Draws(samples, out.sample_stats, out.info)))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        try:
            pickle.dumps(e)
            err = e
        except Exception:  # noqa: BLE001
            err = RuntimeError(f"{type(e).__name__}: {e}")
        conn.send(("error", err, traceback.format_exc()))
    finally:
        conn.close()


def run_in_processes(run, target, settings: Settings, k: int) -> Draws:
    """Run ``run(target, settings_g, report=...)`` for k chain groups at once; merged Draws
    with chains in group order. ``settings.options`` must not ask for processes again."""
    if "fork" not in mp.get_all_start_methods():
        raise ValueError("processes > 1 needs the 'fork' start method (Linux); use processes=1 here")
    ctx = mp.get_context("fork")
    C = settings.chains
    sizes = [len(a) for a in np.array_split(np.arange(C), k)]
    seeds = group_seeds(settings.seed, k)
    done, div = ctx.Array("l", k, lock=False), ctx.Array("l", k, lock=False)
    t0 = time.perf_counter()
    procs, conns = [], []
    for g in range(k):
        recv, send = ctx.Pipe(duplex=False)
        folder = None if settings.checkpoint is None else os.path.join(settings.checkpoint, f"group{g}")
        sub = replace(settings, chains=sizes[g], seed=seeds[g], progress=False, checkpoint=folder)
        p = ctx.Process(target=_worker, args=(run, target, sub, send, done, div, g, os.getpid()), daemon=True)
        p.start()
        send.close()
        procs.append(p)
        conns.append(recv)
    from tqdm.auto import tqdm

    total = settings.warmup + settings.draws
    name = getattr(getattr(run, "__self__", None), "name", "mcmc")  # the back end's name, for the bar
    bar = tqdm(total=total, disable=not settings.progress, unit="it", desc=f"{name} {C} chains in {k} processes")
    results: list = [None] * k
    try:
        while any(r is None for r in results):
            for g in range(k):
                if results[g] is None and conns[g].poll(0.1):
                    results[g] = conns[g].recv()
                    if results[g][0] == "error":
                        _, err, tb = results[g]
                        lo = sum(sizes[:g])
                        err.add_note(f"in chain group {g} (chains {lo}-{lo + sizes[g] - 1}); worker traceback:\n{tb}")
                        raise err
                elif results[g] is None and not procs[g].is_alive() and not conns[g].poll():
                    raise RuntimeError(f"chain group {g} died (exit code {procs[g].exitcode}) before returning "
                                       "its draws; out of memory?")
            bar.update(min(done) - bar.n)
            el = time.perf_counter() - t0
            rate = sum(n * c for n, c in zip(done, sizes, strict=True)) / max(el, 1e-9)
            bar.set_postfix({"draws/s": f"{rate:.0f}", "div": sum(div)}, refresh=False)
    finally:
        bar.close()
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    outs = [r[1] for r in results]
    samples = {name: torch.cat([torch.from_numpy(o.samples[name]) for o in outs]) for name in outs[0].samples}
    stats = {name: np.concatenate([o.sample_stats[name] for o in outs]) for name in outs[0].sample_stats}
    info = dict(outs[0].info)
    info.update({"processes": k, "chain_groups": sizes, "group_seeds": seeds,
                 "step_size": [s for o in outs for s in o.info["step_size"]],
                 "seconds_setup": max(o.info["seconds_setup"] for o in outs),
                 "seconds_warmup": max(o.info["seconds_warmup"] for o in outs),
                 "seconds_total": time.perf_counter() - t0,
                 "leapfrog_steps": int(stats["n_steps"].sum())})
    if "tree_depth" in stats:
        info["mean_tree_depth"] = float(stats["tree_depth"].mean())
    for key in ("trajectory_length", "mean_steps"):  # ChEES: each group learned its own
        if key in info:
            info[key] = [o.info[key] for o in outs]
    return Draws(samples, stats, info)
