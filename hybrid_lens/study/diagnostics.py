"""The study's diagnostics of the clean model: per-layer hidden-state metrics and the per-token
component-contribution view, computed once per study on its diagnostic text (`run_study` stores
them; `study.tables` reads them back, `study.report` renders them).

The metrics stay structured (layer, metric, component, value) everywhere but in the store, whose
rows have one `metric` column: `to_store` and `from_store` are the one place that encodes them.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

HIDDEN_TASK = "hidden"  # the store's task name of the hidden-state metrics
DIAGNOSTIC_TOKENS = 512
CONTRIBUTION_TOKENS = 64
CONTRIBUTIONS_FILE = "contributions.html"
_SEPARATOR = "|"  # joins metric and component in the store's `metric` column
COLUMNS = ["layer", "metric", "component", "value"]


def diagnostic_tokens(model, text: str, length: int):
    """The protocol's diagnostic text: the first `length` tokens of `text` (the perplexity text;
    `length` is 512, or one perplexity window if that is shorter), `Int[Tensor, "1 pos"]`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> diagnostic_tokens(model, "In the beginning God created the heaven and the earth. " * 50, 256).shape
        torch.Size([1, 256])
    """
    return model.to_tokens(text[:20_000])[:, :length]


def hidden_metrics(model, tokens) -> pd.DataFrame:
    """Per-layer hidden-state metrics of the clean model: columns layer, metric, component, value.

    `tokens`: `Int[Tensor, "batch pos"]`, usually `diagnostic_tokens`. See
    `analysis.layer_metrics` for the metrics (the ablation KLs make it slow on a CPU).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> tokens = model.to_tokens("In the beginning God created the heaven and the earth.")
        >>> rows = hidden_metrics(model, tokens)                                 # doctest: +SKIP
        >>> rows.head(3)                                                         # doctest: +SKIP
           layer        metric    component  value
        0      0   norm_change        block  ...
        1      0        cosine        block  ...
        2      0  output_ratio  linear_attn  ...
    """
    from ..analysis import layer_metrics

    return layer_metrics(model, tokens)[COLUMNS].reset_index(drop=True)


def to_store(metrics: pd.DataFrame) -> pd.DataFrame:
    """`hidden_metrics` as the store's rows: example = layer, metric = metric and component joined.

    Examples:
        >>> metrics = pd.DataFrame(dict(layer=[0], metric=["cosine"], component=["block"], value=[0.9]))
        >>> to_store(metrics).metric.tolist()
        ['cosine|block']
        >>> from_store(to_store(metrics).assign(task=HIDDEN_TASK)).equals(metrics)
        True
    """
    return pd.DataFrame(dict(example=metrics.layer, metric=metrics.metric + _SEPARATOR + metrics.component,
                             value=metrics.value))


def from_store(results: pd.DataFrame) -> pd.DataFrame:
    """The hidden-state metrics among a store's `results` (the rows of `HIDDEN_TASK`), back as
    `hidden_metrics`' columns; empty (with those columns) when the study has none.

    Examples:
        >>> from_store(pd.DataFrame(columns=["task", "example", "metric", "value"])).columns.tolist()
        ['layer', 'metric', 'component', 'value']
    """
    hidden = results[results.task == HIDDEN_TASK]
    if hidden.empty:
        return pd.DataFrame(columns=COLUMNS)
    names = hidden.metric.str.split(_SEPARATOR, n=1, expand=True)
    return pd.DataFrame(dict(layer=hidden.example.to_numpy(), metric=names[0].to_numpy(),
                             component=names[1].to_numpy(), value=hidden.value.to_numpy()))


def write_contributions(model, tokens, path: Path) -> None:
    """The per-token component-contribution view of the clean model, as an HTML fragment (atomic write).

    `tokens`: `Int[Tensor, "1 pos"]` (the study uses the first 64 diagnostic tokens). For a model
    the view does not apply to (one path per block, a soft-capped or renormalising model), the
    fragment says why instead.

    Examples:
        >>> import tempfile
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> path = Path(tempfile.mkdtemp()) / CONTRIBUTIONS_FILE
        >>> write_contributions(model, model.to_tokens("In the beginning God created"), path)
        >>> path.read_text()[:33]
        '<div class="hl-contributions" sty'
    """
    from ..analysis import contributions_html, token_contributions

    _, cache = model.run_with_cache(tokens)
    try:
        fragment = contributions_html(token_contributions(model, cache, tokens))
    except (ValueError, NotImplementedError) as err:
        fragment = f'<div class="hl-contributions"><p>Not available for this model: {html.escape(str(err))}</p></div>'
    temporary = path.with_suffix(".tmp")
    temporary.write_text(fragment, encoding="utf-8")
    temporary.replace(path)
