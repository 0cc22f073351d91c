"""The bundled models that recall in context: they load offline by name and recall as their cards say."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hybrid_lens import HookedHybrid, zoo
from hybrid_lens.evals import recall as recall_eval
from hybrid_lens.zoo import recall, train

NAMES = list(zoo.PLANTED_MODELS)
LANGUAGE_NAMES = list(zoo.RECALL_LM_MODELS)
# The recall language models' card cells must stay well above chance (1/64): MQAR with 8 pairs and
# induction at distance 8 (tiny-qwen3.5-recall's card: 0.41 and 0.69).
RECALL_LM_FLOOR = {"mqar": 0.3, "induction": 0.5}


def card(name: str) -> dict:
    return json.loads((zoo.checkpoint_path(name) / "metrics.json").read_text())


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_recall_model_loads_by_name_and_recalls_as_its_card_says(name):
    metrics = card(name)
    model = HookedHybrid.from_pretrained(name)
    assert type(model.hf_model).__name__ == metrics["architecture"]
    assert sum(p.numel() for p in model.hf_model.parameters()) == metrics["n_params"]
    # the card's MQAR cell with 8 pairs, clean and under each group ablation: its first 16 rows (same
    # seed) score within sampling error of the card's 64
    task = recall.grid(16)[len(recall.DISTANCES) + recall.PAIRS.index(8)]
    card_cells = {condition: cells["8"] for condition, cells in metrics["recall_mqar_by_pairs"].items()}
    assert card_cells["clean"] >= 0.9  # chance is 1/64
    assert card_cells["attn_zero"] <= 0.1  # the planted mechanism needs attention
    for condition in recall_eval.group_ablations(model):
        accuracy = recall_eval.accuracy(model, task, condition).correct.mean()
        assert accuracy == pytest.approx(card_cells[condition.name], abs=0.15), condition.name


@pytest.mark.parametrize("name", NAMES + LANGUAGE_NAMES)
def test_card_tables_plain_hooks_equal_hooked_conditions(name):
    """The card's recall tables (plain `transformers` model, torch forward hooks) equal the same tables
    through `HookedHybrid` and its `zero(kind)` conditions."""
    plain = AutoModelForCausalLM.from_pretrained(zoo.checkpoint_path(name)).eval()
    ours = recall_eval.recall_tables(HookedHybrid.from_pretrained(name), n=4)
    assert train.recall_tables(plain, n=4).equals(ours)


LANGUAGE_NAMES = list(zoo.RECALL_LM_MODELS)


@pytest.mark.parametrize("name", LANGUAGE_NAMES)
@torch.no_grad()
def test_recall_language_model_keeps_its_perplexity_and_recalls_as_its_card_says(name):
    """A recall language model: held-out perplexity within 5% of the model it continues (its card; the
    first validation windows measured again) and recall well above chance (1/64) as its card says."""
    metrics = card(name)
    base = card(metrics["continued_from"])
    assert metrics["base_val_ppl"] == base["val_ppl"] and metrics["val_ppl_vs_base"] <= 1.05
    path = zoo.checkpoint_path(name)
    plain = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    head = train.windows(train.token_stream(tokenizer, zoo.split_verses()[1]))[: train.HEAD_WINDOWS]
    nll, count = train.window_nll(plain, head)
    assert math.exp(nll / count) == pytest.approx(metrics["val_ppl_head"], rel=1e-3)
    model = HookedHybrid.from_pretrained(name)
    grid = recall.grid(16)  # the first 16 rows of the card's cells (same seed)
    cells = {"mqar": (grid[len(recall.DISTANCES) + recall.PAIRS.index(8)], metrics["recall_mqar_by_pairs"]["clean"]["8"]),
             "induction": (grid[recall.DISTANCES.index(8)], metrics["recall_induction_by_distance"]["clean"]["8"])}
    for task, (rows, cell) in cells.items():
        assert cell >= RECALL_LM_FLOOR[task], task
        accuracy = recall_eval.accuracy(model, rows).correct.mean()
        assert accuracy == pytest.approx(cell, abs=0.15), task
