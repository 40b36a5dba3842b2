"""Loaders for the multi-task benchmark data in the shared data folder.

Every loader reads the files where they lie (nothing is copied into the project) and returns
tidy pandas frames: one row per observation, a string task column, numeric feature columns
and the target. Unless stated otherwise, the frame's index is the row's 0-based position in
the source (for ``.mat`` cell arrays: the tasks stacked in cell order), so train and test parts
of a split can be matched back to the full data. That position is kept in the index rather
than in a column so that it is never mistaken for a feature.

The folder is located by :func:`data_dir`; each folder's README documents the files. The
module-level tuples (``SCHOOL_FEATURES`` etc.) name the feature columns of each data set, which
is handy where a frame has more than one candidate target (Parkinson's) or extra columns.
They are tuples: select with ``df[list(SCHOOL_FEATURES)]`` (pandas reads a tuple as one key).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "data_dir",
    "school",
    "landmine",
    "landmine_split",
    "sarcos",
    "sarcos_long",
    "computer_survey",
    "parkinsons",
    "SCHOOL_FEATURES",
    "LANDMINE_FEATURES",
    "SARCOS_INPUTS",
    "SARCOS_TORQUES",
    "SURVEY_ATTRIBUTES",
    "PARKINSONS_VOICE",
]

# school_b.mat / school.mat columns 0..26 (column 27, the constant bias, is dropped).
# The raw VR code is 1=VR3, 2=VR1, 3=VR2, so the one-hot columns 7, 8, 9 are VR3, VR1, VR2.
SCHOOL_FEATURES: tuple[str, ...] = (
    "year_1985", "year_1986", "year_1987",
    "pct_fsm", "pct_vr1",
    "female", "male",
    "vr3", "vr1", "vr2",
    "ethnic_eswi", "ethnic_african", "ethnic_arab", "ethnic_bangladeshi", "ethnic_caribbean",
    "ethnic_greek", "ethnic_indian", "ethnic_pakistani", "ethnic_se_asian", "ethnic_turkish",
    "ethnic_other",
    "school_mixed", "school_boys", "school_girls",
    "denom_maintained", "denom_cofe", "denom_rc",
)  # fmt: skip

LANDMINE_FEATURES: tuple[str, ...] = tuple(f"x{j}" for j in range(1, 10))

# 7 joint positions, 7 velocities, 7 accelerations, in that order.
SARCOS_INPUTS: tuple[str, ...] = tuple(f"x{j}" for j in range(1, 22))
SARCOS_TORQUES: tuple[str, ...] = tuple(f"torque_{j}" for j in range(1, 8))

# designMarix columns 1..13 (column 0, the constant, is dropped), coded -1/+1.
SURVEY_ATTRIBUTES: tuple[str, ...] = (
    "hot_line", "ram", "screen_size", "cpu_speed", "hard_disk", "cd_rom", "cache",
    "color", "availability", "warranty", "software", "guarantee", "price",
)  # fmt: skip

# UCI column names of the 16 voice measures, kept verbatim.
PARKINSONS_VOICE: tuple[str, ...] = (
    "Jitter(%)", "Jitter(Abs)", "Jitter:RAP", "Jitter:PPQ5", "Jitter:DDP",
    "Shimmer", "Shimmer(dB)", "Shimmer:APQ3", "Shimmer:APQ5", "Shimmer:APQ11", "Shimmer:DDA",
    "NHR", "HNR", "RPDE", "DFA", "PPE",
)  # fmt: skip

_N_SCHOOL_SPLITS = 10


# --------------------------------------------------------------------------------------------
# locating files
# --------------------------------------------------------------------------------------------


def data_dir() -> Path:
    """The shared benchmark data folder.

    Returns
    -------
    pathlib.Path
        ``$BAYESMTL_DATA`` if that environment variable is set, else ``<project root>/../
        shared/data`` located from this file (``Path(__file__).resolve().parents[2] /
        "shared" / "data"``).

    Raises
    ------
    FileNotFoundError
        If the chosen folder does not exist; the message names the path that was tried.
    """
    env = os.environ.get("BAYESMTL_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"BAYESMTL_DATA is set to {env!r}, but {path} is not a directory; point it at "
                "the benchmark data folder (the one holding school/, landmine/, sarcos/, ...)"
            )
        return path
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"benchmark data folder not found at {path}; set the environment variable "
            "BAYESMTL_DATA to the folder holding school/, landmine/, sarcos/, ..."
        )
    return path


def _file(*parts: str) -> Path:
    """Path of a data file under :func:`data_dir`, raising if it is missing."""
    path = data_dir().joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path


def _loadmat(path: Path) -> dict:
    import scipy.io  # lazy: only the loaders need it

    return scipy.io.loadmat(str(path))


def _labels(prefix: str, codes: np.ndarray, width: int) -> np.ndarray:
    """String task labels such as ``school_001`` from integer codes."""
    return np.array([f"{prefix}_{int(c):0{width}d}" for c in codes], dtype=object)


# --------------------------------------------------------------------------------------------
# school (ILEA)
# --------------------------------------------------------------------------------------------


def school(split: int | None = None) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """ILEA exam scores: 139 schools (tasks), 15,362 students.

    Reads the Argyriou et al. (2008) encoding ``school/argyriou2008_splits/school_b.mat``
    (``x`` is (28, 15362) features x students, uint8; ``y`` is (15362, 1); ``task_indexes`` is
    the 1-based start row of each school). The bias row 27 is dropped; models add their own
    intercept.

    Parameters
    ----------
    split : int or None
        None returns the full data. ``k`` in 0..9 returns the k-th of the 10 random ~75/25
        train/test splits of Argyriou et al. (2008), read from ``school_{k+1}_indexes.mat``.
        Their ``tr`` / ``tst`` arrays hold **1-based** row numbers into the columns of ``x``
        (equivalently the rows of ``y``); row ``r`` there is index ``r - 1`` here. Rows keep
        the order of the split file (grouped by school, shuffled within a school).

    Returns
    -------
    pandas.DataFrame or (train, test)
        15,362 rows (11,472 / 3,890 for a split), columns:

        * ``school`` (str): task label ``school_001`` .. ``school_139``; the number is the
          school code in ``ILEA567.DAT``.
        * the 27 features of :data:`SCHOOL_FEATURES` (float64): year one-hot, ``pct_fsm`` and
          ``pct_vr1`` (integer percentages, not scaled), ``female``/``male``, VR band one-hot
          (``vr1`` = top band; all three 0 for 15 students with a missing band), ethnic group
          one-hot, school gender and school denomination one-hot.
        * ``score`` (float64): exam score, 1..70 (target).

        The index is the 0-based student row in ``school_b.mat``.
    """
    d = _loadmat(_file("school", "argyriou2008_splits", "school_b.mat"))
    x = d["x"].T.astype(np.float64)  # (15362, 28); cast from uint8 before any arithmetic
    y = d["y"].ravel().astype(np.float64)  # (15362,)
    starts = d["task_indexes"].ravel().astype(np.int64) - 1  # 0-based first row per school
    n = x.shape[0]
    if x.shape[1] != len(SCHOOL_FEATURES) + 1 or not np.all(x[:, -1] == 1):
        raise ValueError("school_b.mat: expected 27 features plus a constant bias row")
    # school code of every row: 1 + number of task starts at or before the row
    code = np.searchsorted(starts, np.arange(n), side="right")
    df = pd.DataFrame(x[:, :-1], columns=list(SCHOOL_FEATURES))
    df.insert(0, "school", _labels("school", code, 3))
    df["score"] = y
    if split is None:
        return df

    if not isinstance(split, (int, np.integer)) or not 0 <= split < _N_SCHOOL_SPLITS:
        raise ValueError(f"split must be an int in 0..{_N_SCHOOL_SPLITS - 1}, got {split!r}")
    s = _loadmat(_file("school", "argyriou2008_splits", f"school_{int(split) + 1}_indexes.mat"))
    tr = s["tr"].ravel().astype(np.int64) - 1  # 1-based MATLAB row numbers -> 0-based
    te = s["tst"].ravel().astype(np.int64) - 1
    for name, idx in (("tr", tr), ("tst", te)):
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"school split {split}: {name} indices out of range 1..{n}")
    return df.iloc[tr], df.iloc[te]


# --------------------------------------------------------------------------------------------
# landmine
# --------------------------------------------------------------------------------------------


def landmine() -> pd.DataFrame:
    """Landmine detection (Xue et al. 2007): 29 minefields (tasks), 14,820 rows.

    Reads ``landmine/LandmineData.mat`` (cell arrays ``feature`` (1, 29) of (n_t, 9) float64
    and ``label`` (1, 29) of (n_t, 1) uint8).

    Returns
    -------
    pandas.DataFrame
        14,820 rows, columns:

        * ``field`` (str): ``field_01`` .. ``field_29`` in cell order. Fields 1-15 are from
          highly foliated regions, 16-29 from bare earth / desert.
        * ``x1`` .. ``x9`` (float64): the radar-image features (already roughly standardised).
        * ``label`` (int64): 1 = landmine, 0 = clutter (904 positives, about 6.1%).

        The index is the 0-based row of the fields stacked in cell order.
    """
    d = _loadmat(_file("landmine", "LandmineData.mat"))
    feats, labs = d["feature"], d["label"]  # (1, T) object arrays: task t is [0, t]
    n_tasks = feats.shape[1]
    X = np.vstack([np.asarray(feats[0, t], dtype=np.float64) for t in range(n_tasks)])
    y = np.concatenate([np.asarray(labs[0, t]).ravel().astype(np.int64) for t in range(n_tasks)])
    sizes = [feats[0, t].shape[0] for t in range(n_tasks)]
    df = pd.DataFrame(X, columns=list(LANDMINE_FEATURES))
    df.insert(0, "field", _labels("field", np.repeat(np.arange(1, n_tasks + 1), sizes), 2))
    df["label"] = y
    return df


def landmine_split(df: pd.DataFrame, n_train: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random per-field train/test split of the landmine data, stratified by label.

    The protocol of Xue et al. (2007) as used here: in each field draw ``n_train`` rows
    (typically 40, 80 or 160; repeat with 10 seeds), with the positives in proportion to the
    field's positive rate, rounded, but at least one and leaving at least one negative. All
    other rows of the field are test rows.

    Parameters
    ----------
    df : pandas.DataFrame
        A frame from :func:`landmine` (needs columns ``field`` and ``label``).
    n_train : int
        Training rows per field; must be smaller than the smallest field.
    seed : int
        Seed of the numpy generator; the same seed gives the same split.

    Returns
    -------
    (train, test) : tuple of pandas.DataFrame
        Row subsets of ``df`` with its columns and index, each in the order of ``df``.
        ``train`` has ``n_train`` rows per field, ``test`` the rest.
    """
    for col in ("field", "label"):
        if col not in df.columns:
            raise ValueError(f"landmine_split needs a {col!r} column; got {list(df.columns)}")
    if n_train < 2:
        raise ValueError(f"n_train must be at least 2 (one positive, one negative), got {n_train}")
    rng = np.random.default_rng(seed)
    labels = df["label"].to_numpy()
    train_pos: list[np.ndarray] = []
    # fields in order of first appearance, so the draw does not depend on label sorting
    for field in pd.unique(df["field"]):
        rows = np.flatnonzero((df["field"] == field).to_numpy())
        pos, neg = rows[labels[rows] == 1], rows[labels[rows] != 1]
        if n_train >= len(rows):
            raise ValueError(f"n_train={n_train} but field {field!r} has only {len(rows)} rows")
        if len(pos) == 0:
            raise ValueError(f"field {field!r} has no positive rows")
        k_pos = int(round(n_train * len(pos) / len(rows)))
        k_pos = min(max(k_pos, 1), len(pos), n_train - 1)
        k_neg = n_train - k_pos
        if k_neg > len(neg):  # only if a field were mostly positive
            k_neg = len(neg)
            k_pos = n_train - k_neg
        train_pos.append(rng.choice(pos, size=k_pos, replace=False))
        train_pos.append(rng.choice(neg, size=k_neg, replace=False))
    is_train = np.zeros(len(df), dtype=bool)
    is_train[np.concatenate(train_pos)] = True
    return df.iloc[is_train], df.iloc[~is_train]


# --------------------------------------------------------------------------------------------
# SARCOS
# --------------------------------------------------------------------------------------------


def sarcos() -> tuple[pd.DataFrame, pd.DataFrame]:
    """SARCOS inverse dynamics, **test file only** (the 44,484-row training file is missing).

    Reads ``sarcos/sarcos_inv_test.mat`` (variable ``sarcos_inv_test``, (4449, 28) float64)
    and splits its rows by parity: even rows (0-based 0, 2, 4, ...) train, odd rows test.

    Returns
    -------
    (train, test) : tuple of pandas.DataFrame
        Wide frames of 2,225 and 2,224 rows, columns ``x1`` .. ``x21`` (7 joint positions,
        7 velocities, 7 accelerations) and ``torque_1`` .. ``torque_7`` (the 7 outputs/tasks),
        all float64. The index is the 0-based row in the file. Use :func:`sarcos_long` for
        the long format.
    """
    a = _loadmat(_file("sarcos", "sarcos_inv_test.mat"))["sarcos_inv_test"]
    if a.shape[1] != len(SARCOS_INPUTS) + len(SARCOS_TORQUES):
        raise ValueError(f"sarcos_inv_test.mat: expected 28 columns, got {a.shape}")
    df = pd.DataFrame(np.asarray(a, dtype=np.float64), columns=[*SARCOS_INPUTS, *SARCOS_TORQUES])
    return df.iloc[0::2], df.iloc[1::2]


def sarcos_long(frame: pd.DataFrame) -> pd.DataFrame:
    """Melt a wide SARCOS frame to long format, one row per (input row, joint).

    Parameters
    ----------
    frame : pandas.DataFrame
        A wide frame from :func:`sarcos` (columns ``x1`` .. ``x21``, ``torque_1`` ..
        ``torque_7``), n rows.

    Returns
    -------
    pandas.DataFrame
        7 n rows with columns ``x1`` .. ``x21``, ``joint`` (str, ``joint_1`` .. ``joint_7``,
        the task) and ``torque`` (float64, target). Joint-major order: row ``j * n + i`` is
        joint ``j + 1`` of the i-th row of ``frame``. The index is a fresh RangeIndex.
    """
    missing = [c for c in (*SARCOS_INPUTS, *SARCOS_TORQUES) if c not in frame.columns]
    if missing:
        raise ValueError(f"sarcos_long: frame lacks columns {missing}")
    long = frame.melt(
        id_vars=list(SARCOS_INPUTS), value_vars=list(SARCOS_TORQUES),
        var_name="joint", value_name="torque", ignore_index=True,
    )  # fmt: skip
    long["joint"] = long["joint"].str.replace("torque_", "joint_", regex=False)
    return long.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# computer survey (Lenk et al. 1996)
# --------------------------------------------------------------------------------------------


def computer_survey() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Computer survey conjoint data: 190 respondents (tasks) x 20 PC profiles.

    Reads ``computer_survey/conjointAnalysisComputerBuyers.mat``: ``likeBuy`` (190, 20) uint8
    ratings and ``designMarix`` (sic; (20, 14) int16, column 0 constant, dropped). Profiles
    1-16 are the calibration (training) design, 17-20 the validation (test) profiles, as in
    Argyriou et al. (2008). Note: they report 180 respondents; this file has 190.

    Returns
    -------
    (train, test) : tuple of pandas.DataFrame
        3,040 (190 x 16) and 760 (190 x 4) rows, respondent-major, columns:

        * ``respondent`` (str): ``respondent_001`` .. ``respondent_190`` (row order of
          ``likeBuy``).
        * the 13 attributes of :data:`SURVEY_ATTRIBUTES` (float64, -1/+1): hot line, RAM,
          screen size, CPU speed, hard disk, CD-ROM, cache, colour, availability, warranty,
          software, guarantee, price.
        * ``rating`` (float64): likelihood of buying, integer 0..10 (target).

        The index is ``20 * respondent + profile`` (both 0-based).
    """
    d = _loadmat(_file("computer_survey", "conjointAnalysisComputerBuyers.mat"))
    ratings = d["likeBuy"].astype(np.float64)  # (190, 20)
    design = d["designMarix"].astype(np.float64)  # (20, 14)
    n_resp, n_prof = ratings.shape
    if design.shape != (n_prof, len(SURVEY_ATTRIBUTES) + 1) or not np.all(design[:, 0] == 1):
        raise ValueError(f"designMarix: expected ({n_prof}, 14) with a constant column 0")
    # respondent-major: rows r*20 .. r*20+19 are respondent r's 20 profiles
    df = pd.DataFrame(np.tile(design[:, 1:], (n_resp, 1)), columns=list(SURVEY_ATTRIBUTES))
    codes = np.repeat(np.arange(1, n_resp + 1), n_prof)
    df.insert(0, "respondent", _labels("respondent", codes, 3))
    df["rating"] = ratings.ravel()
    profile = np.tile(np.arange(n_prof), n_resp)
    return df.iloc[profile < 16], df.iloc[profile >= 16]


# --------------------------------------------------------------------------------------------
# Parkinson's telemonitoring (UCI)
# --------------------------------------------------------------------------------------------


def parkinsons() -> pd.DataFrame:
    """Parkinson's telemonitoring (UCI): 42 patients (tasks), 5,875 recordings.

    Reads ``parkinsons_telemonitoring/parkinsons_updrs.data`` (CSV with header).

    Returns
    -------
    pandas.DataFrame
        5,875 rows, columns:

        * ``patient`` (str): ``patient_01`` .. ``patient_42`` (from ``subject#``).
        * ``age`` (int64), ``sex`` (int64, 0 = male, 1 = female; constant per patient),
          ``test_time`` (float64, days since recruitment; a few values are negative).
        * the 16 voice measures of :data:`PARKINSONS_VOICE` (float64), UCI names kept.
        * ``motor_UPDRS``, ``total_UPDRS`` (float64): the two targets. Pass ``features=``
          explicitly when modelling one of them so that the other is not used as a feature.

        The index is the 0-based row in the file.
    """
    raw = pd.read_csv(_file("parkinsons_telemonitoring", "parkinsons_updrs.data"))
    expected = ["subject#", "age", "sex", "test_time", "motor_UPDRS", "total_UPDRS",
                *PARKINSONS_VOICE]  # fmt: skip
    if list(raw.columns) != expected:
        raise ValueError(f"parkinsons_updrs.data: unexpected header {list(raw.columns)}")
    df = pd.DataFrame({"patient": _labels("patient", raw["subject#"].to_numpy(), 2)})
    df["age"] = raw["age"].astype(np.int64)
    df["sex"] = raw["sex"].astype(np.int64)
    df["test_time"] = raw["test_time"].astype(np.float64)
    for c in PARKINSONS_VOICE:
        df[c] = raw[c].astype(np.float64)
    df["motor_UPDRS"] = raw["motor_UPDRS"].astype(np.float64)
    df["total_UPDRS"] = raw["total_UPDRS"].astype(np.float64)
    return df
