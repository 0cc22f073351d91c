"""lm-evaluation-harness as a peer: its own task configs over the bundled data as local JSON files,
run offline on the same hooked model with the same condition active, must give our prompts, our
loglikelihoods and our scores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_lens.evals.data import DATA
from hybrid_lens.evals import perplexity
from hybrid_lens.evals.tasks import arc_challenge, arc_prompts, gsm8k_cot, hellaswag, mmlu, truthfulqa_mc
from hybrid_lens.interventions import zero

from .fixtures import build

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("lm_eval.models.huggingface")

CONDITION = zero("ssm", layers=[0, 2]) + zero("attn", layers=[1])
SENSITIVE = dict(initializer_range=0.3)  # random weights large enough that the condition changes the scores


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """lm-eval YAMLs that include lm-eval's own task configs and read local JSONL in hub layout."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    tasks = Path(lm_eval.__file__).parent / "tasks"
    arc = [json.loads(line) for line in (DATA / "arc_challenge/test.jsonl").read_text().splitlines()]
    arc_file = _jsonl(root / "arc.jsonl", [
        dict(id=r["id"], question=r["question"], answerKey=r["answer"],
             choices=dict(text=[o["text"] for o in r["options"]], label=[o["label"] for o in r["options"]]))
        for r in arc])
    mmlu_files = {}
    for split in ("test", "dev"):
        with open(DATA / f"mmlu/{split}/abstract_algebra_{split}.csv", newline="") as f:
            rows = [dict(question=r["question"], subject="abstract_algebra", answer=int(r["answer"]),
                         choices=[r[f"choice{i}"] for i in range(4)]) for r in csv.DictReader(f)]
        mmlu_files[split] = _jsonl(root / f"mmlu_{split}.jsonl", rows)
    with open(DATA / "truthfulqa/TruthfulQA.csv", newline="") as f:
        tqa = []
        for r in csv.DictReader(f):
            correct = [a.strip() for a in r["Correct Answers"].split(";") if a.strip()]
            incorrect = [a.strip() for a in r["Incorrect Answers"].split(";") if a.strip()]
            tqa.append(dict(question=r["Question"],
                            mc1_targets=dict(choices=[r["Best Answer"].strip(), *incorrect],
                                             labels=[1] + [0] * len(incorrect)),
                            mc2_targets=dict(choices=correct + incorrect,
                                             labels=[1] * len(correct) + [0] * len(incorrect))))
    tqa_file = _jsonl(root / "truthfulqa.jsonl", tqa)
    configs = {
        "peer_arc": (f"{tasks}/arc/arc_challenge.yaml", {"test": arc_file},
                     "training_split: null\nvalidation_split: null\nfewshot_split: test\n"),
        # lm-eval removes the example from its own shots only when the few-shot split is the test split
        "peer_hellaswag": (f"{tasks}/hellaswag/hellaswag.yaml", {"test": str(DATA / "hellaswag/val_subset.jsonl")},
                           "training_split: null\nvalidation_split: null\ntest_split: test\nfewshot_split: test\n"),
        "peer_mmlu": (f"{tasks}/mmlu/default/_default_template_yaml", mmlu_files,
                      'description: "The following are multiple choice questions (with answers) about abstract'
                      ' algebra.\\n\\n"\n'),
        "peer_mc1": (f"{tasks}/truthfulqa/truthfulqa_mc1.yaml", {"validation": tqa_file}, ""),
        "peer_mc2": (f"{tasks}/truthfulqa/truthfulqa_mc2.yaml", {"validation": tqa_file}, ""),
        "peer_gsm8k": (f"{tasks}/gsm8k/gsm8k-cot.yaml", {"test": str(DATA / "gsm8k/test.jsonl")}, ""),
    }
    for name, (include, files, extra) in configs.items():
        data_files = "".join(f"    {split}: {path}\n" for split, path in files.items())
        (root / f"{name}.yaml").write_text(f"include: {include}\ntask: {name}\ndataset_path: json\ndataset_name: null\n"
                                           f"dataset_kwargs:\n  data_files:\n{data_files}{extra}")
    return root


def run_lm_eval(model, task_dir: Path, task: str, shots: int, limit: int, **kwargs) -> list[dict]:
    """lm-eval's logged samples, in document order, with CONDITION active on the hooked model."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model.hf_model, tokenizer=model.tokenizer, batch_size=4, device="cpu")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    with CONDITION.apply(model):
        out = lm_eval.simple_evaluate(model=lm, tasks=[task], num_fewshot=shots, limit=limit, task_manager=manager,
                                      log_samples=True, verbosity="ERROR", **kwargs)
    return sorted(out["samples"][task], key=lambda sample: sample["doc_id"])


@torch.no_grad()
def test_multiple_choice_tasks_match_lm_eval_under_an_ablation(task_dir):
    _, model = build("falcon_h1", **SENSITIVE)
    cases = [  # lm-eval task, shots, our result, our per-choice loglikelihood column, our score, lm-eval's score
        ("peer_arc", 2, arc_challenge(model, n=3, shots=2, source=task_dir / "arc.jsonl", condition=CONDITION,
                                      progress=False), "loglikelihoods", "acc_norm", "acc_norm"),
        ("peer_hellaswag", 2, hellaswag(model, n=3, shots=2, source="bundled", condition=CONDITION, progress=False),
         "loglikelihoods", "acc_norm", "acc_norm"),
        ("peer_mmlu", 2, mmlu(model, shots=2, source="bundled", subjects=["abstract_algebra"], condition=CONDITION,
                              progress=False), "loglikelihoods", "acc", "acc"),
    ]
    tqa = truthfulqa_mc(model, n=3, source=task_dir / "truthfulqa.jsonl", condition=CONDITION, progress=False)
    cases += [("peer_mc1", 0, tqa, "loglikelihoods_mc1", "mc1", "acc"),
              ("peer_mc2", 0, tqa, "loglikelihoods_mc2", "mc2", "acc")]
    for task, shots, ours, lls, metric, theirs_metric in cases:
        samples = run_lm_eval(model, task_dir, task, shots, len(ours.examples))
        for sample, (_, row) in zip(samples, ours.examples.iterrows(), strict=True):
            theirs = [ll for ll, _ in sample["filtered_resps"]]
            np.testing.assert_allclose(row[lls], theirs, rtol=1e-4, err_msg=task)
            assert row[metric] == pytest.approx(sample[theirs_metric], rel=1e-4), task
    plain = arc_challenge(model, n=3, shots=2, source=task_dir / "arc.jsonl", progress=False)
    assert not np.allclose(np.stack(plain.examples.loglikelihoods), np.stack(cases[0][2].examples.loglikelihoods),
                           rtol=1e-3)
    prompt = arc_prompts(n=3, shots=2, source=task_dir / "arc.jsonl")[2]
    arc_samples = run_lm_eval(model, task_dir, "peer_arc", 2, 3)
    assert arc_samples[2]["arguments"][0][0] == prompt[1]
    assert [cont for _, cont in arc_samples[2]["arguments"]] == [" " + c for c in prompt[0].choices]


@torch.no_grad()
def test_gsm8k_generations_match_lm_eval_under_an_ablation(task_dir):
    _, model = build("falcon_h1", **SENSITIVE)
    ours = gsm8k_cot(model, n=3, shots=1, source="bundled", condition=CONDITION, max_new_tokens=12, progress=False)
    samples = run_lm_eval(model, task_dir, "peer_gsm8k", 1, 3, gen_kwargs="max_gen_toks=12")
    strict = {s["doc_id"]: s for s in samples if s["filter"] == "strict-match"}
    flexible = {s["doc_id"]: s for s in samples if s["filter"] == "flexible-extract"}
    for i, (_, row) in enumerate(ours.examples.iterrows()):
        assert row.generation == strict[i]["resps"][0][0]
        assert (row.answer_strict, row.answer_flexible) == (strict[i]["filtered_resps"][0],
                                                            flexible[i]["filtered_resps"][0])
        assert (row.exact_match_strict, row.exact_match_flexible) == (strict[i]["exact_match"],
                                                                      flexible[i]["exact_match"])


@torch.no_grad()
def test_word_perplexity_and_bits_per_byte_match_lm_eval_wikitext():
    """lm-eval's `loglikelihood_rolling` scores every token of a document after its prefix token;
    our perplexity of `prefix + document` scores the same tokens, so its word perplexity and bits
    per byte must equal lm-eval's wikitext metrics (words counted without stripping the text)."""
    import importlib.util

    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.models.huggingface import HFLM

    _, model = build("falcon_h1", **SENSITIVE)
    spec = importlib.util.spec_from_file_location(
        "preprocess_wikitext", Path(lm_eval.__file__).parent / "tasks/wikitext/preprocess_wikitext.py")
    wikitext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wikitext)
    document = " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor . \n"
    lm = HFLM(pretrained=model.hf_model, tokenizer=model.tokenizer, batch_size=1, device="cpu")
    (theirs,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (document,), 0)], disable_tqdm=True)
    metrics = wikitext.process_results({"page": document}, [theirs])
    text = model.tokenizer.bos_token + document
    assert model.tokenizer(text, add_special_tokens=False)["input_ids"][0] == lm.prefix_token_id
    ours = perplexity(model, text, context_length=256, condition=None, progress=False)
    assert -ours.nll_sum == pytest.approx(theirs, rel=1e-5)
    assert ours.n_words == metrics["word_perplexity"][1] == len(document.split()) + 2  # leading, trailing space count
    assert ours.word_ppl == pytest.approx(weighted_perplexity([metrics["word_perplexity"]]), rel=1e-5)
    assert ours.bits_per_byte == pytest.approx(bits_per_byte([metrics["bits_per_byte"]]), rel=1e-5)
