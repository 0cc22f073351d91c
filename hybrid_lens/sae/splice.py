"""The module that stands where a hook point was and returns an SAE's reconstruction (SAE-Lens's `_SAEWrapper`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint as TLHookPoint

from ..forward_state import current_state
from ..hook_points import HookPoint

__all__ = ["SAESplice", "special_token_ids"]

# the tokenizer attributes naming structural special tokens (those `exclude_special_tokens=True` bypasses)
SPECIAL_TOKEN_ATTRIBUTES = ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id")


def special_token_ids(tokenizer) -> list[int]:
    """The ids of the tokenizer's structural special tokens: BOS, EOS, PAD, SEP and decoder-start, where
    it has them (not its additional special tokens, such as chat-template markers), as SAE-Lens picks them.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> special_token_ids(model.tokenizer)              # <pad>, <s>, </s>
        [0, 1, 2]
    """
    found = {getattr(tokenizer, attribute, None) for attribute in SPECIAL_TOKEN_ATTRIBUTES}
    return sorted(int(token) for token in found if token is not None)


class SAESplice(nn.Module):
    """Stands in the module tree where a hook point was and returns the SAE's reconstruction.

    Like SAE-Lens's `_SAEWrapper` (whose attributes it has: `sae`, `use_error_term`,
    `exclude_special_tokens`): the SAE is held outside the module tree (so hook names read
    `{hook_name}.hook_sae_acts_post`, not `{hook_name}.sae.hook_sae_acts_post`), its hook points are
    registered on the splice, and the splice owns `hook_sae_error` and `hook_sae_output`. A
    transcoder's splice stands at its output point and encodes what its input point carried in the
    same pass (`capture_input`).

    Args:
        sae: An SAE-Lens `SAE` (its `encode` / `decode` are called) or any module mapping an
            activation `Float[Tensor, "batch pos ..."]` to one of the same shape (it is called).
        hook_point: The hook point it replaces (put back by `reset_saes`).
        use_error_term: Add the SAE's error so the output equals the activation.
        exclude_special_tokens: Pass the activation through unchanged at the positions of these
            token ids (True: the tokenizer's `special_token_ids`; False: none).
        hook_name: The point the SAE reads (for a transcoder, its input point; else where it stands).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> splice = model.add_sae(torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
        >>> type(model.blocks[3].hook_ssm_out).__name__, splice.use_error_term
        ('SAESplice', False)
        >>> model.reset_saes()
    """

    def __init__(self, sae: nn.Module, hook_point: HookPoint, use_error_term: bool = False,
                 exclude_special_tokens: bool | Sequence[int] = False, hook_name: str | None = None):
        super().__init__()
        self.__dict__["sae"] = sae
        self.__dict__["hook_point"] = hook_point
        for name, point in sae_hook_points(sae).items():
            if name not in ("hook_sae_error", "hook_sae_output"):
                self.add_module(name, point)
        self.hook_sae_error = HookPoint()
        self.hook_sae_output = HookPoint()
        self.use_error_term = use_error_term
        self.exclude_special_tokens = exclude_special_tokens
        self.hook_name = hook_name or hook_point.name
        self._captured: tuple[object, Tensor] | None = None  # (the pass it was captured in, the value)
        self.input_handle = None  # a transcoder's: the torch hook capturing its input point's value

    @property
    def is_transcoder(self) -> bool:
        """Whether the SAE reads another point than the one it stands at (its input is captured there)."""
        return self.hook_name != self.hook_point.name

    def capture_input(self, x: Float[Tensor, "batch pos ..."]) -> None:
        """Keep a transcoder's input (the value of its input point) for its output point, later in the pass.

        Examples:
            >>> splice = SAESplice(torch.nn.Identity(), HookPoint(), hook_name="blocks.0.hook_resid_mid")
            >>> splice.capture_input(torch.ones(1, 2, 4))
            >>> splice(torch.zeros(1, 2, 4)).sum().item()          # the captured input, reconstructed
            8.0
        """
        self._captured = (current_state(), x)

    def reconstruct(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """The SAE's reconstruction of `x` (`decode(encode(x))` for SAE-Lens SAEs), in `x`'s dtype.

        Examples:
            >>> SAESplice(torch.nn.Identity(), HookPoint()).reconstruct(torch.ones(2)).tolist()
            [1.0, 1.0]
        """
        out = reconstruction(self.sae, x)
        if not isinstance(out, Tensor):
            raise TypeError(f"The SAE at {self.hook_point.name} returned {type(out).__name__}; an SAE spliced into the "
                            "model must return one tensor (wrap a module that returns more so it returns its output).")
        return out.to(x.dtype)

    def forward(self, x: Float[Tensor, "batch pos ..."]) -> Float[Tensor, "batch pos ..."]:
        """The reconstruction (plus the error term when `use_error_term`; the activation itself at
        excluded tokens), through `hook_sae_output`.

        Examples:
            >>> splice = SAESplice(torch.nn.Linear(4, 4), HookPoint(), use_error_term=True)
            >>> x = torch.randn(1, 3, 4)
            >>> torch.allclose(splice(x), x, atol=1e-6)
            True
        """
        sae_input = x
        if self.is_transcoder:
            captured, self._captured = self._captured, None
            if captured is None or captured[0] is not current_state():
                raise RuntimeError(f"The transcoder at {self.hook_point.name} read nothing at its input point "
                                   f"{self.hook_name} in this pass: that point must run before {self.hook_point.name} "
                                   "(a pass entering at a later block skips it).")
            sae_input = captured[1]
        out = self.reconstruct(sae_input).to(x.dtype)
        if out.shape != x.shape:
            raise ValueError(f"The SAE at {self.hook_point.name} returned shape {tuple(out.shape)} for an activation "
                             f"of shape {tuple(x.shape)}; it must return the activation's shape.")
        excluded = self.excluded_positions(x)
        if self.use_error_term:
            with torch.no_grad(), hooks_disabled(self.sae):
                error = x - self.reconstruct(sae_input).to(x.dtype)
            if excluded is not None:
                error = torch.where(excluded, torch.zeros_like(error), error)
            out = out + self.hook_sae_error(error)
        if excluded is not None:
            out = torch.where(excluded, x, out)
        return self.hook_sae_output(out)

    def excluded_positions(self, x: Float[Tensor, "batch pos ..."]) -> Bool[Tensor, "batch pos ..."] | None:
        """Where the activation passes unchanged: the positions of the excluded token ids in the
        running pass, broadcastable to `x`; None when nothing is excluded (or outside a pass).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> bos = model.tokenizer.bos_token_id
            >>> splice = model.add_sae(torch.nn.Identity(), False, [bos], hook_name="blocks.0.hook_ssm_out")
            >>> masks = []
            >>> _ = model.run_with_hooks(torch.tensor([[bos, 5, 6]]), fwd_hooks=[
            ...     ("blocks.0.hook_ssm_out.hook_sae_output", lambda x, hook: masks.append(splice.excluded_positions(x)))])
            >>> masks[0].flatten().tolist()
            [True, False, False]
            >>> model.reset_saes()
        """
        if self.exclude_special_tokens is False:
            return None
        state = current_state()
        if state is None or not state.running or state.tokens is None:
            return None
        tokens: Int[Tensor, "batch pos"] = state.tokens
        if tokens.shape != x.shape[:2]:
            raise ValueError(f"exclude_special_tokens needs an activation [batch, pos, ...] aligned with the pass's "
                             f"tokens {tuple(tokens.shape)}; {self.hook_point.name} gave {tuple(x.shape)}.")
        ids = (special_token_ids(state.model.tokenizer) if self.exclude_special_tokens is True
               else list(self.exclude_special_tokens))
        excluded = torch.isin(tokens, torch.tensor(ids, dtype=tokens.dtype, device=tokens.device))
        return excluded.view(*excluded.shape, *[1] * (x.ndim - 2)).to(x.device)


def reconstruction(sae: nn.Module, x: Float[Tensor, "... d_in"]):
    """What `sae` returns for `x`: `decode(encode(x))` for SAE-Lens SAEs, `sae(x)` for other modules.

    Examples:
        >>> reconstruction(torch.nn.Identity(), torch.ones(2)).tolist()
        [1.0, 1.0]
    """
    return sae.decode(sae.encode(x)) if hasattr(sae, "encode") and hasattr(sae, "decode") else sae(x)


def sae_hook_points(sae: nn.Module) -> dict[str, TLHookPoint]:
    """The SAE's own hook points by attribute name (`hook_sae_acts_post`, ...; none for plain modules).

    Examples:
        >>> sae_hook_points(torch.nn.Linear(2, 2))
        {}
    """
    return {name: module for name, module in sae.named_children() if isinstance(module, TLHookPoint)}


@contextmanager
def hooks_disabled(sae: nn.Module) -> Iterator[None]:
    """Swap the SAE's hook points for identities (as SAE-Lens's `_disable_hooks`), e.g. to compute
    its error term from the unedited features.

    Examples:
        >>> with hooks_disabled(torch.nn.Identity()):
        ...     pass
    """
    points = sae_hook_points(sae)
    try:
        for name in points:
            setattr(sae, name, nn.Identity())
        yield
    finally:
        for name, point in points.items():
            setattr(sae, name, point)
