"""Synthetic in-context recall tasks: seeded rows, training rows, clean / corrupted prompts, scoring.

Both tasks are made of random token ids (never the special ids 0-2 of the bundled tokenizer), so the
only way to predict an answer is to find it earlier in the context:

- **induction**: a random sequence of `length` tokens, `gap` other random tokens, then the sequence
  again. Every token of the second copy except the last is a query: its answer is the token that
  followed it in the first copy (the first token of the second copy cannot be predicted and is not an
  answer).
- **MQAR**, multi-query associative recall (Arora et al. 2023, "Zoology"): `pairs` key-value pairs,
  `gap` other random tokens, then every key again in a random order, each followed by its value. The
  keys of the second part are the queries, their values the answers.

The sequence (induction) and the keys and values (MQAR) are distinct ids, and the gap is drawn from the
other ids, so every query occurred exactly once before. Its **distance** is the
query's position minus that earlier occurrence's position: `length + gap` for every induction query;
for MQAR it varies with the key's place in the list and the query's place among the queries. A
`RecallTask` holds rows of one task at one size and gap; generators are seeded (`torch.Generator`), so
a seed gives the same rows on every machine.

`scored` scores greedy recall (the argmax of the logits equals the answer) per query and `tabulate`
gives accuracy per task; `grid` is the fixed grid of the model cards (by distance for induction, by
number of pairs for MQAR). `hybrid_lens.evals.recall` scores a `HookedHybrid` under any condition. The
planted-mechanism models learn the tasks from `training_rows` (`hybrid_lens.zoo.train`); `contrast`
gives clean and corrupted prompts for patching and circuit discovery.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor


FIRST_ID = 3  # ids 0, 1, 2 are <pad>, <s>, </s> in the bundled tokenizer
ALPHABET = 64  # the recall models learn (and are scored on) rows of the ids 3 .. 66
VOCAB = FIRST_ID + ALPHABET  # default `vocab` of the generators: ids are drawn from 3 .. VOCAB - 1
IGNORE = -100  # the label `transformers` losses skip
DISTANCES = (8, 16, 32, 64, 128, 192)  # `grid`: induction of 8 tokens, repeated after these distances
PAIRS = (2, 4, 8, 16, 32)  # `grid`: MQAR with this many pairs, no gap (32 pairs: 64 distinct ids)
INDUCTION_LENGTH = 8


@dataclass(frozen=True)
class RecallTask:
    """Rows of one recall task at one size and gap.

    Attributes:
        task: `"induction"` or `"mqar"`.
        size: the sequence length (induction) or the number of pairs (MQAR).
        gap: random tokens between the first part and the queries.
        tokens: `Int[Tensor, "batch pos"]` token ids.
        query: `Bool[Tensor, "batch pos"]`, True at a query: the next token is its answer.
        distance: `Int[Tensor, "batch pos"]`, at a query its position minus the position of its
            earlier occurrence; 0 elsewhere.
    """

    task: str
    size: int
    gap: int
    tokens: Int[Tensor, "batch pos"]
    query: Bool[Tensor, "batch pos"]
    distance: Int[Tensor, "batch pos"]

    def labels(self) -> Int[Tensor, "batch pos"]:
        """Training labels in the `transformers` convention (`labels[:, t]` is predicted at `t - 1`):
        the answers, `IGNORE` (-100) everywhere else.

        Examples:
            >>> task = induction(1, length=3, seed=0)
            >>> task.tokens[0].tolist(), task.labels()[0].tolist()
            ([47, 49, 20, 47, 49, 20], [-100, -100, -100, -100, 49, 20])
        """
        labels = torch.full_like(self.tokens, IGNORE)
        labels[:, 1:] = torch.where(self.query[:, :-1], self.tokens[:, 1:], IGNORE)
        return labels


def _distinct_ids(count: int, vocab: int, generator: torch.Generator) -> Int[Tensor, "count"]:
    """`count` distinct random non-special ids."""
    if count > vocab - FIRST_ID:
        raise ValueError(f"A row needs {count} distinct ids but the vocabulary has {vocab - FIRST_ID} non-special ones.")
    return torch.randperm(vocab - FIRST_ID, generator=generator)[:count] + FIRST_ID


def _filler(count: int, exclude: Tensor, vocab: int, generator: torch.Generator) -> Int[Tensor, "count"]:
    """`count` random non-special ids, none of them in `exclude` (drawn with replacement)."""
    if not count:
        return torch.empty(0, dtype=torch.long)
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[:FIRST_ID] = False
    allowed[exclude] = False
    choices = allowed.nonzero().flatten()
    if not len(choices):
        raise ValueError(f"No ids are left for the gap: the vocabulary has {vocab - FIRST_ID} non-special ids.")
    return choices[torch.randint(len(choices), (count,), generator=generator)]


def _induction_row(length: int, gap: int, vocab: int, generator: torch.Generator, copies: int = 2):
    """(tokens, query, distance) of one induction row, each `Tensor["copies * length + gap"]`: the
    sequence, the gap, then `copies - 1` more copies of the sequence (later copies look back one copy)."""
    sequence = _distinct_ids(length, vocab, generator)
    filler = _filler(gap, sequence, vocab, generator)
    tokens = torch.cat([sequence, filler, *[sequence] * (copies - 1)])
    query = torch.zeros(len(tokens), dtype=torch.bool)
    query[length + gap : -1] = True
    if gap:  # the first copy's last token was followed by the gap, not by the sequence
        query[2 * length + gap - 1] = False
    distance = torch.full((len(tokens),), length)
    distance[: 2 * length + gap] = length + gap
    return tokens, query, distance * query


def _mqar_row(pairs: int, gap: int, vocab: int, generator: torch.Generator):
    """(tokens, query, distance) of one MQAR row, each `Tensor["4 * pairs + gap"]`."""
    ids = _distinct_ids(2 * pairs, vocab, generator)
    keys, values, filler = ids[:pairs], ids[pairs:], _filler(gap, ids, vocab, generator)
    order = torch.randperm(pairs, generator=generator)
    tokens = torch.cat([torch.stack([keys, values], 1).flatten(), filler,
                        torch.stack([keys[order], values[order]], 1).flatten()])
    query = torch.zeros(len(tokens), dtype=torch.bool)
    start = 2 * pairs + gap
    query[start::2] = True
    distance = torch.zeros(len(tokens), dtype=torch.long)
    distance[start::2] = start + 2 * torch.arange(pairs) - 2 * order
    return tokens, query, distance


ROWS = {"induction": _induction_row, "mqar": _mqar_row}


def _task(task: str, n: int, size: int, gap: int, seed: int, vocab: int) -> RecallTask:
    if n < 1 or size < 1 or gap < 0:
        raise ValueError(f"A {task} task needs n >= 1 rows, size >= 1 and gap >= 0; got n={n}, size={size}, gap={gap}.")
    generator = torch.Generator().manual_seed(seed)
    rows = [ROWS[task](size, gap, vocab, generator) for _ in range(n)]
    tokens, query, distance = (torch.stack(parts) for parts in zip(*rows))
    return RecallTask(task, size, gap, tokens, query, distance)


def induction(n: int, length: int, gap: int = 0, seed: int = 0, vocab: int = VOCAB) -> RecallTask:
    """`n` induction rows: `length` random tokens, `gap` other random tokens, the `length` tokens again.

    Args:
        n: rows.
        length: tokens of the repeated sequence (`length - 1` queries per row).
        gap: random tokens between the copies; every query's distance is `length + gap`.
        seed: seeds the rows (same seed, same rows).
        vocab: ids are drawn from `3 .. vocab - 1`.

    Returns:
        A `RecallTask` of `n` rows of `2 * length + gap` tokens.

    Examples:
        >>> task = induction(2, length=4, gap=2, seed=0)
        >>> task.tokens.shape, int(task.query.sum()), task.distance[task.query].unique().tolist()
        (torch.Size([2, 10]), 6, [6])
    """
    return _task("induction", n, length, gap, seed, vocab)


def mqar(n: int, pairs: int, gap: int = 0, seed: int = 0, vocab: int = VOCAB) -> RecallTask:
    """`n` multi-query associative recall rows: `pairs` key-value pairs, `gap` random tokens, then
    every key again (random order), each followed by its value.

    Args:
        n: rows.
        pairs: key-value pairs (and queries) per row.
        gap: random tokens between the pairs and the queries.
        seed: seeds the rows (same seed, same rows).
        vocab: ids are drawn from `3 .. vocab - 1`.

    Returns:
        A `RecallTask` of `n` rows of `4 * pairs + gap` tokens.

    Examples:
        >>> task = mqar(1, pairs=2, seed=0)
        >>> task.tokens[0].tolist()                       # k1 v1 k2 v2, then the keys again (here in the same order)
        [47, 20, 49, 6, 47, 20, 49, 6]
        >>> task.query[0].tolist(), task.distance[0].tolist()
        ([False, False, False, False, True, False, True, False], [0, 0, 0, 0, 4, 0, 4, 0])
    """
    return _task("mqar", n, pairs, gap, seed, vocab)


def _episode(length: int, vocab: int, generator: torch.Generator):
    """One random training episode of at most `length` tokens: induction, a short sequence repeated
    to fill the row, or MQAR (equally likely). Sizes are log-uniform (up to 64); the gap is 0 half of
    the time and log-uniform up to the room left otherwise, so that short, easy episodes are common and
    long ones occur. The repeated sequences make the lookup easy to find at the start of training: a
    query's answer follows every earlier copy, not one position among the whole context."""
    def log_uniform(low: int, high: int) -> int:
        return min(high, int(low * ((high + 1) / low) ** float(torch.rand((), generator=generator))))

    def gap(room: int) -> int:
        return 0 if room < 1 or torch.rand((), generator=generator) < 0.5 else log_uniform(1, room)

    kind = int(torch.randint(3, (), generator=generator))
    if kind == 0:
        size = log_uniform(2, min(64, length // 2))
        return _induction_row(size, gap(length - 2 * size), vocab, generator)
    if kind == 1:
        size = log_uniform(2, min(16, length // 2))
        return _induction_row(size, 0, vocab, generator, copies=-(-length // size))
    size = log_uniform(1, min(64, length // 4))
    return _mqar_row(size, gap(length - 4 * size), vocab, generator)


def training_rows(n: int, length: int, generator: torch.Generator, vocab: int = VOCAB) -> RecallTask:
    """`n` rows of `length` tokens, each packed with random induction and MQAR episodes (sizes up to
    64, gaps up to the row length) and cut at `length`; queries whose answer was cut are dropped.

    Draws from `generator`, so a seeded generator gives a fixed sequence of batches.

    Examples:
        >>> rows = training_rows(2, 64, torch.Generator().manual_seed(0))
        >>> rows.tokens.shape, rows.labels().shape, bool(rows.query[:, -1].any())
        (torch.Size([2, 64]), torch.Size([2, 64]), False)
    """
    tokens = torch.zeros(n, length, dtype=torch.long)
    query, distance = torch.zeros_like(tokens, dtype=torch.bool), torch.zeros_like(tokens)
    for i in range(n):
        episodes, filled = [], 0
        while filled < length:
            episodes.append(_episode(length, vocab, generator))
            filled += len(episodes[-1][0])
        tokens[i], query[i], distance[i] = (torch.cat(part)[:length] for part in zip(*episodes))
    query[:, -1] = False
    return RecallTask("mixed", 0, 0, tokens, query, distance * query)


def scored(task: RecallTask, predicted: Int[Tensor, "batch pos"], condition: str = "clean") -> pd.DataFrame:
    """One row per query of `task`, scored against `predicted` (the argmax of a model's logits).

    Args:
        task: from `induction`, `mqar` or `training_rows`.
        predicted: the predicted next token at every position of `task.tokens`.
        condition: the name of the condition the predictions were made under.

    Returns:
        Columns `task`, `size`, `gap`, `condition`, `row`, `position`, `distance`, `answer`, `predicted`,
        `correct` (`hybrid_lens.evals.recall.accuracy` runs a `HookedHybrid`; `zoo.train` a plain model).

    Examples:
        >>> task = mqar(1, pairs=2, seed=0)
        >>> scored(task, torch.roll(task.tokens, -1, dims=1)).correct.tolist()   # a perfect predictor
        [True, True]
    """
    rows, positions = task.query.nonzero(as_tuple=True)
    answer = task.tokens[rows, positions + 1]
    guess = predicted[rows, positions]
    return pd.DataFrame(dict(
        task=task.task, size=task.size, gap=task.gap, condition=condition,
        row=rows.numpy(), position=positions.numpy(), distance=task.distance[rows, positions].numpy(),
        answer=answer.numpy(), predicted=guess.numpy(), correct=(guess == answer).numpy()))


def tabulate(queries: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (condition, task, size, gap) of `scored` rows: columns `distance` (mean over queries;
    exact for induction), `queries` and `accuracy` (the share recalled).

    Examples:
        >>> task = mqar(2, pairs=2, seed=0)
        >>> tabulate(scored(task, task.tokens)).accuracy.tolist()              # predicting the query itself
        [0.0]
    """
    keys = ["condition", "task", "size", "gap"]
    table = queries.groupby(keys, sort=False).agg(distance=("distance", "mean"), queries=("correct", "size"),
                                                  accuracy=("correct", "mean"))
    return table.reset_index()


def grid(n: int = 32, seed: int = 0, vocab: int = VOCAB) -> list[RecallTask]:
    """The tasks of the recall tables (`hybrid_lens.evals.recall.recall_tables`, the model cards): induction of `INDUCTION_LENGTH` (8) tokens at each of `DISTANCES`,
    and MQAR (no gap) at each of `PAIRS`; `n` rows each, seeded by `seed` and the task's place in the grid.

    Examples:
        >>> [(t.task, t.size, t.gap) for t in grid(2)][:2], len(grid(2))
        ([('induction', 8, 0), ('induction', 8, 8)], 11)
    """
    tasks = [induction(n, INDUCTION_LENGTH, d - INDUCTION_LENGTH, seed + i, vocab) for i, d in enumerate(DISTANCES)]
    return tasks + [mqar(n, p, 0, seed + len(DISTANCES) + i, vocab) for i, p in enumerate(PAIRS)]


@dataclass(frozen=True)
class RecallContrast:
    """Clean and corrupted prompts of one recall query, for patching and circuit discovery.

    Attributes:
        clean: `Int[Tensor, "batch pos"]`, an MQAR row cut after its first query: the model should
            predict `correct` at the last position.
        corrupt: the same rows with the value stored for the queried key replaced by `wrong` (an id
            the row does not use), so recall now answers `wrong`.
        correct, wrong: `Int[Tensor, "batch"]`, the two answers.
    """

    clean: Int[Tensor, "batch pos"]
    corrupt: Int[Tensor, "batch pos"]
    correct: Int[Tensor, "batch"]
    wrong: Int[Tensor, "batch"]

    def metric(self):
        """Mean over rows of `logit[correct] - logit[wrong]` at the last position: a metric for `edge_patch`,
        `edge_attribution` and `patch` (positive on the clean run of a model that recalls, negative on the
        corrupted one)."""
        rows = torch.arange(len(self.correct))

        def logit_diff(logits: Tensor) -> Tensor:
            last = logits[:, -1]
            return (last[rows, self.correct.to(last.device)] - last[rows, self.wrong.to(last.device)]).mean()

        return logit_diff


CORRUPTIONS = ("value", "key")


def contrast(n: int, pairs: int, gap: int = 0, seed: int = 0, vocab: int = VOCAB, corrupt: str = "value") -> RecallContrast:
    """`n` MQAR prompts that end at one query, and a corruption that changes the recalled answer.

    Args:
        n: rows.
        pairs: key-value pairs before the query (at least 2 for `corrupt="key"`).
        gap: random ids between the pairs and the query.
        seed: seeds the rows (`mqar(n, pairs, gap, seed, vocab)`, then the corruption).
        vocab: ids are drawn from `3 .. vocab - 1`.
        corrupt: `"value"`: the value stored after the queried key is replaced by an id the row does not
            use (the answer's token changes, the lookup does not); `"key"`: the queried key trades places
            with another pair's key (every token is still in the row, but the query now finds the other
            pair's value: the lookup changes).

    Returns:
        A `RecallContrast`: rows of `2 * pairs + gap + 1` tokens.

    Examples:
        >>> pair = contrast(1, pairs=2, seed=0)
        >>> pair.clean[0].tolist(), pair.corrupt[0].tolist(), int(pair.correct[0]), int(pair.wrong[0])
        ([47, 20, 49, 6, 47], [47, 30, 49, 6, 47], 20, 30)
        >>> contrast(1, pairs=2, seed=0, corrupt="key").corrupt[0].tolist()
        [49, 20, 47, 6, 47]
    """
    if corrupt not in CORRUPTIONS:
        raise ValueError(f"corrupt must be one of {CORRUPTIONS}, got {corrupt!r}.")
    if corrupt == "key" and pairs < 2:
        raise ValueError("A key corruption swaps two keys: give pairs >= 2.")
    task = mqar(n, pairs, gap, seed, vocab)
    start = 2 * pairs + gap
    clean = task.tokens[:, : start + 1]
    earlier = start - task.distance[:, start]  # where the queried key was stored; its value follows it
    generator = torch.Generator().manual_seed(seed + 1)
    corrupted = clean.clone()
    rows = torch.arange(n)
    if corrupt == "value":
        wrong = torch.stack([_filler(1, row, vocab, generator)[0] for row in clean])
        corrupted[rows, earlier + 1] = wrong
    else:
        shift = torch.randint(1, pairs, (n,), generator=generator)
        other = (earlier + 2 * shift) % (2 * pairs)  # another pair's key position
        corrupted[rows, earlier], corrupted[rows, other] = clean[rows, other], clean[rows, earlier]
        wrong = clean[rows, other + 1]
    return RecallContrast(clean, corrupted, task.tokens[:, start + 1], wrong)
