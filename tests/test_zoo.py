"""The bundled trained models: offline loading with plain transformers, recorded quality, deterministic training."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hybrid_lens import zoo
from hybrid_lens.zoo import train


@pytest.fixture(scope="module")
def split():
    return zoo.split_verses()


@pytest.mark.parametrize("name", list(zoo.ZOO_MODELS))
@torch.no_grad()
def test_bundled_model_loads_offline_and_matches_its_card(name, split):
    path = zoo.checkpoint_path(name)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    metrics = json.loads((path / "metrics.json").read_text())
    assert model.dtype == torch.float32 and type(model).__name__ == metrics["architecture"]
    assert sum(p.numel() for p in model.parameters()) == metrics["n_params"]
    assert tokenizer.decode(tokenizer("And God said")["input_ids"]) == "And God said"
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)

    head = train.windows(train.token_stream(tokenizer, split[1]))[: train.HEAD_WINDOWS]
    nll, count = train.window_nll(model, head)
    assert count == metrics["val_tokens_head"]
    assert math.exp(nll / count) == pytest.approx(metrics["val_ppl_head"], rel=1e-3)
    assert metrics["val_ppl"] < metrics["unigram_ppl"] / 8
    ratios = metrics["ablation_ppl_ratios"]
    assert min(ratios.values()) > 1.2  # every group ablation raises perplexity by 20% or more
    headline = {"tiny-qwen3.5": ("linear_off", 50), "tiny-falcon-h1": ("ssm_off", 1.4), "tiny-qwen2.5": ("attn_mixer_off", 3)}
    prefix, at_least = headline[path.name]
    assert next(v for k, v in ratios.items() if k.startswith(prefix + ":")) > at_least


def test_bundled_tokenizer_is_the_one_trained_on_the_training_split(split):
    shipped = json.loads((zoo.checkpoint_path("tiny-qwen2.5") / "tokenizer.json").read_text())["model"]
    trained = json.loads(train.train_tokenizer(split[0]).backend_tokenizer.to_str())["model"]
    assert trained["vocab"] == shipped["vocab"] and trained["merges"] == shipped["merges"]


def test_validation_split_is_held_out(split):
    verses = zoo.verses()
    step = zoo.PASSAGE * zoo.VALIDATION_EVERY
    passages = [verses[start : start + zoo.PASSAGE] for start in range(0, len(verses), step)]
    assert split[1] == [verse for passage in passages for verse in passage]
    assert len(split[0]) + len(split[1]) == len(verses)
    assert zoo.load_validation_text() == "\n".join(split[1])


@pytest.mark.parametrize("name", train.MODELS)
def test_short_training_runs_are_identical(name, split):
    texts = split[0][:300]
    stream = train.token_stream(train.train_tokenizer(texts), texts)
    config = train.model_config(name, hidden_size=32, intermediate_size=64)
    runs = [train.train_model(config, stream, steps=3, batch=2, length=64, log_every=0) for _ in range(2)]
    (model_a, losses_a), (model_b, losses_b) = runs
    assert losses_a == losses_b and losses_a[-1] < losses_a[0]
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))


def test_names():
    with pytest.raises(KeyError, match="Available: hybrid-lens/tiny-qwen3.5, hybrid-lens/tiny-falcon-h1"):
        zoo.checkpoint_path("hybrid-lens/tiny-mamba")
    assert zoo.checkpoint_path("tiny-qwen2.5") == zoo.checkpoint_path("hybrid-lens/tiny-qwen2.5")
    assert zoo.is_zoo_name("hybrid-lens/tiny-mamba") and not zoo.is_zoo_name("Qwen/Qwen2.5-0.5B")


@pytest.mark.parametrize("name", [*train.MODELS, *train.PLANTED])
def test_recall_training_runs_are_identical(name, split):
    """Text + recall rows (the language models) and recall rows alone (the planted models) are seeded too."""
    texts = split[0][:300]
    stream = train.token_stream(train.train_tokenizer(texts), texts)
    config = train.model_config(name, hidden_size=32, intermediate_size=64)
    text = 0 if name in train.PLANTED else 2
    runs = [train.train_model(config, stream if text else None, steps=3, batch=text, length=64, log_every=0,
                              recall_rows=3, recall_length=16) for _ in range(2)]
    (model_a, losses_a), (model_b, losses_b) = runs
    assert losses_a == losses_b and len(losses_a) == 3
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    if text:  # same initial weights and first text batch without recall rows; they change the later steps
        _, alone = train.train_model(config, stream, steps=3, batch=2, length=64, log_every=0)
        assert alone[0] == losses_a[0] and alone[1:] != losses_a[1:]


def test_planted_falcon_h1_keeps_the_family_flags_without_mup_multipliers():
    planted, family = train.model_config("planted-recall-falcon-h1"), train.model_config("tiny-falcon-h1")
    assert family.embedding_multiplier != 1 and family.ssm_multipliers != [1.0] * 5  # the family's muP
    for key, value in train.NO_MUP.items():
        assert getattr(planted, key) == value, key
    for key in set(train.FALCON_H1_0_5B) - set(train.NO_MUP):
        assert getattr(planted, key) == getattr(family, key), key
    assert (planted.hidden_size, planted.num_hidden_layers) == (64, 2)


def test_monitor_sees_progress_without_changing_training(split):
    """`monitor` runs at step 0, every `monitor_every` steps and after the last, in eval mode without
    gradients, and the run is the same as without it (weights and losses)."""
    texts = split[0][:300]
    stream = train.token_stream(train.train_tokenizer(texts), texts)
    config = train.model_config("tiny-qwen3.5", hidden_size=32, intermediate_size=64)
    seen = []

    def monitor(step, model):
        seen.append((step, model.training, torch.is_grad_enabled()))

    kwargs = dict(steps=5, batch=2, length=64, log_every=0, recall_rows=3, recall_length=16)
    watched, losses = train.train_model(config, stream, monitor=monitor, monitor_every=2, **kwargs)
    alone, alone_losses = train.train_model(config, stream, **kwargs)
    assert seen == [(0, False, False), (2, False, False), (4, False, False), (5, False, False)]
    assert losses == alone_losses
    assert all(torch.equal(a, b) for a, b in zip(watched.state_dict().values(), alone.state_dict().values()))


def test_train_model_needs_something_to_train_on():
    config = train.model_config("tiny-qwen2.5", hidden_size=32, intermediate_size=64)
    with pytest.raises(ValueError, match="recall rows"):
        train.train_model(config, None, steps=1, batch=0)
    with pytest.raises(ValueError, match="stream"):
        train.train_model(config, None, steps=1, batch=2)


def test_training_continues_from_a_checkpoint(split):
    """`start=`: the first step's loss is the bundled model's own loss on that batch (same weights)."""
    path = zoo.checkpoint_path("tiny-qwen2.5")
    tokenizer = AutoTokenizer.from_pretrained(path)
    stream = train.token_stream(tokenizer, split[0][:200])
    config = AutoModelForCausalLM.from_pretrained(path).config
    _, losses = train.train_model(config, stream, steps=2, batch=2, length=32, log_every=0, start=path)
    ids = next(train.batches(stream, 1, 2, 32, train.SEED))
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(path)(input_ids=ids, labels=ids).loss.item()
    assert losses[0] == pytest.approx(expected, abs=1e-5) and losses[0] < 6
