"""Task priors: one file per family."""

from .base import TaskPrior
from .dirichlet import DirichletProcess
from .gating import GatedClusters
from .hierarchical import Hierarchical, Independent, Pooled
from .relationship import LKJ, InverseWishart, TaskRelationship
from .sparsity import SharedSparsity
from .subspace import SharedSubspace
from .tree import TreeHierarchy

__all__ = ["TaskPrior", "Independent", "Pooled", "Hierarchical", "LKJ", "InverseWishart", "TaskRelationship",
           "DirichletProcess", "GatedClusters", "SharedSparsity", "SharedSubspace", "TreeHierarchy"]
