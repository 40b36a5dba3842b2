"""Checkpoints of a running fit, so that a killed run loses at most one interval of work.

A back end that checkpoints builds a ``Checkpoint`` from its settings (``Checkpoint.of``: None
when the fit was not asked for one) and, in its loop, saves its whole state when ``due()``:
tensors (sampler states as NamedTuples, random generator states, draws so far) and a small
JSON header. The file is ``<folder>/<name>.npz``, written to a temporary file and renamed, so a
kill mid-write leaves the previous checkpoint intact. It holds arrays and text only, read back
with ``allow_pickle=False``: loading a checkpoint never runs code.

``fit(..., checkpoint=folder)`` writes them; ``fit(..., resume=folder)`` continues from the last
one (same model, data and settings; the header's ``fingerprint`` must match). NamedTuple states
are restored against a template of the same type (``restore``), so a sampler needs no code
per state type.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Checkpoint", "flatten", "restore", "DEFAULT_EVERY"]

#: seconds between checkpoints unless ``checkpoint_every`` says otherwise
DEFAULT_EVERY = 60.0
_FORMAT = 1


def flatten(obj: Any, prefix: str, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Tensors, numbers and NamedTuples of them as {"prefix.field...": array} (None is left out)."""
    out = {} if out is None else out
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        for f in obj._fields:
            flatten(getattr(obj, f), f"{prefix}.{f}", out)
    elif torch.is_tensor(obj):
        out[prefix] = obj.detach().cpu().numpy()
    elif isinstance(obj, (bool, int, float, np.ndarray)):
        out[prefix] = np.asarray(obj)
    elif obj is not None:
        raise TypeError(f"cannot checkpoint {prefix} of type {type(obj).__name__}")
    return out


def restore(template: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """The value ``flatten(value, prefix)`` saved, with ``template``'s types, devices and dtypes."""
    if isinstance(template, tuple) and hasattr(template, "_fields"):
        return type(template)(*(restore(getattr(template, f), f"{prefix}.{f}", arrays) for f in template._fields))
    if template is None:
        return None
    if prefix not in arrays:
        raise ValueError(f"the checkpoint has no {prefix!r}; it was written by a different sampler")
    a = arrays[prefix]
    if torch.is_tensor(template):
        if tuple(a.shape) != tuple(template.shape):
            raise ValueError(f"the checkpoint's {prefix} has shape {tuple(a.shape)}, this fit's "
                             f"{tuple(template.shape)}: it was written by a different model or settings")
        return torch.from_numpy(a).to(device=template.device, dtype=template.dtype)
    if isinstance(template, np.ndarray):
        return a
    return type(template)(a.item())


class Checkpoint:
    """Where one sampler saves its progress (``folder / f"{name}.npz"``) and how often.

    ``fingerprint``: what must match for a resume (sampler, chains, draws, seed, options, ...);
    ``every``: seconds between saves; ``resume``: whether ``load`` reads an existing file.
    """

    def __init__(self, folder: str | Path, name: str, fingerprint: dict, every: float = DEFAULT_EVERY,
                 resume: bool = False):
        self.folder, self.name = Path(folder), name
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        self.every, self.resume = float(every), bool(resume)
        self.file = self.folder / f"{name}.npz"
        self.last = time.monotonic()
        self.saves = 0

    @classmethod
    def of(cls, settings, name: str, **fingerprint) -> Checkpoint | None:
        """The checkpoint ``settings`` ask for (None without ``settings.checkpoint``); the
        fingerprint gets the settings' chains, warmup, draws and seed added."""
        if not getattr(settings, "checkpoint", None):
            return None
        fp = {"sampler": name, "chains": settings.chains, "warmup": settings.warmup, "draws": settings.draws,
              "seed": settings.seed, "data": getattr(settings, "fingerprint", ""), **fingerprint}
        return cls(settings.checkpoint, name, fp, settings.checkpoint_every, settings.resume)

    def due(self) -> bool:
        """True when ``every`` seconds have passed since the last save (or the start)."""
        return time.monotonic() - self.last >= self.every

    def save(self, arrays: dict[str, np.ndarray], **meta: Any) -> None:
        """Write ``arrays`` and ``meta`` (JSON-able) atomically, replacing the previous checkpoint."""
        self.folder.mkdir(parents=True, exist_ok=True)
        header = {"format": _FORMAT, "fingerprint": self.fingerprint, **meta}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".npz", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, __header__=np.array(json.dumps(header, default=str)), **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.last = time.monotonic()
        self.saves += 1

    def load(self) -> tuple[dict[str, np.ndarray], dict] | None:
        """(arrays, header) of the saved checkpoint when resuming and one exists, else None.
        A file that is not a checkpoint of this fit raises ValueError naming it."""
        if not self.resume or not self.file.exists():
            return None
        try:
            with np.load(self.file, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            header = json.loads(str(arrays.pop("__header__")))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{str(self.file)!r} is not a readable checkpoint ({e})") from None
        if header.get("format") != _FORMAT:
            raise ValueError(f"{str(self.file)!r}: checkpoint format {header.get('format')!r} is not known "
                             f"to this version (it reads {_FORMAT})")
        old = header.get("fingerprint", {})
        diff = sorted(k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k))
        if diff:
            k = diff[0]
            raise ValueError(f"{str(self.file)!r} was written by a different fit ({k}: {old.get(k)!r} there, "
                             f"{self.fingerprint.get(k)!r} now); resume with the same model, data and settings")
        self.last = time.monotonic()
        return arrays, header
