"""Run directories never destroy a user's files: a file or a folder that is not a run is refused,
a run is replaced only on request (and kept until the new one is complete), one writer at a
time, and an unwritable place is refused before any fitting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import pytest

import bayesmtl as bm
from bayesmtl.cli import main
from bayesmtl.runs import reserve
from bayesmtl.synthetic import hierarchical_regression


@pytest.fixture(scope="module")
def post():
    df, _ = hierarchical_regression(n_tasks=4, rows=10, features=1, noise=0.5, seed=1)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bm.fit(bm.models.Hierarchical(), data, method="svi", draws=20, steps=200, min_steps=100, seed=0,
                      progress=False)


@pytest.fixture()
def csv(tmp_path):
    df, _ = hierarchical_regression(n_tasks=4, rows=10, features=1, noise=0.5, seed=1)
    df.to_csv(tmp_path / "d.csv", index=False)
    return tmp_path / "d.csv"


def _fit(csv, out, *extra):
    return main(["fit", "--data", str(csv), "--task", "task", "--target", "y", "--method", "svi", "--draws", "20",
                 "--option", "steps=200", "--option", "min_steps=100", "--out", str(out), "--quiet", *extra])


def test_a_folder_of_the_users_files_is_refused_and_kept(tmp_path, csv, capsys):
    thesis = tmp_path / "thesis"
    (thesis / "chapter1").mkdir(parents=True)
    (thesis / "chapter1" / "intro.tex").write_text("years of work")
    (thesis / "notes.txt").write_text("notes")
    assert _fit(csv, thesis) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds files that are not a bayesmtl run" in err[0] and "thesis" in err[0]
    assert (thesis / "chapter1" / "intro.tex").read_text() == "years of work" and (thesis / "notes.txt").exists()
    assert _fit(csv, thesis, "--overwrite") == 2 and (thesis / "notes.txt").exists()  # not even with --overwrite


def test_a_plain_file_is_refused_and_kept(tmp_path, csv, capsys):
    f = tmp_path / "results"
    f.write_text("keep me")
    assert _fit(csv, f) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err and f.read_text() == "keep me"


def test_a_run_is_replaced_only_on_request(tmp_path, post):
    run = post.save(tmp_path / "run")
    with pytest.raises(FileExistsError, match="already holds a bayesmtl run; pass overwrite=True"):
        post.save(run)
    before = (run / "run.json").stat().st_mtime_ns
    time.sleep(0.01)
    post.save(run, overwrite=True)
    assert (run / "run.json").stat().st_mtime_ns > before and bm.load(run).num_draws == post.num_draws
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock, no temporary folder left
    empty = tmp_path / "empty"
    empty.mkdir()
    post.save(empty)  # an empty folder is fine


def test_a_second_writer_fails_fast_and_a_dead_writers_leftovers_are_cleaned(tmp_path, post):
    out = tmp_path / "run"
    with reserve(out):
        child = subprocess.run([sys.executable, "-c", "import bayesmtl.runs as r, sys\n"
                                f"with r.reserve({str(out)!r}): pass"], capture_output=True, text=True)
        assert child.returncode != 0 and "another bayesmtl process (PID" in child.stderr
    # a killed writer: its lock names a process that is gone, its temporary folder is left behind
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".run.lock").write_text(str(dead.pid))
    (tmp_path / ".run.bayesmtl-tmp-abc123").mkdir()
    (tmp_path / ".run.keep").mkdir()  # a user's own folder of a similar name is not ours to remove
    post.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.keep", "run"]


def test_a_failed_fit_leaves_no_folders_it_made(tmp_path, csv, capsys):
    out = tmp_path / "new" / "deeper" / "run"
    assert _fit(csv, out, "--chains", "0") == 2
    assert "chains" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_parent_is_refused_before_fitting(tmp_path, csv, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    called = []
    monkeypatch.setattr(bm, "fit", lambda *a, **k: called.append(1))
    try:
        assert _fit(csv, ro / "run") == 2
    finally:
        ro.chmod(0o755)
    assert not called and "not writable" in capsys.readouterr().err


def test_an_unwritable_parent_is_refused_before_fitting_as_root_too(tmp_path, csv, capsys, monkeypatch):
    import bayesmtl.runs as runs

    monkeypatch.setattr(runs.os, "access", lambda path, mode: False)
    called = []
    monkeypatch.setattr(bm, "fit", lambda *a, **k: called.append(1))
    assert _fit(csv, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not called and len(err) == 1 and "the folder is not writable" in err[0]


class _Payload:
    """Unpickling this would run code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_in_a_run_is_never_unpickled(tmp_path, post, capsys):
    import shutil

    import torch

    run = post.save(tmp_path / "run")
    marker = tmp_path / "pwned"
    for f in ("model.json", "data.nc"):
        (run / f).unlink()
    torch.save({"model": _Payload(str(marker))}, run / "model.pt")
    with pytest.raises(ValueError, match="pickle .*trust_pickle=True"):
        bm.load(run)
    for cmd in (["summary", str(run)], ["predict", str(run), "--data", str(tmp_path / "x.csv"),
                                        "--out", str(tmp_path / "p.csv")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--trust-pickle" in err[0]
    assert not marker.exists()
    shutil.rmtree(run)


def test_a_crafted_model_json_cannot_name_arbitrary_classes(tmp_path, post):
    import json

    run = post.save(tmp_path / "run")
    spec = json.loads((run / "model.json").read_text())
    spec["model"] = {"object": "subprocess:Popen", "attrs": {"dict": {}}}
    (run / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="subprocess:Popen, which is not part of bayesmtl"):
        bm.load(run)
    spec["model"] = {"dist": "os:system", "params": {}}
    (run / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="os:system, which is not part of bayesmtl"):
        bm.load(run)
    (run / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a valid run: model.json or data.nc is damaged"):
        bm.load(run)
    (run / "run.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="run format 99, which this bayesmtl .* cannot read"):
        bm.load(run)


@pytest.mark.parametrize("name", ["hierarchical", "multitask-gp"] + [
    pytest.param(n, marks=pytest.mark.slow) for n in ("independent", "pooled", "dp-clustering", "task-relationship")])
def test_every_registered_model_round_trips_through_the_data_format(name, tmp_path):
    import pandas as pd

    df, _ = hierarchical_regression(n_tasks=3, rows=12, features=1, noise=0.5, seed=2)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y", standardize=True)
    cls = bm.models.get_model_class(name)
    method = dict(method="map", steps=100) if name == "multitask-gp" else \
        dict(method="svi", draws=20, steps=150, min_steps=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(cls(), data, seed=0, progress=False, **method)
        run = post.save(tmp_path / "run")
        back = bm.load(run)
    assert not (run / "model.pt").exists() and repr(back.model) == repr(post.model)
    other = "task_02" if name == "multitask-gp" else "fresh"  # a GP predicts only for its own tasks
    new = df.head(4).assign(task=["task_00", "task_01", other, other])
    pd.testing.assert_frame_equal(back.predict(new, seed=1), post.predict(new, seed=1))
    pd.testing.assert_frame_equal(back.summary(), post.summary())


def _children(pid: int) -> list[int]:
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(stat))
    return out


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", ["SIGKILL", pytest.param("SIGTERM", marks=pytest.mark.slow)])
def test_chain_workers_die_with_their_parent(sig, csv, tmp_path):
    import signal

    cmd = [sys.executable, "-c", "import sys; from bayesmtl.cli import main; sys.exit(main(sys.argv[1:]))",
           "fit", "--data", str(csv), "--task", "task", "--target", "y", "--method", "nuts", "--warmup", "100000",
           "--draws", "10", "--chains", "4", "--option", "processes=2", "--option", "compile=none",
           "--out", str(tmp_path / "run"), "--quiet"]
    parent = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    for _ in range(300):  # until both chain groups are running
        time.sleep(0.1)
        workers = _children(parent.pid)
        if len(workers) >= 2:
            break
    assert len(workers) >= 2, "the chain workers never started"
    time.sleep(1.0)
    parent.send_signal(getattr(signal, sig))
    parent.wait(timeout=30)
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), f"workers {workers} outlived their parent"
    if sig == "SIGTERM":
        assert parent.returncode == 143 and "terminated; nothing was written" in parent.stderr.read()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("version", [0, -1, True, "2", 2.5, 99])
def test_a_run_format_that_is_not_one_we_wrote_is_refused(tmp_path, post, version):
    post.save(tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    (tmp_path / "run" / "run.json").write_text(json.dumps({**info, "format_version": version}))
    with pytest.raises(ValueError, match=f"was written in run format {version!r}"):
        bm.load(tmp_path / "run")


def test_files_swapped_in_from_another_run_are_refused(tmp_path, post):
    import shutil

    df, _ = hierarchical_regression(n_tasks=3, rows=8, features=2, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = bm.fit(bm.models.Hierarchical(), bm.MultiTaskData.from_frame(df, task="task", target="y"),
                       method="svi", draws=10, steps=100, min_steps=50, progress=False)
    post.save(tmp_path / "a")
    other.save(tmp_path / "b")
    for name, match in (("posterior.nc", "posterior.nc does not match data.nc and model.json: its 'task' labels"),
                        ("data.nc", "model.json and data.nc do not belong together|data.nc does not hold the data")):
        shutil.copytree(tmp_path / "a", tmp_path / name)
        shutil.copy(tmp_path / "b" / name, tmp_path / name / name)
        with pytest.raises(ValueError, match=match):
            bm.load(tmp_path / name)
