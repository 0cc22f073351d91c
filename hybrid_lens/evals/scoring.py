"""Scoring through the hooked model: loglikelihoods of continuations and multiple-choice metrics, with
an optional intervention active for every forward pass (greedy generation: `evals.greedy`).

The rules follow lm-evaluation-harness (`HFLM`) so scores can be compared with its numbers: a
context's trailing whitespace moves to the continuation, the pair is tokenized whole and split at
the context's length, over-long inputs are truncated from the left, and a generation is cut at the
first stop string (`evals.greedy`). Loglikelihoods run each distinct context once and score its continuations from
its cache (`shared_context`; contexts left-padded, continuations right-padded), or else score full
sequences in right-padded batches (exact for every mixer: real tokens never see the padding after
them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..checks import is_int
from ..decoding import batches_pad, cache_blocker
from ..interventions import Condition, Sweep, as_sweep
from ..interventions.sweep import first_layer
from .shared_context import (
    check_positions,
    clean_prefix,
    context_logprobs,
    reuses_prefix,
    shared_context_blocker,
    shares_contexts,
    split_request,
)


class NonFiniteError(FloatingPointError):
    """A score would be computed from inf/NaN model outputs.

    Attributes:
        indices: the requests, prompts, windows or examples affected (as the message names them).
        condition: the name of the condition that was active (`"none"` without one).

    Examples:
        >>> err = NonFiniteError("arc_challenge: non-finite loglikelihoods", indices=[3], condition="ssm_zero")
        >>> err.indices, err.condition, isinstance(err, FloatingPointError)
        ([3], 'ssm_zero', True)
    """

    def __init__(self, message: str, indices: Sequence[int] = (), condition: str = "none"):
        super().__init__(message)
        self.indices, self.condition = list(indices), condition


def condition_name(condition) -> str:
    """How errors name a condition: its name, or `"none"` (None, or the unnamed clean `Condition()`).

    Examples:
        >>> condition_name(None), condition_name(zero("ssm"))
        ('none', 'ssm_zero')
    """
    return "none" if condition is None else condition.name or "none"


def check_finite(values: Sequence[float], what: str, condition) -> None:
    """Raise `NonFiniteError` naming the indices of `values` that are inf or NaN.

    Examples:
        >>> check_finite([-1.5, -2.0], "loglikelihood of requests", None)
        >>> check_finite([-1.5, float("nan")], "loglikelihood of requests", zero("ssm"))
        Traceback (most recent call last):
        ...
        hybrid_lens.evals.scoring.NonFiniteError: Non-finite loglikelihood of requests [1] under condition 'ssm_zero': the model produced inf/NaN logits.
    """
    bad = [i for i, value in enumerate(values) if not math.isfinite(value)]
    if bad:
        raise NonFiniteError(f"Non-finite {what} {bad[:10]}{' ...' if len(bad) > 10 else ''} under condition "
                             f"{condition_name(condition)!r}: the model produced inf/NaN logits.", bad,
                             condition_name(condition))


def check_positive(**values: int | None) -> None:
    """Raise `ValueError` for any value that is not None and below 1, naming it.

    Examples:
        >>> check_positive(batch_size=8, max_windows=None)
        >>> check_positive(batch_size=0)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be a positive integer, got 0.
    """
    for name, value in values.items():
        if value is not None and (not is_int(value) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def max_length_of(model, max_length: int | None) -> int | None:
    """`max_length`, else the model's `max_position_embeddings` (None when neither is set): the window
    inputs are truncated to from the left.

    Examples:
        >>> max_length_of(HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5"), None)
        2048
    """
    return max_length or getattr(model.cfg, "max_position_embeddings", None)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval makes them.

    Trailing whitespace of the context moves to the continuation; the whole string is tokenized and
    split at the length of the tokenized context. An empty context becomes the BOS (else EOS) token.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> encode_pair(model.tokenizer, "In the beginning God created the ", "heaven")
        ([1133, 261, 2064, 389, 3599, 261], [740])
        >>> model.tokenizer.convert_ids_to_tokens([740])   # the space moved to the continuation
        ['Ġheaven']
    """
    return _encode_pair(tokenizer, context, continuation, {})


def _encode_pair(tokenizer, context: str, continuation: str, memo: dict[str, list[int]]):
    """`encode_pair`, tokenizing each distinct context once (`memo`: context -> ids)."""
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], tokenizer(continuation)["input_ids"]
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if context not in memo:
        memo[context] = tokenizer(context)["input_ids"]
    context_ids = memo[context]
    return context_ids, tokenizer(context + continuation)["input_ids"][len(context_ids) :]


@torch.no_grad()
def loglikelihoods(
    model,
    requests: Sequence[tuple[str, str]],
    condition: Condition | Sweep | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    progress: bool = True,
) -> list[float] | list[list[float]]:
    """Summed log-probability of each continuation given its context, `log p(continuation | context)`.

    Each distinct context runs once and its continuations are scored from its cache (shared-context
    scoring, `evals.shared_context`: the attention keys and values and every linear mixer's
    recurrent and convolution states), in batches of contexts sorted by length (`length_batches`);
    results come back in the order of `requests`. This equals scoring each full sequence (tested per
    family, under conditions too). Where it would not, the requests' full sequences are scored in
    right-padded batches instead, requests with the same input tokens sharing one sequence: for a
    condition that is not `cache_safe` (positions, inner points, noise, resample, patching), for a
    family whose cache does not continue several tokens exactly (`continues_exactly`), while an
    inner hook point fed by an eager mixer forward is hooked, and for a continuation that alone
    fills `max_length`. Either way a condition's positions count each row's real tokens.

    Args:
        requests: `(context, continuation)` strings, e.g. `("Question: ...\\nAnswer:", " Paris")`.
        batch_size: contexts per forward pass, their continuations sharing one more pass (full
            sequences per pass where those are scored); None: by device, see `length_batches`.
        condition: an intervention active for every forward pass; its positions count real tokens
            of each row from 0 (negative ones from each row's last token). A `Sweep` scores every
            request under each of its conditions and returns one list per condition: one clean
            pass over each batch of contexts and one over their continuations run up to the deepest
            first block of the conditions that share contexts, each of which then runs its context
            and continuation passes from its own first block (prefix reuse, `first_layer`; with
            `reuse_prefix`; a condition that acts nowhere runs only the final norm); the other
            conditions score full sequences together (condition batching and prefix reuse, as
            `Sweep.logits`). Each result equals the condition scored alone, bit for bit.
        max_length: inputs longer than this keep their last tokens (default: the config's
            `max_position_embeddings`, as lm-eval).

    Returns:
        One float per request (for a `Sweep`: `[condition][request]`).

    Raises:
        NonFiniteError: a loglikelihood is inf or NaN (naming the requests and the condition).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> requests = [("In the beginning God created the", " heaven"), ("And God said", " unto Moses")]
        >>> lls = loglikelihoods(model, requests, progress=False)
        >>> len(lls), all(ll < 0 for ll in lls)
        (2, True)
        >>> per_layer = loglikelihoods(model, requests, Sweep([skip_layer(i) for i in range(model.n_layers)]),
        ...                            progress=False)
        >>> len(per_layer), len(per_layer[0])        # [condition][request]
        (8, 2)
    """
    check_positive(batch_size=batch_size, max_length=max_length)
    max_length = max_length_of(model, max_length)
    memo: dict[str, list[int]] = {}
    pairs: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for context, continuation in requests:
        context_ids, continuation_ids = _encode_pair(model.tokenizer, context, continuation, memo)
        if not continuation_ids:
            raise ValueError(f"The continuation {continuation!r} encodes to no tokens after context {context[-40:]!r}.")
        pairs.append(split_request(context_ids, continuation_ids, max_length))
    sweep = as_sweep(condition)
    alone = {j for j, (context, _) in enumerate(pairs) if not context}  # scored as full sequences
    with_context = [j for j in range(len(pairs)) if j not in alone]
    sharing = bool(with_context) and shared_context_blocker(model) is None
    results: list[list[float]] = [[0.0] * len(pairs) for _ in sweep.conditions]
    shared = [i for i, each in enumerate(sweep.conditions) if sharing and shares_contexts(each)]
    for i in shared:
        check_positions(sweep.conditions[i], [len(pairs[j][0]) + len(pairs[j][1]) - 1 for j in with_context])
    reuse = sweep.reuse_prefix and len(shared) > 1 and reuses_prefix(model)
    starts = [first_layer(sweep.conditions[i], model) if reuse else 0 for i in shared]
    scored = _score_shared(model, [pairs[j] for j in with_context], [sweep.conditions[i] for i in shared], starts,
                           batch_size, progress) if shared else []
    shared = [i for i, scores in zip(shared, scored) if scores is not None]  # a hook a cache would change: full
    for i, scores in zip(shared, (scores for scores in scored if scores is not None)):
        for j, score in zip(with_context, scores):
            results[i][j] = score
    full = [i for i in range(len(sweep.conditions)) if i not in shared]
    for conditions, rows in ((full, range(len(pairs))), (shared, sorted(alone))):
        if conditions and rows:
            subset = sweep if len(conditions) == len(sweep.conditions) else \
                replace(sweep, conditions=tuple(sweep.conditions[i] for i in conditions), single=False)
            for i, scores in zip(conditions, _score_full(model, [pairs[j] for j in rows], subset, batch_size, progress)):
                for j, score in zip(rows, scores):
                    results[i][j] = score
    for result, each in zip(results, sweep.conditions):
        check_finite(result, "loglikelihood of requests", each)
    return sweep.unwrap(results)


def _score_shared(model, pairs: Sequence[tuple[tuple[int, ...], tuple[int, ...]]], conditions: Sequence[Condition],
                  starts: Sequence[int], batch_size: int | None, progress: bool) -> list[list[float] | None]:
    """Per condition, the summed log-probability of each `(context, continuation)` pair of token ids
    (both non-empty), each distinct context run once per condition (`shared_context.context_logprobs`),
    its context and continuation passes from block `starts[k]` on (`n_layers`: the final norm; the
    clean passes before it shared by the conditions, `shared_context.clean_prefix`); None for a
    condition with a hook that a cache would change (`decoding.cache_blocker`)."""
    contexts: dict[tuple[int, ...], list[int]] = {}
    for index, (context, _) in enumerate(pairs):
        contexts.setdefault(context, []).append(index)
    distinct = list(contexts)
    lengths = [len(context) for context in distinct]
    if batches_pad(model):
        batches = length_batches(lengths, batch_size, model.device)
    else:  # padding before a row's tokens would change it: contexts of one length per batch
        batches = [[same[i] for i in batch] for length in sorted(set(lengths), reverse=True)
                   for same in [[c for c, n in enumerate(lengths) if n == length]]
                   for batch in length_batches([length] * len(same), batch_size, model.device)]
    widest = {c: max(len(pairs[i][1]) for i in contexts[context]) - 1 for c, context in enumerate(distinct)}
    limit = getattr(model.cfg, "n_ctx", None)  # the padded context and continuation columns must fit
    batches = [part for batch in batches for part in
               ([[c] for c in batch] if limit and max(lengths[c] for c in batch) + max(widest[c] for c in batch) > limit
                else [batch])]
    scores: list[list[float] | None] = [[0.0] * len(pairs) for _ in conditions]
    for batch in tqdm(batches, desc="loglikelihood", disable=not progress):
        fed: dict[tuple[int, tuple[int, ...]], int] = {}  # (context row, continuation but its last token) -> row
        for row, c in enumerate(batch):
            for index in contexts[distinct[c]]:
                if len(pairs[index][1]) > 1:
                    fed.setdefault((row, pairs[index][1][:-1]), len(fed))
        tokens, mask = padded(model, [distinct[c] for c in batch], side="left")
        new, new_mask = padded(model, [ids for _, ids in fed]) if fed else (None, None)
        entries = sorted({start for k, start in enumerate(starts) if start and scores[k] is not None})
        owners = [row for row, _ in fed]
        prefix = clean_prefix(model, tokens, mask, entries, owners, new, new_mask) if entries else None
        for k, condition in enumerate(conditions):
            if scores[k] is None:
                continue
            with condition.apply(model):
                if cache_blocker(model) is not None:
                    scores[k] = None
                    continue
                first, rest = context_logprobs(model, tokens, mask, owners, new, new_mask, prefix, starts[k])
            for row, c in enumerate(batch):
                for index in contexts[distinct[c]]:
                    continuation = pairs[index][1]
                    score = first[row, continuation[0]]
                    if len(continuation) > 1:
                        steps = rest[fed[(row, continuation[:-1])], : len(continuation) - 1]
                        score = score + steps.gather(-1, torch.tensor(continuation[1:], device=steps.device)[:, None]).sum()
                    scores[k][index] = float(score)
    return scores


def _score_full(model, pairs: Sequence[tuple[tuple[int, ...], tuple[int, ...]]], sweep: Sweep,
                batch_size: int | None, progress: bool) -> list[list[float]]:
    """Per condition of `sweep`, the summed log-probability of each pair's continuation, from
    right-padded batches of the full sequences (pairs with the same input tokens share one; a
    continuation without a context is scored from its second token, the first one predicted)."""
    span: dict[tuple[int, ...], int] = {}  # unique input -> how many final positions are scored
    jobs = []
    for context, continuation in pairs:
        key = (context + continuation)[:-1]
        scored = continuation[len(continuation) - min(len(continuation), len(key)):]
        span[key] = max(span.get(key, 0), len(scored))
        jobs.append((key, scored))
    by_input: dict[tuple[int, ...], list[int]] = {}
    for index, (key, _) in enumerate(jobs):
        by_input.setdefault(key, []).append(index)
    inputs = list(span)
    batches = [[inputs[i] for i in batch] for batch in length_batches([len(key) for key in inputs], batch_size,
                                                                     model.device)]
    results = [[0.0] * len(jobs) for _ in sweep.conditions]
    for batch in tqdm(batches, desc="loglikelihood", disable=not progress):
        for result, batch_logprobs in zip(results, last_logprobs(model, batch, [span[key] for key in batch], sweep)):
            for key, logprobs in zip(batch, batch_logprobs):
                for index in by_input[key]:
                    scored = jobs[index][1]
                    targets = torch.tensor(scored, device=logprobs.device)[:, None]
                    result[index] = float(logprobs[len(logprobs) - len(scored) :].gather(-1, targets).sum())
    return results


CPU_BATCH_TOKENS = 512  # by default a CPU batch holds as many sequences as fit in this many padded tokens
GPU_BATCH_SIZE = 16  # by default a GPU batch holds this many sequences


def length_batches(lengths: Sequence[int], batch_size: int | None, device: torch.device | str = "cpu") -> list[list[int]]:
    """Indices of sequences of `lengths`, longest first, cut into right-padded batches.

    Sorting keeps sequences of similar length together, so little padding is computed (as
    lm-eval). `batch_size` sequences per batch; None: by device. On a CPU a batch takes as many
    sequences as fit in `CPU_BATCH_TOKENS` padded tokens (at least one): a CPU's cost per token
    hardly falls with the batch, so a long batch only pays for its padding (`benchmarks/eval_throughput.py`
    measured batch 16 slower than batch 1 on every task), while short sequences still share the
    per-call overhead. On a GPU, `GPU_BATCH_SIZE` sequences.

    Examples:
        >>> length_batches([3, 700, 20, 500, 40], batch_size=2)
        [[1, 3], [4, 2], [0]]
        >>> length_batches([3, 700, 20, 500, 40], batch_size=None, device="cpu")   # 512 padded tokens
        [[1], [3], [4, 2, 0]]
    """
    check_positive(batch_size=batch_size)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if batch_size is None and torch.device(device).type == "cpu":
        batches: list[list[int]] = []
        for i in order:  # a batch's first sequence is its longest
            if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= CPU_BATCH_TOKENS:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches
    size = GPU_BATCH_SIZE if batch_size is None else batch_size
    return [order[i : i + size] for i in range(0, len(order), size)]


def padded(model, sequences: Sequence[Sequence[int]], side: str = "right"
           ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Token ids padded on `side` with the pad token (else 0), and their attention mask. Scoring
    right-pads (every mixer is causal, so real tokens never see the padding after them) and left-pads
    the contexts of shared-context scoring; generation continues left-padded ids.

    Returns:
        `(tokens, mask)`, `Int[Tensor, "batch pos"]` on the model's device.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> padded(model, [[5, 6, 7], [8]])[0]
        tensor([[5, 6, 7],
                [8, 0, 0]])
        >>> padded(model, [[5, 6, 7], [8]], side="left")[1]
        tensor([[1, 1, 1],
                [0, 0, 1]])
    """
    length = max(len(ids) for ids in sequences)
    tokens = torch.full((len(sequences), length), model.tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for row, ids in enumerate(sequences):
        span = slice(0, len(ids)) if side == "right" else slice(length - len(ids), length)
        tokens[row, span], mask[row, span] = torch.tensor(ids, dtype=torch.long), 1
    return tokens.to(model.device), mask.to(model.device)


def last_logprobs(model, inputs: Sequence[Sequence[int]], counts: Sequence[int],
                  condition: Condition | Sweep | None = None) -> list[list[Tensor]]:
    """Log-probabilities predicted at the last `counts[i]` positions of each input, from one
    right-padded forward pass that projects only those positions onto the vocabulary. Inputs of
    unequal length run with their attention mask, so a condition's positions count each row's real
    tokens (`-1` is a row's last token, not the batch's last column).

    Returns per condition of `as_sweep(condition)` (one for a lone condition or None) and per
    input a float32 tensor `[counts[i], vocab]`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> inputs = [[1136, 261, 2125, 387], [1136, 261]]
        >>> [[first, second]] = last_logprobs(model, inputs, [2, 1])
        >>> first.shape, second.shape                # [counts[i], vocab]
        (torch.Size([2, 4096]), torch.Size([1, 4096]))
        >>> per_condition = last_logprobs(model, inputs, [2, 1], Sweep([skip_layer(0), skip_layer(5)]))
        >>> len(per_condition), per_condition[1][0].shape
        (2, torch.Size([2, 4096]))
    """
    tokens, mask = padded(model, inputs)
    width = max(counts)
    ends = torch.tensor([len(ids) for ids in inputs], device=tokens.device)
    positions = (ends[:, None] - width + torch.arange(width, device=tokens.device)).clamp(min=0)

    def rows(logits: Float[Tensor, "batch width vocab"]) -> list[Tensor]:
        return [logits[row, width - count :].float().log_softmax(-1) for row, count in enumerate(counts)]

    mask = None if bool(mask.all()) else mask
    return [rows(logits) for logits in as_sweep(condition).logits(model, tokens, mask, logits_to_keep=positions)]


def choice_metrics(loglikelihoods: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, float]:
    """lm-eval's multiple-choice metrics for one example.

    `acc`: the highest-loglikelihood choice is `gold`; `acc_norm`: the same after dividing each
    loglikelihood by the choice's length in characters (ties go to the first choice).

    Returns:
        `pred` and `pred_norm` (the chosen indices), `acc` and `acc_norm` (1.0 or 0.0).

    Examples:
        >>> choice_metrics([-4.0, -2.5, -3.0], [" a", " no", " certainly"], gold=2)
        {'pred': 1, 'pred_norm': 2, 'acc': 0.0, 'acc_norm': 1.0}
    """
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    check_finite(lls, "loglikelihood of choices", None)
    lengths = np.array([float(len(choice)) for choice in choices])
    pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
    return dict(pred=pred, pred_norm=pred_norm, acc=float(pred == gold), acc_norm=float(pred_norm == gold))
