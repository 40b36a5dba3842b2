"""Where tensors made without a device land.

Engine code makes host tensors (index lists, draws kept for the posterior) without naming a
device; a model's own program makes its constants where the data live. torch's default device
decides both, and a caller may have changed it (``torch.set_default_device("cuda")`` in a
notebook). So each public entry point runs in ``on_host()`` and a model's program in
``protocol.data_context``; each pushes a device context only where the default differs, since
a context intercepts every torch call inside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["default_device", "keep_rng", "on_device", "on_host"]


def default_device() -> torch.device:
    """The device a tensor made without one lands on now (set_default_device and contexts included)."""
    return torch.empty(()).device


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


@contextlib.contextmanager
def on_device(device: str | torch.device) -> Iterator[None]:
    """torch's default device is ``device`` inside the block (a context only where it is not already)."""
    device = torch.device(device)
    if _same(default_device(), device):
        yield
    else:
        with device:
            yield


def on_host() -> contextlib.AbstractContextManager[None]:
    """The CPU as torch's default device inside the block, whatever the caller's default (public
    entry points run in it, so that engine code's host tensors stay on the host)."""
    return on_device("cpu")


def keep_rng(device: str | torch.device) -> contextlib.AbstractContextManager:
    """torch's global random state (the CPU's, and ``device``'s where it is a GPU) as it was
    before the block, whatever the block draws."""
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
