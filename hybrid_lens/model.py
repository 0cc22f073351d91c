"""HookedHybrid: a `transformers` causal LM with canonical, writable hook points.

The wrapped model is the real `transformers` object; its decoder layers get a forward that calls
the same submodules with the same arithmetic, routing the residual stream and every mixer/MLP
contribution through TransformerLens `HookPoint`s. With no hooks, logits are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .adapters import COMPONENT_KINDS, HookedBlock, adapter_for
from .adapters.taps import pattern_mode_tap
from .cache import ActivationCache
from .hook_points import HookPoint, TappedHookPoint, unknown_hook_error

ModelInput = str | Sequence[str] | Tensor | Sequence[int] | Sequence[Sequence[int]]
NameFilter = str | Sequence[str] | Callable[[str], bool] | None


@dataclass(frozen=True)
class Component:
    """One mixer or MLP of one block."""

    layer: int
    kind: str
    hook_name: str


class FinalNormHooks(nn.Module):
    """`ln_final.hook_normalized`: the final norm's output."""

    def __init__(self):
        super().__init__()
        self.hook_normalized = HookPoint()


class HookedHybrid(HookedRootModule):
    """A hooked view of a `Qwen3_5ForCausalLM`, `FalconH1ForCausalLM` or `Qwen2ForCausalLM`.

    Build it with `from_pretrained`, `from_hf` or `from_config`. `from_hf` wraps the given model in
    place (its decoder layers' `forward` is replaced by an equivalent hooked one).

    Example:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> logits, cache = model.run_with_cache("In the beginning")
        >>> cache["blocks.3.hook_ssm_out"].shape     # [batch, pos, d_model]
    """

    def __init__(self, hf_model: PreTrainedModel, tokenizer=None):
        super().__init__()
        self.adapter = adapter_for(hf_model)
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        if tokenizer is not None and tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.layer_mixers: list[tuple[str, ...]] = self.adapter.layer_mixers(hf_model.config)
        layers = self.adapter.layers(hf_model)
        if len(layers) != len(self.layer_mixers):
            raise ValueError(f"Config lists {len(self.layer_mixers)} layers but the model has {len(layers)}.")
        if any("forward" in vars(layer) for layer in layers):
            raise ValueError("This transformers model is already wrapped by a HookedHybrid; reuse that wrapper.")

        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(HookedBlock(i, mixers) for i, mixers in enumerate(self.layer_mixers))
        self.ln_final = FinalNormHooks()
        self.hook_logits = HookPoint()

        self._pattern_mode = pattern_mode_tap(hf_model.config)
        self._taps = []
        for block, layer in zip(self.blocks, layers):
            layer.forward = self.adapter.block_forward(block, layer, self.hook_embed if block.index == 0 else None)
            self._taps += self.adapter.add_inner_points(block, layer, self._pattern_mode)
        self.adapter.final_norm(hf_model).register_forward_hook(
            lambda _module, _args, output: self.ln_final.hook_normalized(output)
        )
        self.setup()

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_model: PreTrainedModel, tokenizer=None) -> HookedHybrid:
        """Wrap an already loaded `transformers` causal LM (in place)."""
        return cls(hf_model, tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer=None, **hf_kwargs) -> HookedHybrid:
        """Load a hub name, a local folder, or a bundled model (`hybrid-lens/tiny-falcon-h1`, ...).

        `hf_kwargs` go to `AutoModelForCausalLM.from_pretrained` (`dtype=`, `device_map=`, ...).
        A `Qwen3_5ForConditionalGeneration` checkpoint (e.g. `Qwen/Qwen3.5-0.8B`) loads as its
        text-only `Qwen3_5ForCausalLM`.
        """
        from . import zoo

        path = str(zoo.checkpoint_path(name_or_path)) if zoo.is_zoo_name(name_or_path) else name_or_path
        hf_model = AutoModelForCausalLM.from_pretrained(path, **hf_kwargs).eval()
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError):
                tokenizer = None
        return cls(hf_model, tokenizer)

    @classmethod
    def from_config(cls, config, seed: int = 0, dtype: torch.dtype = torch.float32, tokenizer=None) -> HookedHybrid:
        """A randomly initialised model of `config` (seeded; the global RNG is left untouched)."""
        config = getattr(config, "text_config", None) or config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
        return cls(hf_model, tokenizer)

    # --- structure ----------------------------------------------------------------------------
    def setup(self) -> None:
        """Index the hook points (only ours: the wrapped model's modules are left untouched)."""
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module
        self.mod_dict = dict(self.hook_dict)
        self.hook_order = {name: i for i, name in enumerate(self.hook_dict)}

    @property
    def cfg(self):
        return self.hf_model.config

    @property
    def n_layers(self) -> int:
        return len(self.layer_mixers)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def layer_types(self) -> list[str]:
        """Per layer, its mixer kinds joined by `+`: `attn`, `linear_attn`, `ssm+attn`."""
        return ["+".join(mixers) for mixers in self.layer_mixers]

    def components(self, kind: str) -> list[Component]:
        """Every `kind` component (attn / linear_attn / ssm / mlp), in layer order."""
        if kind not in COMPONENT_KINDS:
            raise ValueError(f"Unknown component kind {kind!r}; choose one of {COMPONENT_KINDS}.")
        return [
            Component(i, kind, f"blocks.{i}.hook_{kind}_out")
            for i, mixers in enumerate(self.layer_mixers)
            if kind == "mlp" or kind in mixers
        ]

    def apply_final_norm(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The model's final norm applied to any residual-stream tensor (no hook points fire)."""
        return self.adapter.final_norm(self.hf_model).forward(resid)

    def unembed(self, normed: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Logits from final-normed residuals: `lm_head` times any logit multiplier (no hooks fire)."""
        return self.hf_model.lm_head.forward(normed) * self.adapter.logit_scale(self.hf_model)

    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        """Unembedding matrix including any logit multiplier, TransformerLens layout."""
        return self.hf_model.lm_head.weight.T * self.adapter.logit_scale(self.hf_model)

    def hook_names(self, inner: bool = True) -> list[str]:
        """All hook point names; with `inner=False` only the block-level and model-level ones."""
        return [n for n, p in self.hook_dict.items() if inner or not isinstance(p, TappedHookPoint)]

    def resolve_hook_names(self, names: NameFilter) -> list[str]:
        """Hook names matching a name, a list of names, or a predicate (None: block-level names).

        Raises `KeyError` listing the closest valid names for an unknown name, and `ValueError`
        when a predicate matches nothing.
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

    def to_tokens(
        self, text: str | Sequence[str], padding_side: Literal["right", "left"] = "right"
    ) -> Int[Tensor, "batch pos"]:
        """Token ids of one text or a batch (padded on `padding_side`; see `to_tokens_and_mask`)."""
        return self.to_tokens_and_mask(text, padding_side)[0]

    def to_tokens_and_mask(
        self, text: str | Sequence[str], padding_side: Literal["right", "left"] = "right"
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Token ids and attention mask. Right padding is the default because it is exact for
        every mixer: real tokens never see padding in causal attention, Gated DeltaNet or Mamba-2."""
        tokenizer = self._require_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side=padding_side)
        return encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode one sequence of ids to a string, or a batch to a list of strings."""
        tokenizer = self._require_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return tokenizer.batch_decode(tokens)
        return tokenizer.decode(tokens)

    def _encode(self, input: ModelInput, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if isinstance(input, str) or (isinstance(input, Sequence) and input and isinstance(input[0], str)):
            if attention_mask is not None:
                raise ValueError("Pass attention_mask only with token ids; text input is tokenized and masked for you.")
            tokens, mask = self.to_tokens_and_mask(input)
            return tokens, (None if bool(mask.all()) else mask)
        tokens = torch.as_tensor(input, device=self.device)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"Token ids must be integers, got {tokens.dtype}.")
        return tokens, (None if attention_mask is None else attention_mask.to(self.device))

    # --- running ------------------------------------------------------------------------------
    def forward(
        self,
        input: ModelInput,
        attention_mask: Tensor | None = None,
        return_type: Literal["logits", "loss", "both"] | None = "logits",
        **hf_kwargs,
    ):
        """Run the model. `input` is a string, a list of strings, or token ids `[batch, pos]`.

        Returns logits `[batch, pos, vocab]`, the mean next-token loss, both, or None.
        Extra keyword arguments go to the `transformers` forward (`use_cache` defaults to False).
        """
        tokens, mask = self._encode(input, attention_mask)
        hf_kwargs.setdefault("use_cache", False)
        output = self.hf_model(input_ids=tokens, attention_mask=mask, **hf_kwargs)
        logits = self.hook_logits(output.logits)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = next_token_loss(logits, tokens, mask)
        return loss if return_type == "loss" else (logits, loss)

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
            names_filter: a name, names, or a predicate on names. None caches the block- and
                model-level points (inner mixer points only when named, since they switch on
                eager paths).
            device: move cached tensors there (e.g. "cpu").
            remove_batch_dim: drop the batch axis (batch size 1 only).

        Returns:
            The model output and an `ActivationCache`.
        """
        store: dict[str, Tensor] = {}

        def save(value: Tensor, hook: HookPoint) -> None:
            value = value.detach()
            store[hook.name] = value if device is None else value.to(device)

        names = self.resolve_hook_names(names_filter)
        with self.hooks(fwd_hooks=[(name, save) for name in names]):
            output = self(*model_args, **model_kwargs)
        if remove_batch_dim:
            store = {name: value[0] for name, value in store.items()}
        return output, ActivationCache(store, self.layer_mixers)

    # --- nnsight ------------------------------------------------------------------------------
    def nnsight(self, inner_points: bool = False, patterns: bool = False):
        """An `nnsight.NNsight` view of this module tree (cached), e.g.
        `with view.trace(ids): x = view.blocks[3].hook_ssm_out.output.save()`.

        Inner mixer points are fed only while their taps are on: `inner_points=True` switches them
        all on (eager mixer paths) until called again with False; `patterns=True` also switches
        attention to the eager path that feeds `hook_pattern`.
        """
        from nnsight import NNsight

        for tap in self._taps:
            tap.set_always_on(inner_points)
        self._pattern_mode.set_always_on(patterns)
        if getattr(self, "_envoy", None) is None:
            object.__setattr__(self, "_envoy", NNsight(self))
        return self._envoy

    def trace(self, *inputs, **kwargs):
        """`self.nnsight().trace(*inputs, **kwargs)`: an nnsight trace over this model."""
        return self.nnsight().trace(*inputs, **kwargs)


def next_token_loss(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"], mask: Tensor | None = None,
    per_token: bool = False,
) -> Tensor:
    """Cross-entropy of predicting token t+1 from position t; mean over unmasked targets,
    or `[batch, pos-1]` with `per_token=True`."""
    log_probs = logits[:, :-1].float().log_softmax(-1)
    nll = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    if per_token:
        return nll
    if mask is None:
        return nll.mean()
    target_mask = mask[:, 1:].to(nll.dtype)
    return (nll * target_mask).sum() / target_mask.sum()
