"""Model inputs: tokenization with TransformerLens's conventions, and validation of token ids and masks.

Text is tokenized row by row and padded here (not by the tokenizer), so BOS handling, truncation and
the padding side are the same for every tokenizer. Ids and masks given by the user are checked once,
at the model's boundary, with messages that name the bad value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

PaddingSide = Literal["right", "left"]
PADDING_SIDES = ("right", "left")


class TokenNotFoundError(ValueError, AssertionError):
    """A token that does not occur where `get_token_position` looks for it. A `ValueError`, and an
    `AssertionError` with TransformerLens's message, so code written for TransformerLens catches it.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> try:
        ...     model.get_token_position(" Moses", "In the beginning")
        ... except AssertionError as error:                # TransformerLens's exception type and message
        ...     print(type(error).__name__, isinstance(error, ValueError), error)
        TokenNotFoundError True The token does not occur in the prompt
    """


def check_padding_side(side) -> None:
    """Raise `ValueError` unless `side` is `"right"` or `"left"`.

    Examples:
        >>> check_padding_side("middle")
        Traceback (most recent call last):
        ...
        ValueError: padding_side must be one of ('right', 'left'), not 'middle'.
    """
    if side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {PADDING_SIDES}, not {side!r}.")


def prepare_tokenizer(tokenizer, padding_side: PaddingSide | None = None):
    """Set a tokenizer up as TransformerLens's `set_tokenizer` does: `padding_side` if given (else the
    tokenizer's own, `"right"` when it has none); a missing pad token and a missing BOS token become
    the EOS token (so `prepend_bos=True` works for tokenizers without BOS, e.g. Qwen's). Returns it.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> prepare_tokenizer(model.tokenizer, "left").padding_side
        'left'
        >>> prepare_tokenizer(model.tokenizer, "right").padding_side
        'right'
    """
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(f"The tokenizer must be a transformers tokenizer (PreTrainedTokenizerBase), not "
                        f"{type(tokenizer).__name__}.")
    if padding_side is not None:
        check_padding_side(padding_side)
        tokenizer.padding_side = padding_side
    if tokenizer.padding_side is None:
        tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None and tokenizer.eos_token is not None:
        tokenizer.bos_token = tokenizer.eos_token
    return tokenizer


def tokenizer_prepends_bos(tokenizer) -> bool:
    """Whether `tokenizer` puts its BOS token in front of every text by itself.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> tokenizer_prepends_bos(model.tokenizer)
        False
    """
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def tokenize(
    tokenizer, texts: Sequence[str], prepend_bos: bool, padding_side: PaddingSide, max_length: int | None,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Token ids and attention mask of `texts`, padded on `padding_side` with the pad token.

    Args:
        tokenizer: A `transformers` tokenizer.
        texts: One or more strings; an empty string (no tokens) is an error.
        prepend_bos: Start every row with the BOS token (added if the tokenizer does not add it,
            removed if it does and this is False).
        padding_side: `"right"` or `"left"`.
        max_length: Keep only the first `max_length` tokens of each row (None: keep all).

    Returns:
        `(tokens, mask)`, both `Int[Tensor, "batch pos"]` (int64, on the CPU); the mask is 1 on real
        tokens.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> tokens, mask = tokenize(model.tokenizer, ["In the beginning", "And God said unto"], False, "left", None)
        >>> mask
        tensor([[0, 1, 1, 1],
                [1, 1, 1, 1]])
    """
    check_padding_side(padding_side)
    bos, adds_bos = tokenizer.bos_token_id, tokenizer_prepends_bos(tokenizer)
    if prepend_bos and bos is None:
        raise ValueError("prepend_bos=True, but this tokenizer has no BOS token.")
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"Text {i} is {type(text).__name__}, not str.")
        ids = list(tokenizer(text)["input_ids"])
        if adds_bos and not prepend_bos and ids[:1] == [bos]:
            ids = ids[1:]
        elif prepend_bos and not adds_bos:
            ids = [bos, *ids]
        if not ids:
            raise ValueError(f"Text {i} ({text!r}) has no tokens: give every row at least one token.")
        rows.append(ids[:max_length] if max_length else ids)
    if not rows:
        raise ValueError("No text given: pass a string or a non-empty list of strings.")
    width, pad = max(map(len, rows)), tokenizer.pad_token_id
    tokens = torch.full((len(rows), width), 0 if pad is None else pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        span = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
        tokens[i, span] = torch.tensor(ids, dtype=torch.long)
        mask[i, span] = 1
    return tokens, mask


def as_token_ids(input) -> Int[Tensor, "batch pos"]:
    """Token ids given as a tensor, an array or (nested) lists of ints, as a 2-D integer tensor.

    Raises `TypeError` for non-integers and `ValueError` for ragged rows, empty input, or more
    than two dimensions, saying how to fix it.

    Examples:
        >>> as_token_ids([5, 6, 7])
        tensor([[5, 6, 7]])
        >>> as_token_ids([[5, 6], [7]])
        Traceback (most recent call last):
        ...
        ValueError: Rows of token ids have different lengths [2, 1]: pad them and pass attention_mask (or pass the texts).
    """
    if not isinstance(input, Tensor):
        if isinstance(input, Sequence) and len(input) == 0:
            raise ValueError("Empty input: give at least one token (or text).")
        if isinstance(input, Sequence) and all(isinstance(row, Sequence) for row in input):
            lengths = [len(row) for row in input]
            if len(set(lengths)) > 1:
                raise ValueError(f"Rows of token ids have different lengths {lengths}: pad them and pass "
                                 "attention_mask (or pass the texts).")
        try:
            input = torch.as_tensor(input)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"Cannot read the input as token ids ({err}); pass text, or integer ids "
                            "[batch, pos].") from None
    if input.dtype not in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"Token ids must be integers, got {input.dtype}.")
    if input.ndim == 1:
        input = input[None]
    if input.ndim != 2:
        raise ValueError(f"Token ids must be [batch, pos] (or [pos]), got shape {tuple(input.shape)}.")
    if input.numel() == 0:
        raise ValueError(f"Empty input (shape {tuple(input.shape)}): give at least one token.")
    return input.long() if input.dtype != torch.int32 else input


def check_ids(tokens: Int[Tensor, "batch pos"], vocab_size: int) -> None:
    """Raise `ValueError` for ids outside `[0, vocab_size)`, naming the first one.

    Examples:
        >>> check_ids(torch.tensor([[5, 300]]), vocab_size=256)
        Traceback (most recent call last):
        ...
        ValueError: Token id 300 at [0, 1] is outside the vocabulary [0, 256).
    """
    bad = (tokens < 0) | (tokens >= vocab_size)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"Token id {int(tokens[row, col])} at [{row}, {col}] is outside the vocabulary [0, {vocab_size}).")


def check_length(length: int, n_ctx: int | None) -> None:
    """Raise `ValueError` for a sequence longer than the model's `n_ctx` positions (None: no limit).

    Examples:
        >>> check_length(3000, n_ctx=2048)
        Traceback (most recent call last):
        ...
        ValueError: Input of 3000 tokens is longer than the model's maximum of 2048 positions (max_position_embeddings): shorten it, or use to_tokens(..., truncate=True).
    """
    if n_ctx is not None and length > n_ctx:
        raise ValueError(f"Input of {length} tokens is longer than the model's maximum of {n_ctx} positions "
                         "(max_position_embeddings): shorten it, or use to_tokens(..., truncate=True).")


def check_mask(mask, tokens: Int[Tensor, "batch pos"], length: int | None = None) -> Int[Tensor, "batch pos"]:
    """The attention mask as a tensor on `tokens`' device; raises `ValueError` unless it is 0/1,
    shaped like `tokens` (`[batch, length]` when the run continues a cache of `length` positions
    in all), with at least one real token per row.

    Examples:
        >>> check_mask(torch.tensor([[1, 1, 0]]), torch.tensor([[5, 6, 7]]))
        tensor([[1, 1, 0]])
        >>> check_mask(torch.tensor([[1, 1]]), torch.tensor([[5, 6, 7]]))
        Traceback (most recent call last):
        ...
        ValueError: attention_mask has shape (1, 2); the token ids have shape (1, 3).
    """
    mask = torch.as_tensor(mask, device=tokens.device)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.shape != (tokens.shape[0], length or tokens.shape[1]):
        expected = "" if length is None else f" and the run covers {length} positions"
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; the token ids have shape "
                         f"{tuple(tokens.shape)}{expected}.")
    if mask.dtype == torch.bool:
        mask = mask.long()
    if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold 0 (padding) and 1 (real token) only, as integers or booleans.")
    empty = (mask.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"Rows {empty} of attention_mask have no real token.")
    return mask


def real_positions(mask: Int[Tensor, "batch pos"] | None, batch: int, length: int) -> Int[Tensor, "batch pos"]:
    """Per row, the index of each column among the row's real tokens (-1 on padding).

    Positions an intervention or a metric names count real tokens: `0` is each row's first real
    token and `-1` its last, with left or right padding alike.

    Examples:
        >>> real_positions(torch.tensor([[0, 1, 1], [1, 1, 1]]), 2, 3)
        tensor([[-1,  0,  1],
                [ 0,  1,  2]])
    """
    if mask is None:
        return torch.arange(length).expand(batch, length)
    mask = mask.bool()
    return torch.where(mask, mask.long().cumsum(1) - 1, -1)


def check_not_mixed(input) -> None:
    """Raise `TypeError` for a list mixing texts with token ids (each row must be one or the other).

    Examples:
        >>> check_not_mixed(["In the beginning", [5, 6, 7]])
        Traceback (most recent call last):
        ...
        TypeError: The input mixes texts (rows [0]) and token ids (rows [1]): pass a list of strings, or token ids only.
    """
    if isinstance(input, Tensor) or not isinstance(input, Sequence) or isinstance(input, str):
        return
    texts = [i for i, row in enumerate(input) if isinstance(row, str)]
    if texts and len(texts) < len(input):
        others = [i for i in range(len(input)) if i not in texts]
        raise TypeError(f"The input mixes texts (rows {texts}) and token ids (rows {others}): pass a list of "
                        "strings, or token ids only.")


def has_hole(mask: Int[Tensor, "batch pos"] | None) -> bool:
    """Whether some row of `mask` has padding between two of its real tokens (not only before or after them).

    Examples:
        >>> has_hole(torch.tensor([[0, 1, 1], [1, 1, 0]])), has_hole(torch.tensor([[1, 0, 1]]))
        (False, True)
    """
    if mask is None:
        return False
    starts = (mask[:, 1:] > mask[:, :-1]).sum(1) + (mask[:, 0] > 0)
    return bool((starts > 1).any())


def positions_from_mask(mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Position ids that count each row's real tokens (padding takes its neighbour's, 0 before the
    first real token), as TransformerLens gives rotary attention when an attention mask is passed.

    Examples:
        >>> positions_from_mask(torch.tensor([[0, 1, 1, 0, 1]]))
        tensor([[0, 0, 1, 1, 2]])
    """
    return (mask.long().cumsum(1) - 1).clamp(min=0)


def check_position_ids(position_ids, tokens_shape: tuple[int, int]) -> None:
    """Raise `ValueError` / `TypeError` for `position_ids` that do not fit ids of `tokens_shape`: the last
    axis must be the ids' length, the one before it (if any) 1 or their batch, values integers.

    Examples:
        >>> check_position_ids(torch.tensor([[0, 1]]), (1, 3))
        Traceback (most recent call last):
        ...
        ValueError: position_ids has shape (1, 2); the token ids have shape (1, 3): give one position per token ([batch, pos] or [pos]).
    """
    if not isinstance(position_ids, Tensor):
        raise TypeError(f"position_ids must be an integer tensor [batch, pos], not {type(position_ids).__name__}.")
    if position_ids.is_floating_point() or position_ids.dtype == torch.bool:
        raise TypeError(f"position_ids must be integers, got {position_ids.dtype}.")
    shape, (batch, length) = tuple(position_ids.shape), tokens_shape
    if not shape or shape[-1] != length or (len(shape) > 1 and shape[-2] not in (1, batch)):
        raise ValueError(f"position_ids has shape {shape}; the token ids have shape {tokens_shape}: give one "
                         "position per token ([batch, pos] or [pos]).")


def check_residual(resid, d_model: int, dtype: torch.dtype) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream given to `forward(..., start_at_layer=...)`, as `[batch, pos, d_model]`;
    `TypeError` / `ValueError` naming what is wrong (token ids or text, shape, dtype).

    Examples:
        >>> check_residual(torch.zeros(3, 8), 8, torch.float32).shape
        torch.Size([1, 3, 8])
        >>> check_residual(torch.zeros(1, 3, 4), 8, torch.float32)
        Traceback (most recent call last):
        ...
        ValueError: start_at_layer takes the residual stream [batch, pos, d_model=8]; got shape (1, 3, 4).
    """
    if not isinstance(resid, Tensor) or not resid.is_floating_point():
        given = type(resid).__name__ if not isinstance(resid, Tensor) else f"a {resid.dtype} tensor"
        raise TypeError(f"start_at_layer takes the residual stream entering that block, a float tensor [batch, pos, "
                        f"d_model], not {given}: get it with model(tokens, stop_at_layer=...) or input_to_embed.")
    if resid.ndim == 2:
        resid = resid[None]
    if resid.ndim != 3 or resid.shape[-1] != d_model or resid.shape[1] == 0:
        raise ValueError(f"start_at_layer takes the residual stream [batch, pos, d_model={d_model}]; got shape "
                         f"{tuple(resid.shape)}.")
    if resid.dtype != dtype:
        raise TypeError(f"The residual stream is {resid.dtype}; the model computes in {dtype}: pass "
                        f"resid.to({dtype}).")
    return resid
