"""The paper's published values as report columns beside a study's own (the values: `study.published`)."""

from __future__ import annotations

import pandas as pd

from .. import published
from .wording import ABSENT, number


def paper_source(paper: str, same: bool) -> str:
    """The paper's model as the report names it: its short name, marked when the study's model is a
    bundled analogue of it.

    Examples:
        >>> paper_source("Qwen/Qwen3.5-0.8B", same=False), paper_source("Qwen/Qwen3.5-0.8B", same=True)
        ('Qwen3.5-0.8B, full-size analogue', 'Qwen3.5-0.8B')
    """
    return f"{paper.split('/')[-1]}{'' if same else ', full-size analogue'}"


def paper_cell(value, paper: str | None) -> str:
    """A published value (or a (targeted, mean, std) triple), formatted.

    Examples:
        >>> paper_cell(268_337, "Qwen/Qwen3.5-0.8B"), paper_cell((.202, .199, .009), "Qwen/Qwen3.5-0.8B")
        ('268,337', '0.202 vs 0.199 ± 0.009')
        >>> paper_cell(None, "Qwen/Qwen3.5-0.8B"), paper_cell(1.0, None)
        ('—', '—')
    """
    if value is None or paper is None:
        return ABSENT
    if isinstance(value, tuple):
        return f"{number(value[0])} vs {number(value[1])} ± {number(value[2])}"
    return number(value)


def add_paper_columns(display: pd.DataFrame, model: str, conditions: pd.Series, paper_table: dict,
                      columns: dict) -> pd.DataFrame:
    """`display` with one column of published values per `columns` item (header -> the value picked
    from the paper's entry of a condition), if `paper_table` has the paper's analogue of `model`.

    Examples:
        >>> display = pd.DataFrame({"condition": ["baseline", "attn_off", "ssm_off"]})
        >>> add_paper_columns(display, "hybrid-lens/tiny-qwen3.5", display.condition, published.PERPLEXITY,
        ...                   {"PPL": lambda entry: (entry or (None,) * 3)[1]}).iloc[:, 1].tolist()
        ['7.6', '625', '—']
    """
    paper, same = published.paper_model(model)
    if paper in paper_table:
        for what, pick in columns.items():
            display[paper_header(what, paper, same)] = conditions.map(
                lambda c, pick=pick: paper_cell(pick(paper_table[paper].get(c)), paper))
    return display


def paper_header(what: str, paper: str, same: bool) -> str:
    """Column header of published values: the paper's model, marked when ours is a bundled analogue.

    Examples:
        >>> paper_header("PPL", "Qwen/Qwen3.5-0.8B", same=False)
        'paper PPL (Qwen3.5-0.8B, full-size analogue)'
    """
    return f"paper {what} ({paper_source(paper, same)})"
