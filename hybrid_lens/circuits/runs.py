"""Forward passes over a `Graph`: read every source's output, and feed each target its own input.

A target's input is the residual stream at its block's input point (`hook_resid_pre`, `hook_resid_mid`,
the last `hook_resid_post` for `logits`). To change one target's input only, `graph_hooks` leaves the
stream alone and, while the target's `transformers` module runs, hands it `norm(resid + delta)` (the
block's own pre-norm and input multiplier, as the block forward computes it) through a forward
pre-hook on that module: the mixers of a parallel block, which read one normed input, each get their own.
`logits` gets `resid + delta` at the last `hook_resid_post`, which only the final norm reads. With no
`delta` (None) a target runs untouched; a zero `delta` gives the same values as no hook.

Every hook is removed when the pass ends, also on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from operator import attrgetter

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from ..adapters.spec import scaled
from .graph import Graph, Node

__all__ = ["graph_hooks", "patched_logits", "source_outputs"]

Delta = Callable[[int, dict[int, Tensor]], Tensor | None]


def input_point(model, node: Node) -> str:
    """The residual point a target reads: its block's input, or `hook_resid_mid` for the MLP of a block with
    mixers, or the last block's `hook_resid_post` for `logits`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> input_point(model, Node(2, "attn")), input_point(model, Node(2, "mlp", stage=1))
        ('blocks.2.hook_resid_pre', 'blocks.2.hook_resid_mid')
    """
    if node.kind == "logits":
        return f"blocks.{model.n_layers - 1}.hook_resid_post"
    layer = model.layout[node.layer]
    return f"blocks.{node.layer}.hook_resid_mid" if node.kind == "mlp" and layer.has_resid_mid \
        else f"blocks.{node.layer}.hook_resid_pre"


def target_reader(model, node: Node) -> tuple[list[nn.Module], Callable[[Tensor], Tensor]]:
    """The `transformers` modules of a mixer or MLP target and the map from the residual stream to their
    input (the block's pre-norm, then a mixer's input multiplier).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> modules, read = target_reader(model, Node(0, "attn"))
        >>> type(modules[0]).__name__, read(torch.ones(1, 2, 128)).shape
        ('Qwen2Attention', torch.Size([1, 2, 128]))
    """
    adapter = model.adapter
    layer = adapter.layers(model.hf_model)[node.layer]
    spec = adapter.block_of(model.layout[node.layer].block_key)
    if node.kind == "mlp":
        modules = [module for module in (attrgetter(attr)(layer) for attr in spec.mlp.modules) if module is not None]
        return modules, lambda resid: adapter.norm(layer, spec.mlp.norm, resid)
    mixer = next(mixer for mixer in spec.mixers if mixer.kind == node.kind)
    norm = spec.mixers[0].norm if spec.parallel else mixer.norm
    return [attrgetter(mixer.module)(layer)], lambda resid: scaled(adapter.norm(layer, norm, resid), layer,
                                                                    mixer.in_scale)


@contextmanager
def graph_hooks(model, graph: Graph, delta: Delta | None = None) -> Iterator[dict[int, Tensor]]:
    """Hooks for the passes run inside: record every source's output, and feed target `t` the input
    `resid + delta(t, outputs)` where `delta` returns a tensor of the stream's shape (None: untouched).

    Args:
        model: The `HookedHybrid` of `graph`.
        graph: Its `Graph`.
        delta: `(target index, source outputs so far) -> Float[Tensor, "batch pos d_model"] | None`,
            called while the target runs (every upstream output is recorded by then).

    Yields:
        The source outputs of the pass, source index -> `Float[Tensor, "batch pos d_model"]`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> graph, tokens = Graph.of(model), model.to_tokens("In the beginning")
        >>> with graph_hooks(model, graph) as outputs:
        ...     logits = model(tokens)
        >>> len(outputs), outputs[0].shape
        (17, torch.Size([1, 3, 128]))
    """
    outputs: dict[int, Tensor] = {}
    resid: dict[str, Tensor] = {}
    by_point: dict[str, list[tuple[int, int | None]]] = {}
    for index, source in enumerate(graph.sources):
        by_point.setdefault(source.output_point, []).append((index, source.head))

    def record(point: str):
        def hook(value, hook):
            for index, head in by_point[point]:
                outputs[index] = value if head is None else value[..., head, :]
        return hook

    def keep(value, hook):
        resid[hook.name] = value

    fwd_hooks = [(point, record(point)) for point in by_point]
    with ExitStack() as stack:
        for index, target in enumerate(graph.targets):
            point = input_point(model, target)
            if target.kind == "logits":
                def to_logits(value, hook, index=index):
                    change = delta and delta(index, outputs)
                    return value if change is None else value + change
                fwd_hooks.append((point, to_logits))
                continue
            fwd_hooks.append((point, keep))
            modules, read = target_reader(model, target)

            def feed(module, args, index=index, point=point, read=read):
                change = delta and delta(index, outputs)
                return None if change is None else (read(resid[point] + change), *args[1:])

            for module in modules:
                stack.callback(module.register_forward_pre_hook(feed).remove)
        stack.enter_context(model.hooks(fwd_hooks=fwd_hooks))
        yield outputs


def source_outputs(model, graph: Graph, tokens: Tensor) -> tuple[Float[Tensor, "source batch pos d_model"],
                                                                  Float[Tensor, "batch pos vocab"]]:
    """Every source's output on `tokens` `Int[Tensor, "batch pos"]`, stacked, and the logits (no gradient).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> graph = Graph.of(model)
        >>> outputs, logits = source_outputs(model, graph, model.to_tokens("In the beginning"))
        >>> outputs.shape                       # [source, batch, pos, d_model]
        torch.Size([17, 1, 3, 128])
    """
    with torch.no_grad(), graph_hooks(model, graph) as outputs:
        logits = model(tokens)
    return torch.stack([outputs[index] for index in range(len(graph.sources))]), logits


def patched_logits(model, graph: Graph, tokens: Tensor, corrupt: Float[Tensor, "source batch pos d_model"],
                   patched: Bool[Tensor, "group source target"]) -> Float[Tensor, "group batch pos vocab"]:
    """Logits of `tokens` run once per group, each group's edges in `patched` carrying `corrupt`'s
    source output instead of the pass's own: the target's input becomes
    `resid + sum over its patched edges of (corrupt output - this pass's output)`. All groups run as one
    batch (`group * batch` rows); no gradient.

    Args:
        model: The `HookedHybrid` of `graph`.
        graph: Its `Graph`.
        tokens: `Int[Tensor, "batch pos"]`, the run patched into (the clean run).
        corrupt: `source_outputs` of the other run (the corrupted one), on the same token shape.
        patched: Per group, which (source, target) edges to patch (only edges of `graph` may be set).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> graph = Graph.of(model)
        >>> clean, corrupt = model.to_tokens("And God said unto Moses"), model.to_tokens("And God said unto Aaron")
        >>> outputs, corrupt_logits = source_outputs(model, graph, corrupt)
        >>> everything = graph.allowed[None]              # one group: every edge patched
        >>> torch.allclose(patched_logits(model, graph, clean, outputs, everything)[0], corrupt_logits, atol=1e-4)
        True
    """
    if patched.shape[1:] != graph.allowed.shape:
        raise ValueError(f"patched must be [group, source, target] = [G, {len(graph.sources)}, {len(graph.targets)}], "
                         f"got {tuple(patched.shape)}.")
    if (patched & ~graph.allowed).any():
        raise ValueError("patched sets (source, target) pairs that are not edges of the graph (see Graph.allowed).")
    if corrupt.shape[1:3] != tokens.shape:
        raise ValueError(f"corrupt holds outputs on {tuple(corrupt.shape[1:3])} tokens, the run has {tuple(tokens.shape)}.")
    groups, batch = patched.shape[0], tokens.shape[0]
    weights = patched.to(device=corrupt.device, dtype=corrupt.dtype)

    def delta(target: int, outputs: dict[int, Tensor]) -> Tensor | None:
        used = patched[:, :, target].any(0).nonzero().flatten().tolist()
        if not used:
            return None
        own = torch.stack([outputs[source] for source in used]).unflatten(1, (groups, batch))
        change = torch.einsum("gs,sgbpd->gbpd", weights[:, used, target], corrupt[used].unsqueeze(1) - own)
        return change.flatten(0, 1)

    with torch.no_grad(), graph_hooks(model, graph, delta):
        logits = model(tokens.repeat(groups, 1))
    return logits.unflatten(0, (groups, batch))
