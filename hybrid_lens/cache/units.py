"""Heads and neurons of a cached run: TransformerLens's per-head and per-neuron stacks, on every mixer.

A unit is a head of a mixer whose output projection reads per-head values (softmax attention, Gated
DeltaNet, KDA, lightning attention, Mamba-2: `blocks.{i}.{kind}.hook_result`, `mixers.heads`) or a
neuron of a dense MLP (`mixers.mlp`). Their results are contributions to the residual stream (the
block's output multiplier included), so heads + neurons + the rest sum to the stream.

Hybrid semantics, where TransformerLens has none:
- stacks cover every mixer kind with heads, in layer order and, within a block, in execution order;
  a head of another kind than softmax attention is labelled with its kind (`L0H2_linear_attn`,
  `L3H1_ssm`: `vocabulary.UnitLabel`); `kinds=` restricts a stack to some kinds;
- only units whose results are additive shares of the stream are stacked: not the heads of a
  mixer normalised after its projection (OLMo-Hybrid's attention), nor the units of a component that
  feeds a mixer instead of the residual (Zamba2's shared block), nor MoE experts (no neuron points);
- `get_full_resid_decomposition` keeps such a component (and any mixer without heads: Mamba-1,
  RG-LRU, short convolutions) as one row, its block output, labelled `{layer}_{kind}_out`.

`apply_ln=True` applies the cached norm scale and the norm's gain (`hook_normalized` includes the
gain, and the weights are not folded), so `stack @ W_U` are logit attributions. The private
`_apply_ln` is this mixin's own; `apply_ln_to_stack` is the public one.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..vocabulary import UnitLabel, hook_name
from .slicing import as_slice


def _projection(project: Tensor | None) -> tuple[Tensor | None, bool]:
    """`project_output_onto` as `[d_model, n_outs]`, and whether it was one direction (to squeeze)."""
    if project is None:
        return None, False
    return (project[:, None], True) if project.ndim == 1 else (project, False)


class HeadsAndNeurons:
    """`ActivationCache` methods about heads and neurons (see the module docstring).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> model.set_use_attn_result(True)                  # hook_result matches name predicates (TransformerLens)
        >>> _, cache = model.run_with_cache("In the beginning", names_filter=lambda name: name.endswith(
        ...     ("hook_result", "hook_post", "resid_post", "hook_embed", "_out")))
        >>> heads, labels = cache.stack_head_results(2, return_labels=True)
        >>> heads.shape, labels[:2], labels[4:6]            # block 0: 4 SSM heads, then 4 attention heads
        (torch.Size([16, 1, 4, 128]), ['L0H0_ssm', 'L0H1_ssm'], ['L0H0', 'L0H1'])
    """

    def _model(self):
        return self.needs_model("head and neuron results")

    def _stop(self, layer: int | None) -> int:
        return self.n_layers if layer is None or layer == -1 else layer

    def _units(self, stop: int, kinds=None, mlp: bool = False):
        """`(layer, kind, hooks)` of every mixer with additive heads (or, with `mlp`, every MLP with additive
        neurons) among the residual terms of blocks `< stop`."""
        kinds = [kinds] if isinstance(kinds, str) else kinds
        for layer in self.layout[:stop]:
            for kind in layer.residual_terms:
                if (kind == "mlp") != mlp or (kinds is not None and kind not in kinds):
                    continue
                hooks = getattr(self._model().blocks[layer.index], kind)
                unit = hooks.neurons if mlp else hooks.heads
                if unit is not None and unit.exact:
                    yield layer.index, kind, hooks

    def _result(self, layer: int, kind: str, heads) -> Float[Tensor, "... pos head d_model"]:
        name = hook_name(layer, kind, "hook_result")
        if name not in self.cache_dict:
            source = hook_name(layer, kind, heads.source)
            if source not in self.cache_dict:
                raise KeyError(f"{name} is not cached, nor {source} to compute it from: pass names_filter with one "
                               "of them to run_with_cache.")
            self.cache_dict[name] = heads.results(self.cache_dict[source])
        return self.cache_dict[name]

    def compute_head_results(self) -> None:
        """Compute and cache `blocks.{i}.{kind}.hook_result` of every mixer with heads whose per-head input
        (`hook_z`, Mamba-2's `hook_y`) is cached and whose results are not; results already cached are
        kept (TransformerLens's `compute_head_results`, on every mixer kind).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> _, cache = model.run_with_cache("In the beginning", names_filter=lambda name: name.endswith("hook_z"))
            >>> cache.compute_head_results()
            >>> cache["blocks.3.attn.hook_result"].shape, cache["blocks.0.linear_attn.hook_result"].shape
            (torch.Size([1, 3, 4, 128]), torch.Size([1, 3, 4, 128]))
        """
        for block in self._model().blocks:
            for kind in block.layer.mixers:
                heads = getattr(block, kind).heads
                if heads is not None and hook_name(block.index, kind, heads.source) in self.cache_dict:
                    self._result(block.index, kind, heads)

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice=None, apply_ln: bool = False, kinds: str | list[str] | None = None):
        """Every head's result in the blocks before `layer` (-1 / None: all), TransformerLens's
        `stack_head_results` on every mixer kind with heads (`kinds` restricts them).

        Args:
            layer: Heads of blocks `< layer` are stacked.
            return_labels: Also return `UnitLabel`s (`L0H3`, `L0H3_linear_attn`).
            incl_remainder: Add `resid_post` of block `layer - 1` (counting from the end, as TransformerLens)
                minus the heads' sum, labelled `remainder`.
            pos_slice: Positions to keep (TransformerLens's `Slice` input).
            apply_ln: Apply the norm reading block `layer`'s input (cached scale and gain).
            kinds: A mixer kind or kinds to stack (default: every kind with heads).

        Returns:
            `Float[Tensor, "head batch pos d_model"]` (results of missing heads are computed from their
            cached `hook_z` / `hook_y`), and the labels with `return_labels`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> _, cache = model.run_with_cache("In the beginning", names_filter=lambda name: name.endswith(
            ...     ("hook_z", "resid_post")))
            >>> stack, labels = cache.stack_head_results(4, return_labels=True, incl_remainder=True, pos_slice=-1)
            >>> stack.shape, labels[:2], labels[12:]             # 3 linear-attention blocks, then block 3
            (torch.Size([17, 1, 128]), ['L0H0_linear_attn', 'L0H1_linear_attn'], ['L3H0', 'L3H1', 'L3H2', 'L3H3', 'remainder'])
        """
        stop, pos = self._stop(layer), as_slice(pos_slice)
        parts, labels = [], []
        for index, kind, hooks in self._units(stop, kinds):
            parts.append(pos.apply(self._result(index, kind, hooks.heads), dim=-3))
            labels += [UnitLabel(index, kind, head) for head in range(hooks.heads.n_heads)]
        stack = torch.cat(parts, dim=-2).movedim(-2, 0) if parts else self._empty(pos)
        if incl_remainder:
            stack, labels = self._with_remainder(stack, stop, pos), [*labels, "remainder"]
        if apply_ln:
            stack = self._apply_ln(stack, stop, False, pos)
        return (stack, labels) if return_labels else stack

    def get_neuron_results(self, layer: int, neuron_slice=None, pos_slice=None,
                           project_output_onto: Tensor | None = None) -> Tensor:
        """Each neuron's contribution to the residual stream in block `layer`'s dense MLP:
        `hook_post[..., n] * W_out[n]` (times the block's multiplier), TransformerLens's `get_neuron_results`.

        Args:
            layer: The block.
            neuron_slice: Neurons to keep (a `Slice` input).
            pos_slice: Positions to keep.
            project_output_onto: A direction `[d_model]` or directions `[d_model, n]` to project each
                result on (contracted with `W_out` first: no `[..., d_mlp, d_model]` tensor is made).

        Returns:
            `Float[Tensor, "batch pos d_mlp d_model"]` (last axis `n`, or none, with a projection).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> _, cache = model.run_with_cache("In the beginning", names_filter="blocks.1.mlp.hook_post")
            >>> cache.get_neuron_results(1, neuron_slice=[0, 3], pos_slice=-1).shape
            torch.Size([1, 2, 128])
        """
        neurons = self._neurons(layer)
        post, rows = self._neuron_inputs(layer, neurons, as_slice(neuron_slice), as_slice(pos_slice))
        if project_output_onto is None:
            return neurons.results(post, rows)
        factor = neurons.factor()
        projected = rows @ project_output_onto.to(rows.dtype)
        projected = projected if factor is None else projected * factor
        return post * projected if projected.ndim == 1 else post[..., None] * projected

    def stack_neuron_results(self, layer: int, pos_slice=None, neuron_slice=None, return_labels: bool = False,
                             incl_remainder: bool = False, apply_ln: bool = False,
                             project_output_onto: Tensor | None = None):
        """Every neuron's result in the dense MLPs of blocks before `layer` (-1 / None: all),
        TransformerLens's `stack_neuron_results` (blocks whose MLP is a mixture of experts, or none, add
        no neurons).

        Args:
            layer: Neurons of blocks `< layer` are stacked.
            pos_slice: Positions to keep.
            neuron_slice: Neurons of each MLP to keep.
            return_labels: Also return `UnitLabel`s (`L0N5`).
            incl_remainder: Add `resid_post` of block `layer - 1` minus the neurons' sum (`remainder`).
            apply_ln: Apply the norm reading block `layer`'s input (cached scale and gain).
            project_output_onto: `[d_model]` or `[d_model, n]` directions, folded in before the neurons
                are expanded (`W_out @ directions` first, as TransformerLens does), so the values differ from
                `stack_neuron_results(...) @ directions` by float rounding: on SmolLM2-135M up to 4e-4 at values
                near 300, as TransformerLens 3.9's own.

        Returns:
            `Float[Tensor, "neuron batch pos d_model"]` (last axis `n`, or none, with a projection), and
            the labels with `return_labels`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> _, cache = model.run_with_cache("In the beginning", names_filter=lambda n: n.endswith("hook_post"))
            >>> stack, labels = cache.stack_neuron_results(2, pos_slice=-1, return_labels=True)
            >>> stack.shape, labels[640]
            (torch.Size([1280, 1, 128]), 'L1N0')
        """
        stop, pos, neurons_kept = self._stop(layer), as_slice(pos_slice), as_slice(neuron_slice)
        project, squeeze = _projection(project_output_onto)
        fused = apply_ln and project is not None
        parts, labels = [], []
        for index, _, hooks in self._units(stop, mlp=True):
            indices = neurons_kept.apply(torch.arange(hooks.neurons.down.in_features), dim=0)
            labels += [UnitLabel(index, "mlp", int(n)) for n in indices.reshape(-1)]
            parts.append(self._neuron_rows(index, hooks.neurons, neurons_kept, pos, project,
                                           (stop, False) if fused else None))
        stack = torch.cat(parts, dim=-2).movedim(-2, 0) if parts else self._empty(pos, project)
        if incl_remainder:
            stack = self._with_remainder(stack, stop, pos, project, (stop, False) if fused else None)
            labels = [*labels, "remainder"]
        if apply_ln and not fused:
            stack = self._apply_ln(stack, stop, False, pos)
        stack = stack.squeeze(-1) if squeeze else stack
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False, pos_slice=None,
                                     return_labels: bool = False, project_output_onto: Tensor | None = None):
        """The residual stream entering block `layer` (-1 / None: the final norm) as a sum of heads,
        neurons, the other components, the embedding and the biases, TransformerLens's
        `get_full_resid_decomposition` on a hybrid.

        Rows, in order: each mixer of the blocks before `layer` (and of block `layer` with `mlp_input`)
        as its heads (`L3H1`, `L0H2_linear_attn`) or, without additive heads, its block output
        (`3_ssm_out`); each MLP as its neurons (`L0N5`, with `expand_neurons` and a dense MLP) or its
        output (`0_mlp_out`); `embed`; `bias` (`model.accumulated_bias`: the biases the units leave out).
        A family whose blocks renormalise the stream (MiniMax) has no such sum: `ValueError`.

        Args:
            layer: The block whose input is decomposed.
            mlp_input: Decompose the input of block `layer`'s MLP instead (its mixers included).
            expand_neurons: Split dense MLPs into neurons.
            apply_ln: Apply the norm reading that input (cached scale and gain).
            pos_slice: Positions to keep.
            return_labels: Also return the labels.
            project_output_onto: `[d_model]` or `[d_model, n]` directions to project every row on.

        Returns:
            `Float[Tensor, "component batch pos d_model"]`, summing to the stream (to float rounding), and
            the labels with `return_labels`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.set_use_attn_result(True)
            >>> _, cache = model.run_with_cache("In the beginning", names_filter=lambda name: name.endswith(
            ...     ("hook_result", "hook_post", "hook_embed", "hook_resid_pre")))
            >>> parts, labels = cache.get_full_resid_decomposition(2, return_labels=True)
            >>> parts.shape, labels[-3:]
            (torch.Size([530, 1, 4, 128]), ['L1N255', 'embed', 'bias'])
            >>> torch.allclose(parts.sum(0), cache["blocks.2.hook_resid_pre"], atol=1e-4)
            True
        """
        if not self.layout.additive:
            raise ValueError("This model's blocks renormalise the residual stream (each skip path is alpha * "
                             "norm(stream)), so the stream is not a sum of its components.")
        stop, pos = self._stop(layer), as_slice(pos_slice)
        project, squeeze = _projection(project_output_onto)
        ln = (stop, mlp_input) if apply_ln else None
        groups, labels = [], []
        for block in self.layout[: stop + 1 if mlp_input else stop]:
            for kind in (kind for kind in block.residual_terms if kind != "mlp"):
                heads = getattr(self._model().blocks[block.index], kind).heads
                if heads is not None and heads.exact:
                    groups.append(pos.apply(self._result(block.index, kind, heads), dim=-3).movedim(-2, 0))
                    labels += [UnitLabel(block.index, kind, head) for head in range(heads.n_heads)]
                else:
                    groups.append(pos.apply(self[hook_name(block.index, kind)], dim=-2)[None])
                    labels.append(f"{block.index}_{kind}_out")
        groups = [self._finish(torch.cat(groups), ln, pos, project)] if groups else []
        for block in self.layout[:stop]:
            if "mlp" not in block.residual_terms:
                continue
            neurons = self._model().blocks[block.index].mlp.neurons
            if expand_neurons and neurons is not None and neurons.exact:
                rows = self._neuron_rows(block.index, neurons, as_slice(None), pos, project, ln)
                groups.append(rows.movedim(-2, 0))
                labels += [UnitLabel(block.index, "mlp", n) for n in range(neurons.down.in_features)]
            else:
                groups.append(self._finish(pos.apply(self[hook_name(block.index, "mlp")], dim=-2)[None], ln, pos,
                                           project))
                labels.append(f"{block.index}_mlp_out")
        embed = pos.apply(self["hook_embed"], dim=-2)
        bias = self._model().accumulated_bias(stop, mlp_input, include_mlp_biases=expand_neurons)
        groups.append(self._finish(torch.stack([embed, bias.to(embed.dtype).expand_as(embed)]), ln, pos, project))
        stack = torch.cat(groups)
        stack = stack.squeeze(-1) if squeeze else stack
        labels += ["embed", "bias"]
        return (stack, labels) if return_labels else stack

    # --- helpers -------------------------------------------------------------------------------------

    def _neurons(self, layer: int):
        block = self._model().blocks[layer]
        neurons = block.mlp.neurons if block.layer.has_mlp else None
        if neurons is None:
            raise ValueError(f"Block {layer} ({block.layer.type} block) has no dense MLP with neuron points "
                             f"({'a mixture of experts' if block.layer.has_mlp else 'no MLP'}); blocks with one: "
                             f"{[b.index for b in self._model().blocks if b.layer.has_mlp and b.mlp.neurons]}.")
        return neurons

    def _neuron_inputs(self, layer: int, neurons, kept, pos) -> tuple[Tensor, Tensor]:
        """Block `layer`'s cached `hook_post` and `W_out`, with positions and neurons kept."""
        post = kept.apply(pos.apply(self[hook_name(layer, "mlp", "hook_post")], dim=-2), dim=-1)
        return post, kept.apply(neurons.W_out, dim=0)

    def _neuron_rows(self, layer: int, neurons, kept, pos, project: Tensor | None, ln) -> Tensor:
        """Block `layer`'s neuron results `[..., neuron, d_model or n]`: projected (before expanding) and,
        with `ln = (layer, mlp_input)`, normed by that norm's cached scale and gain (folded into the
        projection when there is one)."""
        if project is None:
            results = self.get_neuron_results(layer, kept, pos)
            return results if ln is None else self._apply_ln(results.movedim(-2, 0), *ln, pos).movedim(0, -2)
        post, rows = self._neuron_inputs(layer, neurons, kept, pos)
        if ln is not None:
            scale, gain, centered = self._ln_parts(*ln, pos)
            rows = (rows - rows.mean(-1, keepdim=True) if centered else rows) * gain.to(rows.dtype)
            post = post / scale
        factor = neurons.factor()
        projected = rows @ project.to(rows.dtype)
        return post[..., None] * (projected if factor is None else projected * factor)

    def _empty(self, pos, project: Tensor | None = None) -> Tensor:
        """An empty stack shaped like the sliced embedding (or its projection)."""
        embed = pos.apply(self["hook_embed"], dim=-2)
        shape = (*embed.shape[:-1], embed.shape[-1] if project is None else project.shape[-1])
        return torch.zeros(0, *shape, dtype=embed.dtype, device=embed.device)

    def _with_remainder(self, stack: Tensor, stop: int, pos, project: Tensor | None = None, ln=None) -> Tensor:
        """`stack` with the remainder row: `resid_post` of block `stop - 1` (counted from the end when
        negative, as TransformerLens), normed with `ln` and projected as the stack is, minus the stack's sum."""
        resid = pos.apply(self[hook_name((stop - 1) % self.n_layers, "resid_post")], dim=-2)
        whole = self._finish(resid[None], ln, pos, project)[0]
        return torch.cat([stack, (whole - stack.sum(0).to(whole.dtype))[None]])

    def _finish(self, stack: Tensor, ln, pos, project: Tensor | None) -> Tensor:
        """`stack` normed with `ln = (layer, mlp_input)` (None: not) and projected (None: not)."""
        stack = stack if ln is None else self._apply_ln(stack, *ln, pos)
        return stack if project is None else stack @ project.to(stack.dtype)

    def _ln_parts(self, layer: int, mlp_input: bool, pos) -> tuple[Tensor, Tensor, bool]:
        """The cached scale (`[..., pos, 1]`, positions kept), gain and centring of the norm that reads
        block `layer`'s input (`ln1`, `ln2` with `mlp_input`; `ln_final` at `n_layers`)."""
        model = self._model()
        if layer >= self.n_layers:
            name, norm = "ln_final", model.ln_final
        else:
            block, part = model.blocks[layer], "ln2" if mlp_input else "ln1"
            if part not in block._modules:
                raise ValueError(f"Block {layer} ({block.layer.type} block) has no {part} (its input is not normed "
                                 "before it is read); use apply_ln=False.")
            name, norm = f"blocks.{layer}.{part}", getattr(block, part)
        scale = pos.apply(self[f"{name}.hook_scale"], dim=-2)
        return scale, norm.w, norm.form.centered

    def _apply_ln(self, stack: Tensor, layer: int, mlp_input: bool, pos) -> Tensor:
        """`stack` as the norm reading block `layer`'s input sees it: centred (a LayerNorm), divided by the
        cached scale, times the gain."""
        scale, gain, centered = self._ln_parts(layer, mlp_input, pos)
        if gain.shape[-1] != stack.shape[-1]:
            raise ValueError(f"The norm reading block {layer}'s input has width {gain.shape[-1]}, not "
                             f"d_model {stack.shape[-1]} (Zamba2's shared block norms [resid, embeddings]).")
        stack = stack - stack.mean(-1, keepdim=True) if centered else stack
        return stack / scale.to(stack.dtype) * gain.to(stack.dtype)
