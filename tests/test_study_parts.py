"""Study building blocks: condition generators, the resumable store, and the statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hybrid_lens.study.plan import (
    group_ablations, layer_sweep, positional_thirds, random_controls, study_conditions, transformer_control,
)
from hybrid_lens.analysis import correlation
from hybrid_lens.layout import Layout
from hybrid_lens.study.stats import paired_bootstrap, perplexity_table, score_drops, targeted_vs_random
from hybrid_lens.study.store import StudyStore

QWEN35 = Layout.of([("linear_attn",), ("linear_attn",), ("linear_attn",), ("attn",)] * 6)
FALCON = Layout.of([("ssm", "attn")] * 12)
QWEN2 = Layout.of([("attn",)] * 24)


def test_falcon_like_model_gets_two_conditions_per_layer_and_thirds_partition_the_layers():
    sweep = layer_sweep(FALCON)
    assert len(sweep) == 2 * 12 and {c.kind for c in sweep} == {"ssm", "attn"}
    thirds = positional_thirds(FALCON)
    assert [c.name for c in thirds] == [f"{k}_off_{t}" for k in ("ssm", "attn") for t in ("early", "middle", "late")]
    ssm_layers = [layer for c in thirds if c.kind == "ssm" for layer in c.layers]
    assert sorted(ssm_layers) == list(range(12))
    assert all(c.condition.items[0][1].type == "zero" for c in sweep + thirds)  # parallel zeroing by default


def test_sequential_hybrid_groups_and_default_skip():
    groups = group_ablations(QWEN35)
    assert {c.name: len(c.layers) for c in groups} == {"linear_attn_off": 18, "attn_off": 6}
    assert groups[1].layers == (3, 7, 11, 15, 19, 23)
    assert all(c.condition.items[0][1].type == "skip_layer" for c in groups)
    assert all(c.condition.items[0][1].type == "zero" for c in group_ablations(QWEN35, method="mixer_off"))
    assert len(layer_sweep(QWEN35)) == 24 and group_ablations(QWEN2) == []


def test_random_controls_are_seeded_matched_and_never_repeat_a_layer():
    targeted = group_ablations(QWEN35)
    a = random_controls(QWEN35, targeted, trials=5, seed=3)
    b = random_controls(QWEN35, targeted, trials=5, seed=3)
    assert [c.layers for c in a] == [c.layers for c in b]
    assert [c.layers for c in a] != [c.layers for c in random_controls(QWEN35, targeted, trials=5, seed=4)]
    for control in a:
        assert len(set(control.layers)) == len(control.layers) == len(next(t for t in targeted if t.name == control.matches).layers)
    # a targeted condition covering every layer has no meaningful random match
    assert random_controls(FALCON, group_ablations(FALCON)) == []
    removal = transformer_control(QWEN2, fractions=(6 / 24, 18 / 24), trials=3)
    assert [len(c.layers) for c in removal] == [6, 6, 6, 18, 18, 18]


def test_study_conditions_counts_and_bad_groups():
    names = [c.name for c in study_conditions(FALCON)]
    assert names[0] == "baseline" and len(names) == len(set(names)) == 1 + 2 + 24 + 6 + 6 * 3
    assert sum(c.group == "transformer" for c in study_conditions(QWEN2)) == 6
    with pytest.raises(ValueError, match="choose from"):
        study_conditions(FALCON, groups=["baseline", "groups"])


def rows(condition, task, values, metric="acc"):
    return pd.DataFrame(dict(condition=condition, task=task, example=range(len(values)), metric=metric, value=values))


def test_store_resumes_without_doubles_and_refuses_another_model(tmp_path):
    path = tmp_path / "s" / "results.sqlite"
    store = StudyStore(path, meta={"model": "m1", "n": 3})
    store.write("baseline", "mmlu", rows("baseline", "mmlu", [1.0, 0.0, 1.0]), 0.1)
    store.write("baseline", "mmlu", rows("baseline", "mmlu", [0.0, 0.0, 0.0]), 0.1)  # already done: ignored
    assert store.is_done("baseline", "mmlu") and not store.is_done("baseline", "arc")
    store.close()
    reopened = StudyStore(path, meta={"model": "m1", "n": 3})
    assert reopened.results().value.tolist() == [1.0, 0.0, 1.0]
    reopened.close()
    with pytest.raises(FileExistsError, match="--overwrite"):
        StudyStore(path, meta={"model": "m2"})
    assert StudyStore(path, meta={"model": "m2"}, overwrite=True).results().empty


def test_bootstrap_and_drops():
    rng = np.random.default_rng(0)
    base = (rng.random(400) < 0.7).astype(float)
    worse = base * (rng.random(400) < 0.5)
    table = pd.concat([rows("baseline", "mmlu", base), rows("off", "mmlu", worse), rows("same", "mmlu", base)])
    drops = score_drops(table, {"mmlu": "acc"}).set_index("condition")
    assert drops.loc["off", "delta"] == pytest.approx(worse.mean() - base.mean())
    assert drops.loc["off", "significant"] and drops.loc["off", "ci_high"] < 0
    assert not drops.loc["same", "significant"] and drops.loc["same", "delta"] == 0
    point, low, high = paired_bootstrap(worse, base, lambda c, b, axis=-1: c.mean(axis) - b.mean(axis), seed=1)
    assert low < point < high


def test_perplexity_table_keeps_log_values_when_perplexity_overflows():
    windows = 4
    table = pd.concat([
        pd.DataFrame(dict(condition=c, task="ppl", example=list(range(windows)) * 2,
                          metric=["nll_sum"] * windows + ["tokens"] * windows,
                          value=[nll] * windows + [10.0] * windows))
        for c, nll in (("baseline", 20.0), ("broken", 8000.0))
    ])
    ppl = perplexity_table(table).set_index("condition")
    assert ppl.loc["baseline", "ppl"] == pytest.approx(np.exp(2.0))
    assert ppl.loc["broken", "loss"] == pytest.approx(800.0) and ppl.loc["broken", "ppl"] == float("inf")
    assert np.isfinite(ppl.loc["broken", "log_ratio"]) and ppl.loc["broken", "log_ratio"] == pytest.approx(798.0)


def test_targeted_vs_random_and_correlation():
    specs = [{"name": "attn_off", "layers": [3, 7]}, *[{"name": f"r{t}", "layers": [0, 1], "matches": "attn_off"} for t in range(3)]]
    values = pd.Series({"attn_off": 10.0, "r0": 100.0, "r1": 200.0, "r2": 300.0})
    table = targeted_vs_random(values, specs).iloc[0]
    assert table.random_mean == 200.0 and table.ratio == 20.0 and table.trials == 3
    result = correlation(np.arange(10.0), 2 * np.arange(10.0) + 1)
    assert result["pearson_r"] == pytest.approx(1.0) and result["spearman_rho"] == pytest.approx(1.0)


def test_the_light_spec_names_every_task_the_runner_evaluates():
    """`study.spec.TASKS` (what the command line accepts without importing torch) is `study.tasks.TASKS`."""
    from hybrid_lens.study import spec, tasks

    assert spec.TASKS == tuple(tasks.TASKS)
