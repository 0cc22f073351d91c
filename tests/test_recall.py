"""Synthetic recall tasks (induction, MQAR): layout, seeding, labels, and accuracy against plain transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from hybrid_lens import HookedHybrid
from hybrid_lens.interventions import Condition, zero
from hybrid_lens.evals import recall as recall_eval
from hybrid_lens.zoo import checkpoint_path, recall


def tasks():
    return [recall.induction(6, length=8, gap=20, seed=3), recall.induction(3, length=1, seed=0),
            recall.mqar(6, pairs=16, gap=5, seed=4), recall.mqar(2, pairs=1, seed=1),
            recall.training_rows(8, 256, torch.Generator().manual_seed(5))]


@pytest.mark.parametrize("task", tasks(), ids=lambda t: f"{t.task}-{t.size}-{t.gap}")
def test_every_query_points_at_its_most_recent_earlier_occurrence(task):
    tokens = task.tokens
    assert tokens.min() >= recall.FIRST_ID and tokens.max() < recall.VOCAB
    assert not task.query[:, -1].any() and torch.equal(task.distance > 0, task.query)
    for row, position in task.query.nonzero().tolist():
        earlier = position - int(task.distance[row, position])
        assert tokens[row, earlier] == tokens[row, position]
        assert tokens[row, earlier + 1] == tokens[row, position + 1]  # the answer followed it there
        assert tokens[row, position] not in tokens[row, earlier + 1 : position]
    if task.task != "mixed":  # one episode a row: the sequence (keys and values) distinct, the gap other ids
        stored = tokens[:, : task.size if task.task == "induction" else 2 * task.size]
        gap = tokens[:, stored.shape[1] : stored.shape[1] + task.gap]
        assert all(len(set(row.tolist())) == len(row) for row in stored)
        assert all(not set(a.tolist()) & set(b.tolist()) for a, b in zip(stored, gap))


def test_layouts():
    task = recall.induction(4, length=8, gap=20, seed=0)
    assert task.tokens.shape == (4, 36) and torch.equal(task.tokens[:, :8], task.tokens[:, 28:])
    assert task.query.sum(1).tolist() == [7] * 4 and set(task.distance[task.query].tolist()) == {28}
    task = recall.mqar(4, pairs=8, gap=3, seed=0)
    assert task.tokens.shape == (4, 35) and task.query.sum(1).tolist() == [8] * 4
    keys, values = task.tokens[:, 0:16:2], task.tokens[:, 1:16:2]
    for row in range(4):
        pairs = dict(zip(keys[row].tolist(), values[row].tolist()))
        queries = task.tokens[row, 19::2].tolist()
        assert sorted(queries) == sorted(pairs) and task.tokens[row, 20::2].tolist() == [pairs[k] for k in queries]
    distances = task.distance[task.query]
    assert distances.min() >= 3 + 2 and distances.max() <= 4 * 8 + 3 - 2  # last key asked first; first key last


def test_generators_are_seeded():
    for make in (lambda seed: recall.induction(3, 5, 2, seed=seed), lambda seed: recall.mqar(3, 5, 2, seed=seed),
                 lambda seed: recall.training_rows(3, 128, torch.Generator().manual_seed(seed))):
        assert torch.equal(make(0).tokens, make(0).tokens) and not torch.equal(make(0).tokens, make(1).tokens)
    # rows are drawn one after another: the first rows of a larger task are the smaller task
    assert torch.equal(recall.mqar(8, 4, seed=2).tokens[:3], recall.mqar(3, 4, seed=2).tokens)
    assert recall.training_rows(0, 64, torch.Generator()).tokens.shape == (0, 64)


def test_labels_score_the_answers_as_transformers_does():
    task = recall.mqar(2, pairs=4, seed=0)
    labels = task.labels()
    assert torch.equal(labels[:, 1:] != recall.IGNORE, task.query[:, :-1])
    assert torch.equal(labels[labels != recall.IGNORE], task.tokens[:, 1:][task.query[:, :-1]])
    model = AutoModelForCausalLM.from_pretrained(checkpoint_path("tiny-qwen2.5")).eval()
    with torch.no_grad():
        output = model(input_ids=task.tokens, labels=labels)
    log_probs = output.logits.log_softmax(-1)[:, :-1][task.query[:, :-1]]
    answers = task.tokens[:, 1:][task.query[:, :-1]]
    expected = -log_probs.gather(-1, answers[:, None]).mean()
    assert torch.allclose(output.loss, expected, atol=1e-5)


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="distinct ids"):
        recall.induction(1, length=62, vocab=64)
    with pytest.raises(ValueError, match="n >= 1"):
        recall.mqar(0, pairs=2)
    model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
    with pytest.raises(ValueError, match="vocab=4096"):
        recall_eval.accuracy(model, recall.induction(1, 200, vocab=5000, seed=7))


def _zero_output(module, args, output):
    return (torch.zeros_like(output[0]), *output[1:]) if isinstance(output, tuple) else torch.zeros_like(output)


@pytest.mark.parametrize("name, kind, module", [("tiny-falcon-h1", "ssm", "mamba"), ("tiny-falcon-h1", "attn", "self_attn"),
                                                ("tiny-qwen3.5", "linear_attn", "linear_attn")])
@torch.no_grad()
def test_accuracy_matches_plain_transformers_with_torch_hooks(name, kind, module):
    """Clean and group-ablated accuracy equal argmax of the plain model, the ablation a plain forward hook."""
    task = recall.mqar(4, pairs=8, gap=10, seed=0)
    model = HookedHybrid.from_pretrained(f"hybrid-lens/{name}")
    plain = AutoModelForCausalLM.from_pretrained(checkpoint_path(name)).eval()
    where = task.query[:, :-1]
    answers = task.tokens[:, 1:][where]
    clean = plain(input_ids=task.tokens).logits[:, :-1][where].argmax(-1)
    layers = [layer for layer in plain.model.layers if hasattr(layer, module)]
    handles = [getattr(layer, module).register_forward_hook(_zero_output) for layer in layers]
    try:
        ablated = plain(input_ids=task.tokens).logits[:, :-1][where].argmax(-1)
    finally:
        for handle in handles:
            handle.remove()
    ours = recall_eval.accuracy(model, task, batch=3)
    assert torch.equal(torch.tensor(ours.predicted.to_numpy()), clean)
    assert ours.correct.tolist() == (clean == answers).tolist() and set(ours.condition) == {"clean"}
    ours = recall_eval.accuracy(model, task, zero(kind))
    assert torch.equal(torch.tensor(ours.predicted.to_numpy()), ablated) and not torch.equal(ablated, clean)
    assert ours.distance.tolist() == task.distance[task.query].tolist()


def test_recall_tables_aggregate_accuracy():
    model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
    conditions = [Condition(name="clean"), zero("attn")]
    table = recall_eval.recall_tables(model, conditions, n=2, seed=1)
    assert table.condition.unique().tolist() == ["clean", "attn_zero"] and len(table) == 2 * len(recall.grid(1))
    induction = table[table.task == "induction"]
    assert induction.distance.tolist() == [float(d) for d in recall.DISTANCES] * 2
    assert induction.queries.unique().tolist() == [2 * (recall.INDUCTION_LENGTH - 1)]
    assert table[table.task == "mqar"]["size"].tolist() == list(recall.PAIRS) * 2
    task = recall.grid(2, seed=1)[3]  # induction at distance 64, seeded as in the table
    expected = recall_eval.accuracy(model, task, zero("attn")).correct.mean()
    assert table.set_index(["condition", "task", "size", "gap"]).accuracy["attn_zero", "induction", 8, 56] == expected
    assert [c.name for c in recall_eval.group_ablations(model)] == ["clean", "attn_zero", "linear_attn_zero"]


def test_gaps_longer_than_the_alphabet():
    """The gap is drawn (with replacement) from the ids the sequence does not use, so a 64-id alphabet
    gives induction at any distance; a row without ids left for its gap is refused."""
    task = recall.induction(2, length=8, gap=184, seed=0)
    assert task.tokens.shape == (2, 200) and task.tokens.max() < recall.VOCAB
    assert set(task.distance[task.query].tolist()) == {192}
    with pytest.raises(ValueError, match="No ids are left"):
        recall.mqar(1, pairs=32, gap=1)


def test_contrast_changes_only_the_stored_value():
    pair = recall.contrast(8, pairs=6, gap=2, seed=3)
    assert pair.clean.shape == pair.corrupt.shape == (8, 15)
    changed = (pair.clean != pair.corrupt).nonzero().tolist()
    assert [row for row, _ in changed] == list(range(8))
    for row, position in changed:
        assert pair.clean[row, position - 1] == pair.clean[row, -1]  # the queried key, then its value
        assert pair.clean[row, position] == pair.correct[row] and pair.corrupt[row, position] == pair.wrong[row]
        assert int(pair.wrong[row]) not in pair.clean[row].tolist() and position % 2 == 1
    assert torch.equal(recall.contrast(8, pairs=6, gap=2, seed=3).corrupt, pair.corrupt)
    logits = torch.zeros(8, 15, recall.VOCAB)
    logits[torch.arange(8), -1, pair.correct] = 2.0
    logits[torch.arange(8), -1, pair.wrong] = 0.5
    assert float(pair.metric()(logits)) == pytest.approx(1.5)


def test_key_contrast_moves_the_lookup():
    """`corrupt="key"`: the queried key trades places with another key; the same tokens, another answer."""
    pair = recall.contrast(8, pairs=5, seed=4, corrupt="key")
    for row in range(8):
        clean, corrupt = pair.clean[row].tolist(), pair.corrupt[row].tolist()
        assert sorted(clean) == sorted(corrupt) and clean[1::2] == corrupt[1::2]  # values stay, keys move
        query = clean[-1]
        assert clean[clean.index(query) + 1] == pair.correct[row] and corrupt[corrupt.index(query) + 1] == pair.wrong[row]
        assert pair.correct[row] != pair.wrong[row]
    with pytest.raises(ValueError, match="pairs >= 2"):
        recall.contrast(2, pairs=1, corrupt="key")
    with pytest.raises(ValueError, match="corrupt must be one of"):
        recall.contrast(2, pairs=3, corrupt="both")
