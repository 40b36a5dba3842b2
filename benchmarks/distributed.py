"""Data-parallel SVI under torchrun: 1 process against ``--procs`` processes (gloo on
loopback), the same fit, the same seed; wall time, steps per second, the share of a step spent
in the all-reduce, the population's answer in posterior sds (against the spread between two
1-process runs of different seeds), and what more processes would give.

    .venv/bin/python benchmarks/distributed.py [--tasks 400] [--rows 200] [--features 10]
                                               [--steps 3000] [--procs 2] [--compile auto] [--seed 0]
                                               [--path plain|default] [--draws 200]

Model: the default hierarchical regression on the plain path with a mean-field guide
(``collapse=False, guide="normal"``: no written-out density in either run, so both do the same
work a step); ``--path default`` fits the model's default instead (collapsed, structured guide),
on which two seeds agree, so the two runs' answers compare at a finer scale.
Each process runs 1 torch thread. On this 2-core machine the 2 processes share
the cores with everything else, so expect little; the projection assumes a step's compute
splits evenly over W processes and a ring all-reduce of the gradient, whose time grows from
the one measured at W = 2 as (W - 1) / (W / 2) (latency left out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def worker(out: str, a) -> None:
    """One fit (inside or outside torchrun); rank 0 writes what it measured to ``out``."""
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    import bayesmtl as bm

    sys.path.insert(0, str(Path(__file__).parent))
    from scale import planted

    frame, mu, tau = planted(a.tasks, a.rows, a.features, a.seed)
    data = bm.MultiTaskData.from_frame(frame, task="task", target="y", features=[f"x{j}" for j in range(a.features)])
    t0 = time.perf_counter()
    path = dict(collapse=False, guide="normal") if a.path == "plain" else {}
    post = bm.fit(bm.models.Hierarchical(), data, method="svi", seed=a.seed if a.fit_seed is None else a.fit_seed,
                  draws=a.draws, progress=False, steps=a.steps, min_steps=a.steps, anneal=1000, psis=False,
                  compile=None if a.compile == "none" else a.compile, **path)
    wall = time.perf_counter() - t0
    if int(os.environ.get("RANK", "0")) == 0:
        i = post.info
        s = post.samples
        out_d = {"wall": wall, "fit_seconds": i["fit_seconds"], "steps": i["steps"],
                 "seconds_compile": i.get("seconds_compile") or 0.0, "distributed": i.get("distributed"),
                 "mu": np.asarray(s["mu"]).reshape(-1, a.features + 1).tolist(),
                 "tau": np.asarray(s["tau"]).reshape(-1, a.features + 1).tolist()}
        Path(out).write_text(json.dumps(out_d))


def launch(procs: int, out: Path, argv: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_PORT")}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    me = [str(Path(__file__).resolve()), "--worker", str(out), *argv]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *me]
           if procs > 1 else [sys.executable, *me])
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    r = json.loads(out.read_text())
    r["process_wall"] = time.perf_counter() - t0
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=400)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--features", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--compile", default="auto", choices=["auto", "inductor", "none"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-seed", type=int, default=None, help="the fit's seed (default --seed, the data's)")
    ap.add_argument("--path", default="plain", choices=["plain", "default"],
                    help="plain: mean-field guide on the plain program (the same work a step in both runs); "
                         "default: the model's default (collapsed form, structured guide), whose answer two seeds "
                         "agree on")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--worker", default=None)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker, a)
        return 0
    rest = list(argv)
    with tempfile.TemporaryDirectory() as tmp:
        one = launch(1, Path(tmp) / "one.json", rest)
        many = launch(a.procs, Path(tmp) / "many.json", rest)
        # the answer's own spread: one process, the next seed (how far two SVI runs land apart)
        other = launch(1, Path(tmp) / "other.json", [*rest, "--fit-seed", str(a.seed + 1)])
    d = many["distributed"]
    guide = "mean-field guide, plain program" if a.path == "plain" else "default guide, collapsed form"
    print(f"{a.tasks} tasks x {a.rows} rows x {a.features} features, {a.steps} steps, {guide}, "
          f"compile={a.compile}; {os.cpu_count()} cores\n")
    print("| processes | fit s (compile s) | steps/s | all-reduce s (share of fit) | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    rate1 = one["steps"] / (one["fit_seconds"] - one["seconds_compile"])
    rate = many["steps"] / (many["fit_seconds"] - many["seconds_compile"])
    print(f"| 1 | {one['fit_seconds']:.1f} ({one['seconds_compile']:.1f}) | {rate1:.1f} | - | 1.00x |")
    share = d["seconds_all_reduce"] / many["fit_seconds"]
    print(f"| {a.procs} ({d['backend']}) | {many['fit_seconds']:.1f} ({many['seconds_compile']:.1f}) | {rate:.1f} | "
          f"{d['seconds_all_reduce']:.1f} ({share:.0%}) | {rate / rate1:.2f}x |")
    for site in ("mu", "tau"):
        x, y = np.asarray(one[site]), np.asarray(many[site])
        gap = np.abs(x.mean(0) - y.mean(0)) / x.std(0)
        floor = np.abs(x.mean(0) - np.asarray(other[site]).mean(0)) / x.std(0)
        print(f"\n{site}: largest gap between the two runs' posterior means {gap.max():.4f} posterior sd "
              f"(1 process, fit seed {a.seed} against {a.seed + 1} on the same data: {floor.max():.4f}); "
              f"sd ratio {np.min(y.std(0) / x.std(0)):.3f}-{np.max(y.std(0) / x.std(0)):.3f}")
    # projection: compute per step splits over W; a ring all-reduce moves 2 (W - 1) / W of the
    # message per process, so its time grows to at most twice the 2-process one (latency aside)
    step1 = 1.0 / rate1
    comm = d["seconds_all_reduce"] / max(d["all_reduce_calls"], 1)
    print(f"\nprojection on W processes (compute per step / W + the measured all-reduce, {comm * 1e3:.3f} ms "
          "at W = 2, times (W - 1) / (W / 2); loopback here, a real network is slower):\n")
    print("| W | step ms | speed-up |")
    print("| --- | --- | --- |")
    for W in (1, 2, 4, 8, 16, 32):
        t = step1 / W + (0.0 if W == 1 else comm * (W - 1) / (W / 2))
        print(f"| {W} | {t * 1e3:.2f} | {step1 / t:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
