"""Data-parallel SVI under torchrun (``infer/distributed.py``): 2 processes with gloo on the
loopback interface give the single process's answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed

SCRIPT = Path(__file__).with_name("_distributed_fit.py")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")


def _run(out: Path, engine: str, procs: int, bad: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    args = [str(SCRIPT), str(out), engine, "1" if bad else "0"]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *args]
    else:
        cmd = [sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["pyro", "flat"])
def test_two_processes_give_the_single_process_answer(tmp_path, engine):
    """Same seed: the population's posterior means within 0.05 posterior sd of one process's,
    sds within 5%; the collapsed target (the default) split by tasks; run info says the world."""
    one = _run(tmp_path / "one", engine, 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(tmp_path / "two", engine, 2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    info = json.loads((tmp_path / "two.json").read_text())
    d = info["distributed"]
    assert (d["world_size"], d["backend"], d["rank"]) == (2, "gloo", 0) and info["path"] == "collapsed"
    assert d["all_reduce_calls"] >= 1000 and d["seconds_all_reduce"] > 0  # a step's gradient, every step
    assert json.loads((tmp_path / "one.json").read_text())["distributed"] is None
    for site in ("mu", "tau"):
        sd = a[site].std((0, 1))
        assert (np.abs(a[site].mean((0, 1)) - b[site].mean((0, 1))) < 0.05 * sd).all(), site
        np.testing.assert_allclose(b[site].std((0, 1)), sd, rtol=0.05)


def test_processes_given_different_data_stop_with_one_clear_error(tmp_path):
    run = _run(tmp_path / "bad", "pyro", 2, bad=True)
    assert run.returncode != 0
    assert "the processes disagree on the data: rank 1 has 149 rows of 15 tasks" in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / "bad.npz").exists()


@pytest.mark.slow
def test_the_cli_under_torchrun_writes_one_run_from_the_first_process(tmp_path):
    from bayesmtl.synthetic import hierarchical_regression

    df, _ = hierarchical_regression(n_tasks=8, rows=10, features=1, seed=0)
    df.to_csv(tmp_path / "d.csv", index=False)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_PORT")}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "bayesmtl.cli", "fit", "--data", str(tmp_path / "d.csv"), "--task", "task",
                          "--target", "y", "--out", str(tmp_path / "run"), "--method", "svi", "--draws", "100",
                          "--option", "steps=400", "--option", "min_steps=400", "--quiet"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1  # one process wrote, and said so
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["distributed"]["world_size"], info["distributed"]["backend"]) == (2, "gloo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "run"]
