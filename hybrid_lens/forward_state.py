"""The per-forward state: what one forward pass of a `HookedHybrid` runs, where it stops, which columns
are real tokens, and whether hook functions act.

`HookedHybrid.forward` builds one `ForwardState` per pass and holds it in one `ContextVar` while the
`transformers` model runs. The hooked blocks read it: a block before `start` returns the given
residual stream without computing (prefix reuse), the block at `stop` ends the pass by raising
`StopForward` with its input (`stop_at_layer`), blocks in `keep` record their input. Interventions
read `positions` to count positions in real tokens per row. Code that drives the model (a `Sweep`,
cost measurements) asks for these with `forward_settings`, which applies to the forward passes of
that model started inside it (not to passes nested in a running one).

Positions are per row: `positions[b, j]` is column `j`'s index among row `b`'s real tokens, -1 on
padding. When a pass continues a cache (its attention mask is longer than its ids), they are offset
by the real tokens already in the cache, so position `5` names the same token in every chunk and
`lengths` counts every real token so far. In a generation (`HookedHybrid.generate`) the state also
holds each row's prompt length: the prompt pass computes the prompt, and each later pass one more
token, which is how selectors resolve their positions while decoding (`Selector.position_mask`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

from jaxtyping import Int
from torch import Tensor, nn
from transformers.utils.generic import TransformersKwargs

from .checks import is_int
from .tokens import check_position_ids, has_hole, positions_from_mask, real_positions

# HookedHybrid.forward's own arguments (anything else must be an argument of the transformers forward)
FORWARD_ARGUMENTS = ("input", "return_type", "loss_per_token", "prepend_bos", "padding_side", "start_at_layer",
                     "tokens", "shortformer_pos_embed", "attention_mask", "stop_at_layer")

RETURN_TYPES = ("logits", "loss", "both", None)

_STATE: ContextVar[ForwardState | None] = ContextVar("hybrid_lens_forward_state", default=None)


class StopForward(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised where a forward pass ends early (`ForwardState.stop`); carries the residual stream there.

    Examples:
        >>> StopForward(torch.zeros(1, 3, 8)).resid.shape
        torch.Size([1, 3, 8])
    """

    def __init__(self, resid: Tensor):
        super().__init__("stop reached")
        self.resid = resid


@dataclass(frozen=True)
class ForwardState:
    """One forward pass: its model, real-token positions, the blocks it computes, and its hook switch.

    Attributes:
        model: The `HookedHybrid` this state belongs to.
        running: Whether the pass is running (False: settings waiting for the next pass, see
            `forward_settings`).
        positions: `Int[Tensor, "batch pos"]`, each column's index among its row's real tokens (-1 on
            padding), offset by the tokens already in a cache; None before the pass starts.
        tokens: `Int[Tensor, "batch pos"]`, the ids of this pass (those `positions` index); None before
            the pass starts.
        start: The first block computed; the blocks before it return `resid`.
        resid: `Float[Tensor, "batch pos d_model"]`, the residual stream entering block `start` (block
            `start` reads it instead of its input; None: the pass starts from the embeddings).
        stop: The block whose input ends the pass (`n_layers`: the final norm's); None: run to the logits.
        keep: Blocks whose input is recorded into `kept` (block index -> tensor).
        hooks: Whether hook functions run (False: every hook point passes its value through).
        prompt_lengths: `Int[Tensor, " batch"]`, in a generation: each row's real prompt tokens (the
            tokens after them are computed one per pass); in shared-context scoring
            (`evals.shared_context`), each row's context tokens (its continuation follows in one more
            pass); None otherwise.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with forward_settings(model, keep=(2, 5), stop=5) as settings:
        ...     resid = model("In the beginning")
        >>> sorted(settings.kept), torch.equal(settings.kept[5], resid)
        ([2, 5], True)
    """

    model: object
    running: bool = False
    positions: Int[Tensor, "batch pos"] | None = None
    tokens: Int[Tensor, "batch pos"] | None = None
    start: int = 0
    resid: Tensor | None = None
    stop: int | None = None
    keep: tuple[int, ...] = ()
    kept: dict[int, Tensor] = field(default_factory=dict, repr=False, compare=False)
    hooks: bool = True
    prompt_lengths: Int[Tensor, " batch"] | None = None

    @property
    def lengths(self) -> Int[Tensor, " batch"] | None:
        """Per row, its real tokens so far (those of this pass and any cache before it)."""
        return None if self.positions is None else self.positions.max(1).values + 1

    def skips(self, block: int) -> bool:
        """Whether block `block` is before `start` (returns `resid` without computing).

        Examples:
            >>> ForwardState(None, start=3, resid=torch.zeros(1, 2, 8)).skips(2)
            True
        """
        return block < self.start

    def enter(self, block: int, resid: Tensor) -> None:
        """Block `block` receives `resid`: record it if kept; end the pass here if it is the stop.

        Examples:
            >>> state = ForwardState(None, keep=(1,), stop=2)
            >>> state.enter(1, torch.ones(1))
            >>> state.kept
            {1: tensor([1.])}
            >>> state.enter(2, torch.ones(1))
            Traceback (most recent call last):
            ...
            hybrid_lens.forward_state.StopForward: stop reached
        """
        if block in self.keep:
            self.kept[block] = resid
        if block == self.stop:
            raise StopForward(resid)

    def restricted(self, rows: slice | None) -> ForwardState:
        """This state as seen by an intervention acting on batch `rows` only (their positions and
        prompt lengths).

        Examples:
            >>> ForwardState(None, positions=torch.tensor([[0, 1], [-1, 0]])).restricted(slice(1, 2)).positions
            tensor([[-1,  0]])
        """
        if rows is None or self.positions is None:
            return self
        prompts = None if self.prompt_lengths is None else self.prompt_lengths[rows]
        return replace(self, positions=self.positions[rows], tokens=None if self.tokens is None else self.tokens[rows],
                       prompt_lengths=prompts)

    @contextmanager
    def active(self) -> Iterator[ForwardState]:
        """Make this the current state inside (restored on exit, also after errors).

        Examples:
            >>> with ForwardState(None, hooks=False).active():
            ...     hooks_enabled()
            False
        """
        token = _STATE.set(self)
        try:
            yield self
        finally:
            _STATE.reset(token)


def current_state() -> ForwardState | None:
    """The state of the forward pass running now (None outside one).

    Examples:
        >>> current_state() is None
        True
    """
    return _STATE.get()


def hooks_enabled() -> bool:
    """Whether hook functions act now (False inside `forward_settings(model, hooks=False)`).

    Examples:
        >>> hooks_enabled()
        True
    """
    state = _STATE.get()
    return state is None or state.hooks


@contextmanager
def forward_settings(model, *, start: int = 0, resid: Tensor | None = None, stop: int | None = None,
                     keep: tuple[int, ...] = (), hooks: bool = True) -> Iterator[ForwardState]:
    """Settings of the forward passes of `model` started inside (see `ForwardState` for the fields).

    Passes nested in a running pass (a hook that runs the model) are not affected. Yields the
    settings, whose `kept` dict fills as the passes record block inputs.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> tokens = model.to_tokens("In the beginning")
        >>> with forward_settings(model, stop=3) as settings:
        ...     resid = model(tokens)
        >>> with forward_settings(model, start=3, resid=resid):      # blocks 0-2 are not computed
        ...     torch.equal(model(tokens), model.hf_model(tokens).logits)
        True
    """
    if start > 0 and resid is None:
        raise ValueError("Entering at a later block needs both start > 0 and the residual stream entering it.")
    with ForwardState(model, start=start, resid=resid, stop=stop, keep=tuple(keep), hooks=hooks).active() as state:
        yield state


def begin(model, tokens: Tensor | None, mask: Tensor | None, stop: int | None, start: int | None = None,
          resid: Tensor | None = None, positions: Tensor | None = None,
          prompt_lengths: Tensor | None = None, covered: int | None = None) -> ForwardState:
    """The state of a pass of `model` over `tokens` (`[batch, pos]` ids; None where a pass entering at
    block `start` with the residual stream `resid`, `[batch, pos, d_model]`, has no ids) with attention
    mask `mask` (longer than the pass when it continues a cache; None: every token real, the pass
    covering `covered` positions, a cache's included, or only its own), taking the waiting
    `forward_settings` of `model`. A caller that knows the pass's `positions` (a generation step) gives
    them, and its rows' `prompt_lengths`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> state = begin(model, torch.tensor([[7, 8]]), torch.tensor([[0, 1, 1, 1]]), stop=None)
        >>> state.positions, state.lengths                  # 2 new tokens after 1 real cached one
        (tensor([[1, 2]]), tensor([3]))
        >>> begin(model, torch.tensor([[7, 8]]), None, stop=None, covered=5).positions   # after 3 cached ones
        tensor([[3, 4]])
    """
    waiting = _STATE.get()
    base = waiting if waiting is not None and waiting.model is model and not waiting.running else ForwardState(model)
    if stop is not None and base.stop is not None and stop != base.stop:
        raise ValueError(f"stop_at_layer={stop} conflicts with the stop {base.stop} already set for this pass.")
    if start is not None and base.resid is not None:
        raise ValueError(f"start_at_layer={start} conflicts with the start {base.start} already set for this pass.")
    if positions is None:
        given = tokens if tokens is not None else resid  # [batch, pos] ids or [batch, pos, d_model]
        length = (covered or given.shape[1]) if mask is None else mask.shape[1]
        positions = real_positions(mask, given.shape[0], length)[:, -given.shape[1]:].to(given.device)
    entry = {} if start is None else {"start": start, "resid": resid}
    return replace(base, running=True, positions=positions, tokens=tokens, stop=base.stop if stop is None else stop,
                   prompt_lengths=base.prompt_lengths if prompt_lengths is None else prompt_lengths, **entry)


def prepare_pass(model, input, return_type="logits", prepend_bos=None, padding_side=None, start_at_layer=None,
                 tokens=None, shortformer_pos_embed=None, attention_mask=None, stop_at_layer=None, hf_kwargs=None,
                 **_) -> tuple[dict, Tensor | None, Tensor | None, ForwardState]:
    """The validated call of the `transformers` model for `model.forward`'s arguments: its inputs
    (`input_ids`, or for a pass entering at a block without ids `inputs_embeds`, of which only the shape
    counts), the token ids (None where unknown), the attention mask (None: every token real) and the
    pass's state. `hf_kwargs` is completed: `use_cache=False`, and a mask with padding between real
    tokens gets position ids counting real tokens (as TransformerLens's rotary attention does).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> kwargs = {}
        >>> inputs, tokens, mask, state = prepare_pass(model, [[5, 6, 7]], attention_mask=[[1, 0, 1]],
        ...                                            hf_kwargs=kwargs)
        >>> kwargs["position_ids"], state.positions
        (tensor([[0, 0, 1]]), tensor([[ 0, -1,  1]]))
    """
    hf_kwargs = {} if hf_kwargs is None else hf_kwargs
    start = stop_block(start_at_layer, model.n_layers, "start_at_layer")
    stop = stop_block(stop_at_layer, model.n_layers)
    if shortformer_pos_embed is not None:
        raise ValueError("shortformer_pos_embed must be None: hybrid-lens models have no learned positional embedding.")
    if start is None and tokens is not None:
        raise ValueError("tokens= goes with start_at_layer (the ids a residual stream comes from); pass the ids as "
                         "the input instead.")
    if start and tokens is None and model.adapter.blocks_read_embeddings:
        raise ValueError(f"{model.adapter.family} blocks read the token embeddings besides the residual stream: "
                         "entering after block 0 needs tokens=.")
    resid, covered = None, context_length(attention_mask, hf_kwargs)
    if start is None:
        tokens, mask = model.encode(input, attention_mask, prepend_bos, padding_side, covered)
    else:
        resid, tokens, mask = model.encode_residual(input, tokens, attention_mask)
    given = tokens if resid is None else resid  # [batch, pos] ids or [batch, pos, d_model]
    check_pass(return_type, tuple(given.shape[:2]), tokens is not None, start, stop, hf_kwargs)
    hf_kwargs.setdefault("use_cache", False)
    if has_hole(mask) and hf_kwargs.get("position_ids") is None and "position_ids" in model._hf_arguments:
        hf_kwargs["position_ids"] = positions_from_mask(mask)[:, -given.shape[1]:]
    inputs = {"input_ids": tokens} if tokens is not None else {"inputs_embeds": resid}  # block `start` reads resid
    return inputs, tokens, mask, begin(model, tokens, mask, stop, start, resid, covered=covered)


def state_of_call(model, args: tuple, kwargs: dict) -> ForwardState:
    """The state a call `model(*args, **kwargs)` runs in (its real-token positions), for code that acts on
    the pass from outside it (an nnsight trace's edits).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> state_of_call(model, (["In the beginning", "And"],), {"prepend_bos": False}).positions
        tensor([[ 0,  1,  2],
                [ 0, -1, -1]])
    """
    call = inspect.signature(type(model).forward).bind(model, *args, **kwargs).arguments
    return prepare_pass(model, **{**call, "hf_kwargs": dict(call.get("hf_kwargs", {}))})[3]


def context_length(attention_mask: Tensor | None, hf_kwargs: dict) -> int | None:
    """The positions a pass covers when it continues a cache (`past_key_values` / `cache` given): its
    mask's length; None otherwise (the ids' own length).

    Examples:
        >>> context_length(torch.ones(1, 9), {"cache": object()}), context_length(torch.ones(1, 9), {})
        (9, None)
    """
    continues = hf_kwargs.get("past_key_values", hf_kwargs.get("cache")) is not None
    return attention_mask.shape[-1] if continues and attention_mask is not None else None


def uses_a_cache(hf_kwargs: dict) -> bool:
    """Whether a pass with these `transformers` arguments builds or continues a cache (`use_cache=True`,
    `past_key_values`, `cache`, `cache_params`).

    Examples:
        >>> uses_a_cache({"use_cache": True}), uses_a_cache({"past_key_values": None}), uses_a_cache({})
        (True, False, False)
    """
    return bool(hf_kwargs.get("use_cache")) or any(hf_kwargs.get(name) is not None
                                                   for name in ("past_key_values", "cache", "cache_params"))


def stop_block(stop_at_layer: int | None, n_layers: int, name: str = "stop_at_layer") -> int | None:
    """The block whose input `forward(stop_at_layer=...)` returns (`n_layers`: the final norm's input),
    or where `forward(start_at_layer=...)` enters (`name`); `ValueError` for a value out of
    `[-n_layers, n_layers]` (numpy integers count as integers).

    Examples:
        >>> stop_block(-1, 8), stop_block(8, 8), stop_block(None, 8)
        (7, 8, None)
    """
    if stop_at_layer is None:
        return None
    if not is_int(stop_at_layer) or not -n_layers <= stop_at_layer <= n_layers:
        raise ValueError(f"{name} must be an int in [{-n_layers}, {n_layers}], not {stop_at_layer!r}.")
    return int(stop_at_layer) % n_layers if stop_at_layer < n_layers else n_layers


def check_pass(return_type, shape: tuple[int, int], has_tokens: bool, start: int | None, stop: int | None,
               hf_kwargs: dict) -> None:
    """Refuse a forward call whose parts do not fit together (`ValueError` naming them): an unknown
    `return_type`; a loss without
    token ids or with one position, or with `logits_to_keep`; `stop_at_layer` before `start_at_layer`;
    `start_at_layer` continuing a cache; `position_ids` not one per token. `shape` is the input's
    `(batch, pos)`; `has_tokens` whether its token ids are known.

    Examples:
        >>> check_pass("loss", (1, 2), True, None, None, {"logits_to_keep": 1})
        Traceback (most recent call last):
        ...
        ValueError: return_type='loss' scores every position, but logits_to_keep=1 keeps only the last logits: leave logits_to_keep out (or return_type='logits').
    """
    if return_type not in RETURN_TYPES:
        raise ValueError(f"return_type must be one of {RETURN_TYPES}, not {return_type!r}.")
    if return_type in ("loss", "both") and stop is None:
        if not has_tokens:
            raise ValueError(f"return_type={return_type!r} with start_at_layer needs the token ids it predicts: "
                             "pass tokens=.")
        if shape[1] < 2:
            raise ValueError("The next-token loss needs at least 2 tokens per row; this input has 1.")
        keep = hf_kwargs.get("logits_to_keep", 0)
        if not (is_int(keep) and keep == 0):
            raise ValueError(f"return_type={return_type!r} scores every position, but logits_to_keep={keep!r} keeps "
                             "only the last logits: leave logits_to_keep out (or return_type='logits').")
    if start is not None and stop is not None and stop < start:
        raise ValueError(f"stop_at_layer={stop} is before start_at_layer={start}: no block would run.")
    if start is not None and hf_kwargs.get("past_key_values", hf_kwargs.get("cache")) is not None:
        raise ValueError("start_at_layer cannot continue a cache: the blocks before it would not add their state.")
    if hf_kwargs.get("position_ids") is not None:
        check_position_ids(hf_kwargs["position_ids"], tuple(shape))


def hf_forward_arguments(hf_model: nn.Module) -> set[str]:
    """Keyword arguments the `transformers` forward of `hf_model` takes (named, or typed `**kwargs`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> {"use_cache", "position_ids", "output_hidden_states"} <= hf_forward_arguments(model.hf_model)
        True
    """
    found = {"past_key_values", *TransformersKwargs.__annotations__}  # the deprecated name of `cache`
    for name, parameter in inspect.signature(type(hf_model).forward).parameters.items():
        if parameter.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            found.add(name)
    return found - {"self", "input_ids"}


def check_hf_kwargs(hf_kwargs: dict, valid: set[str], model_name: str) -> None:
    """`TypeError` naming the closest valid names for a keyword neither hybrid-lens nor the
    `transformers` forward (`valid`, see `hf_forward_arguments`) takes.

    Examples:
        >>> check_hf_kwargs({"use_cashe": True}, {"use_cache"}, "Qwen2ForCausalLM")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: forward() got keyword arguments that neither hybrid-lens nor Qwen2ForCausalLM takes: 'use_cashe' (closest: use_cache)...
    """
    unknown = [key for key in hf_kwargs if key not in valid]
    if unknown:
        close = {key: difflib.get_close_matches(key, [*valid, *FORWARD_ARGUMENTS], n=3) for key in unknown}
        hints = "; ".join(f"{key!r} (closest: {', '.join(c) or 'none'})" for key, c in close.items())
        raise TypeError(
            f"forward() got keyword arguments that neither hybrid-lens nor {model_name} takes: {hints}. "
            f"hybrid-lens takes {', '.join(FORWARD_ARGUMENTS)}; transformers takes {', '.join(sorted(valid))}."
        )
