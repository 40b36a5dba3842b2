"""Checkpoint and resume (``infer/checkpoint.py``): a fit stopped right after any checkpoint and
resumed gives the draws of the uninterrupted fit, bit for bit; a checkpoint from another fit,
or garbage, is refused with one line; the CLI keeps a killed fit's progress beside ``--out``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bayesmtl as bm
from bayesmtl.infer.checkpoint import Checkpoint
from bayesmtl.synthetic import hierarchical_regression

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    df, _ = hierarchical_regression(n_tasks=6, rows=12, features=1, seed=0)
    return bm.MultiTaskData.from_frame(df, task="task", target="y")


class _Killed(Exception):
    pass


def _stop_after(monkeypatch, n: int) -> None:
    """Make the n-th checkpoint save the last thing the fit does (a kill right after it)."""
    real, count = Checkpoint.save, [0]

    def save(self, arrays, **meta):
        real(self, arrays, **meta)
        count[0] += 1
        if count[0] == n:
            raise _Killed(meta)

    monkeypatch.setattr(Checkpoint, "save", save)


def _resumed(monkeypatch, tmp_path, model, data, n: int, **kw):
    folder = tmp_path / f"ck{n}"
    with monkeypatch.context() as m:
        _stop_after(m, n)
        with pytest.raises(_Killed) as stopped:
            bm.fit(model, data, checkpoint=folder, checkpoint_every=1e-9, **kw)
    post = bm.fit(model, data, resume=folder, **kw)
    return post, stopped.value.args[0]


@pytest.mark.filterwarnings("ignore::bayesmtl.DiagnosticWarning")
@pytest.mark.parametrize("method,stop,phase", [pytest.param("nuts", 20, "warmup", marks=pytest.mark.slow),
                                               ("nuts", 70, "draws"), ("chees", 30, "warmup"), ("chees", 75, "draws")])
def test_resumed_sampler_gives_the_uninterrupted_draws(monkeypatch, tmp_path, data, method, stop, phase):
    kw = dict(method=method, chains=4, warmup=50, draws=40, seed=5, progress=False)
    model = bm.models.Hierarchical()
    whole = bm.fit(model, data, **kw)
    post, meta = _resumed(monkeypatch, tmp_path, model, data, stop, **kw)
    assert (meta["iteration"] <= 50) == (phase == "warmup")
    assert post.info["checkpoint"]["resumed_at"] == meta["iteration"]
    for site in ("mu", "tau", "w", "sigma"):
        np.testing.assert_array_equal(post.samples[site], whole.samples[site])
    np.testing.assert_array_equal(post.sample_stats["diverging"], whole.sample_stats["diverging"])


@pytest.mark.filterwarnings("ignore::bayesmtl.DiagnosticWarning")
@pytest.mark.parametrize("stop", [150, pytest.param(750, marks=pytest.mark.slow)])  # main steps; annealing
def test_resumed_svi_gives_the_uninterrupted_draws(monkeypatch, tmp_path, data, stop):
    kw = dict(method="svi", draws=100, seed=2, progress=False, steps=600, min_steps=600, window=100, anneal=400)
    model = bm.models.Hierarchical()
    whole = bm.fit(model, data, **kw)
    post, meta = _resumed(monkeypatch, tmp_path, model, data, stop, **kw)
    assert meta["steps"] == stop and (meta["main_steps"] is None) == (stop < 600)
    for site in ("mu", "tau"):
        np.testing.assert_array_equal(post.samples[site], whole.samples[site])
    assert post.info["steps"] == whole.info["steps"] == 1000
    assert post.info["average_noise"] == whole.info["average_noise"]  # (block means kept across the stop)


def test_a_checkpoint_of_another_fit_or_garbage_is_refused(monkeypatch, tmp_path, data):
    kw = dict(method="nuts", chains=2, warmup=20, draws=10, seed=0, progress=False)
    with monkeypatch.context() as m:
        _stop_after(m, 5)
        with pytest.raises(_Killed):
            bm.fit(bm.models.Hierarchical(), data, checkpoint=tmp_path / "a", checkpoint_every=1e-9, **kw)
    with pytest.raises(ValueError, match=r"written by a different fit \(seed: 0 there, 1 now\)"):
        bm.fit(bm.models.Hierarchical(), data, resume=tmp_path / "a", **{**kw, "seed": 1})
    with pytest.raises(ValueError, match=r"different fit \(options: \{\} there, \{'target_accept': 0.9\} now\)"):
        bm.fit(bm.models.Hierarchical(), data, resume=tmp_path / "a", target_accept=0.9, **kw)
    with pytest.raises(ValueError, match="holds a checkpoint of nuts, not of method 'svi'"):
        bm.fit(bm.models.Hierarchical(), data, resume=tmp_path / "a", **{**kw, "method": "svi"})
    other = bm.MultiTaskData.from_arrays(data.X.numpy() + 1.0, data.y.numpy(), data.task.numpy())
    with pytest.raises(ValueError, match=r"different fit \(data: "):
        bm.fit(bm.models.Hierarchical(), other, resume=tmp_path / "a", **kw)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "nuts.npz").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        bm.fit(bm.models.Hierarchical(), data, resume=tmp_path / "b", **kw)
    (tmp_path / "half").mkdir()
    raw = (tmp_path / "a" / "nuts.npz").read_bytes()
    (tmp_path / "half" / "nuts.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        bm.fit(bm.models.Hierarchical(), data, resume=tmp_path / "half", **kw)
    with pytest.raises(FileNotFoundError, match="no checkpoint there to resume from"):
        bm.fit(bm.models.Hierarchical(), data, resume=tmp_path / "c", **kw)
    with pytest.raises(ValueError, match="checkpoint_every must be a number of seconds > 0"):
        bm.fit(bm.models.Hierarchical(), data, checkpoint=tmp_path / "d", checkpoint_every=0, **kw)


def test_a_checkpoint_holds_arrays_only(monkeypatch, tmp_path, data):
    with monkeypatch.context() as m:
        _stop_after(m, 2)
        with pytest.raises(_Killed):
            bm.fit(bm.models.Hierarchical(), data, method="svi", steps=300, min_steps=300, progress=False,
                   checkpoint=tmp_path, checkpoint_every=1e-9)
    with np.load(tmp_path / "svi.npz", allow_pickle=False) as z:  # no object arrays: nothing to unpickle
        assert all(z[k].dtype != object for k in z.files)
        assert json.loads(str(z["__header__"]))["fingerprint"]["sampler"] == "svi"


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "bayesmtl.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_cli_refuses_to_start_over_a_pending_checkpoint_and_resume_needs_one(tmp_path):
    out = tmp_path / "run"
    ck = tmp_path / ".run.checkpoint"
    ck.mkdir()
    np.savez(ck / "nuts.npz", x=np.zeros(1))
    df, _ = hierarchical_regression(n_tasks=3, rows=5, features=1, seed=0)
    df.to_csv(tmp_path / "d.csv", index=False)
    p = _cli("fit", "--data", str(tmp_path / "d.csv"), "--task", "task", "--target", "y", "--out", str(out),
             "--quiet")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "has an unfinished fit's checkpoint" in err and "bayesmtl resume" in err
    p = _cli("resume", str(tmp_path / "elsewhere"))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and err.count("\n") == 1 and "no unfinished fit to resume" in err


@pytest.mark.slow
@pytest.mark.parametrize("method,iterations", [("nuts", 300), ("chees", 1500), ("nuts-processes", 300),
                                               ("chees-processes", 1500), ("svi", 300)])
def test_sigkill_mid_fit_then_resume_gives_the_uninterrupted_run(tmp_path, method, iterations):
    """The issue's acceptance 3 (``benchmarks/resume.py``): SIGKILL half-way, ``bayesmtl resume``,
    the same draws as an uninterrupted fit, at most one checkpoint interval of work lost, and no
    worker of a killed ``processes=2`` parent alive 10 s later."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from resume import run_one

    df, _ = hierarchical_regression(n_tasks=10, rows=30, features=2, seed=0)
    df.to_csv(tmp_path / "d.csv", index=False)
    row = run_one(method, tmp_path, argparse.Namespace(warmup=iterations, draws=iterations, every=1.0,
                                                                 seed=0))
    assert row["resume_exit"] == 0, row["error"]
    assert row["identical_draws"] and row["workers_alive_10s"] == 0, row
    assert row["work_lost_s"] < 1.0 + 2.0, row  # one interval, plus a loaded machine's slack
    assert not (tmp_path / f".{method}.checkpoint").exists()
