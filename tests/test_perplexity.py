"""Perplexity against an independent computation with the plain transformers model."""

from __future__ import annotations

import math
import re

import pytest
import torch

from hybrid_lens.evals import perplexity, wikitext2, window_spans
from hybrid_lens.interventions import zero

from .fixtures import build


def reference_nll(reference, ids, context_length, stride, hooks=()):
    """HF forward with labels: each window scores the tokens no earlier window scored."""
    handles = [module.register_forward_hook(fn) for module, fn in hooks]
    total, count, scored_until = 0.0, 0, 1
    try:
        for begin in range(0, ids.numel() - 1, stride):
            end = min(begin + context_length, ids.numel())
            window = ids[begin:end][None]
            labels = window.clone()
            labels[:, : scored_until - begin] = -100
            n = (labels[:, 1:] != -100).sum().item()
            total += reference(window, labels=labels, use_cache=False).loss.item() * n
            count += n
            scored_until = end
            if end == ids.numel():
                break
    finally:
        for handle in handles:
            handle.remove()
    return total, count


def zero_output(_module, _args, output):
    return (torch.zeros_like(output[0]), *output[1:]) if isinstance(output, tuple) else torch.zeros_like(output)


@torch.no_grad()
@pytest.mark.parametrize("family,context_length,stride", [
    ("qwen3_5", 32, 12), ("falcon_h1", 32, 12), ("qwen2", 32, 12), ("qwen2", 32, 32), ("qwen2", 50, 25),
])
def test_perplexity_equals_hf_forward_with_labels(family, context_length, stride):
    reference, model = build(family)
    ids = torch.randint(3, 256, (203,), generator=torch.Generator().manual_seed(2))
    ours = perplexity(model, ids, context_length, stride, batch_size=3, progress=False)
    total, count = reference_nll(reference, ids, context_length, stride)
    assert ours.tokens == count == (202 if stride < context_length else 202 - 6)
    assert ours.nll_sum == pytest.approx(total, rel=1e-5)
    assert ours.ppl == pytest.approx(math.exp(total / count), rel=1e-5)


@torch.no_grad()
def test_perplexity_under_an_ablation_equals_hand_hooks():
    reference, model = build("falcon_h1", initializer_range=0.3)  # large enough that the SSM path matters
    ids = torch.randint(3, 256, (120,), generator=torch.Generator().manual_seed(3))
    ours = perplexity(model, ids, 40, 20, condition=zero("ssm", layers=[0, 2]), progress=False)
    hooks = [(reference.model.layers[i].mamba, zero_output) for i in (0, 2)]
    total, _ = reference_nll(reference, ids, 40, 20, hooks)
    assert ours.nll_sum == pytest.approx(total, rel=1e-5)
    clean = perplexity(model, ids, 40, 20, progress=False)
    assert abs(clean.nll_sum - ours.nll_sum) > 1e-4 * abs(total)  # 10x the agreement tolerance
    assert not any(point.fwd_hooks for point in model.hook_dict.values())


def test_window_spans_score_every_token_once_and_overflow_stays_in_log_space():
    for n, context, stride in [(100, 10, 3), (11, 10, 5), (2, 10, 5), (100, 10, 9)]:
        spans = window_spans(n, context, stride)
        scored = [t for begin, end, first in spans for t in range(first, end)]
        assert scored == list(range(1, n))
    disjoint = [t for begin, end, first in window_spans(100, 10, 10) for t in range(first, end)]
    assert disjoint == [t for t in range(1, 100) if t % 10]
    with pytest.raises(ValueError, match="stride"):
        window_spans(10, 4, 5)
    from hybrid_lens.evals.perplexity import PerplexityResult
    import pandas as pd

    huge = PerplexityResult(nll_sum=9000.0, tokens=10, n_bytes=40, n_words=8, windows=pd.DataFrame())
    assert huge.ppl == math.inf and huge.log_ppl == 900.0 and math.isfinite(huge.bits_per_byte)


def test_text_input_counts_bytes_and_words():
    _, model = build("qwen2")
    text = wikitext2()[:400]
    result = perplexity(model, text, 64, 32, progress=False)
    scored = text[1:]  # one character per token; the first is only context
    assert result.n_bytes == len(scored.encode()) and result.tokens == len(text) - 1
    assert result.n_words == len(re.split(r"\s+", scored))
    assert result.bits_per_byte == pytest.approx(result.nll_sum / (result.n_bytes * math.log(2)))
