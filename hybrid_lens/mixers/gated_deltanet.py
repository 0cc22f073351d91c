"""Implicit attention of the gated delta rule (Gated DeltaNet, Qwen3.5 linear attention).

From a zero state, the gated delta rule `S_t = exp(g_t) S_{t-1} (I - beta_t k_t k_t^T) + beta_t k_t v_t^T`,
`o_t = S_t^T q_t` is linear in the values: `o = P v` per head, with the delta-rule correction folded in
through the UT transform of the chunked kernels,

    P = (tril(Q K^T) * Gamma) (I + strict_tril(diag(beta) K K^T * Gamma))^{-1} diag(beta),

where `Gamma[t, s] = exp(sum_{r=s+1..t} g_r)`, and q, k are L2-normalised with q scaled by
`d_k ** -0.5`, as `transformers`' `torch_chunk_gated_delta_rule(use_qk_l2norm_in_kernel=True)` does.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def _l2norm(x: Tensor) -> Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def decay_matrix(log_decay: Float[Tensor, "batch head pos"]) -> Float[Tensor, "batch head pos pos"]:
    """`Gamma[b, h, t, s] = exp(sum_{r=s+1..t} log_decay[b, h, r])` for `s <= t`, 0 above the diagonal.

    Examples:
        >>> decay_matrix(torch.log(torch.tensor([[[1.0, 0.5, 0.5]]])))
        tensor([[[[1.0000, 0.0000, 0.0000],
                  [0.5000, 1.0000, 0.0000],
                  [0.2500, 0.5000, 1.0000]]]])
    """
    cumulative = log_decay.float().cumsum(-1)
    diff = cumulative[..., :, None] - cumulative[..., None, :]
    causal = torch.ones(diff.shape[-2:], dtype=torch.bool, device=diff.device).tril()
    return torch.where(causal, diff, float("-inf")).exp()


def implicit_attention(
    query: Float[Tensor, "batch pos k_head d_k"], key: Float[Tensor, "batch pos k_head d_k"],
    log_decay: Float[Tensor, "batch pos v_head"], beta: Float[Tensor, "batch pos v_head"],
) -> Float[Tensor, "batch v_head pos pos"]:
    """The matrix `P` with `recurrence_out[b, t, h] = sum_s P[b, h, t, s] * v[b, s, h]` (float32).

    Args:
        query: Post-conv queries (`hook_q`), before the kernel's L2 norm.
        key: Post-conv keys (`hook_k`).
        log_decay: `g` (`hook_log_decay`), the log of the per-step state decay.
        beta: The delta-rule write strength (`hook_beta`).

    Examples:
        >>> q, k = torch.randn(1, 4, 1, 8), torch.randn(1, 4, 1, 8)
        >>> pattern = implicit_attention(q, k, -torch.rand(1, 4, 2), torch.rand(1, 4, 2))
        >>> pattern.shape                                    # [batch, v_head, query_pos, key_pos]
        torch.Size([1, 2, 4, 4])
        >>> bool(pattern.triu(1).eq(0).all())                # causal
        True
    """
    groups = beta.shape[-1] // key.shape[-2]
    q, k = (_l2norm(x.float().repeat_interleave(groups, dim=2).transpose(1, 2)) for x in (query, key))
    q = q * q.shape[-1] ** -0.5
    beta = beta.float().transpose(1, 2)
    gamma = decay_matrix(log_decay.transpose(1, 2))
    scores = (q @ k.transpose(-1, -2)) * gamma
    correction = (beta[..., :, None] * (k @ k.transpose(-1, -2)) * gamma).tril(-1)
    eye = torch.eye(correction.shape[-1], dtype=correction.dtype, device=correction.device)
    write = torch.linalg.solve_triangular(eye + correction, torch.diag_embed(beta), upper=False, unitriangular=True)
    return scores @ write


def apply_pattern(
    pattern: Float[Tensor, "batch v_head pos pos"], value: Float[Tensor, "batch pos v_head d_v"]
) -> Float[Tensor, "batch pos v_head d_v"]:
    """The recurrence output `P v` (float32) of a (possibly edited) implicit attention matrix.

    Examples:
        >>> apply_pattern(torch.eye(3).expand(1, 2, 3, 3), torch.ones(1, 3, 2, 4)).shape
        torch.Size([1, 3, 2, 4])
    """
    return torch.einsum("bhts,bshd->bthd", pattern.float(), value.float())
