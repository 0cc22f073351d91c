"""Loglikelihood batches: sorted by length, cut by device, results in the order of the requests."""

from __future__ import annotations

import pytest
import torch

from hybrid_lens.evals import loglikelihoods
from hybrid_lens.evals.scoring import CPU_BATCH_TOKENS, encode_pair, length_batches

from .fixtures import build

REQUESTS = [
    ("And God said", " Let there be light"),
    ("In the beginning God created the heaven and the earth. And the earth was without form, and void;", " and"),
    ("And", " God"),
    ("And the Spirit of God moved upon the face of the waters.", " And God said"),
    ("Let there be", " light"),
    ("And God saw the light, that it was good: and God divided", " the light from the darkness"),
    ("And God said", " Let there be a firmament"),  # shares its input tokens with the first request
]


@torch.no_grad()
def unbatched(reference, tokenizer, requests) -> list[float]:
    """One unpadded forward of the plain `transformers` model per request, full logits."""
    out = []
    for context, continuation in requests:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        whole = context_ids + continuation_ids
        logits = reference(torch.tensor([whole[:-1]])).logits[0, -len(continuation_ids):]
        out.append(float(logits.log_softmax(-1).gather(-1, torch.tensor(continuation_ids)[:, None]).sum()))
    return out


@pytest.mark.parametrize("batch_size", [None, 1, 3, 16])
def test_sorted_batches_equal_unbatched_in_request_order(family, batch_size):
    reference, model = build(family)
    expected = unbatched(reference, model.tokenizer, REQUESTS)
    got = loglikelihoods(model, REQUESTS, batch_size=batch_size, progress=False)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=0, atol=1e-4)


def test_length_batches_sort_and_cut_by_device():
    lengths = [3, 700, 20, 500, 40, 200, 300, 90]
    for batch_size, device in [(None, "cpu"), (3, "cpu"), (None, "cuda")]:
        batches = length_batches(lengths, batch_size, device)
        assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
        flat = [lengths[i] for batch in batches for i in batch]
        assert flat == sorted(lengths, reverse=True)  # longest first: batches of similar length
    assert [len(b) for b in length_batches(lengths, 3)] == [3, 3, 2]
    assert [len(b) for b in length_batches(lengths, None, "cuda")] == [len(lengths)]
    cpu = length_batches(lengths, None, "cpu")
    assert all(len(b) == 1 or len(b) * lengths[b[0]] <= CPU_BATCH_TOKENS for b in cpu)
    assert [len(b) for b in cpu] == [1, 1, 1, 2, 3]  # 700, 500, 300 alone; 200+90; 40+20+3
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        length_batches(lengths, 0)
