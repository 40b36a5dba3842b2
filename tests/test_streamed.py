"""Data streamed from a parquet or CSV file (bayesmtl/streamed.py): the same fit as with the
rows loaded, whatever the chunk size; a run folder that references the file; one clear line
for every bad file and for every step that would need the rows in memory."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

import bayesmtl as bm
from bayesmtl.design import task_gram
from bayesmtl.streamed import RowsNotInMemory, StreamedData

pytestmark = pytest.mark.filterwarnings("ignore::bayesmtl.DiagnosticWarning")


def _frame(T: int = 30, n: int = 40, D: int = 2, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    task = rng.integers(T, size=T * n)  # tasks in random order through the file
    task[:T] = np.arange(T)
    X = rng.normal(size=(T * n, D))
    w = rng.normal([1.0, 0.5, -0.5][: D + 1], 0.4, size=(T, D + 1))
    y = w[task, 0] + (X * w[task, 1:]).sum(1) + rng.normal(0, 0.5, size=T * n)
    df = pd.DataFrame(X, columns=[f"x{j}" for j in range(D)])
    df.insert(0, "shop", [f"s{t}" for t in task])
    df["sales"] = 10 + 3 * y  # a raw-scale target: the default priors must read its scale
    return df


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streamed")
    df = _frame()
    df.to_parquet(folder / "d.parquet", row_group_size=250)
    df.to_csv(folder / "d.csv", index=False)
    return df, folder


def _fit(data, **kw):
    return bm.fit(bm.models.Hierarchical(), data, method="svi", steps=300, draws=200, seed=3, progress=False,
                  compile=None, psis=False, **kw)


def test_scan_matches_loaded_data_whatever_the_chunks(files):
    df, folder = files
    loaded = bm.MultiTaskData.from_frame(df, task="shop", target="sales")
    a = StreamedData.scan(folder / "d.parquet", task="shop", target="sales", chunk_rows=7)
    b = StreamedData.scan(folder / "d.csv", task="shop", target="sales", chunk_rows=500)
    assert a.task_names == b.task_names == loaded.task_names
    np.testing.assert_array_equal(a.rows_per_task(), loaded.rows_per_task())
    assert a.digest() == b.digest()  # of the values read, not of the file's bytes
    for s in (a, b):
        for got, want in zip(s.feature_moments(), loaded.feature_moments(), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s.target_moments()[:2], loaded.target_moments()[:2], rtol=1e-12)
    model = bm.models.Hierarchical()
    sums = [d.reduce("gram", lambda c: task_gram(model.design(c)[0], c.y, c.task, c.n_tasks))
            for d in (a, b, loaded)]
    for k in sums[0]:
        torch.testing.assert_close(sums[0][k], sums[2][k], rtol=1e-10, atol=1e-9)
        torch.testing.assert_close(sums[1][k], sums[2][k], rtol=1e-10, atol=1e-9)


def test_streamed_fit_is_the_loaded_fit(files):
    df, folder = files
    loaded = _fit(bm.MultiTaskData.from_frame(df, task="shop", target="sales"))
    streamed = _fit(StreamedData.scan(folder / "d.parquet", task="shop", target="sales", chunk_rows=333))
    assert streamed.info["path"] == loaded.info["path"] == "collapsed"
    for site in ("mu", "tau", "sigma", "w"):
        np.testing.assert_allclose(streamed.samples[site], loaded.samples[site], rtol=1e-6, atol=1e-8)
    assert streamed.summary().index.tolist() == loaded.summary().index.tolist()  # labelled alike


def test_run_folder_references_the_file(files, tmp_path):
    df, folder = files
    src = tmp_path / "d.parquet"
    src.write_bytes((folder / "d.parquet").read_bytes())
    post = _fit(StreamedData.scan(src, task="shop", target="sales"))
    run = post.save(tmp_path / "run")
    assert not (run / "data.nc").exists()
    ref = json.loads((run / "model.json").read_text())["data"]["streamed"]
    assert ref["path"] == str(src.resolve()) and ref["fingerprint"] == post.data.digest()
    back = bm.load(run)
    new = pd.DataFrame({"shop": ["s1", "brand_new"], "x0": [0.0, 0.0], "x1": [0.0, 0.0]})
    pred = back.predict(new)
    assert pred["new_task"].tolist() == [False, True]
    assert pred.loc[1, "sd"] > pred.loc[0, "sd"]  # a new task knows less than a fitted one
    page = bm.report(back, tmp_path / "r.html").read_text()
    assert "Not made: the training rows stay in" in page and "mu[intercept]" in page
    with pytest.raises(RowsNotInMemory, match="PSIS-LOO"):
        bm.compare({"a": back, "b": post})
    os.utime(src, ns=(0, 0))  # the file changes under the run: its rows are never silently read
    with pytest.raises(ValueError, match="changed since it was scanned"):
        next(back.data.chunks())


@pytest.mark.parametrize("edit, match", [
    (lambda df: df.assign(sales=df.sales.where(df.index != 1100)), r"'sales' has 1 NaN .*row 1100.*task"),
    (lambda df: df.assign(shop=df.shop.where(df.index != 1050, "")), r"blank label.*row 1050"),
    (lambda df: df.assign(shop=df.shop.where(df.index != 1000, " s3")), r"'s3' and ' s3' differ only in spaces"),
    (lambda df: df.assign(x0=df.x0.astype(object).where(df.index != 900, "a")), r"feature column 'x0' is not numeric"),
    (lambda df: df.assign(shop="one"), r"at least 2 tasks"),
    (lambda df: df.drop(columns="sales"), r"target 'sales' not found in .*columns are"),
    (lambda df: df.head(0), r"no rows"),
])
def test_bad_files_get_one_line(files, tmp_path, edit, match):
    df, _ = files
    path = tmp_path / "bad.csv"
    edit(df).to_csv(path, index=False)
    with pytest.raises((ValueError, TypeError), match=match):
        StreamedData.scan(path, task="shop", target="sales", chunk_rows=256)


def test_missing_damaged_and_folder_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StreamedData.scan(tmp_path / "none.parquet", task="t", target="y")
    with pytest.raises(ValueError, match="is a folder"):
        StreamedData.scan(tmp_path, task="t", target="y")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1" + bytes(100))
    with pytest.raises(ValueError, match="cannot be read as parquet"):
        StreamedData.scan(bad, task="t", target="y")
    with pytest.raises(ValueError, match="chunk_rows"):
        StreamedData.scan(bad, task="t", target="y", chunk_rows=0)


def test_steps_that_need_rows_name_the_file(files):
    df, folder = files
    data = StreamedData.scan(folder / "d.parquet", task="shop", target="sales")
    with pytest.raises(RowsNotInMemory, match=r"d.parquet.*1,200 rows.*MultiTaskData.from_parquet"):
        bm.fit(bm.models.Hierarchical(likelihood="student_t"), data, method="svi", steps=10, progress=False)
    with pytest.raises(RowsNotInMemory, match="validation"):
        bm.fit(bm.models.Hierarchical(), data, method="svi", steps=10, validation=0.2, progress=False)
    with pytest.raises(ValueError, match="stay in the file: use task_batch_size="):
        bm.fit(bm.models.Hierarchical(), data, method="svi", steps=10, batch_size=100, progress=False)
    with pytest.raises(RowsNotInMemory, match="d.parquet"):
        _ = data.X


def test_from_parquet_loads_the_columns_used(files):
    df, folder = files
    data = bm.MultiTaskData.from_parquet(folder / "d.parquet", task="shop", target="sales", features=["x1"])
    assert data.feature_names == ["x1"] and data.n_rows == len(df)
    assert data.digest() == bm.MultiTaskData.from_frame(df, task="shop", target="sales", features=["x1"]).digest()


def test_relations_of_a_subset_and_too_many_tasks(files, monkeypatch):
    df, _ = files
    post = _fit(bm.MultiTaskData.from_frame(df, task="shop", target="sales"))
    full = post.relations().mean()
    some = post.relations(tasks=["s4", "s1", "s7"]).mean()
    np.testing.assert_allclose(some.to_numpy(), full.loc[["s4", "s1", "s7"], ["s4", "s1", "s7"]].to_numpy(),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="not a task of this fit"):
        post.relations(tasks=["s1", "nope"])
    import bayesmtl.relations as rel

    monkeypatch.setattr(rel, "MAX_VALUES", 100 * 10 * 10)  # 100 draws of 10 tasks' relations
    with pytest.raises(rel.TooManyTasks, match="naming up to 10 tasks"):
        post.relations()
    with pytest.warns(UserWarning, match="use 100 of the 200 draws"):
        post.relations(tasks=[f"s{t}" for t in range(10)])


def test_cli_streams_a_parquet_file(files, tmp_path, capsys):
    from bayesmtl.cli import main

    df, folder = files
    svi = ["--method", "svi", "--draws", "100", "--option", "steps=300", "--option", "compile=None", "--quiet"]
    run = tmp_path / "run"
    assert main(["fit", "--data", str(folder / "d.parquet"), "--task", "shop", "--target", "sales", "--stream",
                 "--out", str(run), *svi]) == 0
    assert not (run / "data.nc").exists()
    info = json.loads((run / "run.json").read_text())
    assert info["path"] == "collapsed" and info["data"].startswith("StreamedData(1,200 rows")
    assert main(["summary", str(run)]) == 0
    assert "mu[intercept]" in capsys.readouterr().out
    code = main(["fit", "--data", str(folder / "d.parquet"), "--task", "shop", "--target", "sales", "--stream",
                 "--noise", "x0", "--out", str(tmp_path / "r2"), *svi])
    assert code != 0 and "--noise is not read with --stream" in capsys.readouterr().err
    # the same file loaded whole (parquet told from CSV by its first bytes)
    assert main(["fit", "--data", str(folder / "d.parquet"), "--task", "shop", "--target", "sales",
                 "--out", str(tmp_path / "r3"), *svi]) == 0
    assert (tmp_path / "r3" / "data.nc").exists()


def test_numeric_task_labels_stream_as_loaded(files, tmp_path):
    df, _ = files
    ints = df.assign(shop=df.shop.str[1:].astype(int))  # tasks 0, 1, ... as integers in the file
    ints.to_parquet(tmp_path / "i.parquet", row_group_size=100)
    data = StreamedData.scan(tmp_path / "i.parquet", task="shop", target="sales", chunk_rows=100)
    loaded = bm.MultiTaskData.from_frame(ints, task="shop", target="sales")
    assert data.task_names == loaded.task_names
    tasks = torch.cat([c.task for c in data.chunks()])
    torch.testing.assert_close(tasks, loaded.task)
