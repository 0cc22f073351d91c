"""Implicit attention of Mamba-2 (SSD): the semiseparable matrix of the selective scan.

With `dt` after its bias, softplus and clamp, and `A = -exp(A_log)`, the scan output (before the
gate) is `y = M x + D x` per head, with

    M[b, h, t, s] = (C_t . B_s) * exp(sum_{r=s+1..t} dt_r A_h) * dt_s      (s <= t, else 0)

(Dao & Gu 2024, "Transformers are SSMs"; Ali, Zimerman & Wolf 2024, "The Hidden Attention of Mamba
Models").
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from .gated_deltanet import decay_matrix


def implicit_attention(
    dt: Float[Tensor, "batch pos head"],
    A: Float[Tensor, "head"],
    B: Float[Tensor, "batch pos group d_state"],
    C: Float[Tensor, "batch pos group d_state"],
) -> Float[Tensor, "batch head pos pos"]:
    """The semiseparable matrix `M` (float32) of one Mamba-2 scan.

    Args:
        dt: Step sizes after `dt_bias`, softplus and the `time_step_limit` clamp.
        A: The (negative) state decay rates, `-exp(A_log)`.
        B: Input projections (`hook_B`); groups are shared by `head // group` heads.
        C: Output projections (`hook_C`).

    Examples:
        >>> dt, A = torch.rand(1, 5, 4), -torch.rand(4)
        >>> M = implicit_attention(dt, A, torch.randn(1, 5, 1, 8), torch.randn(1, 5, 1, 8))
        >>> M.shape                                          # [batch, head, query_pos, key_pos]
        torch.Size([1, 4, 5, 5])
    """
    heads = dt.shape[-1]
    B, C = (x.float().repeat_interleave(heads // x.shape[2], dim=2).transpose(1, 2) for x in (B, C))
    dt = dt.float().transpose(1, 2)
    gamma = decay_matrix(dt * A.float()[:, None])
    return (C @ B.transpose(-1, -2)) * gamma * dt[..., None, :]


def apply_pattern(
    pattern: Float[Tensor, "batch head pos pos"], x: Float[Tensor, "batch pos head d_head"], D: Float[Tensor, "head"]
) -> Float[Tensor, "batch pos head d_head"]:
    """The scan output `M x + D x` (float32) of a (possibly edited) semiseparable matrix.

    Examples:
        >>> apply_pattern(torch.zeros(1, 2, 3, 3), torch.ones(1, 3, 2, 4), torch.tensor([1.0, 2.0]))[0, 0]
        tensor([[1., 1., 1., 1.],
                [2., 2., 2., 2.]])
    """
    return torch.einsum("bhts,bshp->bthp", pattern.float(), x.float()) + D.float()[:, None] * x.float()
