"""Task files: both layouts load to the same examples, and wrong formats name the file, row and field."""

from __future__ import annotations

import csv
import json

import pytest

from hybrid_lens.evals import TaskDataError
from hybrid_lens.evals.data import DATA, read_records
from hybrid_lens.evals.tasks import load_arc, load_gsm8k, load_hellaswag, load_mmlu, load_truthfulqa, mmlu_prompts

ARC_ROW = {"question": "Which is a gas?", "answer": "B",
           "options": [{"label": "A", "text": "ice"}, {"label": "B", "text": "steam"}]}
HELLASWAG_ROW = {"activity_label": "Cooking", "ctx_a": "A man cuts onions.", "ctx_b": "he", "label": 1,
                 "endings": ["sings.", "cries."]}


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_flat_and_hub_layouts_load_to_the_same_examples(tmp_path):
    flat = [json.loads(line) for line in (DATA / "arc_challenge/test.jsonl").read_text().splitlines()[:5]]
    hub = [dict(question=r["question"], answerKey=r["answer"], choices=dict(
        text=[o["text"] for o in r["options"]], label=[o["label"] for o in r["options"]])) for r in flat]
    assert load_arc(write_jsonl(tmp_path / "hub.jsonl", hub)) == load_arc("bundled")[:5]

    pairs = load_truthfulqa("bundled")[:4]
    rows = [dict(question=mc1.text.rsplit("\n\nQ: ", 1)[1].removesuffix("\nA:"),
                 mc1_targets=dict(choices=list(mc1.choices), labels=list(mc1.labels)),
                 mc2_targets=dict(choices=list(mc2.choices), labels=list(mc2.labels))) for mc1, mc2 in pairs]
    assert load_truthfulqa(write_jsonl(tmp_path / "tqa.jsonl", rows)) == pairs
    assert pairs[0][1].labels.count(1) == 5 and pairs[0][0].choices[0] == "The watermelon seeds pass through your " \
                                                                           "digestive system"


def test_bundled_subsets_are_complete():
    assert len(load_arc("bundled")) == len(load_hellaswag("bundled")) == len(load_gsm8k("bundled")) == 100
    assert len(load_truthfulqa("bundled")) == 100
    test, dev = load_mmlu("bundled"), load_mmlu("bundled", "dev")
    assert len({doc.group for doc in test}) == len({doc.group for doc in dev}) == 57
    assert len(test) == 114 and len(dev) == 285 and len(mmlu_prompts(source="bundled")) == 114


@pytest.mark.parametrize("rows,match", [
    ([ARC_ROW, {k: v for k, v in ARC_ROW.items() if k != "question"}],
     r"bad\.jsonl, row 2: field 'question' is missing"),
    ([ARC_ROW, ARC_ROW, {**ARC_ROW, "answer": "E"}], r"row 3: field 'answer' 'E' is not one of \['A', 'B'\]"),
    ([{**ARC_ROW, "options": ["ice", "steam"]}], r"row 1: field 'options' should be a list of \{label, text\}"),
    ([ARC_ROW, '{"question": "cut off'], r"bad\.jsonl, row 2: not valid JSON"),
    ([[1, 2]], r"row 1: expected a JSON object, got list"),
    ([{**ARC_ROW, "question": 3}], r"row 1: field 'question' should be str, got int"),
])
def test_bad_arc_rows_name_the_file_row_and_field(tmp_path, rows, match):
    with pytest.raises(TaskDataError, match=match):
        load_arc(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_bad_rows_of_every_task_name_the_file_row_and_field(tmp_path):
    with pytest.raises(TaskDataError, match=r"row 2: field 'endings' should be list, got str"):
        load_hellaswag(write_jsonl(tmp_path / "h.jsonl", [HELLASWAG_ROW, {**HELLASWAG_ROW, "endings": "cries."}]))
    with pytest.raises(TaskDataError, match=r"row 1: field 'label' 5 is not an index of the 2 endings"):
        load_hellaswag(write_jsonl(tmp_path / "h.jsonl", [{**HELLASWAG_ROW, "label": 5}]))
    with pytest.raises(TaskDataError, match=r"g\.jsonl, row 1: field 'answer' has no '#### <number>'"):
        load_gsm8k(write_jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": "2"}]))

    header = ["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"]
    tqa = write_csv(tmp_path / "t.csv", header, [["A", "B", "Q?", "yes", "yes; sure", "", "src"]])
    with pytest.raises(TaskDataError, match=r"t\.csv, row 1: field 'Incorrect Answers' holds no answers"):
        load_truthfulqa(tqa)
    hub = {"question": "Q?", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 0]},
           "mc2_targets": {"choices": ["a", "b"], "labels": [0, 0]}}
    with pytest.raises(TaskDataError, match=r"row 1: field 'mc2_targets.labels' should be 0/1 per choice"):
        load_truthfulqa(write_jsonl(tmp_path / "t.jsonl", [hub]))

    for split in ("test", "dev"):
        (tmp_path / "mmlu" / split).mkdir(parents=True)
    header = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    write_csv(tmp_path / "mmlu/dev/anatomy_dev.csv", header, [["q", "a", "b", "c", "d", "1"]])
    write_csv(tmp_path / "mmlu/test/anatomy_test.csv", header, [["q", "a", "b", "c", "d", "0"], ["q", "a", "b", "c",
                                                                                               "d", "E"]])
    with pytest.raises(TaskDataError, match=r"anatomy_test\.csv, row 2: field 'answer' should be int, got str: 'E'"):
        load_mmlu(tmp_path / "mmlu")
    write_csv(tmp_path / "mmlu/test/anatomy_test.csv", header[:-1], [["q", "a", "b", "c", "d"]])
    with pytest.raises(TaskDataError, match=r"row 1: field 'answer' is missing"):
        load_mmlu(tmp_path / "mmlu")


def test_missing_or_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_arc(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match=r"<subject>_test\.csv"):
        load_mmlu(tmp_path)
    (tmp_path / "rows.txt").write_text("a\n")
    with pytest.raises(TaskDataError, match=r"rows\.txt: unsupported file type '\.txt'"):
        read_records(tmp_path / "rows.txt")
