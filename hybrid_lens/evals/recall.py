"""In-context recall accuracy of a `HookedHybrid`, clean or under any condition, on the tasks of
`hybrid_lens.zoo.recall` (induction and multi-query associative recall)."""

from __future__ import annotations

from contextlib import nullcontext

import pandas as pd
import torch

from ..interventions import Condition, zero
from ..vocabulary import MIXER_KINDS
from ..zoo.recall import RecallTask, grid, scored, tabulate

__all__ = ["accuracy", "group_ablations", "recall_tables"]


@torch.no_grad()
def accuracy(model, task: RecallTask, condition: Condition | None = None, batch: int = 16) -> pd.DataFrame:
    """Greedy recall of every query of `task` by `model`, with `condition` applied.

    Args:
        model: a `HookedHybrid` (any family; its vocabulary must cover the task's ids).
        task: from `recall.induction`, `recall.mqar` or `recall.training_rows`.
        condition: a `Condition` active during the forward passes (`zero("attn")`, ...); None: clean.
        batch: rows per forward pass.

    Returns:
        One row per query (`zoo.recall.scored`): `row`, `position`, `distance`, `answer`, `predicted`
        (argmax of the logits at the query), `correct`, plus the task's `task`, `size` and `gap` and the
        condition's name.

    Examples:
        >>> from hybrid_lens.zoo import recall
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/planted-recall-qwen3.5")
        >>> table = accuracy(model, recall.induction(4, length=8, gap=24), zero("attn"))
        >>> len(table), table.distance.unique().tolist(), table.condition[0]
        (28, [32], 'attn_zero')
    """
    vocab = model.cfg.d_vocab
    if int(task.tokens.max()) >= vocab:
        raise ValueError(f"The task uses ids up to {int(task.tokens.max())} but the model's vocabulary has {vocab}; "
                         f"generate it with vocab={vocab}.")
    predicted = []
    with condition.apply(model) if condition is not None else nullcontext():
        for tokens in task.tokens.split(batch):
            predicted.append(model(tokens.to(model.device)).argmax(-1).cpu())
    return scored(task, torch.cat(predicted), condition.name if condition is not None else "clean")


def group_ablations(model) -> list[Condition]:
    """The clean run, then each mixer kind of `model` zeroed in every layer (MLPs and other mixers kept):
    `attn_zero`, `linear_attn_zero`, `ssm_zero`, ... as the model has them.

    Examples:
        >>> [c.name for c in group_ablations(HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1"))]
        ['clean', 'attn_zero', 'ssm_zero']
    """
    return [Condition(name="clean"), *(zero(kind) for kind in MIXER_KINDS if model.components(kind))]


def recall_tables(model, conditions: list[Condition] | None = None, n: int = 32, seed: int = 0,
                  batch: int = 16) -> pd.DataFrame:
    """Recall accuracy on the `zoo.recall.grid` tasks under each condition, one row per (condition, task, size, gap).

    Args:
        model: a `HookedHybrid`.
        conditions: default `group_ablations(model)` (clean, then each mixer kind zeroed).
        n: rows per task; seed: seeds the grid; batch: rows per forward pass.

    Returns:
        Columns `condition`, `task`, `size`, `gap`, `distance` (mean over queries; exact for
        induction), `queries` and `accuracy` (fraction of queries recalled).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/planted-recall-qwen3.5")
        >>> table = recall_tables(model, n=4)
        >>> table.condition.unique().tolist()
        ['clean', 'attn_zero', 'linear_attn_zero']
        >>> by_distance = table[table.task == "induction"].pivot(index="distance", columns="condition", values="accuracy")
    """
    conditions = group_ablations(model) if conditions is None else conditions
    return tabulate(pd.concat([accuracy(model, task, condition, batch) for condition in conditions
                               for task in grid(n, seed)]))
