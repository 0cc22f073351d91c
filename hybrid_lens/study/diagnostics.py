"""The study's diagnostics of the clean model: per-layer hidden-state metrics and the per-token
component-contribution view, computed once per study on its diagnostic text (`run_study` stores
them; `study.tables` reads them back, `study.report` renders them).

The metrics stay structured (layer, metric, component, value) everywhere but in the store, whose
rows have one `metric` column: `to_store` and `from_store` are the one place that encodes them.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import pandas as pd

from ..vocabulary import KINDS
from .files import atomic_write

HIDDEN_TASK = "hidden"  # the store's task name of the hidden-state metrics
DIAGNOSTIC_TOKENS = 512
CONTRIBUTION_TOKENS = 64
CONTRIBUTIONS_FILE = "contributions.html"  # the view as an HTML fragment, to open on its own
CONTRIBUTIONS_DATA = "contributions.json"  # the view as data, which the report renders
_FORMAT = "hybrid-lens contributions 1"
_FIELDS = {"layer": int, "position": int, "token": str, "path": str, "other": str, "norm_share": float}
_SEPARATOR = "|"  # joins metric and component in the store's `metric` column
COLUMNS = ["layer", "metric", "component", "value"]


def diagnostic_tokens(model, text: str, length: int):
    """The protocol's diagnostic text: the first `length` tokens of `text` (the perplexity text;
    `length` is 512, or one perplexity window if that is shorter), `Int[Tensor, "1 pos"]`, tokenized as the
    tokenizer does by itself (as the perplexity task does; no TransformerLens BOS default).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> diagnostic_tokens(model, "In the beginning God created the heaven and the earth. " * 50, 256).shape
        torch.Size([1, 256])
    """
    return model.to_tokens(text[:20_000], prepend_bos=model.cfg.tokenizer_prepends_bos)[:, :length]


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


def write_contributions(model, tokens, folder: Path) -> None:
    """The per-token component-contribution view of the clean model, written into `folder` as data
    (`contributions.json`: what `read_contributions` reads and the report renders) and as an HTML
    fragment to open on its own (`contributions.html`); both atomic writes.

    `tokens`: `Int[Tensor, "1 pos"]` (the study uses the first 64 diagnostic tokens). For a model
    the view does not apply to (one path per block, a soft-capped or renormalising model), both say
    why instead.

    Examples:
        >>> import tempfile
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> folder = Path(tempfile.mkdtemp())
        >>> write_contributions(model, model.to_tokens("In the beginning God created"), folder)
        >>> (folder / CONTRIBUTIONS_FILE).read_text()[:33]
        '<div class="hl-contributions" sty'
        >>> read_contributions(folder)[["layer", "token", "path", "other"]].head(2)
           layer token         path other
        0      0    In  linear_attn   mlp
        1      0   the  linear_attn   mlp
    """
    from ..analysis import contributions_html, token_contributions

    _, cache = model.run_with_cache(tokens, names_filter=model.hook_names(inner=False))
    try:
        table = token_contributions(model, cache, tokens)
    except (ValueError, NotImplementedError) as err:
        data = {"format": _FORMAT, "unavailable": str(err)}
        fragment = _unavailable(str(err))
    else:
        data = {"format": _FORMAT, "rows": table[list(_FIELDS)].to_dict("records")}
        fragment = contributions_html(table)
    atomic_write(Path(folder) / CONTRIBUTIONS_DATA, json.dumps(data))
    atomic_write(Path(folder) / CONTRIBUTIONS_FILE, fragment)


def read_contributions(folder: Path) -> pd.DataFrame | str:
    """The view `write_contributions` stored in `folder`: a table with columns layer, position,
    token, path, other, norm_share, or (a str) why the view does not apply to the model.

    Raises:
        ValueError: the file is not what `write_contributions` writes (the message says what is wrong).

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / CONTRIBUTIONS_DATA).write_text('{"format": "%s", "rows": [{"layer": "<b>"}]}' % _FORMAT)
        >>> read_contributions(folder)
        Traceback (most recent call last):
        ...
        ValueError: .../contributions.json: row 0 lacks position, token, path, other, norm_share.
    """
    path = Path(folder) / CONTRIBUTIONS_DATA
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON file ({err}).") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a contributions file of hybrid-lens ({_FORMAT!r}).")
    if isinstance(data.get("unavailable"), str):
        return data["unavailable"]
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: no rows.")
    for i, row in enumerate(rows):
        missing = [field for field in _FIELDS if not isinstance(row, dict) or field not in row]
        if missing:
            raise ValueError(f"{path}: row {i} lacks {', '.join(missing)}.")
        wrong = [field for field, kind in _FIELDS.items() if not _is(row[field], kind)]
        wrong += [field for field in ("path", "other") if row[field] not in KINDS]
        if wrong or not 0 <= row["norm_share"] <= 1:
            raise ValueError(f"{path}: row {i} has invalid {', '.join(wrong) or 'norm_share'}.")
    return pd.DataFrame(rows, columns=list(_FIELDS))


def contributions_view(folder: Path, report_folder: Path) -> str | None:
    """The HTML of the view stored in `folder`, rendered from its data by our own escaped template
    (`analysis.contributions_html`); a link to `contributions.html` for a study written before the
    data file existed (never its content); None when `folder` has neither.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / CONTRIBUTIONS_FILE).write_text("<script>alert(1)</script>")
        >>> contributions_view(folder, folder.parent)
        '<p>Open <a href="...contributions.html">...contributions.html</a> for this view.</p>'
    """
    from ..analysis import contributions_html

    if (Path(folder) / CONTRIBUTIONS_DATA).exists():
        try:
            stored = read_contributions(folder)
        except (OSError, ValueError) as err:
            return _unavailable(f"the stored view cannot be read: {err}")
        return _unavailable(stored) if isinstance(stored, str) else contributions_html(stored)
    if (Path(folder) / CONTRIBUTIONS_FILE).exists():
        link = html.escape(Path(os.path.relpath(Path(folder) / CONTRIBUTIONS_FILE, report_folder)).as_posix())
        return f'<p>Open <a href="{link}">{link}</a> for this view.</p>'
    return None


def _unavailable(reason: str) -> str:
    return f'<div class="hl-contributions"><p>Not available for this model: {html.escape(reason)}</p></div>'


def _is(value, kind: type) -> bool:
    """Whether a JSON value is of `kind` (an int is no bool; a float may be an int; both finite)."""
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)
