"""Text in, token ids out: the tokenization methods of `HookedHybrid`, with TransformerLens's arguments,
and `encode`, which validates any model input once at the model's boundary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

from .tokens import PaddingSide, as_token_ids, check_ids, check_length, check_mask, tokenize

ModelInput = str | Sequence[str] | Tensor | Sequence[int] | Sequence[Sequence[int]]


class Tokenizing:
    """`HookedHybrid`'s tokenization methods (`to_tokens`, `to_str_tokens`, ...) and input validation
    (`encode`); they read `tokenizer`, `cfg`, `device`, `adapter` and `hf_model` of the model.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> model.to_str_tokens(model.to_tokens("In the beginning"))
        ['In', ' the', ' beginning']
    """

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
            torch.Size([1, 3])
            >>> model.to_tokens(["In the beginning", "And God said unto Moses"]).shape
            torch.Size([2, 5])
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
            prepend_bos: Start every row with BOS; None: `cfg.default_prepend_bos` (what the
                tokenizer does by itself, so text runs as `transformers` tokenizes it).
            padding_side: `"right"` or `"left"`; None: `cfg.default_padding_side` (`"right"`).
                Positions given to interventions count real tokens per row either way.
            move_to_device: Put the tensors on the model's device (else on the CPU).
            truncate: Keep at most `cfg.n_ctx` tokens per row.

        Returns:
            `(tokens, mask)`, both `Int[Tensor, "batch pos"]`; the mask is 1 on real tokens.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> tokens, mask = model.to_tokens_and_mask(["In the beginning", "And God said unto Moses"])
            >>> mask
            tensor([[1, 1, 1, 0, 0],
                    [1, 1, 1, 1, 1]])
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
            'In the beginning'
            >>> model.to_string(model.to_tokens(["In the beginning", "And God said"]))
            ['In the beginning', 'And God said']
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
            ['In', ' the', ' beginning']
            >>> model.to_str_tokens(["Let there", "be light"])
            [['Let', ' there'], ['be', ' light']]
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
        return self._require_tokenizer().decode([int(token)])

    def get_token_position(
        self, single_token: str | int, input: str | Tensor, mode: Literal["first", "last"] = "first",
        prepend_bos: bool | None = None,
    ) -> int:
        """Position of the first (or last) occurrence of a token in a text or a row of ids.

        Args:
            single_token: A one-token string or a token id.
            input: A text, or ids `Int[Tensor, "pos"]` / `Int[Tensor, "1 pos"]`.
            mode: `"first"` or `"last"` occurrence.
            prepend_bos: For text input, as in `to_tokens`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.get_token_position(" the", "In the beginning the earth", mode="last")
            3
        """
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', not {mode!r}.")
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        ids = self.to_tokens(input, prepend_bos, move_to_device=False) if isinstance(input, str) else as_token_ids(input)
        if ids.shape[0] != 1:
            raise ValueError(f"get_token_position takes one sequence, got a batch of {ids.shape[0]}.")
        found = (ids[0].cpu() == token).nonzero().flatten()
        if found.numel() == 0:
            raise ValueError(f"Token {self.to_single_str_token(token)!r} (id {token}) does not occur in the input.")
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
            (torch.Size([2, 5]), torch.Size([2, 5]))
            >>> model.encode([[5, 6, 7]])
            (tensor([[5, 6, 7]]), None)
        """
        is_text = isinstance(input, str) or (
            isinstance(input, Sequence) and not isinstance(input, Tensor) and len(input) > 0
            and all(isinstance(text, str) for text in input)
        )
        if is_text:
            if attention_mask is not None:
                raise ValueError("Pass attention_mask only with token ids; text input is tokenized and masked for you.")
            tokens, mask = self.to_tokens_and_mask(input, prepend_bos, padding_side, truncate=False)
        else:
            if prepend_bos or padding_side is not None:  # prepend_bos=False (SAE-Lens passes it) is a no-op
                raise ValueError("prepend_bos=True and padding_side apply to text input only; these are token ids.")
            tokens = as_token_ids(input).to(self.device)
            mask = None if attention_mask is None else check_mask(attention_mask, tokens, context_length)
        check_ids(tokens, self.cfg.d_vocab)
        check_length(context_length or tokens.shape[1], self.cfg.n_ctx)
        if mask is not None and not self.adapter.left_padding and bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise ValueError(f"{type(self.hf_model).__name__} does not mask padding everywhere (its convolution reads "
                             "the positions before a row's first token), so padding before a row's tokens changes "
                             "its values: pad on the right (padding_side='right', the default for text).")
        return tokens, (None if mask is None or bool(mask.all()) else mask)
