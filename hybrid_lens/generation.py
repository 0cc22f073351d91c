"""Generation with TransformerLens's `generate`: `HookedHybrid.generate` and `embed`; the loop itself
is `decoding.decode`."""

from __future__ import annotations

import contextvars
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import StoppingCriteria
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .decoding import Sampling, decode
from .forward_state import forward_settings
from .tokens import PaddingSide, check_mask

RETURN_TYPES = ("input", "str", "tokens", "embeds")
STREAM_THREAD = "hybrid-lens generate_stream"  # the worker thread's name
QUIET_KWARGS = ("return_dict_in_generate",)  # taken and ignored without a warning, as TransformerLens does


class GenerateArgumentError(ValueError, AssertionError):
    """A `generate` argument that cannot work. A `ValueError`, and an `AssertionError` too: what
    TransformerLens's `generate` raises for the same calls, so code written for it catches it.

    Examples:
        >>> issubclass(GenerateArgumentError, ValueError), issubclass(GenerateArgumentError, AssertionError)
        (True, True)
    """


def check_positive_int(name: str, value) -> None:
    """`GenerateArgumentError` unless `value` (the argument `name`) is an int >= 1 (not a bool).

    Examples:
        >>> check_positive_int("max_new_tokens", 0)
        Traceback (most recent call last):
        ...
        hybrid_lens.generation.GenerateArgumentError: max_new_tokens must be a positive int, not 0.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GenerateArgumentError(f"{name} must be a positive int, not {value!r}.")

class Generation:
    """`HookedHybrid.generate` (TransformerLens's signature) and `embed`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> print(model.generate("In the beginning", max_new_tokens=4, do_sample=False, verbose=False))
        In the beginning.
        And the
    """

    def embed(self, tokens) -> Float[Tensor, "batch pos d_model"]:
        """The embeddings of token ids as they enter block 0 (`hook_embed`'s value, any embedding
        multiplier included), computed with no hook acting; `generate` takes them as input.

        Args:
            tokens: Token ids `Int[Tensor, "batch pos"]` (or `"pos"`, or nested lists of ints).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> tokens = model.to_tokens("In the beginning")
            >>> embeds = model.embed(tokens)
            >>> embeds.shape                                  # [batch, pos, d_model]
            torch.Size([1, 4, 128])
            >>> torch.equal(embeds, model.run_with_cache(tokens)[1]["hook_embed"])
            True
        """
        with forward_settings(self, hooks=False):
            return self(tokens, stop_at_layer=0)

    @torch.no_grad()
    def generate(
        self,
        input: str | Sequence[str] | Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"] = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | Sequence[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        return_type: str | None = "input",
        verbose: bool = True,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        **generation_kwargs,
    ):
        """Sample tokens from the model, with every hook, condition and SAE attached now acting in the
        prompt pass and in every decoding step (TransformerLens's `generate`).

        Decoding runs `transformers`' own loop with each family's own cache (attention keys and
        values, the convolution and recurrent states of every linear mixer), so with no hooks and
        `do_sample=False` the tokens are those of `hf_model.generate`. A pass that continues the cache
        computes only the new token: hook functions then see `[batch, 1, ...]` (`model.real_positions`
        says which position). When a hook attached is not exact on a cache (a `Condition` whose
        intervention is not `cache_safe`: noise, resample, per-position mean, patching, knockout,
        state patching; or an inner point fed by an eager mixer forward, e.g. `hook_state`, `hook_q` of
        a linear mixer), every step recomputes the whole sequence instead, whatever
        `use_past_kv_cache` says: the result is what a loop of full forwards gives.

        Positions of a `Condition` count real tokens per row across steps, and each token is resolved
        against the tokens of the pass that computes it with a cache (the prompt pass, then one token
        per step): `positions=5` acts on the token at 5 once (in the prompt, or when it is generated),
        `-1` on the prompt's last token and on every generated token, `slice(-3, None)` on the prompt's
        last three and every generated one, `slice(0, 4)` on the first four; a position not reached yet
        acts on nothing. Cached and recomputed decoding act on the same tokens. `hook_state` (recomputed
        steps) fires with the state after the newest token of each step.

        Args:
            input: A text (batch of 1), a list of texts (left-padded: each continues its own last
                token), token ids `Int[Tensor, "batch pos"]`, or embeddings `Float[Tensor, "batch pos
                d_model"]` entering block 0 (`embed`).
            max_new_tokens: Tokens to generate at most.
            stop_at_eos: Stop a row at `eos_token_id` (later steps give it that token again); generation
                ends when every row has stopped.
            eos_token_id: A token id or several (default: the tokenizer's EOS).
            do_sample: Sample (else take the argmax).
            top_k: Sample among the `top_k` most likely tokens (None: all).
            top_p: Without `top_k`: sample among the most likely tokens of total probability `top_p`.
            temperature: Divide the logits by it before sampling (0: the argmax).
            freq_penalty: Subtract it times each token's count so far from the logits before sampling.
            use_past_kv_cache: Decode with the cache where it is exact (see above); False: recompute
                the whole sequence at every step.
            prepend_bos: For text input, as in `to_tokens`.
            padding_side: For a single text, as in `to_tokens` (a list is always left-padded).
            return_type: `"str"` (a string, or a list of strings for several rows), `"tokens"`,
                `"embeds"` (`embed` of the result), or `"input"`: the kind of `input`. With embeddings
                as input, tokens and strings hold only the new tokens.
            verbose: Show a progress bar.
            attention_mask: With token ids: 1 on real tokens (rows are moved to left padding first,
                and returned so).
            **generation_kwargs: `output_logits=True` returns a `transformers`
                `GenerateDecoderOnlyOutput` (`sequences`, and `logits`: each step's next-token logits);
                `return_dict_in_generate` is ignored; any other keyword is ignored with a warning.

        Returns:
            The input continued (strings, tokens `Int[Tensor, "batch pos+new"]` or embeddings), or a
            `GenerateDecoderOnlyOutput` with `output_logits=True`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> model.generate(["In the beginning", "And God said unto"], max_new_tokens=4, do_sample=False,
            ...                verbose=False)
            ['In the beginning, and the Lord', 'And God said unto him, I will']
            >>> with zero("linear_attn", layers=[0, 1]).apply(model):          # ablated in every step
            ...     ablated = model.generate("In the beginning", max_new_tokens=4, do_sample=False, verbose=False)
            >>> tokens = model.generate(model.to_tokens("In the beginning"), max_new_tokens=4, verbose=False)
            >>> tokens.shape
            torch.Size([1, 7])
        """
        if return_type not in RETURN_TYPES:
            raise GenerateArgumentError(f"return_type must be one of {RETURN_TYPES}, not {return_type!r}.")
        check_positive_int("max_new_tokens", max_new_tokens)
        output_logits = bool(generation_kwargs.pop("output_logits", False))
        ignored = sorted(key for key in generation_kwargs if key not in QUIET_KWARGS)
        if ignored:
            warnings.warn(f"HookedHybrid.generate received unsupported generation kwargs; ignoring: {ignored}",
                          UserWarning, stacklevel=2)
        kind, tokens, mask, embeds = self._generation_input(input, attention_mask, prepend_bos, padding_side)
        eos, pad = self._stop_tokens(stop_at_eos, eos_token_id)
        sampling = Sampling(do_sample, temperature, top_k, top_p, freq_penalty)
        decoded = decode(self, tokens, mask, max_new_tokens=max_new_tokens, sampling=sampling, eos_token_ids=eos,
                         pad_token_id=pad, use_cache=use_past_kv_cache, output_logits=output_logits,
                         verbose=verbose, embeds=embeds)
        sequences = decoded.sequences if embeds is None else decoded.sequences[:, embeds.shape[1]:]
        return_type = kind if return_type == "input" else return_type
        if return_type == "str":
            texts = self._require_tokenizer().batch_decode(sequences, skip_special_tokens=True)
            result = texts[0] if len(texts) == 1 else texts
        elif return_type == "tokens":
            result = sequences
        elif embeds is None:
            result = self.embed(sequences)
        else:
            result = torch.cat([embeds, self.embed(sequences)], 1)
        return GenerateDecoderOnlyOutput(sequences=sequences, logits=decoded.logits) if output_logits else result

    def generate_stream(
        self,
        input: str | Sequence[str] | Int[Tensor, "batch pos"] = "",
        max_new_tokens: int = 10,
        max_tokens_per_yield: int = 25,
        stop_at_eos: bool = True,
        eos_token_id: int | Sequence[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        return_type: str | None = "input",
        verbose: bool = False,
    ) -> Iterator[Int[Tensor, "batch n"]]:
        """`generate`, yielding token ids while it decodes (TransformerLens's `generate_stream`).

        The same decoding as `generate` (hooks, conditions and SAEs act in every step) runs in a worker
        thread; chunks are yielded as TransformerLens yields them: the first holds the prompt's ids and
        the first new tokens, each chunk is yielded once it holds `max_tokens_per_yield` ids, and what
        is left comes last. Concatenated along the last axis they are `generate(...,
        return_type="tokens")`. Leaving the loop early stops the decoding at its next step.
        `return_type` is accepted for TransformerLens's signature; chunks are always ids.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> chunks = list(model.generate_stream("In the beginning", max_new_tokens=6, max_tokens_per_yield=4,
            ...                                     do_sample=False))
            >>> [chunk.shape[1] for chunk in chunks]                  # 3 prompt ids + 1, then 4, then 1
            [4, 4, 1]
            >>> torch.equal(torch.cat(chunks, 1), model.generate("In the beginning", max_new_tokens=6,
            ...                                                  do_sample=False, return_type="tokens", verbose=False))
            True
        """
        if return_type not in (*RETURN_TYPES, None):
            raise GenerateArgumentError(f"return_type must be one of {RETURN_TYPES}, not {return_type!r}.")
        check_positive_int("max_new_tokens", max_new_tokens)
        check_positive_int("max_tokens_per_yield", max_tokens_per_yield)
        kind, tokens, mask, _ = self._generation_input(input, None, prepend_bos, padding_side)
        if kind == "embeds":
            raise GenerateArgumentError("generate_stream takes text or token ids; for embeddings use generate.")
        eos, pad = self._stop_tokens(stop_at_eos, eos_token_id)
        steps: queue.Queue = queue.Queue()
        stop = threading.Event()

        class _Step(StoppingCriteria):
            def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
                steps.put(input_ids[:, -1:].clone())
                return torch.full((len(input_ids),), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        def run() -> None:
            try:
                decode(self, tokens, mask, max_new_tokens=max_new_tokens, eos_token_ids=eos, pad_token_id=pad,
                       sampling=Sampling(do_sample, temperature, top_k, top_p, freq_penalty),
                       use_cache=use_past_kv_cache, verbose=verbose, stopping=[_Step()])
            except BaseException as error:  # raised again in the caller's thread
                steps.put(error)
            else:
                steps.put(None)

        worker = threading.Thread(target=contextvars.copy_context().run, args=(run,), name=STREAM_THREAD, daemon=True)
        worker.start()
        chunk, since = tokens, tokens.shape[1]
        try:
            while (step := steps.get()) is not None:
                if isinstance(step, BaseException):
                    raise step
                chunk = step if chunk is None else torch.cat([chunk, step], 1)
                since += 1
                if since >= max_tokens_per_yield:
                    yield chunk
                    chunk, since = None, 0
            if chunk is not None:
                yield chunk
        finally:
            stop.set()
            worker.join()

    def _generation_input(self, input, attention_mask, prepend_bos, padding_side):
        """`(kind of input, tokens, mask, embeddings or None)` of `generate`'s input."""
        is_text = isinstance(input, str) or (isinstance(input, Sequence) and not isinstance(input, Tensor)
                                             and len(input) > 0 and all(isinstance(text, str) for text in input))
        if is_text:
            if self.tokenizer is None:
                raise GenerateArgumentError("Text input needs a tokenizer: pass token ids, or give the model one.")
            if attention_mask is not None:
                raise GenerateArgumentError("Pass attention_mask only with token ids; texts are padded and masked "
                                            "for you.")
            side = "left" if not isinstance(input, str) and len(input) > 1 else padding_side
            tokens, mask = self.to_tokens_and_mask(input, prepend_bos, side)
            return "str", tokens, mask, None
        if isinstance(input, Tensor) and input.is_floating_point():
            if input.ndim != 3 or input.shape[-1] != self.cfg.d_model:
                raise GenerateArgumentError(f"Embeddings must be [batch, pos, d_model={self.cfg.d_model}], got "
                                            f"{tuple(input.shape)}.")
            if attention_mask is not None:
                raise GenerateArgumentError("attention_mask is for token ids; embeddings are all real positions.")
            tokens = torch.zeros(input.shape[:2], dtype=torch.long, device=self.device)
            return "embeds", tokens, None, input.to(self.device)
        tokens = self.encode(input)[0]
        mask = None if attention_mask is None else check_mask(attention_mask, tokens)  # any padding side
        return "tokens", tokens, None if mask is None or bool(mask.all()) else mask, None

    def _stop_tokens(self, stop_at_eos: bool, eos_token_id) -> tuple[list[int], int]:
        """The ids that stop a row, and the id a stopped row continues with."""
        tokenizer_eos = None if self.tokenizer is None else self.tokenizer.eos_token_id
        if not stop_at_eos:
            pad = None if self.tokenizer is None else self.tokenizer.pad_token_id
            return [], 0 if pad is None else pad
        if eos_token_id is None:
            if tokenizer_eos is None:
                raise GenerateArgumentError("stop_at_eos=True needs an eos_token_id: pass one, or stop_at_eos=False "
                                            "(this model has no tokenizer with an EOS token).")
            eos_token_id = tokenizer_eos
        if isinstance(eos_token_id, int):
            return [eos_token_id], eos_token_id
        eos = [int(token) for token in eos_token_id]
        if not eos:
            raise GenerateArgumentError("eos_token_id is an empty list: give at least one id, or stop_at_eos=False.")
        return eos, eos[0] if tokenizer_eos is None else tokenizer_eos  # as TransformerLens pads after a list
