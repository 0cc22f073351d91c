"""Text in, token ids out: the tokenization methods of `HookedHybrid`, with TransformerLens's arguments,
and `encode`, which validates any model input once at the model's boundary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .checks import is_int
from .tokens import (PaddingSide, TokenNotFoundError, as_token_ids, check_ids, check_length, check_mask,
                     check_not_mixed, check_residual, prepare_tokenizer, tokenize)

ModelInput = str | Sequence[str] | Tensor | Sequence[int] | Sequence[Sequence[int]]


class Tokenizing:
    """`HookedHybrid`'s tokenization methods (`to_tokens`, `to_str_tokens`, ...) and input validation
    (`encode`); they read `tokenizer`, `cfg`, `device`, `adapter` and `hf_model` of the model.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> model.to_str_tokens(model.to_tokens("In the beginning"))
        ['<s>', 'In', ' the', ' beginning']
    """

    def set_tokenizer(self, tokenizer, default_padding_side: PaddingSide | None = None) -> None:
        """Use `tokenizer` for text, set up as TransformerLens's `set_tokenizer` does (see
        `tokens.prepare_tokenizer`: padding side, and the EOS token as pad and BOS where they are missing).

        Args:
            tokenizer: A `transformers` tokenizer (`TypeError` otherwise).
            default_padding_side: `"right"` or `"left"`; None: the tokenizer's own `padding_side`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.set_tokenizer(model.tokenizer, default_padding_side="left")
            >>> model.cfg.default_padding_side
            'left'
        """
        self.tokenizer = prepare_tokenizer(tokenizer, default_padding_side)

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("This model has no tokenizer (none was given, and its checkpoint has no tokenizer files): "
                             "pass token ids, or give one: HookedHybrid.from_pretrained(name, "
                             "tokenizer=AutoTokenizer.from_pretrained(...)) or HookedHybrid.from_hf(hf_model, tokenizer).")
        return self.tokenizer

    def to_tokens(self, input: str | Sequence[str], prepend_bos: bool | None = None,
                  padding_side: PaddingSide | None = None, move_to_device: bool = True,
                  truncate: bool = True) -> Int[Tensor, "batch pos"]:
        """Token ids of one text or a batch, with TransformerLens's arguments (see `to_tokens_and_mask`).

        Returns:
            `Int[Tensor, "batch pos"]` (batch 1 for a single text).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.to_tokens("In the beginning").shape
            torch.Size([1, 4])
            >>> model.to_tokens(["In the beginning", "And God said unto Moses"]).shape
            torch.Size([2, 6])
            >>> model.to_tokens("In the beginning", prepend_bos=True)[0, 0] == model.tokenizer.bos_token_id
            tensor(True)
        """
        return self.to_tokens_and_mask(input, prepend_bos, padding_side, move_to_device, truncate)[0]

    def to_tokens_and_mask(
        self,
        input: str | Sequence[str],
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Token ids and attention mask of one text or a batch.

        Args:
            input: A string or a list of strings.
            prepend_bos: Start every row with BOS; None: `cfg.default_prepend_bos` (TransformerLens's
                choice for the architecture).
            padding_side: `"right"` or `"left"`; None: `cfg.default_padding_side` (the tokenizer's
                `padding_side`). Positions given to interventions count real tokens per row either way.
            move_to_device: Put the tensors on the model's device (else on the CPU).
            truncate: Keep at most `cfg.n_ctx` tokens per row.

        Returns:
            `(tokens, mask)`, both `Int[Tensor, "batch pos"]`; the mask is 1 on real tokens.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> tokens, mask = model.to_tokens_and_mask(["In the beginning", "And God said unto Moses"])
            >>> mask
            tensor([[1, 1, 1, 1, 0, 0],
                    [1, 1, 1, 1, 1, 1]])
        """
        texts = [input] if isinstance(input, str) else input
        if not isinstance(texts, Sequence) or isinstance(texts, Tensor):
            raise TypeError(f"to_tokens takes a string or a list of strings, not {type(input).__name__}.")
        tokens, mask = tokenize(
            self._require_tokenizer(), texts,
            prepend_bos=self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos,
            padding_side=padding_side or self.cfg.default_padding_side,
            max_length=self.cfg.n_ctx if truncate else None,
        )
        return (tokens.to(self.device), mask.to(self.device)) if move_to_device else (tokens, mask)

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode one sequence of ids to a string, or a batch to a list of strings.

        Args:
            tokens: `Int[Tensor, "pos"]` / a list of ids (one string), or `Int[Tensor, "batch pos"]`
                (a list of strings; padding is decoded too).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.to_string(model.to_tokens("In the beginning")[0])
            '<s>In the beginning'
            >>> model.to_string(model.to_tokens(["In the beginning", "And God said"]))
            ['<s>In the beginning', '<s>And God said']
        """
        tokenizer = self._require_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return tokenizer.batch_decode(tokens)
        return tokenizer.decode(tokens)

    def to_str_tokens(
        self, input: str | Sequence[str] | Tensor | Sequence[int], prepend_bos: bool | None = None,
    ) -> list[str] | list[list[str]]:
        """Each token as a string: a list for one text or one row of ids, a list of lists for a batch.

        A list of texts gives each text's own tokens (no padding), as TransformerLens does.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.to_str_tokens("In the beginning")
            ['<s>', 'In', ' the', ' beginning']
            >>> model.to_str_tokens(["Let there", "be light"])
            [['<s>', 'Let', ' there'], ['<s>', 'be', ' light']]
        """
        tokenizer = self._require_tokenizer()
        if isinstance(input, str):
            return self.to_str_tokens(self.to_tokens(input, prepend_bos, move_to_device=False)[0])
        if isinstance(input, Sequence) and input and all(isinstance(text, str) for text in input):
            return [self.to_str_tokens(text, prepend_bos) for text in input]
        ids = as_token_ids(input)
        rows = [[tokenizer.decode([t]) for t in row.tolist()] for row in ids]
        return rows[0] if (isinstance(input, Tensor) and input.ndim == 1) or ids.shape[0] == 1 else rows

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token; `ValueError` otherwise.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.to_string([model.to_single_token(" God")])
            ' God'
        """
        tokens = self.to_tokens(string, prepend_bos=False, move_to_device=False, truncate=False)[0]
        if tokens.numel() != 1:
            raise ValueError(f"{string!r} is {tokens.numel()} tokens ({self.to_str_tokens(tokens)}), not one.")
        return int(tokens[0])

    def to_single_str_token(self, token: int) -> str:
        """The string of one token id.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.to_single_str_token(model.to_single_token(" God"))
            ' God'
        """
        return self._require_tokenizer().decode([_token_id(token)])

    def get_token_position(
        self, single_token: str | int, input: str | Tensor, mode: Literal["first", "last"] = "first",
        prepend_bos: bool | None = None,
    ) -> int:
        """Position of the first (or last) occurrence of a token in a text or a row of ids.

        Args:
            single_token: A one-token string or a token id (an int, numpy integer or 1-element tensor).
            input: A text, or ids `Int[Tensor, "pos"]` / `Int[Tensor, "1 pos"]` (compared by value: a
                float tensor of ids works as in TransformerLens).
            mode: `"first"` or `"last"` occurrence.
            prepend_bos: For text input, as in `to_tokens`.

        Returns:
            The position; `TokenNotFoundError` (a `ValueError` and an `AssertionError`, with
            TransformerLens's message) where the token does not occur.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.get_token_position(" the", "In the beginning the earth", mode="last")
            4
        """
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', not {mode!r}.")
        token = self.to_single_token(single_token) if isinstance(single_token, str) else _token_id(single_token)
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos, move_to_device=False)[0]
        else:  # ids are compared by value, as TransformerLens does (a float tensor of ids too)
            ids = torch.as_tensor(input)
            if ids.ndim == 2 and ids.shape[0] == 1:
                ids = ids[0]
            if ids.ndim != 1:
                raise ValueError(f"get_token_position takes one text or one row of ids ([pos] or [1, pos]), "
                                 f"not shape {tuple(ids.shape)}.")
        found = (ids.cpu() == token).nonzero().flatten()
        if found.numel() == 0:
            error = TokenNotFoundError("The token does not occur in the prompt")  # TransformerLens's message
            if hasattr(error, "add_note"):
                error.add_note(f"token id {token} ({self.to_single_str_token(token)!r}) in {ids.tolist()}")
            raise error
        return int(found[0] if mode == "first" else found[-1])

    def encode(
        self, input: ModelInput, attention_mask: Tensor | None = None, prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None, context_length: int | None = None,
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"] | None]:
        """Validated token ids and attention mask of any model input, as `forward` uses them.

        Args:
            input: Text, a list of texts, or token ids (tensor, array or nested lists of ints).
            attention_mask: Only with token ids: 0/1, shaped like them.
            prepend_bos: For text input, as in `to_tokens`.
            padding_side: For a list of texts, as in `to_tokens`.
            context_length: Total positions the run covers when it continues a cache (the mask may
                then be longer than the ids); None: the ids' own length.

        Returns:
            `(tokens, mask)` on the model's device; the mask is None when every token is real.
            Raises `TypeError` / `ValueError` naming the problem for non-integer, ragged, empty,
            3-D or out-of-vocabulary ids, a mask of the wrong shape or values, or an input longer
            than the model's maximum positions.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> tokens, mask = model.encode(["In the beginning", "And God said unto Moses"])
            >>> tokens.shape, mask.shape
            (torch.Size([2, 6]), torch.Size([2, 6]))
            >>> model.encode([[5, 6, 7]])
            (tensor([[5, 6, 7]]), None)
        """
        check_not_mixed(input)
        if isinstance(input, str) or (isinstance(input, Sequence) and input and isinstance(input[0], str)):
            if attention_mask is not None:
                raise ValueError("Pass attention_mask only with token ids; text input is tokenized and masked for you.")
            tokens, mask = self.to_tokens_and_mask(input, prepend_bos, padding_side, truncate=False)
        else:  # prepend_bos and padding_side apply to text; ids are taken as they are (as TransformerLens does)
            tokens = as_token_ids(input).to(self.device)
            mask = None if attention_mask is None else check_mask(attention_mask, tokens, context_length)
        check_ids(tokens, self.cfg.d_vocab)
        check_length(context_length or tokens.shape[1], self.cfg.n_ctx)
        return tokens, self._checked_padding(mask)

    def _checked_padding(self, mask: Tensor | None) -> Tensor | None:
        """The mask, None where every token is real; `ValueError` for padding before real tokens on a family
        that does not allow it (`Family.left_padding`)."""
        if mask is not None and not self.adapter.left_padding and bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise ValueError(f"{type(self.hf_model).__name__} does not mask padding everywhere (its convolution reads "
                             "the positions before a row's first token), so padding before a row's tokens changes "
                             "its values: pad on the right (padding_side='right').")
        return None if mask is None or bool(mask.all()) else mask

    def encode_residual(
        self, resid: Tensor, tokens=None, attention_mask: Tensor | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], Int[Tensor, "batch pos"] | None, Int[Tensor, "batch pos"] | None]:
        """Validated input of a pass entering at a block (`forward(resid, start_at_layer=...)`): the
        residual stream on the model's device, the token ids it comes from (optional; checked to have its
        batch and length) and the attention mask (`[batch, pos]`, None where every token is real).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> resid, tokens, mask = model.encode_residual(torch.zeros(2, 3, 128), [[5, 6, 7], [5, 6, 8]])
            >>> resid.shape, tokens.shape, mask
            (torch.Size([2, 3, 128]), torch.Size([2, 3]), None)
        """
        resid = check_residual(resid, self.cfg.d_model, self.cfg.dtype).to(self.device)
        shape = resid.shape[:2]
        if tokens is not None:
            tokens = as_token_ids(tokens).to(self.device)
            if tokens.shape != shape:
                raise ValueError(f"tokens has shape {tuple(tokens.shape)}; the residual stream is [batch, pos] = "
                                 f"{tuple(shape)}.")
            check_ids(tokens, self.cfg.d_vocab)
        check_length(shape[1], self.cfg.n_ctx)
        mask = None if attention_mask is None else check_mask(attention_mask, resid[..., 0])
        return resid, tokens, self._checked_padding(mask)

    def input_to_embed(self, input: ModelInput, prepend_bos: bool | None = None,
                       padding_side: PaddingSide | None = None, attention_mask: Tensor | None = None,
                       past_kv_cache=None) -> tuple[Float[Tensor, "batch pos d_model"], Int[Tensor, "batch pos"],
                                                    None, Int[Tensor, "batch pos"] | None]:
        """TransformerLens's first step: the residual stream entering block 0 (`hook_embed` fires), with the
        token ids, the shortformer positional embedding (None: no learned positions) and the attention mask
        (text: 1 on real tokens; ids: the mask given, or None). Feed them to
        `forward(residual, start_at_layer=0, tokens=tokens, attention_mask=mask)`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> resid, tokens, _, mask = model.input_to_embed(["In the beginning", "And God said"])
            >>> torch.equal(model(resid, start_at_layer=0, attention_mask=mask), model(tokens, attention_mask=mask))
            True
        """
        if past_kv_cache is not None:
            raise ValueError("hybrid-lens continues a run with the transformers cache (model(tokens, cache=...)), "
                             "not TransformerLens's past_kv_cache.")
        if attention_mask is None and not isinstance(input, Tensor) and (isinstance(input, str) or input and
                                                                         isinstance(input[0], str)):
            tokens, attention_mask = self.to_tokens_and_mask(input, prepend_bos, padding_side)
        else:
            tokens, _ = self.encode(input, attention_mask, prepend_bos, padding_side)
        resid = self(tokens, attention_mask=attention_mask, stop_at_layer=0)
        return resid, tokens, None, attention_mask


def _token_id(token) -> int:
    """One token id from an int, a numpy integer or a 1-element tensor; `TypeError` otherwise."""
    if isinstance(token, Tensor) and token.numel() == 1 and not token.is_floating_point():
        return int(token.item())
    if not is_int(token):
        raise TypeError(f"A token id must be an integer, not {token!r}.")
    return int(token)
