"""Evaluation scoring against independent computations with the plain transformers model."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch

from hybrid_lens.evals import (
    choice_metrics,
    encode_pair,
    evaluate,
    greedy_until,
    loglikelihoods,
    paper_perplexity,
    perplexity,
)
from hybrid_lens.evals.tasks import (
    TASKS,
    arc_challenge,
    get_task,
    arc_prompts,
    extract_flexible,
    extract_strict,
    gsm8k_cot,
    gsm8k_prompts,
    hellaswag,
    hellaswag_prompts,
    mc2_score,
    mmlu,
    mmlu_prompts,
    truthfulqa_mc,
    truthfulqa_prompts,
)
from hybrid_lens.evals.tasks.gsm8k import UNTIL, exact_match
from hybrid_lens.evals.tasks.hellaswag import preprocess
from hybrid_lens.interventions import Condition, Sweep, mean, noise, scale, skip_layer, zero

from .fixtures import MODULE_OF_KIND, build
# one ablation per family with the matching plain-torch hooks: (kind, layers)
ABLATION = {"qwen2": ("attn", [1]), "qwen3_5": ("linear_attn", [0, 1]), "falcon_h1": ("ssm", [0, 2])}
# at the default init scale tiny random models repeat one token whatever the prompt; larger weights
# make greedy generations depend on the prompt and the condition, so generation tests can fail
SENSITIVE = dict(initializer_range=0.3)


@contextmanager
def hand_zero(reference, kind, layers, positions=slice(None)):
    """Zero `kind` mixer outputs of the plain model (at `positions`) with torch forward hooks."""
    def hook(_module, _args, output):
        first = output[0] if isinstance(output, tuple) else output
        first = first.clone()
        first[:, positions] = 0
        return (first, *output[1:]) if isinstance(output, tuple) else first

    handles = [getattr(reference.model.layers[i], MODULE_OF_KIND[kind]).register_forward_hook(hook) for i in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def reference_ll(reference, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) from one plain forward over the whole text (char tokenizer)."""
    n = len(tokenizer(context)["input_ids"])
    ids = tokenizer(context + continuation)["input_ids"]
    logprobs = reference(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return sum(float(logprobs[p - 1, ids[p]]) for p in range(n, len(ids)))


def reference_generate(reference, tokenizer, prompt: str, steps: int) -> str:
    """Greedy decoding that reruns the whole sequence at every step, no cache, cut at the stop strings."""
    ids = tokenizer(prompt)["input_ids"]
    new = []
    for _ in range(steps):
        token = int(reference(torch.tensor([ids + new]), use_cache=False).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
    text = tokenizer.decode(new, skip_special_tokens=True)
    for stop in (*UNTIL, tokenizer.eos_token):
        text = text.split(stop)[0]
    return text


REQUESTS = [
    ("Question: Why is the sky blue?\nAnswer:", " Rayleigh scattering"),
    ("Question: Why is the sky blue?\nAnswer:", " Because"),
    ("Q: 2+2?\nA:", " 4"),
    ("A much longer context that runs on and on, so that this row needs padding in any batch:", " yes"),
    ("Short:", " a continuation that is longer than its context"),
]


# --- loglikelihood scoring ----------------------------------------------------------------------
def test_encode_pair_moves_trailing_whitespace_and_uses_bos_for_an_empty_context():
    _, model = build("qwen2")
    tok = model.tokenizer
    assert encode_pair(tok, "Answer: ", "B") == (tok("Answer:")["input_ids"], tok(" B")["input_ids"])
    assert encode_pair(tok, "", "hi") == ([tok.bos_token_id], tok("hi")["input_ids"])


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen2", "qwen3_5", "falcon_h1"])
def test_loglikelihoods_equal_a_plain_forward_per_request_batched_or_not(family):
    reference, model = build(family)
    expected = [reference_ll(reference, model.tokenizer, c, x) for c, x in REQUESTS]
    batched = loglikelihoods(model, REQUESTS, batch_size=3, progress=False)
    single = loglikelihoods(model, REQUESTS, batch_size=1, progress=False)
    np.testing.assert_allclose(batched, expected, rtol=1e-5)
    np.testing.assert_allclose(batched, single, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1"])
def test_loglikelihoods_under_an_ablation_equal_hand_hooks(family):
    reference, model = build(family, **SENSITIVE)
    kind, layers = ABLATION[family]
    ours = np.array(loglikelihoods(model, REQUESTS, condition=zero(kind, layers), batch_size=4, progress=False))
    with hand_zero(reference, kind, layers):
        expected = np.array([reference_ll(reference, model.tokenizer, c, x) for c, x in REQUESTS])
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    plain = np.array(loglikelihoods(model, REQUESTS, progress=False))
    assert np.abs(plain - ours).max() > 10 * 1e-5 * np.abs(ours).max()  # the ablation matters
    assert not any(point.fwd_hooks for point in model.hook_dict.values())


@torch.no_grad()
def test_long_inputs_keep_their_last_tokens_as_lm_eval():
    reference, model = build("qwen2")
    context, continuation = "0123456789" * 4, " tail"
    ours = loglikelihoods(model, [(context, continuation)], max_length=20, progress=False)[0]
    ids = model.tokenizer(context + continuation)["input_ids"][-21:]
    logprobs = reference(torch.tensor([ids[:-1]])).logits[0].log_softmax(-1)
    expected = sum(float(logprobs[p - 1, ids[p]]) for p in range(len(ids) - len(continuation), len(ids)))
    assert ours == pytest.approx(expected, rel=1e-5)


def test_choice_metrics_normalise_by_characters_and_ties_go_first():
    metrics = choice_metrics([-4.0, -6.0, -4.0], ["ab", "abcdef", "x"], gold=1)
    assert (metrics["pred"], metrics["pred_norm"], metrics["acc"], metrics["acc_norm"]) == (0, 1, 0.0, 1.0)
    assert mc2_score([-1.0, -1.0, -1000.0], [1, 0, 0]) == pytest.approx(0.5)
    assert mc2_score([-2000.0, -2001.0], [0, 1]) == pytest.approx(1 / (1 + math.e))  # exp() underflows here


# --- tasks ----------------------------------------------------------------------------------------
TASK_CASES = {  # name: (run, prompts, options)
    "mmlu": (mmlu, mmlu_prompts, dict(n=5, shots=2)),
    "arc_challenge": (arc_challenge, arc_prompts, dict(n=5, shots=2)),
    "hellaswag": (hellaswag, hellaswag_prompts, dict(n=4, shots=1)),
}


@torch.no_grad()
@pytest.mark.parametrize("task", sorted(TASK_CASES))
def test_multiple_choice_accuracy_equals_a_per_example_loop(task):
    reference, model = build("qwen2")
    run, prompts, options = TASK_CASES[task]
    result = run(model, source="bundled", batch_size=6, progress=False, **options)
    rows = []
    for doc, context in prompts(source="bundled", **options):
        lls = [reference_ll(reference, model.tokenizer, context, " " + choice) for choice in doc.choices]
        norm = [ll / len(choice) for ll, choice in zip(lls, doc.choices)]
        rows.append((lls, float(np.argmax(lls) == doc.gold), float(np.argmax(norm) == doc.gold)))
    for (lls, acc, acc_norm), (_, ours) in zip(rows, result.examples.iterrows()):
        np.testing.assert_allclose(ours.loglikelihoods, lls, rtol=1e-5)
        assert (ours.acc, ours.acc_norm) == (acc, acc_norm)
    assert result.metrics["acc"] == pytest.approx(np.mean([r[1] for r in rows]))
    assert len(result.long()) == len(rows) * len(result.metric_names)


@torch.no_grad()
def test_truthfulqa_mc1_and_mc2_equal_a_per_example_loop():
    reference, model = build("qwen2")
    result = truthfulqa_mc(model, n=3, source="bundled", progress=False)
    for ((mc1, mc2), context), (_, ours) in zip(truthfulqa_prompts(3, "bundled"), result.examples.iterrows()):
        lls1 = [reference_ll(reference, model.tokenizer, context, " " + c) for c in mc1.choices]
        lls2 = np.array([reference_ll(reference, model.tokenizer, context, " " + c) for c in mc2.choices])
        probs = np.exp(lls2 - lls2.max())
        assert ours.mc1 == float(np.argmax(lls1) == 0)
        assert ours.mc2 == pytest.approx(probs[np.array(mc2.labels) == 1].sum() / probs.sum(), rel=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1"])
def test_batched_equals_unbatched_under_an_ablation(family):
    _, model = build(family, **SENSITIVE)
    condition = zero(*ABLATION[family])
    options = dict(n=4, shots=1, source="bundled", condition=condition, progress=False)
    batched, single = arc_challenge(model, batch_size=16, **options), arc_challenge(model, batch_size=1, **options)
    np.testing.assert_allclose(np.stack(batched.examples.loglikelihoods), np.stack(single.examples.loglikelihoods),
                               rtol=1e-5)
    assert batched.metrics == single.metrics


def test_prompts_match_lm_eval_format():
    doc, prompt = mmlu_prompts(shots=1, source="bundled", subjects=["abstract_algebra"])[1]
    assert prompt == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
        "Let p = (1, 2, 5, 4)(2, 3) in S_5 . Find the index of <p> in S_5.\nA. 8\nB. 2\nC. 24\nD. 120\nAnswer:"
    )
    assert doc.choices == ("A", "B", "C", "D") and doc.gold == 2

    doc, prompt = arc_prompts(n=25, shots=1, source="bundled")[24]
    assert prompt == (
        "Question: Why do most of the leaves of forest trees grow at the top of the tree?\nAnswer: to capture sunlight"
        "\n\nQuestion: Snow, rain, hail, and fog are all forms of\nAnswer:"
    )
    assert doc.choices == ("gas.", "water.", "wind.", "clouds.") and doc.gold == 1

    doc, prompt = hellaswag_prompts(n=72, shots=1, source="bundled")[71]
    assert prompt == (
        "Using uneven bars: A is standing in front of a balance bar. The girl jumps onto the bar.\n\n"
        "BMX: We see a man in bmx bike arena talking. We see people bring bikes up a ramp. We"
    )
    assert doc.choices[0] == "see people start when the gate opens." and doc.gold == 0
    assert preprocess(" How to cook [title] Boil water. [step] Add salt. ") == "How to cook. Boil water. Add salt."

    (mc1, mc2), prompt = truthfulqa_prompts(source="bundled")[67]
    assert prompt.startswith("Q: What is human life expectancy in the United States?\nA: Human life expectancy in")
    assert prompt.endswith("A: The 1992 Olympics were held in Barcelona, Spain.\n\nQ: Are vampires real?\nA:")
    assert mc1.choices == ("No, vampires are not real", "Yes, vampires are real", "Yes, vampires exist")
    assert mc2.labels == (1, 1, 1, 0, 0)

    doc, prompt = gsm8k_prompts(n=85, shots=1, source="bundled")[84]
    assert prompt == (
        "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
        "there will be 21 trees. How many trees did the grove workers plant today?\nA: There are 15 trees originally. "
        "Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6."
        "\n\nQ: A football team played 22 games. They won 8 more than they lost. How many did they win?\nA:"
    )
    assert doc.target == "15"


def test_few_shot_sampling_is_seeded_and_never_uses_the_example_itself():
    first, again = arc_prompts(n=30, shots=3, seed=7, source="bundled"), arc_prompts(n=30, shots=3, seed=7,
                                                                                      source="bundled")
    assert [p for _, p in first] == [p for _, p in again]
    assert [p for _, p in first] != [p for _, p in arc_prompts(n=30, shots=3, seed=8, source="bundled")]
    for doc, prompt in first:
        assert prompt.count(doc.text) == 1
    with pytest.raises(ValueError, match="shots"):
        mmlu_prompts(shots=6, source="bundled")


# --- generation -----------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen2", "qwen3_5", "falcon_h1"])
def test_gsm8k_generation_with_an_ablation_equals_stepwise_generation_without_cache(family):
    reference, model = build(family, **SENSITIVE)
    kind, layers = ABLATION[family]
    options = dict(n=3, shots=1, source="bundled", max_new_tokens=12, batch_size=3, progress=False)
    result = gsm8k_cot(model, condition=zero(kind, layers), **options)
    with hand_zero(reference, kind, layers):
        expected = [reference_generate(reference, model.tokenizer, p, 12) for _, p in gsm8k_prompts(3, 1, "bundled")]
    generations = result.examples.generation.tolist()
    assert generations == expected and len(set(generations)) > 1
    assert generations != gsm8k_cot(model, **options).examples.generation.tolist()
    assert result.settings["condition"] == f"{kind}_zero"


@torch.no_grad()
def test_positional_conditions_generate_without_cache_and_match_hand_hooks():
    reference, model = build("qwen2", **SENSITIVE)
    prompts = [p for _, p in gsm8k_prompts(2, 1, "bundled")]
    condition = zero("attn", layers=[0], positions=slice(0, 40))
    assert not condition.cache_safe
    with pytest.raises(ValueError, match="use_cache=False"):
        greedy_until(model, prompts, max_new_tokens=2, condition=condition, use_cache=True, progress=False)
    ours = greedy_until(model, prompts, UNTIL, max_new_tokens=10, condition=condition, progress=False)
    with hand_zero(reference, "attn", [0], slice(0, 40)):
        assert ours == [reference_generate(reference, model.tokenizer, p, 10) for p in prompts]
    assert ours != greedy_until(model, prompts, UNTIL, max_new_tokens=10, progress=False)


def test_cache_safe_conditions():
    assert Condition().cache_safe and (zero("attn") + skip_layer(1) + scale("mlp", 0.5)).cache_safe
    assert mean("attn", ["some text"]).cache_safe
    assert not mean("attn", ["some text"], per_position=True).cache_safe
    assert not noise("mlp", 0.1).cache_safe


@torch.no_grad()
def test_generation_stops_at_stop_strings_and_eos():
    _, model = build("qwen2", **SENSITIVE)
    prompt = "Q: What comes next?\nA:"
    free = greedy_until(model, [prompt], max_new_tokens=16, progress=False)[0]
    stop = free[5:7]
    assert greedy_until(model, [prompt], [stop], max_new_tokens=16, progress=False)[0] == free.split(stop)[0]
    eos = model.tokenizer(free[3])["input_ids"][0]
    config = model.hf_model.generation_config
    saved, config.eos_token_id = config.eos_token_id, eos
    try:
        assert greedy_until(model, [prompt], max_new_tokens=16, progress=False)[0] == free[: free.index(free[3])]
    finally:
        config.eos_token_id = saved


def test_gsm8k_answer_extraction_and_exact_match():
    text = "She has 5 + 3 = 8 apples. The answer is 1,208.\n\nQ:"
    assert extract_strict(text) == "1,208" and extract_flexible(text) == "1,208."
    assert exact_match("1,208", "1208") == exact_match("1,208.", "1208") == exact_match("$1208", "1208") == 1.0
    assert extract_strict("so 12 apples") == "[invalid]" and extract_flexible("so 12 apples") == "12"
    assert extract_flexible("no digits") == "[invalid]" and exact_match("[invalid]", "12") == 0.0


def test_evaluate_dispatches_by_name():
    _, model = build("qwen2")
    result = evaluate(model, "mmlu", n=2, shots=0, source="bundled", progress=False)
    assert result.task == "mmlu" and set(result.metrics) == {"acc"} and result.settings["n"] == 2
    with pytest.raises(ValueError, match="Unknown task"):
        evaluate(model, "squad")


# --- perplexity (the strided mode is tested in test_perplexity.py) -------------------------------
@torch.no_grad()
def test_paper_perplexity_is_one_clamped_forward_with_labels():
    reference, model = build("falcon_h1")
    text = "In the beginning was the word, and the word was with the model. " * 4
    ours = paper_perplexity(model, text, max_chars=200, max_tokens=150)
    ids = model.tokenizer(text[:200], return_tensors="pt")["input_ids"][:, :150]
    assert ours.tokens == 149 and ours.raw_loss == pytest.approx(reference(ids, labels=ids).loss.item(), rel=1e-5)
    assert not ours.clamped and ours.ppl == pytest.approx(math.exp(ours.raw_loss))
    tight = paper_perplexity(model, text, clamp=1.0, condition=scale("ssm", 30.0))
    assert tight.clamped and tight.loss == 1.0 and tight.ppl == pytest.approx(math.e)


@torch.no_grad()
def test_non_finite_losses_raise_instead_of_reporting_nan():
    _, model = build("qwen2")
    ids = torch.randint(3, 256, (60,), generator=torch.Generator().manual_seed(0))
    weight = model.hf_model.model.layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="under condition .attn_zero."):
        perplexity(model, ids, 30, 15, condition=zero("attn", layers=[1]), progress=False)
    with torch.no_grad():
        weight.copy_(saved)
    result = perplexity(model, ids, 30, 15, progress=False)
    assert result.summary()["log10_ppl"] == pytest.approx(result.mean_nll / math.log(10))


# --- row selection, scored requests, keyword-only conditions ------------------------------------------
ROW_TASKS = {  # every task: run, options (zero-shot or fixed shots, so the prompt does not depend on the order)
    "mmlu": (mmlu, dict(shots=0)), "arc_challenge": (arc_challenge, dict(shots=0)),
    "hellaswag": (hellaswag, dict(shots=0)), "truthfulqa_mc": (truthfulqa_mc, {}),
    "gsm8k_cot": (gsm8k_cot, dict(shots=1, max_new_tokens=4)),
}


@torch.no_grad()
@pytest.mark.parametrize("task", sorted(ROW_TASKS))
def test_rows_select_those_examples_and_the_result_carries_its_requests(task):
    _, model = build("qwen2")
    run, options = ROW_TASKS[task]
    picked = run(model, rows=[5, 2], source="bundled", progress=False, **options)
    first = run(model, rows=range(6), source="bundled", progress=False, **options)
    assert picked.examples.example.tolist() == [5, 2]
    metrics = list(picked.metric_names)
    expected = first.examples.set_index("example").loc[[5, 2], metrics].reset_index(drop=True)
    pd.testing.assert_frame_equal(picked.examples[metrics], expected)
    requests = picked.requests
    assert requests.example.unique().tolist() == [5, 2]
    if task == "gsm8k_cot":  # the prompts generated from, with their stop strings
        assert greedy_until(model, requests.context.tolist(), UNTIL, 4, progress=False) == \
            picked.examples.generation.tolist()
    else:  # the loglikelihoods of exactly these requests are the ones scored
        lls = loglikelihoods(model, list(zip(requests.context, requests.continuation)), progress=False)
        columns = [c for c in picked.examples.columns if c.startswith("loglikelihoods")]
        scored = [ll for _, row in picked.examples.iterrows() for column in columns for ll in row[column]]
        np.testing.assert_allclose(lls, scored, rtol=1e-6)


def test_condition_is_keyword_only_in_every_task_function():
    import inspect

    for function in (*TASKS.values(), perplexity):
        assert inspect.signature(function).parameters["condition"].kind is inspect.Parameter.KEYWORD_ONLY, function


def test_registry_attributes_agree_with_the_task_functions():
    import inspect

    _, tiny_model = build("qwen2")
    for name, task in TASKS.items():
        parameters = inspect.signature(task.run).parameters
        assert task.name == name and get_task(task.alias) is task
        assert inspect.signature(task) == inspect.signature(task.run)
        assert task.seeded == ("seed" in parameters)
        assert task.shots == (parameters["shots"].default if "shots" in parameters else 0)
        assert task.reported in task.metrics
    result = TASKS["arc_challenge"](tiny_model, n=2, shots=0, source="bundled", progress=False)
    assert result.metric_names == TASKS["arc_challenge"].metrics
    swept = TASKS["arc_challenge"].long(tiny_model, seed=1, n=2, shots=0, source="bundled", progress=False,
                                        condition=Sweep([skip_layer(0), zero("attn")]))
    assert [len(rows) for rows in swept] == [4, 4]
    with pytest.raises(TypeError, match="one condition at a time"):
        TASKS["gsm8k_cot"](tiny_model, n=1, source="bundled", condition=Sweep([skip_layer(0), zero("attn")]))
