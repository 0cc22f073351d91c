"""The study's cost model (`study.cost`): timing records in, rates and projections out. Pure
functions on made-up records (no timing here; `benchmarks/study_cost.py` measures)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from hybrid_lens.layout import Layout
from hybrid_lens.study.diagnostics import HIDDEN_TASK
from hybrid_lens.study import cost
from hybrid_lens.study.plan import study_conditions
from hybrid_lens.study.runner import time_by_group
from hybrid_lens.study.spec import GROUPS
from hybrid_lens.study.store import StudyStore

SWEEPABLE = frozenset({"ppl", "arc", "truthfulqa"})
FALCON_LIKE = Layout.of([("ssm", "attn")] * 6)  # a parallel hybrid: every group but `transformer`


def timings(**seconds) -> pd.DataFrame:
    """(model m) rows of `time_by_group` from `task_group=(conditions, seconds)`."""
    rows = [dict(model="m", task=key.split("__")[0], group=key.split("__")[1], conditions=c, seconds=s)
            for key, (c, s) in seconds.items()]
    return pd.DataFrame(rows)


def test_rates_are_seconds_per_condition_per_forward_token():
    rates = cost.fit_rates(timings(ppl__baseline=(1, 2.0), ppl__layer=(10, 10.0), arc__baseline=(1, 6.0)),
                           pd.DataFrame(dict(model="m", task=["ppl", "arc"], examples=[2, 3], tokens=[500, 3000])))
    got = rates.set_index(["task", "group"])
    assert got.loc[("ppl", "baseline"), "us_per_token"] == pytest.approx(2.0 / 500 * 1e6)
    assert got.loc[("ppl", "layer"), "us_per_token"] == pytest.approx(1.0 / 500 * 1e6)
    assert got.loc[("arc", "baseline"), "seconds_per_condition"] == 6.0


def test_a_timed_task_without_its_workload_is_named():
    with pytest.raises(ValueError, match=r"No workload for \[\('m', 'arc'\)\]"):
        cost.fit_rates(timings(arc__baseline=(1, 6.0)), pd.DataFrame(dict(model="m", task=["ppl"], examples=[1],
                                                                          tokens=[10])))


def test_unmeasured_groups_take_the_perplexity_factor_generation_takes_the_baseline():
    rates = cost.fit_rates(
        timings(ppl__baseline=(1, 4.0), ppl__layer=(8, 16.0), ppl__random=(6, 18.0), arc__baseline=(1, 10.0),
                arc__random=(6, 30.0), gsm8k__baseline=(1, 50.0)),
        pd.DataFrame(dict(model="m", task=["ppl", "arc", "gsm8k"], examples=1, tokens=[100, 1000, 500])))
    needed = pd.DataFrame(dict(model="m", task=["arc", "arc", "gsm8k"], group=["layer", "random", "layer"]))
    got = cost.complete_rates(rates, needed, SWEEPABLE).set_index(["task", "group"])
    assert got.loc[("arc", "layer"), "us_per_token"] == pytest.approx(10_000 * 0.5)  # ppl: layer costs half a baseline
    assert got.loc[("arc", "layer"), "source"] == "baseline x ppl factor"
    assert got.loc[("arc", "random"), "us_per_token"] == pytest.approx(5_000)  # measured wins over the rule
    assert got.loc[("arc", "random"), "source"] == "measured"
    assert got.loc[("gsm8k", "layer"), "us_per_token"] == pytest.approx(100_000)  # one generation per condition
    with pytest.raises(ValueError, match="No baseline rate of m on hellaswag"):
        cost.complete_rates(rates, pd.DataFrame(dict(model="m", task=["hellaswag"], group=["layer"])), SWEEPABLE)
    with pytest.raises(ValueError, match="No ppl rate of group 'positional'"):
        cost.complete_rates(rates, pd.DataFrame(dict(model="m", task=["arc"], group=["positional"])), SWEEPABLE)


def test_a_task_not_measured_at_size_scales_from_its_small_analogue():
    """Generation measured on a bundled model only: the full-size rate is its rate x the perplexity size ratio."""
    rates = pd.DataFrame(dict(model=["tiny", "tiny", "tiny", "big"], task=["ppl", "gsm8k", "gsm8k", "ppl"],
                              group=["baseline", "baseline", "layer", "baseline"],
                              us_per_token=[100.0, 400.0, 500.0, 3000.0]))
    needed = pd.DataFrame(dict(model="big", task=["gsm8k", "gsm8k", "ppl"], group=["layer", "random", "baseline"]))
    got = cost.complete_rates(rates, needed, SWEEPABLE, analogues={"big": "tiny"}).set_index(["task", "group"])
    assert got.loc[("gsm8k", "layer"), "us_per_token"] == pytest.approx(500.0 * 30)
    assert got.loc[("gsm8k", "random"), "us_per_token"] == pytest.approx(400.0 * 30)  # tiny: its baseline rate
    assert got.loc[("gsm8k", "layer"), "source"] == "tiny x ppl size ratio"
    assert got.loc[("ppl", "baseline"), "source"] == "measured"
    with pytest.raises(ValueError, match="needs both models' ppl baseline rates"):
        cost.complete_rates(rates[rates.model == "big"], needed, SWEEPABLE, analogues={"big": "tiny"})


def test_the_paper_plan_has_its_n_its_thirds_its_trials_and_one_diagnostic_text():
    counts = {"m": dict(Counter(c.group for c in study_conditions(FALCON_LIKE, GROUPS, trials=3)))}
    five = Counter(c.group for c in study_conditions(FALCON_LIKE, GROUPS, trials=5))["random"]
    tokens = pd.DataFrame(dict(model="m", task=["ppl", "gsm8k", "mmlu", "hidden"],
                               tokens_per_example=[256.0, 1300.0, 600.0, 256.0]))
    work = cost.plan(counts, tokens, cost.PAPER_N, cost.PAPER_N_BY_GROUP,
                     tokens_override={"ppl": cost.PAPER_PPL_TOKENS, "hidden": cost.PAPER_DIAGNOSTIC_TOKENS},
                     extra_conditions={("ppl", "random"): five - counts["m"]["random"]}).set_index(["task", "group"])
    assert work.loc[("gsm8k", "positional"), "examples"] == 50 and work.loc[("gsm8k", "layer"), "examples"] == 100
    assert work.loc[("mmlu", "layer"), "examples"] == 2000 and work.loc[("mmlu", "layer"), "conditions"] == 12
    assert work.loc[("ppl", "random"), "conditions"] == five > counts["m"]["random"]
    assert work.loc[("mmlu", "random"), "conditions"] == counts["m"]["random"]
    assert work.loc[("ppl", "baseline"), "tokens_per_example"] == 8192
    assert work.loc[("gsm8k", "baseline"), "tokens_per_example"] == 1300
    assert work.xs("hidden", level="task").to_dict("records") == [dict(model="m", conditions=1, examples=1,
                                                                         tokens_per_example=512.0)]
    assert "transformer" not in work.index.get_level_values("group")  # not generated for a parallel hybrid


def test_the_diagnostics_task_is_named_as_the_store_names_it():
    assert cost.HIDDEN == HIDDEN_TASK


def test_a_projection_is_linear_in_examples_conditions_and_tokens():
    rates = pd.DataFrame(dict(model="m", task=["arc"], group=["layer"], us_per_token=[250.0], source="measured"))
    work = pd.DataFrame(dict(model="m", task=["arc"], group=["layer"], conditions=[8], examples=[10],
                             tokens_per_example=[1000.0]))
    one = cost.project(work, rates).seconds.item()
    assert one == pytest.approx(8 * 10 * 1000 * 250e-6)
    assert cost.project(work.assign(examples=20), rates).seconds.item() == pytest.approx(2 * one)
    with pytest.raises(ValueError, match="No rate for"):
        cost.project(work.assign(group="random"), rates)


def test_the_study_store_records_project_end_to_end(tmp_path: Path):
    """What `runner.time_by_group` reads from a study's store feeds the cost model unchanged."""
    specs = study_conditions(FALCON_LIKE, ("baseline", "layer"))
    store = StudyStore(tmp_path / "results.sqlite")
    rows = pd.DataFrame(dict(example=[0], metric="acc", value=[1.0]))
    store.write("baseline", "arc", rows, 3.0)
    for spec in specs[1:]:
        store.write(spec.name, "arc", rows, 1.5)
    table = time_by_group(store, specs, "m")
    store.close()
    rates = cost.fit_rates(table, pd.DataFrame(dict(model="m", task=["arc"], examples=[2], tokens=[3000])))
    assert rates.set_index("group").us_per_token.to_dict() == pytest.approx({"baseline": 1000.0, "layer": 500.0})
    work = cost.plan({"m": {"baseline": 1, "layer": 12}}, pd.DataFrame(dict(model="m", task=["arc"],
                                                                            tokens_per_example=[1500.0])), 299)
    projected = cost.project(work, cost.complete_rates(rates, work, SWEEPABLE))
    assert cost.totals(projected).seconds.item() == pytest.approx(299 * 1500 * (1 * 1000 + 12 * 500) * 1e-6)
