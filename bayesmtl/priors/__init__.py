"""Task priors: one file per family."""

from .base import TaskPrior
from .hierarchical import Hierarchical, Independent, Pooled

__all__ = ["TaskPrior", "Independent", "Pooled", "Hierarchical"]
