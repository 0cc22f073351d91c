"""GPU paths (run only where CUDA is present): bf16 hooked runs use the installed kernels
(flash-linear-attention, causal-conv1d, mamba-ssm; the `gpu` extra) through the same
`transformers` functions, stay within bf16 tolerance of the float32 CPU model, and inner mixer
points (eager taps) agree with the hook-free run."""

from __future__ import annotations

import pytest
import torch

from .fixtures import FAMILIES, build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

INNER = {"qwen3_5": "blocks.0.linear_attn.hook_beta", "falcon_h1": "blocks.0.ssm.hook_B", "qwen2": "blocks.0.attn.hook_q"}


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_cuda_run_matches_float32_cpu_within_bf16_tolerance(family):
    reference, model = build(family)
    tokens = torch.randint(3, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    expected = reference(tokens).logits
    model.to("cuda", torch.bfloat16)
    plain = model(tokens.cuda())
    torch.testing.assert_close(plain.float().cpu(), expected, atol=0.15, rtol=0.05)
    _, cache = model.run_with_cache(tokens.cuda(), names_filter=[INNER[family], "blocks.1.hook_resid_pre"])
    assert cache[INNER[family]].is_cuda and cache["blocks.1.hook_resid_pre"].dtype == torch.bfloat16
    with model.hooks(fwd_hooks=[(INNER[family], lambda value, hook: value)]):
        tapped = model(tokens.cuda())
    torch.testing.assert_close(tapped, plain, atol=0.05, rtol=0.02)
