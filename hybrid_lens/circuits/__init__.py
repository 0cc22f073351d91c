"""Circuits: the computational graph of a hybrid, exact edge patching, and edge attribution (EAP, EAP-IG).

`Graph.of(model)` lists the nodes (embedding, every mixer or head, every MLP, the logits) and the edges
between them on any additive family; `edge_patch` patches edges exactly, `edge_attribution` scores
every edge from one or a few forward and backward passes, and `prune` / `faithfulness_curve` keep the
edges that matter and check them by exact patching; `acdc` prunes by exact patching alone.
"""

from .attribution import METHODS, edge_attribution
from .edge_patching import circuit_metric, edge_patch
from .graph import Edge, Graph, Node
from .pruning import acdc, faithfulness_curve, prune
from .runs import graph_hooks, patched_logits, source_outputs

__all__ = ["METHODS", "Edge", "Graph", "Node", "acdc", "circuit_metric", "edge_attribution", "edge_patch",
           "faithfulness_curve", "graph_hooks", "patched_logits", "prune", "source_outputs"]
