"""The computational graph of a hooked model: nodes that write to the residual stream, nodes that read it, edges.

A hybrid's residual stream at any point is the sum of what was written before it: the embedding, then
each mixer's and each MLP's output. So every node that reads the stream (a mixer, an MLP, the logits)
reads the sum of every *upstream* node's output, and each term of that sum is an edge. `Graph.of`
reads the model's `Layout`, so it is the same on every additive family:

- **sources** (nodes with an output): `embed` (the stream entering block 0, `blocks.0.hook_resid_pre`),
  each mixer (`hook_{kind}_out`) or, with `heads=True`, each of its heads (`{kind}.hook_result[..., h, :]`),
  and each MLP (`hook_mlp_out`);
- **targets** (nodes with an input): each mixer (it reads `hook_resid_pre` through its pre-norm), each MLP
  (`hook_resid_mid`, or `hook_resid_pre` in a block without mixers) and `logits` (the last
  `hook_resid_post`, through the final norm).

A source feeds a target when it runs before it: an earlier block, or the mixers of the target MLP's own
block. The mixers of one parallel block (Falcon-H1's SSM and attention) read the same input, so no
edge joins them; Qwen3.5's linear-attention and attention layers follow one another. The heads of one
mixer share its input: with `heads=True` a mixer is split into heads as a source, not as a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor

from ..vocabulary import UnitLabel, point_name

__all__ = ["Edge", "Graph", "Node"]


@dataclass(frozen=True)
class Node:
    """One node of a `Graph`.

    Attributes:
        layer: Block index (None for `embed` and `logits`).
        kind: `embed`, a component kind (`attn`, `linear_attn`, `ssm`, `conv`, `mlp`) or `logits`.
        head: The head of a mixer split into heads (None: the whole node).
        stage: Order inside the block: 0 for mixers, 1 for the MLP (a source feeds a target whose
            `(layer, stage)` comes later).

    Examples:
        >>> Node(3, "attn").name, Node(3, "attn", head=1).name, Node(0, "linear_attn", head=2).name
        ('3_attn', 'L3H1', 'L0H2_linear_attn')
        >>> Node(None, "embed").name, Node(None, "logits").name
        ('embed', 'logits')
    """

    layer: int | None
    kind: str
    head: int | None = None
    stage: int = 0

    @property
    def name(self) -> str:
        """`embed`, `logits`, `{layer}_{kind}`, or a head's TransformerLens label (`L3H1`, `L0H2_ssm`)."""
        if self.layer is None:
            return self.kind
        if self.head is not None:
            return str(UnitLabel(self.layer, self.kind, self.head))
        return f"{self.layer}_{self.kind}"

    @property
    def order(self) -> tuple[float, int]:
        """Where the node sits in the forward pass: `(layer, stage)`, `embed` first, `logits` last.

        Examples:
            >>> Node(None, "embed").order < Node(0, "ssm").order < Node(0, "mlp", stage=1).order
            True
        """
        if self.kind == "embed":
            return (-1, 0)
        if self.kind == "logits":
            return (float("inf"), 0)
        return (self.layer, self.stage)

    @property
    def output_point(self) -> str:
        """The hook point holding a source's output (`[batch, pos, d_model]`, or `[batch, pos, head, d_model]`
        for a head, indexed by `head`).

        Examples:
            >>> Node(None, "embed").output_point, Node(2, "mlp", stage=1).output_point, Node(3, "attn", 1).output_point
            ('blocks.0.hook_resid_pre', 'blocks.2.hook_mlp_out', 'blocks.3.attn.hook_result')
        """
        if self.kind == "embed":
            return "blocks.0.hook_resid_pre"
        if self.kind == "logits":
            raise ValueError("logits is a target only: it has no output in the residual stream.")
        if self.head is not None:
            return f"blocks.{self.layer}.{self.kind}.hook_result"
        return f"blocks.{self.layer}.{point_name(self.kind)}"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Edge:
    """One edge: `upstream`'s output is a term of `downstream`'s input.

    Examples:
        >>> str(Edge(Node(None, "embed"), Node(0, "attn")))
        'embed->0_attn'
    """

    upstream: Node
    downstream: Node

    def __str__(self) -> str:
        return f"{self.upstream.name}->{self.downstream.name}"


@dataclass(frozen=True)
class Graph:
    """The nodes and edges of a model's residual stream (see the module docstring); build it with `Graph.of`.

    Attributes:
        sources: Nodes with an output, in forward order.
        targets: Nodes with an input, in forward order (the last is `logits`).
        n_layers: Number of blocks.
        heads: Whether mixers with per-head results are split into heads as sources.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> graph = Graph.of(model)
        >>> len(graph.sources), len(graph.targets), len(graph.edges)
        (37, 37, 691)
        >>> [str(edge) for edge in graph.edges_into(Node(0, "mlp", stage=1))]
        ['embed->0_mlp', '0_ssm->0_mlp', '0_attn->0_mlp']
    """

    sources: tuple[Node, ...]
    targets: tuple[Node, ...]
    n_layers: int
    heads: bool = False

    @classmethod
    def of(cls, model, heads: bool = False) -> Graph:
        """The graph of `model` (a `HookedHybrid`), read from `model.layout`.

        Args:
            model: A `HookedHybrid` of a family whose residual stream is a sum of its blocks' outputs.
            heads: Split each mixer with per-head results (`blocks.{i}.{kind}.hook_result`, whose sum is
                the mixer output) into one source node per head; a mixer whose output the block normalises
                after its projection (OLMo-Hybrid's attention) stays whole, its heads not summing to it.

        Raises:
            ValueError: For a family whose stream is not a plain sum of node outputs (MiniMax renormalises
                the skip path; Zamba2's shared block feeds its output into the Mamba input).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> graph = Graph.of(model, heads=True)
            >>> [node.name for node in graph.sources[:4]]
            ['embed', 'L0H0_linear_attn', 'L0H1_linear_attn', 'L0H2_linear_attn']
        """
        layout = model.layout
        if not layout.additive:
            raise ValueError(f"{model.adapter.family}: its blocks renormalise the residual stream on the skip path, "
                             "so a node's input is not the sum of upstream outputs; circuits need an additive "
                             "family (Qwen3.5, Falcon-H1, Qwen2.5, ...).")
        sources, targets = [Node(None, "embed")], []
        for layer in layout:
            fed = [kind for kind in layer.components if kind not in layer.residual_terms]
            if fed:
                raise ValueError(f"{model.adapter.family}: block {layer.index}'s {fed} feed another mixer's input "
                                 "instead of the residual stream; circuits need every component to write the stream.")
            spec = model.adapter.block_of(layer.block_key)
            if len(layer.mixers) > 1 and not spec.parallel:
                raise ValueError(f"{model.adapter.family}: block {layer.index} runs {layer.mixers} one after the "
                                 "other inside the block, where no hook point holds the second one's input.")
            for kind in layer.mixers:
                targets.append(Node(layer.index, kind))
                split = heads and getattr(model.blocks[layer.index], kind).heads
                if split and split.exact:
                    sources += [Node(layer.index, kind, head) for head in range(split.n_heads)]
                else:
                    sources.append(Node(layer.index, kind))
            if layer.has_mlp:
                targets.append(Node(layer.index, "mlp", stage=1))
                sources.append(Node(layer.index, "mlp", stage=1))
        targets.append(Node(None, "logits"))
        return cls(tuple(sources), tuple(targets), len(layout), heads)

    @cached_property
    def allowed(self) -> Bool[Tensor, "source target"]:
        """Which (source, target) pairs are edges: the source runs before the target.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> Graph.of(model).allowed.shape      # [source, target]
            torch.Size([17, 17])
        """
        return torch.tensor([[source.order < target.order for target in self.targets] for source in self.sources])

    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        """Every edge, ordered by target, then source (the order of every score table).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> [str(edge) for edge in Graph.of(model).edges[:3]]
            ['embed->0_attn', 'embed->0_mlp', '0_attn->0_mlp']
        """
        return tuple(Edge(self.sources[s], self.targets[t]) for s, t in self.edge_index.tolist())

    @cached_property
    def edge_index(self) -> Tensor:
        """`Int[Tensor, "edge 2"]`: each edge's (source index, target index), in the order of `edges`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> Graph.of(model).edge_index[:3].tolist()
            [[0, 0], [0, 1], [1, 1]]
        """
        return self.allowed.T.nonzero()[:, [1, 0]]

    def edges_into(self, target: Node) -> list[Edge]:
        """The edges into `target`, in source order.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> len(Graph.of(model).edges_into(Node(None, "logits")))
            17
        """
        return [edge for edge in self.edges if edge.downstream == target]

    def mask(self, edges) -> Bool[Tensor, "source target"]:
        """A `[source, target]` mask of `edges` (`Edge`s or `upstream->downstream` strings).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> graph = Graph.of(model)
            >>> int(graph.mask(["embed->logits", graph.edges[0]]).sum())
            2
        """
        index = {str(edge): (s, t) for edge, (s, t) in zip(self.edges, self.edge_index.tolist())}
        mask = torch.zeros(len(self.sources), len(self.targets), dtype=torch.bool)
        for edge in edges:
            try:
                mask[index[str(edge)]] = True
            except KeyError:
                raise ValueError(f"{str(edge)!r} is not an edge of this graph; edges read like "
                                 f"{str(self.edges[0])!r}.") from None
        return mask

    def table(self, scores: Tensor | None = None) -> pd.DataFrame:
        """The edges as a tidy table: `upstream`, `downstream` (node names) and, given
        `scores` `Float[Tensor, "source target"]`, their `score`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> Graph.of(model).table().head(2).to_dict("records")
            [{'upstream': 'embed', 'downstream': '0_attn'}, {'upstream': 'embed', 'downstream': '0_mlp'}]
        """
        table = pd.DataFrame({"upstream": [edge.upstream.name for edge in self.edges],
                              "downstream": [edge.downstream.name for edge in self.edges]})
        if scores is not None:
            source, target = self.edge_index.T
            table["score"] = scores[source, target].detach().cpu().double().numpy()
        return table
