"""HookedHybrid: a `transformers` causal LM with canonical, writable hook points.

The wrapped model is the real `transformers` object; its decoder layers get a forward that calls
the same submodules with the same arithmetic, routing the residual stream and every mixer/MLP
contribution through TransformerLens `HookPoint`s. With no hooks, logits are bit-identical.

This module holds construction, the structure and hook names and `forward`; the other methods come
from mixins named for what they do: `loading.Loading` (`from_pretrained`, ...), `tokenizing.Tokenizing`,
`caching.Caching` (`run_with_cache`), `readout.Readout`, `generation.Generation` (`generate`),
`nnsight_view.NNsightView`, `sae.SAESplicing`, `weights.Weights` and `copying.Copying` (deepcopy, pickle). The
state of one forward pass is a `forward_state.ForwardState`; the layers' structure a `layout.Layout`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint as TLHookPoint
from transformers import PreTrainedModel

from .adapters import HookedBlock, Wrapping, adapter_for
from .adapters.base import FinalNormHooks
from .caching import Caching
from .copying import Copying
from .forward_state import StopForward, check_hf_kwargs, current_state, hf_forward_arguments, prepare_pass
from .hook_points import HookedRootModule, HookPoint, TappedHookPoint, unknown_hook_error
from .layout import Component, Layout
from .lens_config import LensConfig
from .generation import Generation
from .loading import Loading
from .mixers.taps import pattern_mode_tap
from .nnsight_view import NNsightView
from .readout import Readout, next_token_loss
from .mixers.inputs import Switches
from .sae import SAESplicing
from .switching import Switching
from .tokenizing import ModelInput, Tokenizing
from .tokens import PaddingSide, prepare_tokenizer
from .weights import Weights

__all__ = ["Component", "FinalNormHooks", "HookedHybrid", "next_token_loss"]

NameFilter = str | Sequence[str] | Callable[[str], bool] | None
ReturnType = Literal["logits", "loss", "both"] | None


class HookedHybrid(Loading, Tokenizing, Caching, Readout, Generation, SAESplicing, NNsightView, Weights, Copying,
                   Switching, HookedRootModule):
    """A hooked view of a `transformers` causal LM of a registered family (`hybrid-lens models`):
    Qwen3.5, Falcon-H1, Qwen2.5 and the other hybrids, SSMs and transformers of the registry.

    Build it with `from_pretrained`, `from_hf` or `from_config`. `from_hf` wraps the given model in
    place (its decoder layers' `forward` is replaced by an equivalent hooked one; `unwrap` undoes
    it). With no hooks attached, the logits are bit-identical to the wrapped model's.

    Args:
        hf_model: A causal LM of a registered family (see `supported_architectures`).
        tokenizer: Its tokenizer, needed for text input; a missing pad or BOS token is set to EOS (as
            TransformerLens's `set_tokenizer` does).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> model.layer_types[:2]
        ['ssm+attn', 'ssm+attn']
        >>> logits, cache = model.run_with_cache("In the beginning")
        >>> logits.shape                              # [batch, pos, vocab]
        torch.Size([1, 4, 4096])
        >>> cache["blocks.3.hook_ssm_out"].shape      # [batch, pos, d_model]
        torch.Size([1, 4, 128])
    """

    def __init__(self, hf_model: PreTrainedModel, tokenizer=None):
        super().__init__()
        self.adapter = adapter_for(hf_model)
        self.hf_model = hf_model
        self.tokenizer = None if tokenizer is None else prepare_tokenizer(tokenizer)
        self._cfg = LensConfig(self)
        self._hf_arguments = hf_forward_arguments(hf_model)  # checked on every forward: read once
        self.layout: Layout = self.adapter.layout(hf_model.config)
        Wrapping.check(hf_model, self.adapter, self.layout)  # before anything is installed
        self.hook_tokens = HookPoint()  # [batch, pos] token ids, as TransformerLens's (use_hook_tokens)
        self.hook_embed = HookPoint()
        self.switches = Switches()  # TransformerLens's set_use_* switches (`switching`), read by the blocks' points
        self.blocks = nn.ModuleList(HookedBlock(layer, self.switches) for layer in self.layout)
        self.ln_final = FinalNormHooks()
        self.hook_logits = HookPoint()
        self._pattern_mode = pattern_mode_tap(hf_model.config)
        self._wrapping: Wrapping | None = Wrapping.install(self, self.adapter.layers(hf_model))
        self.setup()
        self._mark_own()

    def unwrap(self) -> PreTrainedModel:
        """Undo the wrapping: remove spliced SAEs and every hook (permanent ones too) and give the `transformers`
        model back its own forwards (an nnsight view's instrumentation is nnsight's to undo). Returns that
        model, plain again; this `HookedHybrid` refuses to run afterwards.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> tokens = model.to_tokens("In the beginning")
            >>> hooked = model(tokens)
            >>> torch.equal(model.unwrap()(tokens).logits, hooked)
            True
        """
        if self._wrapping is not None:
            self.reset_saes()  # an SAE at an inner point keeps its tap installed
            self.reset_hooks(including_permanent=True)
            self._wrapping.unwrap()
            self._wrapping = None
        return self.hf_model

    def setup(self) -> None:
        """Index the hook points (only ours: the wrapped model's modules are left untouched).

        Fills `hook_dict` (name -> `HookPoint`), `mod_dict` and `hook_order`, and gives every
        point its name. Called by the constructor; call it again only after adding hook points.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.setup()
            >>> model.hook_dict["blocks.0.hook_ssm_out"].name
            'blocks.0.hook_ssm_out'
        """
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, TLHookPoint):  # also the points of a spliced-in SAE
                module.name = name
                self.hook_dict[name] = module
        self.mod_dict = dict(self.hook_dict)
        self.hook_order = {name: i for i, name in enumerate(self.hook_dict)}

    @property
    def cfg(self) -> LensConfig:
        """TransformerLens-style config (`d_model`, `n_layers`, `n_ctx`, `device`, ...); any other
        attribute is the wrapped `transformers` config's (`model.cfg.hidden_size`)."""
        return self._cfg

    @property
    def n_layers(self) -> int:
        """Number of blocks (decoder layers)."""
        return len(self.layout)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters; token inputs are moved there."""
        return next(self.hf_model.parameters()).device

    @property
    def layer_types(self) -> list[str]:
        """Per layer, its mixer kinds joined by `+`: `attn`, `linear_attn`, `ssm+attn` (`mlp` for a
        block with an MLP only); see `layout` for everything else about a layer."""
        return [layer.type for layer in self.layout]

    @property
    def layer_mixers(self) -> list[tuple[str, ...]]:
        """Per layer, its mixer kinds in execution order (`layout[i].mixers`)."""
        return [layer.mixers for layer in self.layout]

    @property
    def layer_components(self) -> list[tuple[str, ...]]:
        """Per layer, its mixer kinds, then `mlp` if the block has one (`layout[i].components`)."""
        return [layer.components for layer in self.layout]

    def components(self, kind: str) -> list[Component]:
        """Every `kind` component (attn / linear_attn / ssm / conv / mlp), in layer order.

        Raises `ValueError` for an unknown kind; a kind the model lacks gives an empty list.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> [c.layer for c in model.components("attn")]
            [3, 7]
            >>> model.components("linear_attn")[0].hook_name
            'blocks.0.hook_linear_attn_out'
        """
        return self.layout.components(kind)

    def hook_names(self, inner: bool = True) -> list[str]:
        """All hook point names, but the points of TransformerLens's switches until they are switched on
        (`hook_result`, `hook_q_input`, ...: `switching`); with `inner=False` only the block-level and model-level
        activations (no inner mixer, MLP or norm points, and not `hook_tokens`, the input ids).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.hook_names(inner=False)[:4]
            ['hook_embed', 'blocks.0.hook_resid_pre', 'blocks.0.hook_ssm_out', 'blocks.0.hook_attn_out']
            >>> "blocks.0.ssm.hook_B" in model.hook_names()
            True
        """
        return [n for n, p in self.hook_dict.items() if self.switches.listed(n)
                and (inner or not (isinstance(p, TappedHookPoint) or n == "hook_tokens"))]

    def resolve_hook_names(self, names: NameFilter) -> list[str]:
        """Hook names matching a name, a list of names, or a predicate (None: every name of `hook_names()`).

        Raises `KeyError` listing the closest valid names for an unknown name, `ValueError` when a predicate
        matches nothing, and `AssertionError` for a name whose TransformerLens switch is off (`switching`).

        Args:
            names: A hook name, a sequence of names, a predicate `str -> bool`, or None.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.resolve_hook_names(lambda name: name.endswith("ssm_out"))[:2]
            ['blocks.0.hook_ssm_out', 'blocks.1.hook_ssm_out']
        """
        if names is None:
            return self.hook_names()
        if isinstance(names, str):
            names = [names]
        if callable(names):
            matched = [n for n in self.hook_names() if names(n)]
            if not matched:
                raise ValueError("The hook-name filter matched no hook point; see model.hook_names() (points of "
                                 "TransformerLens's switches, such as hook_result, match once switched on).")
            return matched
        for name in names:
            if name not in self.hook_dict:
                raise self.input_point_error(name) or unknown_hook_error(name, self.hook_dict)
            self.check_switched_on(name)
        return list(names)

    def _enable_hook(self, name, hook, dir) -> None:
        for resolved in self.resolve_hook_names(name):
            self.hook_dict[resolved].add_hook(hook, dir=dir, level=self.context_level)

    @property
    def real_positions(self) -> Int[Tensor, "batch pos"] | None:
        """During a forward pass: per row, each column's index among the row's real tokens (-1 on
        padding; offset by a cache's tokens), as interventions count positions; None between passes.

        Examples:
            >>> model, seen = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1"), []
            >>> _ = model.run_with_hooks(["In the beginning", "And God said unto Moses"], fwd_hooks=[
            ...     ("hook_embed", lambda value, hook: seen.append(model.real_positions))])
            >>> seen[0]
            tensor([[ 0,  1,  2,  3, -1, -1],
                    [ 0,  1,  2,  3,  4,  5]])
        """
        state = current_state()
        return state.positions if state is not None and state.running and state.model is self else None

    def forward(
        self,
        input: ModelInput | Tensor,
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        start_at_layer: int | None = None,
        tokens: Tensor | None = None,
        shortformer_pos_embed: None = None,
        attention_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
        **hf_kwargs,
    ):
        """Run the model, with whatever hooks are attached (TransformerLens's arguments).

        Args:
            input: A string, a list of strings (padded and masked for you), or token ids
                `Int[Tensor, "batch pos"]` (or `"pos"`, or nested lists of ints); with `start_at_layer`,
                the residual stream entering that block, `Float[Tensor, "batch pos d_model"]`.
            return_type: `"logits"`, `"loss"`, `"both"` or None.
            loss_per_token: Return the loss of every next-token prediction, not their mean.
            prepend_bos: For text input, as in `to_tokens` (ignored for token ids, as in TransformerLens).
            padding_side: For a list of texts, as in `to_tokens` (ignored for token ids).
            start_at_layer: Enter at this block with `input` as its residual stream (negative: from the
                end; `n_layers`: final norm and unembedding only); earlier blocks and `hook_embed` do not
                run. Recurrent mixers (Gated DeltaNet, Mamba-2, ...) start from a zero state, as in any
                pass without a cache.
            tokens: With `start_at_layer`, the ids the residual stream comes from: needed for the loss,
                and by Zamba2 entering after block 0 (its shared blocks read the embeddings too).
            shortformer_pos_embed: TransformerLens's; None only (there are no learned positions).
            attention_mask: `Int[Tensor, "batch pos"]`, with token ids or a residual stream. Padding
                between real tokens gets position ids counting real tokens (as in TransformerLens).
            stop_at_layer: Return the residual stream entering this block (`Float[Tensor, "batch pos
                d_model"]`; 0: the embeddings, `n_layers`: the final norm's input, negative: from the end);
                later blocks and the unembedding are not computed.
            **hf_kwargs: Arguments of the `transformers` forward (`use_cache` defaults to False,
                `position_ids`, `past_key_values`, `logits_to_keep`, ...). Any other name raises a
                `TypeError` instead of being dropped.

        Returns:
            Logits `Float[Tensor, "batch pos vocab"]`, the mean next-token loss `Float[Tensor, ""]`
            (or `Float[Tensor, "batch pos-1"]` with `loss_per_token`; see `next_token_loss`), the
            pair `(logits, loss)`, None, or the residual stream with `stop_at_layer`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model("In the beginning").shape                          # BOS + 3 tokens
            torch.Size([1, 4, 4096])
            >>> logits, loss = model(["In the beginning", "And God said unto Moses"], return_type="both")
            >>> logits.shape, loss.shape
            (torch.Size([2, 6, 4096]), torch.Size([]))
            >>> model("In the beginning", return_type="loss", loss_per_token=True).shape
            torch.Size([1, 3])
            >>> resid = model("In the beginning", stop_at_layer=4)       # resid_pre of block 4
            >>> resid.shape
            torch.Size([1, 4, 128])
            >>> torch.equal(model(resid, start_at_layer=4), model("In the beginning"))
            True
        """
        if self._wrapping is None:
            raise RuntimeError("This HookedHybrid was unwrapped; wrap its model again with HookedHybrid.from_hf.")
        check_hf_kwargs(hf_kwargs, self._hf_arguments, type(self.hf_model).__name__)
        inputs, tokens, mask, state = prepare_pass(
            self, input, return_type, prepend_bos, padding_side, start_at_layer, tokens, shortformer_pos_embed,
            attention_mask, stop_at_layer, hf_kwargs)
        with state.active():
            if start_at_layer is None:  # a hook may change the ids (not their shape): the run and loss use them
                tokens = inputs["input_ids"] = self.hook_tokens(tokens)
            try:
                output = self.hf_model(**inputs, attention_mask=mask, **hf_kwargs)
            except StopForward as stopped:
                return stopped.resid
        if state.stop is not None:
            raise RuntimeError("stop_at_layer was not reached")  # a family whose blocks skip resid_in
        logits = self.hook_logits(output.logits)
        if return_type in ("logits", None):
            return logits if return_type else None
        loss = next_token_loss(logits, tokens, mask, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)
