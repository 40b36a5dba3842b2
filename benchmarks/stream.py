"""Data larger than memory: a hierarchical regression fitted from a parquet file read in chunks
(``StreamedData.scan``), against the same fit with the rows loaded (``MultiTaskData.from_parquet``,
what a user does first), each in a fresh process so its peak memory is its own.

    .venv/bin/python benchmarks/stream.py [--rows 20000000] [--tasks 20000] [--features 10]
                                          [--loaded-rows 2000000] [--steps 3000] [--draws 200]
                                          [--task-batch 2000]
                                          [--folder DIR] [--seed 0]

The file is written once, a million rows at a time (never whole in memory either), into
``--folder`` (a temporary folder by default; a file already there with the same settings is
reused). Rows are planted from w_t ~ N(mu, tau^2), y = x'w_t + N(0, sigma^2), tasks in random
order through the file. Printed per run: rows, peak resident memory (ru_maxrss), seconds to
scan or load, seconds to fit, the run folder's size, and the population's 90% intervals against
the planted values. The loaded path runs at ``--loaded-rows`` (and the streamed one again there,
for a ratio at equal size); at 20M rows it would need several GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def planted(D: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"mu": rng.normal(0, 1, D + 1), "tau": rng.uniform(0.2, 0.6, D + 1), "sigma": 1.0}


def write(path: Path, rows: int, tasks: int, D: int, seed: int) -> None:
    """The planted file, a million rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    truth = planted(D, seed)
    rng = np.random.default_rng(seed + 1)
    w = truth["mu"] + truth["tau"] * rng.normal(size=(tasks, D + 1))
    names = np.array([f"store_{t:05d}" for t in range(tasks)])
    tmp = path.with_suffix(".part")
    writer = None
    for lo in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - lo)
        t = rng.integers(tasks, size=n)
        X = rng.normal(size=(n, D))
        y = w[t, 0] + (X * w[t, 1:]).sum(1) + truth["sigma"] * rng.normal(size=n)
        cols = {"store": names[t], **{f"x{j}": X[:, j] for j in range(D)}, "sales": y}
        table = pa.table(cols)
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=250_000)
    writer.close()
    tmp.rename(path)


def worker(a) -> None:
    """One fit in this process; prints one JSON line."""
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    import bayesmtl as bm

    t0 = time.perf_counter()
    if a.worker == "stream":
        data = bm.StreamedData.scan(a.file, task="store", target="sales")
    else:
        data = bm.MultiTaskData.from_parquet(a.file, task="store", target="sales")
    t_read = time.perf_counter() - t0
    batch = {"task_batch_size": a.task_batch} if a.task_batch and a.task_batch < data.n_tasks else {}
    post = bm.fit(bm.models.Hierarchical(), data, method="svi", steps=a.steps, draws=a.draws, seed=a.seed,
                  progress=False, **batch)
    t_fit = time.perf_counter() - t0 - t_read
    folder = Path(tempfile.mkdtemp()) / "run"
    post.save(folder)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    truth = planted(a.features, a.seed)
    s = post.summary()
    cover = {}
    for site in ("mu", "tau"):
        rows = s[s.index.str.startswith(f"{site}[")]
        cover[site] = int(((rows["q05"].to_numpy() <= truth[site]) & (truth[site] <= rows["q95"].to_numpy())).sum())
    print(json.dumps({"rows": data.n_rows, "tasks": data.n_tasks, "peak_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "read_s": t_read, "fit_s": t_fit, "run_mb": size / 2 ** 20,
        "path": post.info["path"], "compile": post.info.get("compile"), "cover": cover,
        "n_pop": int(len(truth["mu"]))}))


def run(kind: str, file: Path, a) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--file", str(file), "--steps", str(a.steps),
           "--draws", str(a.draws), "--seed", str(a.seed), "--features", str(a.features),
           "--task-batch", str(a.task_batch)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the {kind} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--features", type=int, default=10)
    p.add_argument("--loaded-rows", type=int, default=2_000_000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--task-batch", type=int, default=2000, help="tasks per SVI step (0: all)")
    p.add_argument("--folder", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=("stream", "loaded"), help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    folder = Path(a.folder or tempfile.mkdtemp(prefix="bayesmtl-stream-"))
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for rows in sorted({a.rows, a.loaded_rows}):
        f = folder / f"planted_{rows}_{a.tasks}_{a.features}_{a.seed}.parquet"
        if not f.exists():
            t = time.perf_counter()
            write(f, rows, a.tasks, a.features, a.seed)
            print(f"wrote {f} ({f.stat().st_size / 2 ** 20:.0f} MB) in {time.perf_counter() - t:.0f} s", flush=True)
        files[rows] = f
    results = [("loaded", run("loaded", files[a.loaded_rows], a)), ("streamed", run("stream", files[a.loaded_rows], a))]
    if a.rows != a.loaded_rows:
        results.append(("streamed", run("stream", files[a.rows], a)))
    print(f"\nhierarchical regression, {a.tasks} tasks x {a.features} features, SVI {a.steps} steps on "
          f"{a.task_batch or a.tasks} tasks a step, {a.draws} draws (collapsed; 1 torch thread)\n")
    print("| data | rows | peak memory (MB) | read (s) | fit (s) | run folder (MB) | mu covered | tau covered |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, r in results:
        n = r["n_pop"]
        print(f"| {kind} | {r['rows']:,} | {r['peak_mb']:,.0f} | {r['read_s']:.1f} | {r['fit_s']:.1f} | "
              f"{r['run_mb']:.1f} | {r['cover']['mu']}/{n} | {r['cover']['tau']}/{n} |")
    same = [r for k, r in results if r["rows"] == a.loaded_rows]
    ratio = same[1]["peak_mb"] / same[0]["peak_mb"]
    print(f"\npeak memory at {a.loaded_rows:,} rows: streamed / loaded = {ratio:.2f}; "
          f"time: {(same[1]['read_s'] + same[1]['fit_s']) / (same[0]['read_s'] + same[0]['fit_s']):.2f}")


if __name__ == "__main__":
    main()
