"""Declarative adapters: a family is data (`Family`), one generic hooked block runs every family.

A `Family` names, for each layer type of the config, the parts of its decoder layer: the token
mixers (`Mixer`: attribute, kind, pre/post norm, input/output multipliers, which layer arguments
it receives, its inner points), the MLP or MoE (`Mlp`), and whether the mixers run one after the
other or side by side on one normed input. `block_forward` executes that recipe with the same
`transformers` submodules and the same arithmetic as the original layer, passing every
residual-stream quantity through a hook point, so with no hooks the logits are bit-identical.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter

from torch import Tensor, nn

from ..hook_points import Tap
from ..layout import Layout
from ..mixers.taps import MixerHooks, forward_of
from ..vocabulary import point_name
from .base import Entry, HookedBlock, Wrapping, resid_in
from .points import add_block_points

AddPoints = Callable[[MixerHooks, nn.Module, Tap], list[Tap]]
Scale = str | float | None


@dataclass(frozen=True)
class Mixer:
    """One token mixer of a block.

    Args:
        kind: Component kind (`attn`, `linear_attn`, `ssm`, `conv`, ...): its output is `hook_{kind}_out`.
        module: Attribute (or dotted path) of the decoder layer holding the `transformers` mixer.
        points: Its kind's inner hook points (`hybrid_lens.mixers.<kind>.add_points`), or None.
        args: Layer arguments passed on by keyword, each an argument of the layer's forward;
            `"attention_mask=mamba_attention_mask"` passes the layer's `mamba_attention_mask` as the
            mixer's `attention_mask`. None: those of `STANDARD_ARGS` that the layer's forward has.
        rest: Also pass the layer's remaining `**kwargs`.
        norm: Pre-norm attribute (or dotted path) of the layer (None: the mixer reads the residual stream).
        post_norm: Norm applied to the mixer output before it joins the residual (OLMo-Hybrid).
        in_scale: Layer attribute (or number) multiplied into the normed mixer input.
        out_scale: Layer attribute (or number) multiplied into the mixer output.
        normed_skip: The skip path carries the normed mixer input times this layer attribute (or
            number) instead of the residual stream (MiniMax's DeepNorm-style `alpha`); None: the stream.
    """

    kind: str
    module: str
    points: AddPoints | None = None
    args: tuple[str, ...] | None = None
    rest: bool = True
    norm: str | None = "input_layernorm"
    post_norm: str | None = None
    in_scale: Scale = None
    out_scale: Scale = None
    normed_skip: Scale = None


@dataclass(frozen=True)
class Mlp:
    """The channel mixer of a block: one MLP or MoE, or several summed in order (Granite's MoE + shared
    MLP; a module attribute that is None in a layer is skipped). A tuple output keeps its first item.
    `points` adds inner points of each module in `blocks.{i}.mlp.` (`hybrid_lens.mixers.router`);
    `normed_skip` as in `Mixer`."""

    modules: tuple[str, ...] = ("mlp",)
    norm: str | None = "post_attention_layernorm"
    post_norm: str | None = None
    out_scale: Scale = None
    points: AddPoints | None = None
    normed_skip: Scale = None


@dataclass(frozen=True)
class Block:
    """The parts of one layer type: its mixers in execution order, its MLP (None: no MLP),
    whether the mixers run side by side on the same normed input (`parallel`, Falcon-H1), and the
    components whose output enters a mixer's input instead of the residual (`feeds_mixer`,
    Zamba2's shared transformer)."""

    mixers: tuple[Mixer, ...]
    mlp: Mlp | None = Mlp()
    parallel: bool = False
    feeds_mixer: tuple[str, ...] = ()

    @property
    def components(self) -> tuple[str, ...]:
        return (*(m.kind for m in self.mixers), *(("mlp",) if self.mlp else ()))

    @property
    def residual_terms(self) -> tuple[str, ...]:
        """The components whose outputs are added to the residual stream, in execution order."""
        return tuple(kind for kind in self.components if kind not in self.feeds_mixer)


@dataclass(frozen=True)
class Family:
    """A family's adapter as data.

    Args:
        family: Short name (`qwen3_5`).
        architectures: `transformers` causal-LM class names served.
        model_types: `config.model_type` values served.
        blocks: Block key (as `block_keys` returns it) -> its `Block`.
        block_keys: The block key of every decoder layer, read from the config.
        tiny: Config fields of a tiny random model of this family (tests, `hybrid-lens models`).
        decoder_attr: Attribute of the causal LM holding the decoder (`model`, `backbone`).
        final_norm_attr: Attribute of the decoder holding the final norm.
        wrap_output: What the decoder loop expects a layer to return, from its output tensor.
        logit_scale: Factor the model applies to `lm_head` outputs, from the causal LM
            (Falcon-H1's `lm_head_multiplier`).
        logit_divisor: Number the model divides `lm_head` outputs by, from the causal LM
            (Granite's `logits_scaling`).
        logit_transform: A nonlinear map the causal LM applies to the scaled `lm_head` output,
            `(hf_model, logits) -> logits` (RecurrentGemma's soft cap); None: the logits are
            linear in the final-normed residual (then, and only then, `W_U` exists).
        norm_cast: Cast a norm's input to the norm's weight dtype first (Mamba, Nemotron-H).
        residual_fp32: Keep the residual in float32 when `config.residual_in_fp32` (Mamba).
        left_padding: Padding before a row's tokens leaves its values unchanged (False for
            RecurrentGemma, whose convolution ignores the mask: `HookedHybrid` then refuses it).
        prepend_bos: TransformerLens's `default_prepend_bos` for this architecture, as its loading
            code and architecture adapter decide it (False for the Qwen families, Granite and
            RecurrentGemma; True, its default, elsewhere): `cfg.default_prepend_bos`.
        embed_scale: Factor the decoder applies to the token embeddings before block 0, from the
            causal LM (Falcon-H1's `embedding_multiplier`): `hook_embed` is `W_E[tokens]` with `W_E`
            the embedding matrix times it.
        blocks_read_embeddings: Blocks read the token embeddings besides the residual stream (Zamba2's
            shared blocks): a pass entering after block 0 needs the token ids.
        left_padded_cache: Decoding with the `transformers` cache of a left-padded batch gives each
            row its own continuation (False for MiniMax, whose cached lightning attention lets the
            padding leak into the tokens after the prompt: `generate` then runs each prompt length apart).
    """

    family: str = ""
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    blocks: Mapping[str, Block] = field(default_factory=dict)
    block_keys: Callable[[object], list[str]] = lambda config: ["block"] * config.num_hidden_layers
    tiny: Mapping[str, object] = field(default_factory=dict)
    decoder_attr: str = "model"
    final_norm_attr: str = "norm"
    wrap_output: Callable[[Tensor], object] = lambda hidden: hidden
    logit_scale: Callable[[nn.Module], float] = lambda hf_model: 1.0
    logit_divisor: Callable[[nn.Module], float] = lambda hf_model: 1.0
    logit_transform: Callable[[nn.Module, Tensor], Tensor] | None = None
    norm_cast: bool = False
    residual_fp32: bool = False
    left_padding: bool = True
    prepend_bos: bool = True
    embed_scale: Callable[[nn.Module], float | Tensor] = lambda hf_model: 1.0
    blocks_read_embeddings: bool = False
    left_padded_cache: bool = True

    def block_of(self, key: str) -> Block:
        """The `Block` of block key `key`; `ValueError` naming the known keys otherwise."""
        try:
            return self.blocks[key]
        except KeyError:
            raise ValueError(f"Unknown {self.family} block key {key!r}; known: {sorted(self.blocks)}") from None

    def layout(self, config) -> Layout:
        """The `Layout` of a model of this family with `config`: per layer, its block key and what
        that block holds."""
        keys = list(self.block_keys(config))
        blocks = [self.block_of(key) for key in keys]
        return Layout.of([block.components for block in blocks], [block.residual_terms for block in blocks], keys,
                         self.additive)

    @property
    def layer_kinds(self) -> list[str]:
        """The distinct block kinds, components joined by `+` (`linear_attn+mlp`, `ssm`), as
        `hybrid-lens models` and the coverage table list them."""
        return list(dict.fromkeys("+".join(block.components) for block in self.blocks.values()))

    @property
    def additive(self) -> bool:
        """Whether the residual stream is the embedding plus the residual terms of every block (no
        block renormalises it on the skip path, as MiniMax's do)."""
        return all(part.normed_skip is None for block in self.blocks.values()
                   for part in (*block.mixers, *((block.mlp,) if block.mlp else ())))

    def decoder(self, hf_model: nn.Module) -> nn.Module:
        return getattr(hf_model, self.decoder_attr)

    def layers(self, hf_model: nn.Module) -> nn.ModuleList:
        return self.decoder(hf_model).layers

    def final_norm(self, hf_model: nn.Module) -> nn.Module:
        return getattr(self.decoder(hf_model), self.final_norm_attr)

    def scale_logits(self, hf_model: nn.Module, logits: Tensor) -> Tensor:
        """What the causal LM does to `lm_head` outputs (or to `W_U`): `logits * logit_scale / logit_divisor`,
        bit-identical to `transformers` (a factor or divisor of 1 changes nothing)."""
        return logits * self.logit_scale(hf_model) / self.logit_divisor(hf_model)

    def block_forward(self, block: HookedBlock, layer: nn.Module, entry: Entry | None,
                      wrapping: Wrapping) -> Callable[..., object]:
        """A replacement for `layer.forward` that runs `block`'s recipe through its hook points.

        `entry` (block 0 only) calls `hook_embed`, before `hook_resid_pre`. Hook points are looked
        up on `block` at call time, so a module put in a hook point's place (an SAE) takes effect.
        A family whose block forward changes other modules too does so through `wrapping`.
        """
        spec = self.block_of(block.layer.block_key)
        bind = argument_binder(type(layer).forward)
        arguments = {mixer.kind: layer_arguments(mixer, layer) for mixer in spec.mixers}
        fp32 = self.residual_fp32 and getattr(layer, "residual_in_fp32", False)
        points = block._modules  # the block's hook points by name, read at call time (an SAE may replace one)
        out_points = {mixer.kind: point_name(mixer.kind) for mixer in spec.mixers}

        def norm(attr: str | None, x: Tensor) -> Tensor:
            return self.norm(layer, attr, x)

        def skip_of(part: Mixer | Mlp, normed: Tensor, stream: Tensor) -> Tensor:
            return stream if part.normed_skip is None else scaled(normed, layer, part.normed_skip)

        def inputs_of(mixer: Mixer, resid: Tensor) -> dict | None:
            """TransformerLens's per-head input points of the attention, fed before its norm while hooked."""
            inputs = block.head_inputs if mixer.kind == "attn" else None
            if inputs is None or not inputs.tap.active:
                return None
            return inputs.prepare(resid, lambda heads: scaled(self.norm(layer, mixer.norm, heads, hooked=False),
                                                              layer, mixer.in_scale))

        def mixer_out(mixer: Mixer, normed: Tensor, named: dict, rest: dict, edited: dict | None) -> Tensor:
            x = scaled(normed, layer, mixer.in_scale)
            kwargs = {name: named[source] for name, source in arguments[mixer.kind] if source in named}
            module = attrgetter(mixer.module)(layer)
            if edited is not None:
                out = first(block.head_inputs.run(lambda: module(x, **kwargs, **(rest if mixer.rest else {})), edited))
            else:
                out = first(module(x, **kwargs, **(rest if mixer.rest else {})))
            out = scaled(norm(mixer.post_norm, out), layer, mixer.out_scale)
            return points[out_points[mixer.kind]](out)

        def forward(*args, **kwargs):
            named, rest = bind(args, kwargs)
            resid = resid_in(block, entry, named.pop("hidden_states"))
            skip = resid.float() if fp32 else resid
            if spec.parallel:
                edited = {mixer.kind: inputs_of(mixer, resid) for mixer in spec.mixers}
                normed = norm(spec.mixers[0].norm, resid)
                total = None
                for mixer in spec.mixers:
                    out = mixer_out(mixer, normed, named, rest, edited[mixer.kind])
                    total = out if total is None else total + out
                resid = skip_of(spec.mixers[0], normed, skip) + total
            else:
                for mixer in spec.mixers:
                    edited = inputs_of(mixer, resid)
                    normed = norm(mixer.norm, resid)
                    resid = skip_of(mixer, normed, skip) + mixer_out(mixer, normed, named, rest, edited)
                    skip = resid
            if spec.mlp is not None:
                if spec.mixers:
                    resid = points["hook_resid_mid"](resid)
                mlp_in = resid if block.mlp_input is None else block.mlp_input(resid)
                normed = norm(spec.mlp.norm, mlp_in)
                out = self.mlp_output(layer, spec.mlp, normed)
                skip_normed = normed if mlp_in is resid else norm(spec.mlp.norm, resid)  # the skip keeps the stream
                resid = skip_of(spec.mlp, skip_normed, resid) + points["hook_mlp_out"](out)
            return self.wrap_output(points["hook_resid_post"](resid))

        return forward

    def mlp_output(self, layer: nn.Module, mlp: Mlp, normed: Tensor) -> Tensor:
        """What the MLP `mlp` of `layer` adds to the residual stream, from its normed input `normed`: its modules'
        outputs summed, then its post-norm and output multiplier (`hook_mlp_out`; `blocks[i].mlp(normed)`)."""
        total = None
        for attr in mlp.modules:
            module = attrgetter(attr)(layer)
            if module is not None:
                out = first(module(normed))
                total = out if total is None else total + out
        return scaled(self.norm(layer, mlp.post_norm, total), layer, mlp.out_scale)

    def validate(self, hf_model: nn.Module) -> None:
        """Check that this adapter fits `hf_model`: the decoder, its layers and final norm, and in every
        layer each module, norm and scale path of its block and each argument its mixers read.

        Raises `ValueError` naming the family, the block key, the field and what is missing.

        Examples:
            >>> from dataclasses import replace
            >>> from hybrid_lens.adapters import FAMILIES
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> broken = replace(FAMILIES["qwen2"], blocks={"block": Block((attention(norm="ln_1"),))})
            >>> broken.validate(model.hf_model)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: qwen2 adapter, block 'block', mixers[0] (attn).norm: 'ln_1' is not an attribute of layer 0 (Qwen2DecoderLayer)...
        """
        for attr in (self.decoder_attr, f"{self.decoder_attr}.layers", f"{self.decoder_attr}.{self.final_norm_attr}"):
            _resolve(hf_model, attr, f"{self.family} adapter, field decoder_attr/final_norm_attr", "the model")
        for index, (key, layer) in enumerate(zip(self.block_keys(hf_model.config), self.layers(hf_model))):
            block = self.block_of(key)
            where = f"layer {index} ({type(layer).__name__})"
            for i, mixer in enumerate(block.mixers):
                field_of = f"{self.family} adapter, block {key!r}, mixers[{i}] ({mixer.kind})"
                for name in ("module", "norm", "post_norm"):
                    _resolve(layer, getattr(mixer, name), f"{field_of}.{name}", where)
                for name in ("in_scale", "out_scale", "normed_skip"):
                    _resolve(layer, getattr(mixer, name), f"{field_of}.{name}", where, module=False)
                parameters = forward_parameters(layer)
                missing = [source for _, source in layer_arguments(mixer, layer) if source not in parameters]
                if missing:
                    raise ValueError(f"{field_of}.args: {missing} are not arguments of the forward of {where}; "
                                     f"it takes {parameters}.")
            if block.mlp is not None:
                field_of = f"{self.family} adapter, block {key!r}, mlp"
                modules = [_resolve(layer, attr, f"{field_of}.modules", where, optional=True)
                           for attr in block.mlp.modules]
                if not any(module is not None for module in modules):
                    raise ValueError(f"{field_of}.modules: none of {block.mlp.modules} is a module of {where}.")
                for name in ("norm", "post_norm"):
                    _resolve(layer, getattr(block.mlp, name), f"{field_of}.{name}", where)
                for name in ("out_scale", "normed_skip"):
                    _resolve(layer, getattr(block.mlp, name), f"{field_of}.{name}", where, module=False)

    def norm(self, layer: nn.Module, attr: str | None, x: Tensor, hooked: bool = True) -> Tensor:
        """The norm `attr` of `layer` applied to `x` (None: `x`); not `hooked`: its forward alone, without the
        taps of its points (a per-head input is normed apart from the block's own pass)."""
        if attr is None:
            return x
        module = attrgetter(attr)(layer)
        x = x.to(module.weight.dtype) if self.norm_cast else x
        return module(x) if hooked else forward_of(module)(x)

    def skip_path(self, block: HookedBlock, layer: nn.Module, kind: str) -> Callable[[Tensor], Tensor]:
        """What the skip path around component `kind` of `block` carries, as a function of the residual
        stream before it: the stream itself, or with `normed_skip` (MiniMax) its normed input times
        that scale (in a parallel block, only the first mixer's may be set). `resid_post` is the skip
        paths and the `Block.residual_terms` applied in turn."""
        spec = self.block_of(block.layer.block_key)
        part = spec.mlp if kind == "mlp" else next(m for m in spec.mixers if m.kind == kind)
        if part.normed_skip is None:
            return lambda stream: stream
        return lambda stream: scaled(self.norm(layer, part.norm, stream), layer, part.normed_skip)

    def add_inner_points(self, block: HookedBlock, layer: nn.Module, pattern_mode: Tap) -> list[Tap]:
        """Create the inner hook points of `block`'s mixers (`pattern_mode` feeds every
        `hook_pattern`) and of its MLP (`Mlp.points`), then its norm points, neuron points and per-head
        results (`adapters.points`); return their taps."""
        taps, spec = [], self.block_of(block.layer.block_key)
        for mixer in spec.mixers:
            if mixer.points is not None:
                taps += mixer.points(getattr(block, mixer.kind), attrgetter(mixer.module)(layer), pattern_mode)
        if spec.mlp is not None and spec.mlp.points is not None:
            for module in filter(None, (attrgetter(attr)(layer) for attr in spec.mlp.modules)):
                taps += spec.mlp.points(block.mlp, module, pattern_mode)
        if spec.mlp is not None and not spec.feeds_mixer:
            block.mlp.runs = lambda normed: self.mlp_output(layer, spec.mlp, normed)
        return taps + add_block_points(block, layer, spec)


def _resolve(owner: nn.Module, path: Scale, field: str, where: str, module: bool = True, optional: bool = False):
    """`owner`'s attribute at dotted `path` (a number or None: nothing to resolve); `ValueError` naming
    `field` unless it exists (and, with `module`, is a module, or None when `optional`)."""
    if not isinstance(path, str):
        return None
    try:
        value = attrgetter(path)(owner)
    except AttributeError:
        raise ValueError(f"{field}: {path!r} is not an attribute of {where}.") from None
    if module and not (value is None and optional) and not isinstance(value, nn.Module):
        raise ValueError(f"{field}: {path!r} of {where} is {type(value).__name__}, not a module.")
    return value


def renamed(arg: str) -> tuple[str, str]:
    """`"attention_mask=mamba_attention_mask"` -> (`attention_mask`, `mamba_attention_mask`)."""
    name, _, source = arg.partition("=")
    return name, source or name


def first(output):
    """A module's output tensor (attention modules return `(output, weights)`)."""
    return output[0] if isinstance(output, tuple) else output


def scaled(x: Tensor, layer: nn.Module, scale: Scale) -> Tensor:
    if scale is None:
        return x
    return x * (getattr(layer, scale) if isinstance(scale, str) else scale)


def argument_binder(forward: Callable) -> Callable[[tuple, dict], tuple[dict, dict]]:
    """Bind a call of the original layer `forward` (without `self`) to its named parameters (with
    their defaults) and its remaining `**kwargs`, as Python would; computed once per layer class.
    The first parameter, the residual stream, is bound as `hidden_states` whatever its name
    (RecurrentGemma's `activations`)."""
    parameters = list(inspect.signature(forward).parameters.values())[1:]
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = ["hidden_states", *names[1:]]
    alias = parameters[0].name
    named_only = {p.name for p in parameters if p.kind == p.KEYWORD_ONLY}
    defaults = {p.name: p.default for p in parameters if p.default is not p.empty and p.kind != p.VAR_KEYWORD}
    known = set(names) | named_only

    def bind(args: tuple, kwargs: dict) -> tuple[dict, dict]:
        named = dict(defaults)
        named.update(zip(names, args))
        rest = {}
        for key, value in kwargs.items():
            key = "hidden_states" if key == alias else key
            (named if key in known else rest)[key] = value
        return named, rest

    return bind


def attention(module: str = "self_attn", points: AddPoints | None = None, **fields) -> Mixer:
    """A softmax-attention `Mixer` (TransformerLens inner points by default)."""
    from ..mixers import attention as softmax

    return Mixer("attn", module, points or softmax.add_points, **fields)


def routed(modules: tuple[str, ...] = ("mlp",), **fields) -> Mlp:
    """An `Mlp` that is a mixture of experts in some layers: those get the router's inner points
    (`blocks.{i}.mlp.hook_router_*`, `hybrid_lens.mixers.router`)."""
    from ..mixers import router

    return Mlp(modules, points=router.add_points, **fields)


RECURRENT_ARGS = ("cache", "attention_mask")  # what a recurrent mixer receives besides **kwargs
STANDARD_ARGS = ("attention_mask", "position_ids", "cache", "use_cache", "position_embeddings")


def forward_parameters(layer: nn.Module) -> list[str]:
    """The named parameters of `layer`'s forward (without `self`; the first is the residual stream)."""
    parameters = list(inspect.signature(type(layer).forward).parameters.values())[1:]
    return [p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def layer_arguments(mixer: Mixer, layer: nn.Module) -> list[tuple[str, str]]:
    """`(mixer argument, layer argument)` pairs that `mixer` receives in `layer` (see `Mixer.args`)."""
    if mixer.args is None:
        return [(name, name) for name in STANDARD_ARGS if name in forward_parameters(layer)]
    return [renamed(arg) for arg in mixer.args]
