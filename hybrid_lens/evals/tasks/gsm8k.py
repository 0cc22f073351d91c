"""GSM8K chain of thought (lm-eval `gsm8k_cot`): 8 fixed "Q: ...\\nA: ..." exemplars, greedy
generation with the intervention active at every step, strict and flexible answer extraction."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..data import Record, hub_records, local_source, read_records
from ..greedy import greedy_until
from ..scoring import NonFiniteError
from .base import Doc, TaskResult, check_shots, fewshot_context, run_settings, select_rows

HUB = ("openai/gsm8k", "main")
BUNDLED = "gsm8k/test.jsonl"
UNTIL = ("Q:", "</s>", "<|im_end|>")
STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
INVALID = "[invalid]"
EXEMPLARS = [  # (question, chain of thought): lm-eval's gsm8k-cot.yaml, from Wei et al. (2022)
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there "
     "will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been "
     "21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they "
     "had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason "
     "give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The "
     "answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The "
     "answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls "
     "did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he "
     "had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
]
SHOTS = len(EXEMPLARS)


def gsm8k_doc(record: Record, index: int) -> Doc:
    """A row with `question` and `answer` (worked solution ending in `#### <number>`).

    Examples:
        >>> from hybrid_lens.evals.data import Record
        >>> row = {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\\n#### 7"}
        >>> doc = gsm8k_doc(Record(row, "gsm8k.jsonl", 1), index=0)
        >>> doc.text, doc.target
        ('Q: Tom has 3 apples and buys 4 more. How many?\\nA:', '7')
    """
    answer = record.get("answer")
    if "####" not in answer:
        raise record.error("answer", "has no '#### <number>' final answer")
    return Doc(f"Q: {record.get('question')}\nA:", answer.split("####")[-1].strip(), index=index)


def load_gsm8k(source: str | Path | None = None) -> list[Doc]:
    """GSM8K test examples from the hub (None, or another hub path), `"bundled"` (first 100 rows),
    or a local `.jsonl`/`.json` file.

    Examples:
        >>> docs = load_gsm8k("bundled")
        >>> len(docs), docs[0].target
        (100, '18')
    """
    path = local_source(source, BUNDLED)
    records = read_records(path) if path else hub_records(source or HUB[0], HUB[1], "test")
    return [gsm8k_doc(record, i) for i, record in enumerate(records)]


def gsm8k_prompts(n: int | None = None, shots: int = SHOTS, source: str | Path | None = None,
                  rows: Sequence[int] | None = None) -> list[tuple[Doc, str]]:
    """(example, prompt) pairs for the first `n` examples (or the rows `rows`); the shots are the
    first `shots` exemplars.

    Examples:
        >>> doc, prompt = gsm8k_prompts(n=1, shots=1, source="bundled")[0]
        >>> prompt[:35]
        'Q: There are 15 trees in the grove.'
        >>> prompt.count("Q:"), prompt.endswith(doc.text)
        (2, True)
    """
    check_shots(shots, SHOTS, "gsm8k_cot")
    exemplars = [Doc(f"Q: {question}\nA:", chain) for question, chain in EXEMPLARS[:shots]]
    return [(doc, fewshot_context(doc, exemplars)) for doc in select_rows(load_gsm8k(source), n, rows)]


def extract_strict(generation: str) -> str:
    """The number after the first "The answer is" (lm-eval's `strict-match`).

    Examples:
        >>> extract_strict("3 + 4 = 7. The answer is 7."), extract_strict("It is 7.")
        ('7', '[invalid]')
    """
    match = STRICT.findall(generation)
    return match[0].strip() if match else INVALID


def extract_flexible(generation: str) -> str:
    """The last number in the generation (lm-eval's `flexible-extract`).

    Examples:
        >>> extract_flexible("3 + 4 = 7, so he has 7 apples"), extract_flexible("no idea")
        ('7', '[invalid]')
    """
    matches = FLEXIBLE.findall(generation)
    if not matches:
        return INVALID
    groups = [group for group in matches[-1] if group]
    return groups[0].strip() if groups else INVALID


def exact_match(prediction: str, reference: str) -> float:
    """lm-eval's `exact_match` for GSM8K: commas, `$`, anything up to `#### ` and a final period are
    dropped from both sides, case is ignored.

    Examples:
        >>> exact_match("$1,000.", "1000"), exact_match("999", "1000")
        (1.0, 0.0)
    """
    for pattern in IGNORE:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    return float(prediction.lower() == reference.lower())


def gsm8k_cot(model, n: int | None = None, shots: int = SHOTS, *, condition=None, rows: Sequence[int] | None = None,
              source: str | Path | None = None, max_new_tokens: int = 256, batch_size: int = 8,
              use_cache: bool | None = None, max_length: int | None = None, progress: bool = True) -> TaskResult:
    """GSM8K exact match, `exact_match_strict` and `exact_match_flexible`, from greedy generations.

    Args:
        n: the first `n` examples (None: all 1319). shots: exemplars (lm-eval: 8).
        condition: an intervention active at every generated step.
        rows: row indices to score instead (a list or range; exclusive with `n`).
        source: None (hub `gsm8k` main), `"bundled"`, a local file, or another hub path.
        max_new_tokens: generation budget (lm-eval's default 256). use_cache: see `greedy_until`.

    Returns:
        A `TaskResult` with metrics `exact_match_strict` and `exact_match_flexible`, and the
        generations. A `Sweep` is refused: loop over its conditions.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> result = gsm8k_cot(model, n=2, shots=1, source="bundled", max_new_tokens=16, progress=False)
        >>> sorted(result.metrics)
        ['exact_match_flexible', 'exact_match_strict']
        >>> list(result.examples.columns[-4:])
        ['target', 'answer_strict', 'answer_flexible', 'generation']
        >>> ablated = gsm8k_cot(model, n=2, shots=1, source="bundled", max_new_tokens=16, progress=False,
        ...                     condition=skip_layer(3))
    """
    prompts = gsm8k_prompts(n, shots, source, rows)
    try:
        generations = greedy_until(model, [prompt for _, prompt in prompts], UNTIL, max_new_tokens, condition,
                                   batch_size, use_cache, max_length, progress)
    except NonFiniteError as err:
        examples = [prompts[i][0].index for i in err.indices]
        raise NonFiniteError(f"gsm8k_cot: non-finite logits while generating for examples (rows) {examples[:10]} "
                             f"under condition {err.condition!r}: the model produced inf/NaN logits; no score is "
                             "computed.", examples, err.condition) from None
    table = []
    for (doc, _), generation in zip(prompts, generations):
        strict, flexible = extract_strict(generation), extract_flexible(generation)
        table.append(dict(example=doc.index, exact_match_strict=exact_match(strict, doc.target),
                          exact_match_flexible=exact_match(flexible, doc.target), target=doc.target,
                          answer_strict=strict, answer_flexible=flexible, generation=generation))
    settings = run_settings(len(prompts), shots, None, source, condition, max_new_tokens=max_new_tokens)
    requests = pd.DataFrame(dict(example=[doc.index for doc, _ in prompts], context=[prompt for _, prompt in prompts],
                                 until=[list(UNTIL)] * len(prompts)))
    return TaskResult("gsm8k_cot", pd.DataFrame(table), ("exact_match_strict", "exact_match_flexible"), settings,
                      requests)
