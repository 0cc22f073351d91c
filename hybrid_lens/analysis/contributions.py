"""Per-token component contribution: which path dominates each layer's update at each token.

Every layer compares two of its components (`compared_paths`): in a parallel hybrid block
(Falcon-H1) the attention path against the SSM path; in a block with a single mixer (the
sequential layers of Qwen3.5, and Qwen2.5) that mixer against the block's own MLP, since the
layer has no second mixer. Colors name component kinds, not row positions, so across the rows of
a sequential hybrid green (linear attention) and red (attention) layers read side by side.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from ..cache import ActivationCache
from ..vocabulary import KINDS, ComponentLabel, mixers_of
from .attribution import logit_attribution


def compared_paths(components: tuple[str, ...]) -> tuple[str, str] | None:
    """`(path, other)` of one block: attention vs the other mixer when the block has two; the
    mixer vs the MLP when it has one; None for a block with a single component (nothing to compare).

    Args:
        components: A block's components (`model.layout[i].components`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> compared_paths(model.layout[0].components)
        ('attn', 'ssm')
        >>> compared_paths(("linear_attn", "mlp")), compared_paths(("ssm",))
        (('linear_attn', 'mlp'), None)
    """
    mixers = mixers_of(components)
    if len(mixers) > 2:
        raise ValueError(f"A block with mixers {mixers} has no single pair of paths to compare.")
    if len(components) < 2:
        return None
    path = "attn" if "attn" in mixers else components[0]
    return path, [kind for kind in components if kind != path][0]


def _share(part: Tensor, rest: Tensor) -> Tensor:
    """`part / (part + rest)` of non-negative values; 0.5 where both are 0."""
    total = part + rest
    return torch.where(total > 0, part / total, 0.5)


@torch.no_grad()
def token_contributions(
    model,
    cache: ActivationCache,
    tokens: Int[Tensor, "batch pos"] | Int[Tensor, " pos"],
    target: Int[Tensor, "batch pos"] | None = None,
    batch: int = 0,
) -> pd.DataFrame:
    """The share of each layer's update that comes from `path` rather than `other`, per token.

    Args:
        model: A `HookedHybrid`.
        cache: a cache of the run on `tokens` with the block-level hook points and `hook_logits`.
        tokens: the token ids of that run (labels of the tokens).
        target: token ids whose logit the direct-logit share is measured on; default the model's
            own top prediction at each position.
        batch: which example of the batch.

    Returns:
        One row per layer and position: `layer, layer_kind, position, token, path, other`,
        `norm_path, norm_other` (output norms), `norm_share = norm_path / (norm_path + norm_other)`,
        `dla_path, dla_other` (direct logit attributions through the frozen final norm, see
        `attribution`), `dla_share = |dla_path| / (|dla_path| + |dla_other|)`; a share is 0.5
        where both paths are 0.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> tokens = model.to_tokens("In the beginning God created the heaven and the earth")
        >>> _, cache = model.run_with_cache(tokens)
        >>> table = token_contributions(model, cache, tokens)
        >>> len(table)                                     # 12 layers x 11 tokens (BOS + 10)
        132
        >>> table[["path", "other"]].iloc[0].tolist()
        ['attn', 'ssm']
    """
    tokens = torch.as_tensor(tokens)
    ids = (tokens[batch] if tokens.ndim == 2 else tokens).tolist()
    strings = [model.to_string([i]) if model.tokenizer is not None else str(i) for i in ids]
    target = cache["hook_logits"].argmax(-1) if target is None else target
    dla, labels = logit_attribution(model, cache, target)
    dla = dla[:, batch].cpu()
    frames = []
    for layer in cache.layout:
        if compared_paths(layer.residual_terms) is None:
            continue
        path, other = compared_paths(layer.residual_terms)
        layer = layer.index
        norms = [cache[f"{kind}_out", layer][batch].float().norm(dim=-1).cpu() for kind in (path, other)]
        direct = [dla[labels.index(ComponentLabel(layer, kind))] for kind in (path, other)]
        frames.append(pd.DataFrame(dict(
            layer=layer, layer_kind=model.layer_types[layer], position=np.arange(len(ids)), token=strings,
            path=path, other=other, norm_path=norms[0].numpy(), norm_other=norms[1].numpy(),
            norm_share=_share(*norms).numpy(), dla_path=direct[0].numpy(), dla_other=direct[1].numpy(),
            dla_share=_share(direct[0].abs(), direct[1].abs()).numpy(),
        )))
    if not frames:
        raise ValueError("No block of this model adds two components to the residual stream (e.g. a Mamba "
                         "stack: one SSM per block), so there are no two paths to compare; use "
                         "`logit_attribution` for per-component direct logit attribution.")
    return pd.concat(frames, ignore_index=True)


def _token_span(token: str, share: float, path: str, other: str) -> str:
    red, green, blue = KINDS[path if share >= 0.5 else other].colour
    alpha = abs(2 * share - 1)
    text = html.escape(token.replace("\n", "\u21b5").replace("\t", "\u21e5"))
    return (f'<span class="hl-tok" style="background-color: rgba({red}, {green}, {blue}, {alpha:.3f}); '
            f'white-space: pre" title="{html.escape(path)} share {share:.2f}">{text}</span>')


def _kind_label(kind: str) -> str:
    red, green, blue = KINDS[kind].colour
    return f'<b style="color: rgb({red}, {green}, {blue})">{html.escape(kind)}</b>'


def contributions_html(table: pd.DataFrame, share: str = "norm_share") -> str:
    """Colored text of a `token_contributions` table: one row per layer, one span per token.

    A token's background has the color of the path with the larger share (each kind's declared
    colour: attention red, SSM blue, linear attention green, short convolution purple, MLP grey) and
    opacity `|2 * share - 1|`: white
    where both paths contribute equally, solid where one path does everything.

    Args:
        table: A `token_contributions` table.
        share: `norm_share` or `dla_share`.

    Returns:
        An HTML fragment (display it with `IPython.display.HTML`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> tokens = model.to_tokens("In the beginning God created the heaven and the earth")
        >>> _, cache = model.run_with_cache(tokens)
        >>> html = contributions_html(token_contributions(model, cache, tokens), share="dla_share")
        >>> html.startswith('<div class="hl-contributions"')
        True
    """
    rows = []
    for layer, group in table.sort_values(["layer", "position"]).groupby("layer", sort=False):
        path, other = group.path.iloc[0], group.other.iloc[0]
        label = (f'<span class="hl-label" style="display: inline-block; min-width: 14em">'
                 f'L{layer} {_kind_label(path)} vs {_kind_label(other)}</span>')
        spans = "".join(_token_span(t, s, path, other) for t, s in zip(group.token, group[share]))
        rows.append(f'<div class="hl-row" data-layer="{layer}">{label}{spans}</div>')
    legend = (f'<div class="hl-legend">{html.escape(share)}: color of the dominant path, '
              f"opacity = dominance |2 share - 1|</div>")
    style = "font-family: monospace; line-height: 1.8"
    return f'<div class="hl-contributions" style="{style}">{legend}{"".join(rows)}</div>'
