"""Multi-task data in long format: one row per observation, a task label per row.

``MultiTaskData`` is the only way data enters bayesmtl. It validates at the edge (every error
names the column or task at fault), keeps task names in order of appearance, records feature
standardisation so it can be replayed on new rows, and maps rows of unseen tasks to new task
indices for prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .devices import on_host

__all__ = ["MultiTaskData", "wide_to_long"]


def _numeric_column(df: pd.DataFrame, col: str, role: str) -> np.ndarray:
    if col not in df.columns:
        raise ValueError(
            f"{role} column {col!r} not found; the data has columns {list(map(str, df.columns))}"
        )
    s = df[col]
    if s.dtype == bool:
        s = s.astype(float)
    if not pd.api.types.is_numeric_dtype(s):
        bad = s[pd.to_numeric(s, errors="coerce").isna() & s.notna()]
        example = repr(bad.iloc[0]) if len(bad) else "non-numeric values"
        raise TypeError(
            f"{role} column {col!r} is not numeric (dtype {s.dtype}, e.g. {example}); "
            "encode categories as numbers (e.g. pandas.get_dummies) first"
        )
    return s.to_numpy(dtype=float)


def _check_finite(values: np.ndarray, name: str, tasks: np.ndarray | None, offset: int = 0) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.flatnonzero(bad)
        where = f" (first at row {rows[0] + offset}"
        if tasks is not None:
            where += f", task {tasks[rows[0]]!r}"
        where += ")"
        raise ValueError(f"column {name!r} has {bad.sum()} NaN or infinite value(s){where}")


def _real_array(a, name: str) -> np.ndarray:
    """``a`` as a float array; complex values (their imaginary part would be dropped) and
    non-numbers are an error naming the argument."""
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
    if np.iscomplexobj(a):
        raise ValueError(f"{name} holds complex numbers; give real values")
    try:
        return a.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers; got values of type {a.dtype}") from None


#: what pandas' read_csv reads as missing by default (its documented list), kept for every column
#: but the task column, whose labels stay text
_NA_TEXT = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
            "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def csv_header(path: Path) -> list[str]:
    """The header of a CSV file, refusing a column named twice or left nameless, an empty or
    non-UTF-8 file, a folder."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError:
        raise ValueError(f"data file {str(path)!r} is not a UTF-8 text CSV") from None
    except IsADirectoryError:
        raise ValueError(f"data file {str(path)!r} is a folder, not a CSV file") from None
    if not header:
        raise ValueError(f"data file {str(path)!r} is empty")
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if not name.strip().lstrip("\ufeff"):
            hint = " (a saved pandas index? write it with index=False)" if i == 0 else ""
            raise ValueError(f"data file {str(path)!r}: column {i + 1} of the header has no name{hint}; "
                             "name every column")
        if name in seen:
            raise ValueError(f"data file {str(path)!r}: column {name!r} appears twice in the header "
                             f"(columns {seen[name] + 1} and {i + 1}); give every column its own name")
        seen[name] = i
    return header


def csv_options(header: list[str], task: str | None) -> dict:
    """pandas.read_csv's options that keep the task column's labels as text."""
    if task is None or task not in header:
        return {}
    return {"dtype": {task: str}, "keep_default_na": False,
            "na_values": {c: list(_NA_TEXT) for c in header if c != task}}


def read_csv(path: Path, task: str | None = None) -> pd.DataFrame:
    """A CSV file as a frame, refusing what pandas would silently rename or misread: a header
    that names a column twice (read as ``x`` and ``x.1``) or leaves one nameless (a saved pandas
    index), a file with no rows, an empty or unreadable file. The ``task`` column is read as text,
    so a task named ``NA`` or ``null`` stays a task."""
    header = csv_header(path)
    kw = csv_options(header, task)
    try:
        frame = pd.read_csv(path, **kw)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"data file {str(path)!r} cannot be read as CSV: {str(e).strip().splitlines()[0]}") from None
    if len(frame) == 0:
        raise ValueError(f"data file {str(path)!r} has a header but no rows")
    return frame


def label_text(col: pd.Series) -> np.ndarray:
    """Task labels as text; whole numbers read as floats (a column with a blank elsewhere) are
    written as integers."""
    if col.dtype.kind == "f" and np.all(np.mod(col.to_numpy(), 1) == 0):
        col = col.astype(np.int64)
    return col.astype(str).to_numpy()


def _labels(col: pd.Series, name: str, offset: int = 0) -> np.ndarray:
    """Task labels as strings; a missing or blank label, one holding a control character, and
    labels that differ only in surrounding spaces are errors naming the row. Whole numbers read
    as floats (a column with a blank elsewhere) are written as integers."""
    blank = col.isna() | (col.astype(str).str.strip() == "")
    if blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0]) + offset
        raise ValueError(f"task column {name!r} has {int(blank.sum())} missing or blank label(s) "
                         f"(first at row {row})")
    labels = label_text(col)
    distinct = list(pd.unique(labels))  # in order of first appearance; each checked once, not each row
    control = [s for s in distinct if any(ord(c) < 32 or ord(c) == 127 for c in s)]
    if control:
        row = int(np.flatnonzero(np.isin(labels, control))[0])
        raise ValueError(f"task column {name!r}: the label at row {row + offset} ({labels[row]!r}) holds a control "
                         "character (e.g. NUL or a tab); clean the labels")
    stripped: dict[str, str] = {}
    for s in distinct:
        other = stripped.setdefault(s.strip(), s)
        if other != s:
            raise ValueError(f"task column {name!r}: labels {other!r} and {s!r} differ only in spaces, so they "
                             "would be two tasks; strip the labels (or name the tasks apart)")
    return labels


@dataclass(frozen=True)
class MultiTaskData:
    """Long-format multi-task data as tensors.

    Attributes
    ----------
    X : Tensor, shape (N, D)
        Features (standardised if ``feature_mean`` is set). D may be 0.
    y : Tensor, shape (N,) or None
        Target; None for rows given only for prediction.
    task : LongTensor, shape (N,)
        Task index of each row, into ``task_names``.
    task_names : list of str, length T
        Task labels in order of first appearance.
    feature_names : list of str, length D
    noise : Tensor, shape (N,) or None
        Known observation standard deviation per row (meta-analysis).
    trials : Tensor, shape (N,) or None
        Number of trials per row (binomial likelihood).
    feature_mean, feature_scale : Tensor, shape (D,) or None
        The standardisation applied to ``X``; replayed on new rows by ``prepare``.
    n_known_tasks : int
        Tasks present when the model was trained; indices at or above it are new tasks.
    task_features : dict of str -> Tensor, shape (T,)
        Task-level covariates (constant within a task), one value per task in ``task_names``
        order: floats for numeric columns, integer codes into ``task_levels[name]`` otherwise.
    task_levels : dict of str -> list of str
        The categories of each categorical task feature, in order of first appearance.
    """

    X: torch.Tensor
    y: torch.Tensor | None
    task: torch.Tensor
    task_names: list[str]
    feature_names: list[str]
    target_name: str = "y"
    task_column: str = "task"
    noise: torch.Tensor | None = None
    trials: torch.Tensor | None = None
    noise_column: str | None = None
    trials_column: str | None = None
    feature_mean: torch.Tensor | None = None
    feature_scale: torch.Tensor | None = None
    n_known_tasks: int = field(default=-1)
    task_features: dict[str, torch.Tensor] = field(default_factory=dict)
    task_levels: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_known_tasks < 0:
            object.__setattr__(self, "n_known_tasks", len(self.task_names))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        task: str,
        target: str,
        features: Sequence[str] | None = None,
        *,
        noise: str | None = None,
        trials: str | None = None,
        task_features: Sequence[str] = (),
        standardize: bool = False,
        dtype: torch.dtype = torch.float64,
    ) -> MultiTaskData:
        """Build from a long data frame.

        ``features`` defaults to every column other than task, target, noise, trials and the
        task features. ``task_features`` are task-level columns (e.g. school size, region),
        constant within each task; a task prior receives them as ``tasks.features``.
        With ``standardize=True`` each feature is centred and scaled to unit sd; the
        transform is recorded and replayed on new rows.
        """
        with on_host():
            if not isinstance(df, pd.DataFrame):
                raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
            if task not in df.columns:
                raise ValueError(f"task column {task!r} not found; columns are {list(df.columns)}")
            if len(df) == 0:
                raise ValueError("the data frame has no rows")
            task_features = [task_features] if isinstance(task_features, str) else list(task_features)
            features = _roles(list(df.columns), task, target, features, noise, trials, task_features)
            if df.columns.duplicated().any():
                dup = df.columns[df.columns.duplicated()][0]
                raise ValueError(f"column {dup!r} appears more than once; give every column its own name")
            labels_str, X, y, nz, tr = _arrays(df, task, target, features, noise, trials)
            names = list(dict.fromkeys(labels_str))  # order of first appearance
            index = {n: i for i, n in enumerate(names)}
            task_idx = np.array([index[s] for s in labels_str], dtype=np.int64)
            out = cls._build(X, y, task_idx, names, list(map(str, features)), target, task, nz, tr,
                             noise, trials, standardize, dtype)
            if not task_features:
                return out
            values, levels = _task_level(df, task_features, labels_str, names, {}, dtype)
            return replace(out, task_features=values, task_levels=levels)

    @classmethod
    def from_wide(cls, df: pd.DataFrame, targets: Sequence[str], features: Sequence[str] | None = None, *,
                  standardize: bool = False, dtype: torch.dtype = torch.float64) -> MultiTaskData:
        """Build from a wide frame: one row per input, one target column per task (SARCOS's
        seven torques). Each non-missing entry of a target column becomes a row of that task
        (``wide_to_long``); ``features`` default to every column that is not a target.
        """
        with on_host():
            long = wide_to_long(df, targets, features)
            features = [c for c in long.columns if c not in ("task", "y")]
            return cls.from_frame(long, task="task", target="y", features=features, standardize=standardize,
                                  dtype=dtype)

    @classmethod
    def from_arrays(
        cls,
        X: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor,
        task: np.ndarray | torch.Tensor | Sequence,
        *,
        task_names: Sequence[str] | None = None,
        feature_names: Sequence[str] | None = None,
        noise: np.ndarray | torch.Tensor | None = None,
        trials: np.ndarray | torch.Tensor | None = None,
        standardize: bool = False,
        dtype: torch.dtype = torch.float64,
    ) -> MultiTaskData:
        """Build from arrays: X (N, D), y (N,), task (N,) of integer indices or labels. The same
        checks as ``from_frame``: finite real numbers, positive noise, whole-number trials."""
        with on_host():
            X = _real_array(X, "X")
            y = _real_array(y, "y")
            task = np.asarray(task.cpu() if torch.is_tensor(task) else task)
            if X.ndim == 1:
                X = X[:, None]
            if X.ndim != 2:
                raise ValueError(f"X must have shape (N, D); got shape {X.shape}")
            if y.ndim != 1 or len(y) != len(X) or task.shape != (len(X),):
                raise ValueError(
                    f"shape mismatch: X has {len(X)} rows, y has shape {y.shape}, task has shape {task.shape}; "
                    "expected y and task of shape (N,)"
                )
            if len(X) == 0:
                raise ValueError("X has no rows: there is no data to fit")
            if task_names is not None:
                task_names = list(map(str, task_names))
                dup = [n for i, n in enumerate(task_names) if n in task_names[:i]]
                if dup:
                    raise ValueError(f"task_names holds {dup[0]!r} twice; give every task its own name")
            if not np.issubdtype(task.dtype, np.integer):
                missing = pd.isna(pd.Series(task, dtype=object)).to_numpy()
                if missing.any():
                    raise ValueError(f"task label at row {int(np.flatnonzero(missing)[0])} is missing "
                                     f"({int(missing.sum())} missing in all); give every row a task")
                if task.dtype.kind == "f" and np.all(np.mod(task, 1) == 0):
                    task = task.astype(np.int64)  # whole-number indices read as floats
            if np.issubdtype(task.dtype, np.integer):
                if task_names is None:
                    task_names = [f"task_{i}" for i in range(int(task.max()) + 1)]
                task_names = list(map(str, task_names))
                if task.min() < 0 or task.max() >= len(task_names):
                    raise ValueError(f"task indices must lie in 0..{len(task_names) - 1}")
                idx = task.astype(np.int64)
            else:
                labels = task.astype(str)
                order = list(dict.fromkeys(labels))
                task_names = order if task_names is None else list(map(str, task_names))
                pos = {n: i for i, n in enumerate(task_names)}
                missing = [s for s in order if s not in pos]
                if missing:
                    raise ValueError(f"task label {missing[0]!r} is not in task_names")
                idx = np.array([pos[s] for s in labels], dtype=np.int64)
            feature_names = ([f"x{j}" for j in range(X.shape[1])] if feature_names is None
                             else list(map(str, feature_names)))
            if len(feature_names) != X.shape[1]:
                raise ValueError(f"{len(feature_names)} feature names for {X.shape[1]} feature columns")
            labels_str = np.asarray(task_names, dtype=object)[idx]
            for j, c in enumerate(feature_names):
                _check_finite(X[:, j], c, labels_str)
            _check_finite(y, "y", labels_str)
            nz = None if noise is None else _real_array(noise, "noise")
            tr = None if trials is None else _real_array(trials, "trials")
            for arr, name in ((nz, "noise"), (tr, "trials")):
                if arr is not None and arr.shape != (len(X),):
                    raise ValueError(f"{name} must have shape ({len(X)},); got {arr.shape}")
                if arr is not None:
                    _check_finite(arr, name, labels_str)
            if nz is not None and (nz <= 0).any():
                raise ValueError("noise must be positive (a standard deviation per row)")
            if tr is not None and ((tr < 0).any() or (tr != np.round(tr)).any()):
                raise ValueError("trials must hold non-negative integers")
            return cls._build(X, y, idx, task_names, feature_names, "y", "task", nz, tr,
                              None if nz is None else "noise", None if tr is None else "trials",
                              standardize, dtype)

    @classmethod
    def from_csv(cls, path: str | Path, task: str, target: str, **kwargs) -> MultiTaskData:
        """Read a long-format CSV file and call ``from_frame``."""
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a file path (str or pathlib.Path); got {type(path).__name__}")
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"data file {str(path)!r} does not exist")
        frame = read_csv(path, task)
        return cls.from_frame(frame, task=task, target=target, **kwargs)

    @classmethod
    def from_parquet(cls, path: str | Path, task: str, target: str, **kwargs) -> MultiTaskData:
        """Read a long-format parquet file (only the columns used) and call ``from_frame``. For a
        file too large for memory, ``StreamedData.scan`` reads it in chunks instead."""
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a file path (str or pathlib.Path); got {type(path).__name__}")
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"data file {str(path)!r} does not exist")
        import pyarrow.parquet as pq

        try:
            names = list(pq.ParquetFile(path).schema_arrow.names)
            features = kwargs.get("features")
            cols = None if features is None or isinstance(features, str) else list(dict.fromkeys(
                [task, target, *features, *(kwargs.get("task_features") or ()),
                 *(c for c in (kwargs.get("noise"), kwargs.get("trials")) if c is not None)]))
            frame = pq.read_table(path, columns=[c for c in cols if c in names] if cols else None).to_pandas()
        except (OSError, ValueError) as e:
            raise ValueError(f"data file {str(path)!r} cannot be read as parquet: {str(e).splitlines()[0]}") from None
        if len(frame) == 0:
            raise ValueError(f"data file {str(path)!r} has no rows")
        return cls.from_frame(frame, task=task, target=target, **kwargs)

    @classmethod
    def _build(cls, X, y, idx, names, features, target, task_col, noise, trials, noise_col,
               trials_col, standardize, dtype) -> MultiTaskData:
        counts = np.bincount(idx, minlength=len(names))
        # values whose squares overflow make every data-scaled default prior inf or nan
        limit = float(np.sqrt(torch.finfo(dtype).max)) / 1e3
        for values, name in [*([] if standardize else zip(X.T, features, strict=True)), (y, target)]:
            big = np.abs(values).max(initial=0.0)
            if big > limit:
                raise ValueError(f"column {name!r} holds values as large as {big:.3g}, too large to compute "
                                 f"with (above {limit:.1g} in {str(dtype).replace('torch.', '')}); rescale it")
        if len(names) < 2:
            raise ValueError(
                f"multi-task data needs at least 2 tasks; column {task_col!r} has only {names}"
            )
        empty = [names[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise ValueError(f"task {empty[0]!r} has no rows ({len(empty)} empty task(s) in all)")
        mean = scale = None
        if standardize and X.shape[1]:
            with np.errstate(over="ignore", invalid="ignore"):
                m, s = X.mean(0), X.std(0)
            bad = ~(np.isfinite(m) & np.isfinite(s))
            if bad.any():
                raise ValueError(f"feature {features[int(np.flatnonzero(bad)[0])]!r} is too large to standardise "
                                 "(its mean or sd overflows); rescale the column")
            s[s == 0] = 1.0  # a constant column stays as it is, centred
            X = (X - m) / s
            mean, scale = torch.as_tensor(m, dtype=dtype), torch.as_tensor(s, dtype=dtype)
        as_t = lambda a: None if a is None else torch.tensor(np.array(a, dtype=float), dtype=dtype)  # noqa: E731
        return cls(
            X=as_t(X), y=as_t(y), task=torch.as_tensor(idx),
            task_names=list(names), feature_names=list(features), target_name=target,
            task_column=task_col, noise=as_t(noise), trials=as_t(trials),
            noise_column=noise_col, trials_column=trials_col,
            feature_mean=mean, feature_scale=scale,
        )

    # ------------------------------------------------------------------ properties
    @property
    def n_rows(self) -> int:
        """Number of rows N."""
        return int(self.X.shape[0])

    @property
    def n_tasks(self) -> int:
        """Number of tasks T (known tasks and any new ones mapped in by ``prepare``)."""
        return len(self.task_names)

    @property
    def n_features(self) -> int:
        """Number of feature columns (before the model adds an intercept)."""
        return int(self.X.shape[1])

    @property
    def device(self) -> torch.device:
        """The device of the tensors (``to(device)`` moves them)."""
        return self.X.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the features and target."""
        return self.X.dtype

    def digest(self) -> str:
        """A short hash of the arrays and labels: a checkpoint resumes, and a run directory loads,
        only with the data they were made from."""
        import hashlib

        h = hashlib.sha256()
        for t in (self.X, self.y, self.task, self.noise, self.trials):
            if t is not None:
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        h.update("\x00".join(map(str, (*self.task_names, *self.feature_names))).encode())
        return h.hexdigest()[:16]

    def rows_per_task(self) -> np.ndarray:
        """Number of rows of each task, shape (T,)."""
        return np.bincount(self.task.cpu().numpy(), minlength=self.n_tasks)

    @property
    def in_memory(self) -> bool:
        """True: the rows are tensors here (``StreamedData``'s stay in their file)."""
        return True

    @property
    def has_target(self) -> bool:
        """Whether the rows carry the target (rows given only for prediction do not)."""
        return self.y is not None

    def feature_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and sd (ddof 1) of each feature column as stored, float64 (D,); sd 1 where there
        is one row or no feature (what default priors are scaled by)."""
        X = self.X.double()
        mean = X.mean(0)
        sd = X.std(0) if X.shape[0] > 1 and X.shape[1] else torch.ones_like(mean)
        return mean.cpu(), sd.cpu()

    def target_moments(self, transform=None) -> tuple[float, float, int]:
        """Mean, sd (ddof 1) and count of the target (of ``transform(y)`` where given); NaN
        moments where a transformed value is not finite."""
        y = self.y.double() if transform is None else transform(self.y.double())
        if not torch.isfinite(y).all():
            return float("nan"), float("nan"), int(y.numel())
        return float(y.mean()), float(y.std()) if y.numel() > 1 else float("nan"), int(y.numel())

    def reduce(self, key, fn):
        """``fn(self)``: statistics a model computes from rows (data read from a file in chunks,
        ``StreamedData``, sum ``fn`` over them instead). ``key`` names the statistic: it is
        computed once for these data and kept (None: computed every time, not kept)."""
        if key is None:
            return fn(self)
        memo = self.__dict__.setdefault("_reduced", {})  # (not a field: replace() and saving leave it out)
        if key not in memo:
            memo[key] = fn(self)
        return memo[key]

    def head(self, n: int = 1000) -> MultiTaskData:
        """The first ``n`` rows, every task name kept (checks that run the likelihood on rows)."""
        return self.subset(np.arange(min(n, self.n_rows)))

    def __repr__(self) -> str:
        return (f"MultiTaskData({self.n_rows} rows, {self.n_tasks} tasks in {self.task_column!r}, "
                f"{self.n_features} features, target {self.target_name!r})")

    # ------------------------------------------------------------------ transforms
    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> MultiTaskData:
        """A copy with floating tensors moved to ``device`` and cast to ``dtype``."""
        def mv(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() and dtype else None)
        return replace(self, X=mv(self.X), y=mv(self.y), task=self.task.to(device), noise=mv(self.noise),
                       trials=mv(self.trials), feature_mean=mv(self.feature_mean),
                       feature_scale=mv(self.feature_scale),
                       task_features={k: mv(v) for k, v in self.task_features.items()})

    def subset(self, rows: np.ndarray | torch.Tensor) -> MultiTaskData:
        """Rows ``rows`` (indices or boolean mask), keeping every task name."""
        rows = torch.as_tensor(np.asarray(rows.cpu() if torch.is_tensor(rows) else rows))
        if rows.dtype == torch.bool:
            rows = torch.nonzero(rows).squeeze(-1)
        pick = lambda t: None if t is None else t[rows.to(t.device)]  # noqa: E731
        return replace(self, X=pick(self.X), y=pick(self.y), task=pick(self.task),
                       noise=pick(self.noise), trials=pick(self.trials))

    def split(self, test_fraction: float = 0.2, seed: int = 0,
              min_train: int = 1) -> tuple[MultiTaskData, MultiTaskData]:
        """Per-task random split: each task keeps at least ``min_train`` training rows.

        Both parts keep every task name, so results stay aligned.
        """
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
        rng = np.random.default_rng(seed)
        tasks = self.task.cpu().numpy()
        test = np.zeros(self.n_rows, dtype=bool)
        for t in range(self.n_tasks):
            rows = rng.permutation(np.flatnonzero(tasks == t))
            n_test = min(int(round(test_fraction * len(rows))), max(len(rows) - min_train, 0))
            test[rows[:n_test]] = True
        return self.subset(~test), self.subset(test)

    def split_tasks(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[MultiTaskData, MultiTaskData]:
        """Whole tasks held out: ``round(test_fraction * T)`` random tasks (at least 1; at least 2
        stay). The training part holds only the other tasks; in the held-out part its tasks are
        new tasks (index >= ``n_known_tasks``), as ``prepare`` makes them for prediction."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
        T = self.n_known_tasks
        n_out = min(max(int(round(test_fraction * T)), 1), T - 2)
        if n_out < 1:
            raise ValueError(f"holding tasks out needs at least 3 tasks; the data have {T}")
        out = np.zeros(T, dtype=bool)
        out[np.random.default_rng(seed).choice(T, size=n_out, replace=False)] = True
        order = np.concatenate([np.flatnonzero(~out), np.flatnonzero(out)])  # kept tasks first
        new_index = np.empty(T, dtype=np.int64)
        new_index[order] = np.arange(T)
        names = [self.task_names[i] for i in order]
        feats = {k: v[torch.as_tensor(order, device=v.device)] for k, v in self.task_features.items()}
        tasks = self.task.cpu().numpy()
        held = out[tasks]
        whole = replace(self, task=torch.as_tensor(new_index[tasks], device=self.device), task_names=names,
                        task_features=feats)
        kept = T - n_out
        train = whole.subset(~held)
        train = replace(train, task_names=names[:kept], n_known_tasks=kept,
                        task_features={k: v[:kept] for k, v in feats.items()})
        return train, replace(whole.subset(held), n_known_tasks=kept)

    def warnings(self) -> list[str]:
        """What about these data leaves the fit resting on its priors: a target that takes one
        value in every row, tasks of one row each (with the noise unknown, task-to-task spread and
        row noise cannot be told apart)."""
        constant = (float(self.y[0]) if self.y is not None and self.n_rows and bool((self.y == self.y[0]).all())
                    else None)
        return data_warnings(self, constant)

    #: likelihood kinds whose targets ``check_target`` checks beyond being finite
    CHECKED_KINDS = ("bernoulli", "poisson", "binomial", "counts", "ordinal", "positive", "proportion")

    def check_target(self, kind: str) -> None:
        """Raise if ``y`` cannot be a target of a ``kind`` likelihood, naming the task."""
        if self.y is None:
            raise ValueError("the data have no target column")
        y = self.y.cpu().numpy()
        names = np.asarray(self.task_names, dtype=object)[self.task.cpu().numpy()]
        target = self.target_name
        if kind == "bernoulli":
            bad = ~np.isin(y, (0.0, 1.0))
            if bad.any():
                i = np.flatnonzero(bad)[0]
                raise ValueError(f"target {target!r} must be 0/1 for a Bernoulli likelihood; "
                                 f"found {y[i]:g} (task {names[i]!r})")
        elif kind in ("poisson", "binomial", "counts", "ordinal"):
            bad = (y < 0) | (y != np.round(y))
            if bad.any():
                i = np.flatnonzero(bad)[0]
                what = "categories 0, 1, 2, ..." if kind == "ordinal" else "non-negative integer counts"
                raise ValueError(f"target {target!r} must hold {what} for a{'n' if kind == 'ordinal' else ''} "
                                 f"{'count' if kind == 'counts' else kind} likelihood; found {y[i]:g} "
                                 f"(task {names[i]!r})")
            if kind == "binomial":
                if self.trials is None:
                    raise ValueError("a binomial likelihood needs a trials column (trials=...)")
                over = y > self.trials.cpu().numpy()
                if over.any():
                    i = np.flatnonzero(over)[0]
                    raise ValueError(f"target {target!r} exceeds the trials column at row {i} (task {names[i]!r})")

        elif kind in ("positive", "proportion"):
            bad = ~(y > 0) if kind == "positive" else ~((y > 0) & (y < 1))
            if bad.any():
                i = np.flatnonzero(bad)[0]
                what = "positive" if kind == "positive" else "strictly between 0 and 1"
                raise ValueError(f"target {target!r} must be {what} for this likelihood; found {y[i]:g} "
                                 f"(task {names[i]!r})")
        bad = ~np.isfinite(y)
        if bad.any():
            i = np.flatnonzero(bad)[0]
            raise ValueError(f"target {target!r} has a missing or infinite value at row {i} (task {names[i]!r})")

    def prepare(self, df: pd.DataFrame, require_target: bool = False) -> MultiTaskData:
        """Rows of a new frame in this data's schema, for prediction.

        Features are standardised as the training data were. Tasks not seen in training get
        indices ``n_known_tasks, n_known_tasks + 1, ...`` and their names are appended.
        """
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
        if self.task_column not in df.columns:
            raise ValueError(f"task column {self.task_column!r} not found in the new data; "
                             f"columns are {list(df.columns)}")
        if len(df) == 0:
            raise ValueError("the new data have no rows: nothing to predict")
        labels = _labels(df[self.task_column], self.task_column)
        names = list(self.task_names[: self.n_known_tasks])
        pos = {n: i for i, n in enumerate(names)}
        for s in dict.fromkeys(labels):
            if s not in pos:
                pos[s] = len(names)
                names.append(s)
        idx = np.array([pos[s] for s in labels], dtype=np.int64)
        X = (np.column_stack([_numeric_column(df, c, "feature") for c in self.feature_names])
             if self.feature_names else np.zeros((len(df), 0)))
        for j, c in enumerate(self.feature_names):
            _check_finite(X[:, j], c, labels)
        dev, dt = self.device, self.dtype
        Xt = torch.tensor(np.array(X, dtype=float), dtype=dt, device=dev)
        if self.feature_mean is not None:
            Xt = (Xt - self.feature_mean) / self.feature_scale
        y = None
        if self.target_name in df.columns:
            y = torch.tensor(_numeric_column(df, self.target_name, "target").copy(), dtype=dt, device=dev)
        elif require_target:
            raise ValueError(f"target column {self.target_name!r} not found in the new data")
        extra = {}
        for attr, col in (("noise", self.noise_column), ("trials", self.trials_column)):
            if col is not None:
                if col not in df.columns:
                    raise ValueError(f"{attr} column {col!r} is needed for prediction but is not in the new data")
                extra[attr] = torch.tensor(_numeric_column(df, col, attr).copy(), dtype=dt, device=dev)
        feats = self.task_features
        if feats and len(names) > self.n_known_tasks:  # new tasks bring their own task-level values
            known = {k: v[: self.n_known_tasks].cpu().numpy() for k, v in self.task_features.items()}
            feats, _ = _task_level(df, list(feats), labels, names, self.task_levels, dt, known)
            feats = {k: v.to(dev) for k, v in feats.items()}
        return replace(self, X=Xt, y=y, task=torch.as_tensor(idx, device=dev), task_names=names,
                       noise=extra.get("noise"), trials=extra.get("trials"),
                       n_known_tasks=self.n_known_tasks, task_features=feats)

    def to_frame(self) -> pd.DataFrame:
        """The data as a long frame (features on the original scale)."""
        X = self.X
        if self.feature_mean is not None:
            X = X * self.feature_scale + self.feature_mean
        out = pd.DataFrame(X.cpu().numpy(), columns=self.feature_names)
        out.insert(0, self.task_column, np.asarray(self.task_names, dtype=object)[self.task.cpu().numpy()])
        if self.y is not None:
            out[self.target_name] = self.y.cpu().numpy()
        for t, col in ((self.noise, self.noise_column), (self.trials, self.trials_column)):
            if t is not None:
                out[col] = t.cpu().numpy()
        rows = self.task.cpu().numpy()
        for name, v in self.task_features.items():
            v = v.cpu().numpy()[rows]
            out[name] = np.asarray(self.task_levels[name], dtype=object)[v] if name in self.task_levels else v
        return out


def data_warnings(data, constant: float | None) -> list[str]:
    """``warnings`` of ``data`` (loaded or streamed), given the target's value when it is the same
    in every row (else None)."""
    out = []
    if constant is not None:
        out.append(f"target {data.target_name!r} is {constant:g} in every row: the data cannot inform the fit, "
                   "which rests on the priors")
    if data.noise is None and data.rows_per_task().max(initial=0) <= 1:
        out.append(f"every task in {data.task_column!r} has a single row: with the noise unknown, the spread "
                   "between tasks and the noise within them are not separately identified (the priors decide "
                   "how it splits)")
    return out


def wide_to_long(df: pd.DataFrame, targets: Sequence[str], features: Sequence[str] | None = None) -> pd.DataFrame:
    """The long frame of a wide one: columns "task" (the target column's name), the features and
    "y", one row per non-missing target entry, task by task (for ``from_wide`` and for the
    rows ``Posterior.predict`` takes)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if isinstance(targets, str):
        raise TypeError(f"targets must be a list of column names; got the string {targets!r} (write [{targets!r}])")
    targets = list(targets)
    if not targets:
        raise ValueError("targets is empty: name the target column of each task")
    missing = [c for c in targets if c not in df.columns]
    if missing:
        raise ValueError(f"target column {missing[0]!r} not found; columns are {list(df.columns)}")
    if len(set(targets)) < len(targets):
        raise ValueError("a target column is named twice in targets")
    features = [c for c in df.columns if c not in targets] if features is None else list(features)
    absent = [c for c in features if c not in df.columns]
    if absent:
        raise ValueError(f"feature column {absent[0]!r} not found; columns are {list(df.columns)}")
    clash = [c for c in features if c in targets]
    if clash:
        raise ValueError(f"column {clash[0]!r} cannot be both a feature and a target")
    if "task" in features or "y" in features:
        raise ValueError("a feature column is named 'task' or 'y', which the long format uses; rename it")
    parts = []
    for c in targets:
        keep = df[c].notna().to_numpy()
        if not keep.any():
            raise ValueError(f"target column {c!r} has no values (every entry is missing)")
        part = df.loc[keep, features].copy()
        part.insert(0, "task", str(c))
        part["y"] = df.loc[keep, c].to_numpy()
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _task_level(df: pd.DataFrame, columns: list[str], labels: np.ndarray, names: list[str],
                levels: dict[str, list[str]], dtype: torch.dtype,
                known: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
    """Per-task values (T,) of task-level columns, checked constant within each task.

    Numeric columns give floats; others give integer codes into ``levels`` (new levels are
    appended unless ``known`` is given: then the tasks of ``known`` keep their training values
    and a new task with a category unseen in training is an error).
    """
    first = {}
    for i, s in enumerate(labels):
        first.setdefault(s, i)
    values, out_levels = {}, {}
    for col in columns:
        if col not in df.columns:
            raise ValueError(f"task feature column {col!r} not found; the data has columns "
                             f"{list(map(str, df.columns))}")
        s = df[col]
        if s.isna().any():
            i = int(np.flatnonzero(s.isna().to_numpy())[0])
            raise ValueError(f"task feature {col!r} is missing for task {labels[i]!r} (row {i})")
        per_row = s.to_numpy()
        vary = pd.Series(per_row).groupby(labels).nunique()
        if (vary > 1).any():
            bad = str(vary.index[np.flatnonzero(vary.to_numpy() > 1)[0]])
            seen = sorted(map(str, pd.unique(per_row[labels == bad])))[:3]
            raise ValueError(f"task feature {col!r} must be constant within each task; task {bad!r} has "
                             f"values {seen}")
        numeric = pd.api.types.is_numeric_dtype(s) and col not in levels
        start = 0 if known is None else len(known[col])
        if numeric:
            v = np.array([float(per_row[first[n]]) if n in first else np.nan for n in names[start:]])
            if not np.isfinite(v).all():
                raise ValueError(f"task feature {col!r} has a NaN or infinite value")
            values[col] = torch.tensor(np.concatenate([known[col], v]) if known else v, dtype=dtype)
            continue
        cats = list(levels.get(col, []))
        codes = []
        for n in names[start:]:
            c = str(per_row[first[n]])
            if c not in cats:
                if known is not None:
                    raise ValueError(f"task {n!r} has {col} {c!r}, a category not seen in training "
                                     f"(known: {cats[:10]})")
                cats.append(c)
            codes.append(cats.index(c))
        codes = np.asarray(codes, dtype=np.int64)
        values[col] = torch.as_tensor(np.concatenate([known[col].astype(np.int64), codes]) if known else codes)
        out_levels[col] = cats
    return values, out_levels


def _arrays(df: pd.DataFrame, task: str, target: str, features: list, noise: str | None, trials: str | None,
            offset: int = 0) -> tuple:
    """Task labels, X (N, D), y, noise and trials of a frame, each checked (finite numbers,
    positive noise, whole-number trials); error rows are counted from ``offset`` (a chunk's
    first row in its file)."""
    labels_str = _labels(df[task], task, offset)
    X = (np.column_stack([_numeric_column(df, c, "feature") for c in features]) if features
         else np.zeros((len(df), 0)))
    for j, c in enumerate(features):
        _check_finite(X[:, j], c, labels_str, offset)
    y = _numeric_column(df, target, "target")
    _check_finite(y, target, labels_str, offset)
    nz = tr = None
    if noise is not None:
        nz = _numeric_column(df, noise, "noise")
        _check_finite(nz, noise, labels_str, offset)
        if (nz <= 0).any():
            raise ValueError(f"noise column {noise!r} must be positive (a standard deviation per row)")
    if trials is not None:
        tr = _numeric_column(df, trials, "trials")
        _check_finite(tr, trials, labels_str, offset)
        if (tr < 0).any() or (tr != np.round(tr)).any():
            raise ValueError(f"trials column {trials!r} must hold non-negative integers")
    return labels_str, X, y, nz, tr


def _roles(columns: list, task: str, target: str, features, noise: str | None, trials: str | None,
           task_features: list) -> list:
    """The feature columns (every column with no other role when ``features`` is None), checked:
    no column in two roles."""
    if isinstance(features, str):
        raise TypeError(f"features must be a list of column names; got the string {features!r} "
                        f"(write [{features!r}])")
    roles = {"task column": task, "target": target, "noise column": noise, "trials column": trials}
    named = [(r, c) for r, c in roles.items() if c is not None]
    for i, (r1, c1) in enumerate(named):
        for r2, c2 in named[i + 1:]:
            if c1 == c2:
                raise ValueError(f"column {c1!r} cannot be both the {r1} and the {r2}")
    reserved = ({task, target, noise, trials} | set(task_features)) - {None}
    if features is None:
        features = [c for c in columns if c not in reserved]
    else:
        features = list(features)
        for c in features:
            if c in reserved:
                role = "task feature" if c in task_features else _role(c, task, target, noise, trials)
                raise ValueError(f"column {c!r} cannot be both a feature and the {role}")
    return features


def _role(c, task, target, noise, trials) -> str:
    return {task: "task column", target: "target", noise: "noise column", trials: "trials column"}[c]
