"""Published models, one file each, with the papers' defaults.

``REGISTRY`` maps the CLI's ``--model`` names to classes, imported on first use so a model
family's optional pieces load only when asked for.
"""

from __future__ import annotations

import importlib

from .hierarchical import Hierarchical, Independent, Pooled

#: CLI name -> "module:Class" within bayesmtl.models
REGISTRY = {
    "hierarchical": "hierarchical:Hierarchical",
    "independent": "hierarchical:Independent",
    "pooled": "hierarchical:Pooled",
    "dp-clustering": "dp_clustering:DPClustering",
    "multitask-gp": "multitask_gp:MultitaskGP",
    "task-relationship": "task_relationship:TaskRelationship",
    "shared-sparsity": "sparsity:SharedSparsity",
    "dirty": "sparsity:Dirty",
    "shared-subspace": "subspace:SharedSubspace",
    "tree-hierarchy": "tree:TreeHierarchy",
    "gated-clusters": "gating:GatedClusters",
    "neural": "neural:NeuralMultiTask",
}

_LAZY = {"DPClustering": "dp_clustering", "MultitaskGP": "multitask_gp",
         "TaskRelationship": "task_relationship", "SharedSparsity": "sparsity", "Dirty": "sparsity",
         "SharedSubspace": "subspace", "TreeHierarchy": "tree",
         "GatedClusters": "gating", "NeuralMultiTask": "neural"}


def get_model_class(name: str):
    """The model class registered under CLI name ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as e:
        raise ValueError(f"model {name!r} is not available in this version of bayesmtl") from e
    return getattr(mod, cls)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Hierarchical", "Independent", "Pooled", "REGISTRY", "get_model_class"]
