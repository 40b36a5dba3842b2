"""Fuzz tests (hypothesis) of the inputs a user hands over: frames, arrays, CSV files and run
directories. Every input is either accepted with a sane result or refused with one of the
documented error types and a message naming the culprit; never a stray IndexError, KeyError,
RuntimeError or a pandas/torch message."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import bayesmtl as bm  # noqa: E402

DOCUMENTED = (ValueError, TypeError, FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError)
# derandomize: the same examples on every run (CI is reproducible); raise max_examples locally to dig deeper
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

labels = st.one_of(st.sampled_from(["a", "b", "c", "", " ", "nan"]), st.integers(-3, 3),
                   st.floats(allow_nan=True, allow_infinity=True), st.none())
values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20),
                   st.sampled_from(["1.5", "x", "", "1e400", True]), st.none(),
                   st.floats(min_value=-1e308, max_value=1e308))


def _names_culprit(msg: str, names: list[str]) -> bool:
    """The message names a column or an argument (or the data as a whole)."""
    return any(repr(n) in msg or f"{n}" in msg for n in names) or "data" in msg or "no rows" in msg


@FUZZ
@given(rows=st.lists(st.tuples(labels, values, values, values), min_size=0, max_size=12),
       standardize=st.booleans(), likelihood=st.sampled_from(["gaussian", "bernoulli", "poisson", "gamma", "beta"]))
def test_from_frame_accepts_or_names_the_culprit(rows, standardize, likelihood):
    df = pd.DataFrame(rows, columns=["task", "y", "x1", "x2"]) if rows else pd.DataFrame(
        {"task": [], "y": [], "x1": [], "x2": []})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = bm.MultiTaskData.from_frame(df, task="task", target="y", standardize=standardize)
            bm.models.Hierarchical(likelihood=likelihood).check(data)
    except DOCUMENTED as e:
        assert str(e).strip() and "\n" not in str(e).strip().splitlines()[0]
        assert _names_culprit(str(e), ["task", "y", "x1", "x2", likelihood]), str(e)
        return
    assert np.isfinite(data.X.numpy()).all() and np.isfinite(data.y.numpy()).all()
    assert data.n_rows == len(df) and data.n_tasks == len(set(data.task_names))
    assert all(str(n).strip() and str(n) != "nan" for n in data.task_names)


@FUZZ
@given(n=st.integers(0, 6), d=st.integers(0, 3),
       kind=st.sampled_from(["float", "int", "bool", "complex", "object", "nan", "inf", "short_y", "2d_y"]),
       task_kind=st.sampled_from(["int", "str", "negative", "float", "short"]))
def test_from_arrays_accepts_or_names_the_culprit(n, d, kind, task_kind):
    rng = np.random.default_rng(n * 10 + d)
    X = rng.normal(size=(n, d))
    y = rng.normal(size=n)
    if kind == "int":
        X = X.astype(int)
    elif kind == "bool":
        X = X > 0
    elif kind == "complex":
        X = X + 1j
    elif kind == "object":
        X = X.astype(object)
        if n and d:
            X[0, 0] = "x"
    elif kind == "nan" and n:
        y[0] = np.nan
    elif kind == "inf" and n and d:
        X[-1, -1] = np.inf
    elif kind == "short_y":
        y = y[:-1] if n else np.zeros(1)
    elif kind == "2d_y":
        y = y[:, None]
    task = {"int": np.arange(n) % 2, "str": np.array([f"t{i % 2}" for i in range(n)]),
            "negative": -np.ones(n, dtype=int), "float": np.arange(n) * 0.5,
            "short": np.zeros(max(n - 1, 0), dtype=int)}[task_kind]
    try:
        data = bm.MultiTaskData.from_arrays(X, y, task)
    except DOCUMENTED as e:
        assert _names_culprit(str(e), ["X", "y", "task", "noise", "trials"]), str(e)
        return
    assert data.n_rows == n and np.isfinite(data.X.numpy()).all() and np.isfinite(data.y.numpy()).all()


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8", "replace")),
                         st.sampled_from([b"", b"task,y\n", b"task,x,x,y\na,1,2,3\n", b"task,y\na,1\nb\n",
                                          b"\xef\xbb\xbftask,y,x\na,1,2\n", b"task;y;x\na;1;2\n"])))
def test_csv_reading_accepts_or_names_the_file(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("csv") / "data.csv"
    path.write_bytes(content)
    try:
        bm.MultiTaskData.from_csv(path, task="task", target="y")
    except DOCUMENTED as e:
        assert _names_culprit(str(e), ["data.csv", "task", "y", "x"]), str(e)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from bayesmtl.synthetic import hierarchical_regression

    df, _ = hierarchical_regression(n_tasks=3, rows=8, features=1, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(bm.models.Hierarchical(), data, method="svi", steps=200, min_steps=100, anneal=0, draws=20,
                      seed=0, progress=False)
    return post.save(tmp_path_factory.mktemp("run") / "run")


@FUZZ
@given(which=st.sampled_from(["run.json", "model.json", "posterior.nc", "data.nc", "summary.csv"]),
       how=st.sampled_from(["truncate", "garbage", "empty", "delete", "json"]), cut=st.floats(0, 1),
       junk=st.binary(min_size=1, max_size=64), value=st.one_of(st.integers(), st.text(max_size=8), st.none(),
                                                                    st.lists(st.integers(), max_size=3)))
def test_a_damaged_run_directory_loads_or_names_the_file(run_dir, tmp_path_factory, which, how, cut, junk, value):
    run = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(run_dir, run)
    f = run / which
    raw = f.read_bytes()
    if how == "truncate":
        f.write_bytes(raw[: int(len(raw) * cut)])
    elif how == "garbage":
        f.write_bytes(junk)
    elif how == "empty":
        f.write_bytes(b"")
    elif how == "delete":
        f.unlink()
    elif which.endswith(".json"):  # one top-level value replaced
        doc = json.loads(raw)
        key = sorted(doc)[int(cut * (len(doc) - 1))]
        doc[key] = value
        f.write_text(json.dumps(doc))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post = bm.load(run)
            post.summary()
    except DOCUMENTED as e:
        assert str(Path(which).stem) in str(e) or str(run) in str(e) or "run" in str(e), str(e)
