"""The bundled models that recall in context: they load offline by name and recall as their cards say."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from hybrid_lens import HookedHybrid, zoo
from hybrid_lens.evals import recall as recall_eval
from hybrid_lens.zoo import recall, train

NAMES = list(zoo.PLANTED_MODELS)


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


@pytest.mark.parametrize("name", NAMES)
def test_card_tables_plain_hooks_equal_hooked_conditions(name):
    """The card's recall tables (plain `transformers` model, torch forward hooks) equal the same tables
    through `HookedHybrid` and its `zero(kind)` conditions."""
    plain = AutoModelForCausalLM.from_pretrained(zoo.checkpoint_path(name)).eval()
    ours = recall_eval.recall_tables(HookedHybrid.from_pretrained(name), n=4)
    assert train.recall_tables(plain, n=4).equals(ours)
