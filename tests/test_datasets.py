"""Checks of the benchmark loaders against the numbers documented in the data READMEs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayesmtl import datasets

try:
    DATA = datasets.data_dir()
except FileNotFoundError as err:
    pytest.skip(f"benchmark data folder not available: {err}", allow_module_level=True)


@pytest.fixture(scope="module")
def school_df() -> pd.DataFrame:
    return datasets.school()


@pytest.fixture(scope="module")
def landmine_df() -> pd.DataFrame:
    return datasets.landmine()


def _no_nans(df: pd.DataFrame) -> None:
    assert not df.isna().any().any()


# ---------------------------------------------------------------------------- data_dir


def test_data_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("BAYESMTL_DATA", str(tmp_path))
    assert datasets.data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="school_b.mat"):
        datasets.school()
    monkeypatch.setenv("BAYESMTL_DATA", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="BAYESMTL_DATA"):
        datasets.data_dir()


# ---------------------------------------------------------------------------- school


def test_school_shape_and_columns(school_df):
    df = school_df
    assert df.shape == (15362, 1 + 27 + 1)
    assert list(df.columns) == ["school", *datasets.SCHOOL_FEATURES, "score"]
    assert df["school"].nunique() == 139
    sizes = df.groupby("school", sort=True).size()
    assert sizes.min() == 22 and sizes.max() == 251
    assert sizes.iloc[:5].tolist() == [200, 91, 95, 212, 40]
    assert df["score"].between(1, 70).all()
    assert (df[list(datasets.SCHOOL_FEATURES[:3])].sum(axis=1) == 1).all()  # one year per student
    assert (df[["female", "male"]].sum(axis=1) == 1).all()
    assert (df[["vr1", "vr2", "vr3"]].sum(axis=1) == 0).sum() == 15  # missing VR band
    assert df.index.equals(pd.RangeIndex(15362))
    _no_nans(df)


def test_school_matches_raw_ilea_file(school_df):
    # fixed-width ILEA567.DAT: year, school, score, ..., gender(11), VR(12)
    raw = pd.read_fwf(
        DATA / "school" / "ILEA567.DAT",
        widths=[1, 3, 2, 2, 2, 1, 1, 2, 1, 1],
        names=["year", "school", "score", "fsm", "vr1p", "gender", "vr", "eth", "sg", "den"],
    )
    df = school_df
    assert len(raw) == len(df)
    assert (df["school"].str[-3:].astype(int).to_numpy() == raw["school"].to_numpy()).all()
    assert (df["score"].to_numpy() == raw["score"].to_numpy()).all()
    assert (df["pct_fsm"].to_numpy() == raw["fsm"].to_numpy()).all()
    assert (df["female"].to_numpy() == raw["gender"].to_numpy()).all()
    year = df[["year_1985", "year_1986", "year_1987"]].to_numpy().argmax(axis=1) + 1
    assert (year == raw["year"].to_numpy()).all()
    # raw VR codes: 1 = VR3, 2 = VR1, 3 = VR2
    for code, col in ((1, "vr3"), (2, "vr1"), (3, "vr2")):
        assert (df[col].to_numpy() == (raw["vr"] == code).to_numpy()).all()


@pytest.mark.parametrize("k", [0, 9])
def test_school_split_disjoint_and_covering(k):
    train, test = datasets.school(split=k)
    assert len(train) == 11472 and len(test) == 3890
    tr, te = train.index.to_numpy(), test.index.to_numpy()
    assert len(np.unique(tr)) == len(tr) and len(np.unique(te)) == len(te)
    assert np.intersect1d(tr, te).size == 0
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(15362))
    assert train["school"].nunique() == 139 and test["school"].nunique() == 139
    frac = train.groupby("school").size() / (
        train.groupby("school").size() + test.groupby("school").size()
    )
    assert frac.between(0.72, 0.76).all()
    # each school's block in the split file starts at tr_indexes (1-based)
    import scipy.io

    s = scipy.io.loadmat(DATA / "school" / "argyriou2008_splits" / f"school_{k + 1}_indexes.mat")
    starts = s["tr_indexes"].ravel().astype(int) - 1
    codes = train["school"].iloc[starts].str[-3:].astype(int).to_numpy()
    assert np.array_equal(codes, np.arange(1, 140))


def test_school_split_differs_and_validates():
    a, _ = datasets.school(split=0)
    b, _ = datasets.school(split=1)
    assert not np.array_equal(np.sort(a.index), np.sort(b.index))
    with pytest.raises(ValueError):
        datasets.school(split=10)


# ---------------------------------------------------------------------------- landmine


def test_landmine(landmine_df):
    df = landmine_df
    assert df.shape == (14820, 1 + 9 + 1)
    assert list(df.columns) == ["field", *datasets.LANDMINE_FEATURES, "label"]
    fields = list(pd.unique(df["field"]))
    assert fields == [f"field_{t:02d}" for t in range(1, 30)]
    assert set(df["label"].unique()) == {0, 1}
    assert df["label"].dtype == np.int64
    assert df["label"].sum() == 904
    assert df["label"].mean() == pytest.approx(0.061, abs=0.001)
    sizes = df.groupby("field", sort=False).size()
    assert sizes.iloc[:3].tolist() == [690, 690, 689] and sizes.iloc[-1] == 449
    pos = df.groupby("field", sort=False)["label"].sum()
    assert pos.iloc[:3].tolist() == [40, 48, 39] and pos.iloc[-1] == 42
    _no_nans(df)


@pytest.mark.parametrize("n_train", [40, 80, 160])
def test_landmine_split(landmine_df, n_train):
    train, test = datasets.landmine_split(landmine_df, n_train=n_train, seed=3)
    assert (train.groupby("field").size() == n_train).all()
    assert train["field"].nunique() == 29
    assert (train.groupby("field")["label"].sum() >= 1).all()
    assert (train.groupby("field")["label"].min() == 0).all()
    assert len(train) + len(test) == len(landmine_df)
    assert np.intersect1d(train.index, test.index).size == 0
    # proportional positives: pooled training rate stays near the overall 6.1%
    assert 0.04 < train["label"].mean() < 0.09


def test_landmine_split_seeded(landmine_df):
    a, _ = datasets.landmine_split(landmine_df, 40, seed=0)
    b, _ = datasets.landmine_split(landmine_df, 40, seed=0)
    c, _ = datasets.landmine_split(landmine_df, 40, seed=1)
    assert a.index.equals(b.index)
    assert not a.index.equals(c.index)
    with pytest.raises(ValueError, match="field_"):
        datasets.landmine_split(landmine_df, 500, seed=0)


# ---------------------------------------------------------------------------- sarcos


def test_sarcos():
    train, test = datasets.sarcos()
    cols = [*(f"x{j}" for j in range(1, 22)), *(f"torque_{j}" for j in range(1, 8))]
    assert list(train.columns) == cols and list(test.columns) == cols
    assert len(train) == 2225 and len(test) == 2224
    assert (train.index % 2 == 0).all() and (test.index % 2 == 1).all()
    _no_nans(train)
    _no_nans(test)

    long = datasets.sarcos_long(test)
    assert len(long) == 7 * 2224
    assert list(long.columns) == [*(f"x{j}" for j in range(1, 22)), "joint", "torque"]
    assert list(pd.unique(long["joint"])) == [f"joint_{j}" for j in range(1, 8)]
    # joint-major order: row j*n + i is joint j+1 of wide row i
    n = len(test)
    assert np.array_equal(long["torque"].to_numpy()[2 * n : 3 * n], test["torque_3"].to_numpy())
    assert np.array_equal(long["x5"].to_numpy()[6 * n :], test["x5"].to_numpy())


# ---------------------------------------------------------------------------- computer survey


def test_computer_survey():
    train, test = datasets.computer_survey()
    assert len(train) == 190 * 16 and len(test) == 190 * 4
    cols = ["respondent", *datasets.SURVEY_ATTRIBUTES, "rating"]
    assert list(train.columns) == cols and list(test.columns) == cols
    assert train["respondent"].nunique() == 190 and test["respondent"].nunique() == 190
    assert (train.groupby("respondent").size() == 16).all()
    assert (test.groupby("respondent").size() == 4).all()
    assert train["rating"].between(0, 10).all() and test["rating"].between(0, 10).all()
    assert set(np.unique(train[list(datasets.SURVEY_ATTRIBUTES)])) == {-1.0, 1.0}
    # the 16 calibration profiles form an orthogonal design
    X = train[train["respondent"] == "respondent_001"][list(datasets.SURVEY_ATTRIBUTES)]
    assert np.array_equal(X.to_numpy().T @ X.to_numpy(), 16 * np.eye(13))
    full = pd.concat([train, test])
    assert full["rating"].mean() == pytest.approx(4.75, abs=0.01)
    assert np.array_equal(np.sort(full.index), np.arange(3800))
    _no_nans(full)


# ---------------------------------------------------------------------------- parkinsons


def test_parkinsons():
    df = datasets.parkinsons()
    assert df.shape == (5875, 1 + 3 + 16 + 2)
    expected = ["patient", "age", "sex", "test_time", *datasets.PARKINSONS_VOICE,
                "motor_UPDRS", "total_UPDRS"]  # fmt: skip
    assert list(df.columns) == expected
    assert df["patient"].nunique() == 42
    sizes = df.groupby("patient").size()
    assert sizes.min() == 101 and sizes.max() == 168
    assert (df.groupby("patient")["sex"].nunique() == 1).all()
    assert df.groupby("patient")["sex"].first().sum() == 14  # 14 female patients
    assert df["motor_UPDRS"].between(5.0, 39.6).all()
    assert df["total_UPDRS"].between(7.0, 55.0).all()
    _no_nans(df)
