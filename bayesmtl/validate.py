"""Checks of settings shared by the Python API and the command line: one line naming the setting."""

from __future__ import annotations

import math
from numbers import Integral, Real

__all__ = ["check_count", "check_seed", "check_prob"]


def check_count(name: str, value, minimum: int) -> int:
    """``value`` as an int, refused unless it is a whole number >= ``minimum`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_seed(seed, name: str = "seed") -> int:
    """A seed: a whole number in [0, 2**63) (torch's generators take no more)."""
    seed = check_count(name, seed, 0)
    if seed >= 2**63:
        raise ValueError(f"{name} must be below 2**63; got {seed}")
    return seed


def check_prob(prob, name: str = "prob") -> float:
    """The mass of a central interval: a number strictly between 0 and 1."""
    if isinstance(prob, bool) or not isinstance(prob, Real) or not math.isfinite(prob) or not 0 < prob < 1:
        raise ValueError(f"{name} (the mass of the central interval) must lie strictly between 0 and 1; "
                         f"got {prob!r}")
    return float(prob)
