"""Kill -9 half-way, ``bayesmtl resume``: the work lost and the agreement with an uninterrupted fit.

For each method, through the CLI on planted hierarchical data (10 tasks x 30 rows, 2 features,
the plain program so that sampling takes a while): one uninterrupted fit, then the same fit
with ``--checkpoint-every`` seconds, SIGKILLed at half the uninterrupted fit's time, then
``bayesmtl resume``. Prints one row per method: the uninterrupted seconds, when the kill came,
the iteration (or step) of the last checkpoint, the seconds of work lost (kill time minus that
checkpoint's write time), the resume's seconds, whether every draw of mu and tau is identical,
and how many chain workers were still alive 10 s after the kill.

    .venv/bin/python benchmarks/resume.py --methods nuts,chees,nuts-processes,chees-processes,svi --every 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import bayesmtl as bm
from bayesmtl.synthetic import hierarchical_regression

METHODS = {"nuts": ["--method", "nuts"], "chees": ["--method", "chees"],
           "nuts-processes": ["--method", "nuts", "--option", "processes=2"],
           "chees-processes": ["--method", "chees", "--option", "processes=2"],
           "svi": ["--method", "svi", "--option", "steps=8000", "--option", "min_steps=8000"]}


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "bayesmtl.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _alive(pids: list[str]) -> int:
    out = 0
    for pid in pids:
        try:
            out += "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            pass
    return out


def run_one(name: str, folder: Path, args) -> dict:
    common = ["--data", str(folder / "d.csv"), "--task", "task", "--target", "y", "--warmup", str(args.warmup),
              "--draws", str(args.draws), "--chains", "4", "--seed", str(args.seed), "--quiet",
              "--option", "collapse=False", *METHODS[name]]
    t0 = time.perf_counter()
    whole = _cli("fit", *common, "--out", str(folder / f"{name}-whole"), "--checkpoint-every", "0")
    if whole.wait() != 0:
        raise RuntimeError(whole.stderr.read())
    seconds = time.perf_counter() - t0
    run = folder / name
    p = _cli("fit", *common, "--out", str(run), "--checkpoint-every", str(args.every), start_new_session=True)
    time.sleep(seconds / 2)
    children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    os.kill(p.pid, signal.SIGKILL)
    killed = time.time()
    p.wait()
    saved = sorted((folder / f".{name}.checkpoint").rglob("*.npz"))
    lost, where = float("nan"), []
    if saved:
        lost = max(killed - f.stat().st_mtime for f in saved)
        for f in saved:
            with np.load(f, allow_pickle=False) as z:
                head = json.loads(str(z["__header__"]))
            where.append(head.get("iteration", head.get("steps")))
    time.sleep(10)
    alive = _alive(children)
    t0 = time.perf_counter()
    r = _cli("resume", str(run))
    _, err = r.communicate()
    resumed = time.perf_counter() - t0
    same = False
    if r.returncode == 0:
        a, b = bm.load(folder / f"{name}-whole"), bm.load(run)
        same = all(np.array_equal(a.samples[s], b.samples[s]) for s in ("mu", "tau"))
    return {"method": name, "uninterrupted_s": round(seconds, 1), "killed_at_s": round(seconds / 2, 1),
            "checkpoint_at": where, "work_lost_s": round(lost, 1), "resume_s": round(resumed, 1),
            "resume_exit": r.returncode, "identical_draws": same, "workers_alive_10s": alive,
            "error": err.strip().splitlines()[-1] if r.returncode else ""}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="nuts,chees,nuts-processes,chees-processes,svi")
    p.add_argument("--warmup", type=int, default=600)
    p.add_argument("--draws", type=int, default=600)
    p.add_argument("--every", type=float, default=5.0, help="seconds between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        df, _ = hierarchical_regression(n_tasks=10, rows=30, features=2, seed=args.seed)
        df.to_csv(folder / "d.csv", index=False)
        for name in args.methods.split(","):
            rows.append(run_one(name, folder, args))
            print(pd.DataFrame([rows[-1]]).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    print("\n| " + " | ".join(table.columns) + " |\n|" + " --- |" * len(table.columns))
    for _, r in table.iterrows():
        print("| " + " | ".join(str(v) for v in r.values) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
