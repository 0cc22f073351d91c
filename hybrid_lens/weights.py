"""Model-level weights as TransformerLens stacks them: `model.W_Q`, `model.W_out`, ..., and `accumulated_bias`.

Each block's own views are `model.blocks[i].attn.W_Q`, `.mlp.W_in`, `.ln1.w`, ... (views of the
`transformers` weights, `mixers.weights`); `model.W_Q` stacks them over the blocks, `[n_layers, ...]`,
as TransformerLens does (a copy). A hybrid's blocks differ, so a stack exists only where every block
has the part: on Qwen3.5, `model.W_Q` says which blocks have softmax attention instead, and
`model.blocks[3].attn.W_Q` is the view. The embedding and unembedding are `W_E` / `W_U`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["Weights"]

ATTENTION = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
MLP = ("W_in", "W_gate", "W_out", "b_in", "b_out")


class Weights:
    """`HookedHybrid`'s TransformerLens weight stacks and `accumulated_bias`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> model.W_Q.shape, model.W_out.shape               # [n_layers, head, d_model, d_head], [n_layers, d_mlp, d_model]
        (torch.Size([8, 4, 128, 32]), torch.Size([8, 640, 128]))
        >>> HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5").W_Q  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        AttributeError: W_Q stacks blocks[i].attn.W_Q over every block, but only blocks [3, 7] have softmax attention...
    """

    def _stacked(self, name: str) -> Tensor:
        part = "attn" if name in ATTENTION else "mlp"
        having = [i for i, block in enumerate(self.blocks)
                  if part in block._modules and (weights := getattr(block, part).weights) is not None and name in weights]
        if name == "W_gate" and not having:
            return None  # TransformerLens: no gated MLP
        if len(having) != len(self.blocks):
            what = "softmax attention" if part == "attn" else f"an MLP with {name}"
            raise AttributeError(f"{name} stacks blocks[i].{part}.{name} over every block, but only blocks {having} "
                                 f"have {what}; read model.blocks[i].{part}.{name} (a view of the transformers "
                                 f"weight), or torch.stack over those blocks.")
        return torch.stack([getattr(getattr(block, part), name) for block in self.blocks])

    def __getattr__(self, name: str):
        if name in ATTENTION or name in MLP:  # a stack that does not exist: its own error, not nn.Module's
            return self._stacked(name)
        return super().__getattr__(name)

    @property
    def W_Q(self) -> Float[Tensor, "n_layers head d_model d_head"]:
        """The query weights of every block, stacked (a copy)."""
        return self._stacked("W_Q")

    @property
    def W_K(self) -> Float[Tensor, "n_layers head d_model d_head"]:
        """The key weights of every block, repeated over query heads (grouped-query attention) and stacked."""
        return self._stacked("W_K")

    @property
    def W_V(self) -> Float[Tensor, "n_layers head d_model d_head"]:
        """The value weights of every block, repeated over query heads and stacked."""
        return self._stacked("W_V")

    @property
    def W_O(self) -> Float[Tensor, "n_layers head d_head d_model"]:
        """The attention output weights of every block, stacked."""
        return self._stacked("W_O")

    @property
    def b_Q(self) -> Float[Tensor, "n_layers head d_head"]:
        """The query biases of every block (zeros where none), stacked."""
        return self._stacked("b_Q")

    @property
    def b_K(self) -> Float[Tensor, "n_layers head d_head"]:
        """The key biases of every block (repeated over query heads), stacked."""
        return self._stacked("b_K")

    @property
    def b_V(self) -> Float[Tensor, "n_layers head d_head"]:
        """The value biases of every block (repeated over query heads), stacked."""
        return self._stacked("b_V")

    @property
    def b_O(self) -> Float[Tensor, "n_layers d_model"]:
        """The attention output biases of every block, stacked."""
        return self._stacked("b_O")

    @property
    def W_in(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        """The MLP input weights of every block, stacked."""
        return self._stacked("W_in")

    @property
    def W_gate(self) -> Float[Tensor, "n_layers d_model d_mlp"] | None:
        """The MLP gate weights of every block, stacked (None for non-gated MLPs, as TransformerLens)."""
        return self._stacked("W_gate")

    @property
    def W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        """The MLP output weights of every block, stacked."""
        return self._stacked("W_out")

    @property
    def b_in(self) -> Float[Tensor, "n_layers d_mlp"]:
        """The MLP input biases of every block, stacked."""
        return self._stacked("b_in")

    @property
    def b_out(self) -> Float[Tensor, "n_layers d_model"]:
        """The MLP output biases of every block, stacked."""
        return self._stacked("b_out")

    def accumulated_bias(self, layer: int, mlp_input: bool = False,
                         include_mlp_biases: bool = True) -> Float[Tensor, " d_model"]:
        """The constant terms of the residual stream entering block `layer` (`n_layers`: the final norm):
        every residual term's output bias that per-head and per-neuron results leave out, times the
        block's multiplier: `b_O` of each mixer whose heads sum to its output (`hook_result`), `b_out` of
        each MLP whose neurons do (with `include_mlp_biases`). With `mlp_input`, also the mixers of block
        `layer` itself. The other components' biases are in their outputs.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.accumulated_bias(2).shape
            torch.Size([128])
        """
        total = torch.zeros(self.cfg.d_model, dtype=self.cfg.dtype, device=self.device)
        for index in range(layer + 1 if mlp_input else layer):
            block = self.blocks[index]
            for kind in block.layer.residual_terms:
                hooks = getattr(block, kind)
                if kind != "mlp" and hooks.heads is not None and hooks.heads.exact:
                    factor = hooks.heads.factor()
                    total = total + hooks.heads.b_O * (1.0 if factor is None else factor)
                elif kind == "mlp" and include_mlp_biases and index < layer and hooks.neurons is not None \
                        and hooks.neurons.exact:
                    total = total + hooks.neurons.b_out
        return total
