"""The nnsight view: several `tracer.invoke(...)` batched in one trace, and `.generate()` with `tracer.all()` /
`tracer.iter[...]`, each compared with the same computation through the hook API."""

from __future__ import annotations

import pytest
import torch

from .fixtures import build, random_tokens

GREEDY = dict(do_sample=False, verbose=False, stop_at_eos=False)


@pytest.fixture(scope="module", params=["qwen3_5", "falcon_h1"])
def model(request):
    return build(request.param, visible=True)[1]


def direction(model) -> torch.Tensor:
    return 3.0 * torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))


@torch.no_grad()
def test_invokes_of_equal_length_run_as_one_batch(model):
    tokens = random_tokens(3, 7, seed=2)
    view = model.nnsight()
    with view.trace() as tracer:
        with tracer.invoke(tokens[:1]):
            first = view.hook_logits.output.save()
        with tracer.invoke(tokens[1:]):
            resid = view.blocks[2].hook_resid_post.output.save()
            rest = view.hook_logits.output.save()
    logits, cache = model.run_with_cache(tokens, names_filter="blocks.2.hook_resid_post")
    assert torch.equal(torch.cat([first, rest]), logits)
    assert torch.equal(resid, cache["blocks.2.hook_resid_post"][1:])


@torch.no_grad()
def test_ragged_invokes_are_left_padded_together(model):
    """Texts of unequal length in two invokes: the batch the hook API runs with left padding, and each
    row's real positions are its own unbatched run."""
    texts = ["In the beginning God", "And God said unto Moses, Speak", "Let"]
    view = model.nnsight()
    with view.trace() as tracer:
        with tracer.invoke(texts[0]):
            first = view.hook_logits.output.save()
        with tracer.invoke(texts[1:]):
            rest = view.hook_logits.output.save()
    tokens, mask = model.to_tokens_and_mask(texts, padding_side="left")
    assert torch.equal(torch.cat([first, rest]), model(tokens, attention_mask=mask))
    for row, text in enumerate(texts):
        alone = model(text)[0]
        batched = torch.cat([first, rest])[row, mask[row].bool()]
        torch.testing.assert_close(batched, alone, atol=1e-4 * alone.abs().max().item(), rtol=1e-4)


@torch.no_grad()
def test_cross_invoke_patching_equals_a_hook_that_copies_between_rows(model):
    """Invoke 2 takes invoke 1's residual stream at its last token (each row's own last token, whatever the
    padding): a hook that copies row 0's last column into row 1's gives the same logits."""
    texts = ["And God said unto Moses, Speak", "In the beginning"]
    name, view = "blocks.1.hook_resid_post", model.nnsight()
    with view.trace() as tracer:
        barrier = tracer.barrier(2)
        with tracer.invoke(texts[0]):
            source = view.blocks[1].hook_resid_post.output[:, -1]
            barrier()
        with tracer.invoke(texts[1]):
            barrier()
            view.blocks[1].hook_resid_post.output[:, -1] = source
            patched = view.hook_logits.output.save()

    def copy_last(value, hook):
        value = value.clone()
        value[1, -1] = value[0, -1]
        return value

    tokens, mask = model.to_tokens_and_mask(texts, padding_side="left")
    expected = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=[(name, copy_last)])
    assert torch.equal(patched, expected[1:])
    assert not torch.equal(patched, model(tokens, attention_mask=mask)[1:])


@torch.no_grad()
def test_generate_with_tracer_all_equals_a_steering_hook(model):
    tokens, steer = random_tokens(2, 6, seed=4), direction(model)
    view = model.nnsight()
    with view.generate(max_new_tokens=6, **GREEDY) as tracer:
        with tracer.invoke(tokens):
            for _ in tracer.all():
                view.blocks[1].hook_resid_pre.output = view.blocks[1].hook_resid_pre.output + steer
        with tracer.invoke():
            traced = tracer.result.save()
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", lambda value, hook: value + steer)]):
        expected = model.generate(tokens, max_new_tokens=6, **GREEDY)
    assert torch.equal(traced, expected)
    assert not torch.equal(traced, model.generate(tokens, max_new_tokens=6, **GREEDY))


@torch.no_grad()
def test_generate_iter_reads_one_step_as_a_hook_does(model):
    tokens, seen = random_tokens(1, 6, seed=4), []
    view = model.nnsight()
    with view.generate(tokens, max_new_tokens=4, **GREEDY) as tracer:
        first = view.hook_logits.output.save()  # the first occurrence: the prompt pass
        for _ in tracer.iter[2]:
            step_two = view.blocks[2].hook_resid_post.output.save()
    with model.hooks(fwd_hooks=[("blocks.2.hook_resid_post", lambda value, hook: seen.append(value.clone()))]):
        model.generate(tokens, max_new_tokens=4, **GREEDY)
    assert torch.equal(step_two, seen[2]) and step_two.shape == (1, 1, model.cfg.d_model)
    torch.testing.assert_close(first[:, -1], model(tokens)[:, -1])  # the prompt pass unembeds its last token only


@torch.no_grad()
def test_generate_batches_ragged_invokes_each_with_its_own_edits(model):
    """Two invokes of unequal length generate as one left-padded batch; steering only the second equals a
    hook that steers only row 1 of that batch through the hook API."""
    prompts, steer = [random_tokens(1, 7, seed=4), random_tokens(1, 4, seed=6)], direction(model)
    view = model.nnsight()
    with view.generate(max_new_tokens=5, **GREEDY) as tracer:
        with tracer.invoke(prompts[0]):
            pass
        with tracer.invoke(prompts[1]):
            for _ in tracer.all():
                view.blocks[1].hook_resid_pre.output = view.blocks[1].hook_resid_pre.output + steer
        with tracer.invoke():
            traced = tracer.result.save()

    def steer_row_1(value, hook):
        value = value.clone()
        value[1] += steer
        return value

    tokens = torch.zeros(2, 7, dtype=torch.long)
    tokens[0], tokens[1, 3:] = prompts[0][0], prompts[1][0]
    mask = (torch.arange(7) >= torch.tensor([[0], [3]])).long()
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", steer_row_1)]):
        expected = model.generate(tokens, attention_mask=mask, max_new_tokens=5, **GREEDY)
    assert torch.equal(traced, expected)
    assert torch.equal(traced[0], model.generate(prompts[0], max_new_tokens=5, **GREEDY)[0])


def test_a_batched_invoke_takes_only_input_arguments(model):
    view = model.nnsight()
    with pytest.raises(ValueError, match="pass run arguments to trace"):
        with view.trace() as tracer:
            with tracer.invoke("In the beginning", return_type="loss"):
                view.hook_logits.output.save()
            with tracer.invoke("And God said"):
                view.hook_logits.output.save()
