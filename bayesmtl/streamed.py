"""Data read from a parquet or CSV file in chunks, never held in memory whole.

``StreamedData.scan(path, task=..., target=...)`` reads the file once, chunk by chunk, checking
every chunk as ``MultiTaskData.from_frame`` checks a frame, and keeps what a fit needs besides
the rows: task names in order of first appearance, rows per task, the moments of the features
and the target, task-level features, and a digest of the values. ``chunks()`` reads the rows
again as ``MultiTaskData`` pieces that share the task and feature names.

A model reduces the rows to statistics through ``reduce(key, fn)``: ``fn`` runs on every chunk
and the results are summed (and kept, so a second fit does not read the file again). The
collapsed hierarchical Gaussian form fits from per-task sums this way, in memory that grows
with the tasks, not the rows. What needs every row at once (the rows' tensors ``X``, ``y``,
``task``) stops with ``RowsNotInMemory``, naming the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import (
    MultiTaskData,
    _arrays,
    _roles,
    _task_level,
    csv_header,
    csv_options,
    data_warnings,
    label_text,
)

__all__ = ["StreamedData", "RowsNotInMemory"]

#: rows read at a time: (N, D, D) per-task sums of 20 features take ~300 MB at this size
CHUNK_ROWS = 100_000


class RowsNotInMemory(ValueError):
    """Something that needs every row at once was asked of data streamed from a file."""


def file_kind(path: Path) -> str:
    """"parquet" for a file that starts with parquet's magic bytes, else "csv"."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    return "parquet" if magic == b"PAR1" else "csv"


def _identity(path: Path) -> dict:
    st = os.stat(path)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _frames(path: Path, kind: str, columns: list[str], chunk_rows: int, task: str) -> Iterator[pd.DataFrame]:
    """The file's ``columns`` as frames of at most ``chunk_rows`` rows."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        # pre_buffer (the default) reads ahead and held ~150 MB more per million rows: off, a 1 MB buffer
        reader = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        for batch in reader.iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pandas()
        return
    header = csv_header(path)
    try:
        yield from pd.read_csv(path, usecols=columns, chunksize=chunk_rows, **csv_options(header, task))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"data file {str(path)!r} cannot be read as CSV: "
                         f"{str(e).strip().splitlines()[0]}") from None


def _columns_of(path: Path, kind: str) -> list[str]:
    if kind == "csv":
        return csv_header(path)
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for a damaged file: one line naming it
        raise ValueError(f"data file {str(path)!r} cannot be read as parquet: {str(e).splitlines()[0]}") from None


class _Moments:
    """Count, mean and summed squared deviations of columns, merged chunk by chunk (Chan et
    al.'s pairwise update: no loss of precision from large means), with min and max."""

    def __init__(self, width: int):
        self.n, self.mean, self.m2 = 0, np.zeros(width), np.zeros(width)
        self.lo, self.hi = np.full(width, np.inf), np.full(width, -np.inf)

    def add(self, a: np.ndarray) -> None:
        if not len(a):
            return
        n, mean = len(a), a.mean(0)
        m2 = ((a - mean) ** 2).sum(0)
        total = self.n + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta ** 2 * self.n * n / total
        self.mean = self.mean + delta * n / total
        self.n = total
        self.lo, self.hi = np.minimum(self.lo, a.min(0)), np.maximum(self.hi, a.max(0))

    def sd(self) -> np.ndarray:
        """Sample sd (ddof 1), as torch's ``std``; NaN with one row."""
        return np.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else np.full_like(self.mean, np.nan)


@dataclass(frozen=True, eq=False)
class StreamedData:
    """Long-format multi-task data in a parquet or CSV file, read in chunks.

    Build it with ``StreamedData.scan``. It carries the names and settings of ``MultiTaskData``
    (``task_names``, ``feature_names``, ``target_name``, ``task_column``, ``feature_mean`` and
    ``feature_scale`` where standardised, ``task_features``, ``n_known_tasks``) and the
    statistics read in the scan; ``chunks()`` gives the rows.

    Attributes
    ----------
    path : str
        The file, as given to ``scan`` (resolved to an absolute path).
    counts : ndarray, shape (T,)
        Rows of each task.
    file : dict
        ``size`` and ``mtime_ns`` of the file when scanned: reading it again checks them, so
        rows never silently come from a changed file.
    """

    path: str
    task_column: str
    target_name: str
    feature_names: list[str]
    task_names: list[str]
    counts: np.ndarray
    moments: dict
    fingerprint: str
    file: dict
    kind: str = "parquet"
    chunk_rows: int = CHUNK_ROWS
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")
    feature_mean: torch.Tensor | None = None
    feature_scale: torch.Tensor | None = None
    n_known_tasks: int = -1
    task_features: dict[str, torch.Tensor] = field(default_factory=dict)
    task_levels: dict[str, list[str]] = field(default_factory=dict)
    noise: None = None  # a noise or trials column is not streamed (``scan`` refuses one)
    trials: None = None
    noise_column: None = None
    trials_column: None = None
    _memo: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.n_known_tasks < 0:
            object.__setattr__(self, "n_known_tasks", len(self.task_names))

    # ------------------------------------------------------------------ construction
    @classmethod
    def scan(cls, path: str | Path, task: str, target: str, features: Sequence[str] | None = None, *,
             task_features: Sequence[str] = (), standardize: bool = False, dtype: torch.dtype = torch.float64,
             chunk_rows: int = CHUNK_ROWS) -> StreamedData:
        """Read ``path`` (parquet, or CSV: told apart by the file's first bytes) once in chunks of
        ``chunk_rows`` rows, checking each as ``MultiTaskData.from_frame`` checks a frame; the
        arguments mean what they mean there. Memory stays at a few chunks whatever the file's size.
        """
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a file path (str or pathlib.Path); got {type(path).__name__}")
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a whole number >= 1; got {chunk_rows!r}")
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"data file {str(path)!r} does not exist")
        if path.is_dir():
            raise ValueError(f"data file {str(path)!r} is a folder, not a parquet or CSV file")
        kind = file_kind(path)
        columns = _columns_of(path, kind)
        task_features = [task_features] if isinstance(task_features, str) else list(task_features)
        for role, col in (("task column", task), ("target", target)):
            if col not in columns:
                raise ValueError(f"{role} {col!r} not found in {str(path)!r}; its columns are {columns}")
        features = [str(c) for c in _roles(columns, task, target, features, None, None, task_features)]
        missing = [c for c in [*features, *task_features] if c not in columns]
        if missing:
            raise ValueError(f"column {missing[0]!r} not found in {str(path)!r}; its columns are {columns}")
        ident = _identity(path)
        pos: dict[str, int] = {}
        stripped: dict[str, str] = {}
        counts = np.zeros(0, dtype=np.int64)
        xm, ym = _Moments(len(features)), _Moments(1)
        hashes = [hashlib.sha256() for _ in range(3)]
        levels = []
        offset = 0
        for df in _frames(path, kind, [task, target, *features, *task_features], chunk_rows, task):
            if not len(df):  # (a header with no rows reads as one empty frame of text columns)
                continue
            labels, X, y, _, _ = _arrays(df, task, target, features, None, None, offset)
            for s in pd.unique(labels):
                if s not in pos:
                    other = stripped.setdefault(s.strip(), s)
                    if other != s:
                        raise ValueError(f"task column {task!r}: labels {other!r} and {s!r} differ only in "
                                         "spaces, so they would be two tasks; strip the labels")
                    pos[s] = len(pos)
            idx = pd.Categorical(labels, categories=list(pos)).codes.astype(np.int64)
            counts = np.bincount(idx, minlength=len(pos)) + np.pad(counts, (0, len(pos) - len(counts)))
            xm.add(X)
            ym.add(y[:, None])
            for h, a in zip(hashes, (X, y, idx), strict=True):
                h.update(np.ascontiguousarray(a).tobytes())
            if task_features:
                levels.append(df[[task, *task_features]].assign(**{task: labels}).drop_duplicates())
            offset += len(df)
        if offset == 0:
            raise ValueError(f"data file {str(path)!r} has a header but no rows")
        names = list(pos)
        if len(names) < 2:
            raise ValueError(f"multi-task data needs at least 2 tasks; column {task!r} has only {names}")
        limit = float(np.sqrt(torch.finfo(dtype).max)) / 1e3
        for big, name in [*([] if standardize else zip(np.maximum(-xm.lo, xm.hi), features, strict=True)),
                          (max(-ym.lo[0], ym.hi[0]), target)]:
            if big > limit:
                raise ValueError(f"column {name!r} holds values as large as {big:.3g}, too large to compute "
                                 f"with (above {limit:.1g} in {str(dtype).replace('torch.', '')}); rescale it")
        mean = scale = None
        if standardize and features:
            m, s = xm.mean, np.sqrt(xm.m2 / xm.n)  # the population sd, as from_frame's
            s[s == 0] = 1.0
            mean, scale = torch.as_tensor(m, dtype=dtype), torch.as_tensor(s, dtype=dtype)
        digest = hashlib.sha256("\x00".join([*(h.hexdigest() for h in hashes), *names, *features]).encode())
        tf, tl = {}, {}
        if task_features:
            small = pd.concat(levels, ignore_index=True)
            tf, tl = _task_level(small, task_features, small[task].to_numpy(), names, {}, dtype)
        moments = {"x_mean": xm.mean, "x_sd": xm.sd(), "y_mean": float(ym.mean[0]), "y_sd": float(ym.sd()[0]),
                   "y_min": float(ym.lo[0]), "y_max": float(ym.hi[0])}
        return cls(path=str(path), task_column=task, target_name=target, feature_names=features, task_names=names,
                   counts=counts, moments=moments, fingerprint=digest.hexdigest()[:16], file=ident, kind=kind,
                   chunk_rows=chunk_rows, dtype=dtype, feature_mean=mean, feature_scale=scale,
                   task_features=tf, task_levels=tl)

    # ------------------------------------------------------------------ the rows, chunk by chunk
    def chunks(self) -> Iterator[MultiTaskData]:
        """The rows as ``MultiTaskData`` of at most ``chunk_rows`` rows each, in file order, with
        this data's task names, features, standardisation, dtype and device."""
        path = Path(self.path)
        if not path.exists():
            raise FileNotFoundError(f"data file {self.path!r}, which these data stream from, is gone; "
                                    "put it back (or scan the file where it now is)")
        if _identity(path) != self.file:
            raise ValueError(f"data file {self.path!r} changed since it was scanned (size or modification "
                             "time differ); scan it again")
        cats = list(self.task_names[: self.n_known_tasks])
        cols = [self.task_column, self.target_name, *self.feature_names]
        for df in _frames(path, self.kind, cols, self.chunk_rows, self.task_column):
            idx = pd.Categorical(label_text(df[self.task_column]), categories=cats).codes.astype(np.int64)
            if (idx < 0).any():  # (size and mtime unchanged, yet a label the scan did not see)
                raise ValueError(f"data file {self.path!r} holds a task the scan did not see; scan it again")
            X = torch.as_tensor(df[self.feature_names].to_numpy(dtype=float, copy=True), dtype=self.dtype)
            if self.feature_mean is not None:
                X = (X - self.feature_mean) / self.feature_scale
            y = torch.as_tensor(df[self.target_name].to_numpy(dtype=float, copy=True), dtype=self.dtype)
            yield self._piece(X, y, torch.as_tensor(idx))

    def _piece(self, X: torch.Tensor, y: torch.Tensor | None, task: torch.Tensor) -> MultiTaskData:
        """Rows as ``MultiTaskData`` with these data's names and settings, on their device."""
        dev = self.device
        return MultiTaskData(X=X.to(dev), y=None if y is None else y.to(dev), task=task.to(dev),
                             task_names=list(self.task_names), feature_names=list(self.feature_names),
                             target_name=self.target_name, task_column=self.task_column,
                             feature_mean=self.feature_mean, feature_scale=self.feature_scale,
                             n_known_tasks=self.n_known_tasks, task_features=self.task_features,
                             task_levels=self.task_levels)

    def reduce(self, key, fn: Callable[[MultiTaskData], dict]) -> dict:
        """``fn`` summed over the chunks: ``fn(chunk)`` returns a dict of tensors (or a tensor)
        that add up over rows. Kept under ``key``, so it is read once per statistic (None: read
        every time, not kept)."""
        hit = None if key is None else self._memo.get(key)
        if hit is not None:
            return hit
        total = None
        for part in self.chunks():
            out = fn(part)
            if total is None:
                total = out
            elif isinstance(out, dict):
                total = {k: total[k] + v for k, v in out.items()}
            else:
                total = total + out
        if key is not None:
            self._memo[key] = total
        return total

    def head(self, n: int = 1000) -> MultiTaskData:
        """The first ``n`` rows in memory (checks that run a likelihood on rows)."""
        part = next(self.chunks())
        return part.subset(np.arange(min(n, part.n_rows)))

    # ------------------------------------------------------------------ what the rows would give
    def _no_rows(self, what: str):
        raise RowsNotInMemory(
            f"{what} needs every row of {self.path!r} in memory ({self.n_rows:,} rows), and these data stream "
            "from the file: fit a model whose form reduces the rows to per-task sums (a Hierarchical prior with a "
            "Gaussian likelihood, collapsed), or load the rows with MultiTaskData.from_parquet / from_csv")

    @property
    def X(self):  # noqa: N802 - MultiTaskData's name
        """Not available: the rows stay in the file (``RowsNotInMemory``)."""
        self._no_rows("this step (it reads the features of every row)")

    @property
    def y(self):
        """Not available: the rows stay in the file (``RowsNotInMemory``)."""
        self._no_rows("this step (it reads the target of every row)")

    @property
    def task(self):
        """Not available: the rows stay in the file (``RowsNotInMemory``)."""
        self._no_rows("this step (it reads the task of every row)")

    @property
    def in_memory(self) -> bool:
        """False: the rows stay in the file (``chunks()`` reads them)."""
        return False

    @property
    def has_target(self) -> bool:
        """True: ``scan`` needs a target."""
        return True

    @property
    def n_rows(self) -> int:
        """Number of rows N in the file."""
        return int(self.counts.sum())

    @property
    def n_tasks(self) -> int:
        """Number of tasks T."""
        return len(self.task_names)

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return len(self.feature_names)

    def rows_per_task(self) -> np.ndarray:
        """Rows of each task, shape (T,)."""
        return np.pad(self.counts, (0, self.n_tasks - len(self.counts)))

    def digest(self) -> str:
        """A short hash of the values and labels read (not of the file's bytes)."""
        return self.fingerprint

    def feature_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``MultiTaskData.feature_moments``, from the scan."""
        mean, sd = torch.as_tensor(self.moments["x_mean"]), torch.as_tensor(self.moments["x_sd"])
        if self.feature_mean is not None:
            fm, fs = self.feature_mean.double().cpu(), self.feature_scale.double().cpu()
            mean, sd = (mean - fm) / fs, sd / fs
        if self.n_rows < 2 or not self.n_features:
            sd = torch.ones_like(mean)
        return mean, sd

    def target_moments(self, transform=None) -> tuple[float, float, int]:
        """As ``MultiTaskData.target_moments``: from the scan, or one more pass with a ``transform``."""
        if transform is None or transform is _identity_transform():
            return self.moments["y_mean"], self.moments["y_sd"], self.n_rows
        if ("target_moments", transform) not in self._memo:
            m = _Moments(1)
            for part in self.chunks():
                m.add(transform(part.y.double()).cpu().numpy()[:, None])
            ok = np.isfinite(m.lo[0]) and np.isfinite(m.hi[0])
            self._memo["target_moments", transform] = ((float(m.mean[0]), float(m.sd()[0]), m.n) if ok
                                                       else (float("nan"), float("nan"), m.n))
        return self._memo["target_moments", transform]

    def warnings(self) -> list[str]:
        """As ``MultiTaskData.warnings``, from the scan."""
        lo, hi = self.moments["y_min"], self.moments["y_max"]
        return data_warnings(self, lo if lo == hi else None)

    def check_target(self, kind: str) -> None:
        """As ``MultiTaskData.check_target``, chunk by chunk (rows counted from the file's first)."""
        if ("check", kind) in self._memo or kind not in MultiTaskData.CHECKED_KINDS:
            return  # (every target is finite, checked by the scan: a Gaussian's needs no more)
        offset = 0
        for part in self.chunks():
            try:
                part.check_target(kind)
            except ValueError as e:
                raise ValueError(f"{e} (in the rows {offset}-{offset + part.n_rows - 1} of {self.path!r})") from None
            offset += part.n_rows
        self._memo[("check", kind)] = True

    # ------------------------------------------------------------------ transforms
    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> StreamedData:
        """These data with chunks made on ``device`` in ``dtype`` (statistics read stay)."""
        dev = self.device if device is None else torch.device(device)
        dt = self.dtype if dtype is None else dtype
        if dev == self.device and dt == self.dtype:
            return self
        mv = lambda t: None if t is None else t.to(device=dev, dtype=dt if t.is_floating_point() else None)  # noqa: E731
        return replace(self, device=dev, dtype=dt, feature_mean=mv(self.feature_mean),
                       feature_scale=mv(self.feature_scale), _memo={})

    def skeleton(self) -> MultiTaskData:
        """The names and settings with no rows: what ``prepare`` and prediction read."""
        return self._piece(torch.zeros(0, self.n_features, dtype=self.dtype), None, torch.zeros(0, dtype=torch.long))

    def prepare(self, df: pd.DataFrame, require_target: bool = False) -> MultiTaskData:
        """Rows of a new frame in these data's schema (``MultiTaskData.prepare``)."""
        return self.skeleton().prepare(df, require_target=require_target)

    def split(self, *args, **kwargs):
        """Not available on streamed data (``RowsNotInMemory``)."""
        self._no_rows("holding rows out (validation=)")

    def subset(self, *args, **kwargs):
        """Not available on streamed data (``RowsNotInMemory``)."""
        self._no_rows("taking a subset of rows")

    def __repr__(self) -> str:
        return (f"StreamedData({self.n_rows:,} rows in {Path(self.path).name!r}, {self.n_tasks} tasks in "
                f"{self.task_column!r}, {self.n_features} features, target {self.target_name!r})")

    # ------------------------------------------------------------------ saved runs
    def to_reference(self) -> dict:
        """What a run folder keeps instead of the rows: the file, its identity and fingerprint,
        and what the scan read (plain JSON data)."""
        tensor = lambda t: None if t is None else t.cpu().tolist()  # noqa: E731
        return {"path": self.path, "kind": self.kind, "file": dict(self.file), "fingerprint": self.fingerprint,
                "task_column": self.task_column, "target": self.target_name, "features": list(self.feature_names),
                "tasks": list(self.task_names), "counts": self.counts.tolist(), "chunk_rows": self.chunk_rows,
                "dtype": str(self.dtype).replace("torch.", ""),
                "moments": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.moments.items()},
                "feature_mean": tensor(self.feature_mean), "feature_scale": tensor(self.feature_scale),
                "task_features": {k: v.cpu().tolist() for k, v in self.task_features.items()},
                "task_levels": dict(self.task_levels)}

    @classmethod
    def from_reference(cls, ref: dict) -> StreamedData:
        """The data ``to_reference`` describes; the file is read (and checked) only when rows are."""
        dtype = getattr(torch, ref["dtype"])
        tensor = lambda v: None if v is None else torch.tensor(v, dtype=dtype)  # noqa: E731
        feats = {k: torch.tensor(v, dtype=dtype if k not in ref["task_levels"] else torch.long)
                 for k, v in ref["task_features"].items()}
        moments = {k: (np.asarray(v, dtype=float) if isinstance(v, list) else v) for k, v in ref["moments"].items()}
        return cls(path=ref["path"], task_column=ref["task_column"], target_name=ref["target"],
                   feature_names=list(ref["features"]), task_names=list(ref["tasks"]),
                   counts=np.asarray(ref["counts"], dtype=np.int64), moments=moments,
                   fingerprint=ref["fingerprint"], file=dict(ref["file"]), kind=ref["kind"],
                   chunk_rows=int(ref["chunk_rows"]), dtype=dtype, feature_mean=tensor(ref["feature_mean"]),
                   feature_scale=tensor(ref["feature_scale"]), task_features=feats,
                   task_levels={k: list(v) for k, v in ref["task_levels"].items()})


def _identity_transform():
    from .likelihoods.base import LocationScale

    return LocationScale.transform
