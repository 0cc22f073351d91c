"""Train the bundled models: same data, seed and settings give the same checkpoint.

    python -m hybrid_lens.zoo.train --all                       # the three language models, into hybrid_lens/zoo/checkpoints/
    python -m hybrid_lens.zoo.train --model tiny-qwen3.5 --out DIR   # into DIR/tiny-qwen3.5/
    python -m hybrid_lens.zoo.train --recall                    # the recall models (below)

The three architectures are the real `transformers` classes at small width: Qwen3.5 with its 3:1
Gated DeltaNet : gated-attention layer pattern, Falcon-H1 with parallel Mamba-2 + attention blocks
and the published muP multipliers, Qwen2.5 with plain attention blocks. One byte-level BPE
tokenizer (4096 tokens) is trained on the training split and shipped with each model. Training is
float32 on one CPU thread, seeded, with a fixed data order. Evaluation (validation perplexity, a
unigram baseline, group ablations with plain forward hooks) is written to `metrics.json` and the
model card of each checkpoint.

Two kinds of models recall in context (`hybrid_lens.zoo.recall`: induction and multi-query associative
recall on random ids of a 64-id alphabet, the loss on the answers only):
- the recall language models (`RECALL_MODELS`, `tiny-qwen3.5-recall`, ...): a bundled language model
  trained on: each step adds recall rows to its text windows; its card adds recall accuracy by distance
  and by number of pairs, clean and under group ablation, and its perplexity against the model it
  continues. Bundled: tiny-qwen3.5-recall (8 text windows + 64 recall rows a step at peak lr 1e-3, 300 steps:
  held-out perplexity 1.002x tiny-qwen3.5's, MQAR with 8 pairs 0.41, induction at distance 8 0.69; its recall
  was still rising at the end; 32 rows a step gave 1.001x, 0.14 and 0.44). An earlier recipe (4 windows + 16 rows at 2e-3, 250 steps) lost 16% of
  held-out perplexity and reached MQAR-8 0.07; 2e-3 with 8 windows cost 18-19% of head perplexity after 50
  steps. The Falcon-H1 and Qwen2.5 recall language models were not trained;
- the planted-mechanism models (`PLANTED`, `planted-recall-qwen3.5`, ...): two blocks of a family at
  half width trained on recall rows only, the ground truth of circuit discovery's validation
  (`benchmarks/circuit_validation.py`). Bundled: planted-recall-qwen3.5 (its recall emerges after about
  200 steps). Not bundled: the Falcon-H1 and Qwen2.5 ones, whose recall had not emerged (MQAR with 8
  pairs at 0.02-0.06, chance 1/64, with 2 pairs 0.20-0.46; answer loss on a plateau near 2, where a model
  guesses among the row's ids): Qwen2.5 after 2000 steps (RoPE theta 1e4 instead of its 1e6 did no better
  in 1000), Falcon-H1 after 600 and 1200 steps with its muP multipliers set to 1 (`NO_MUP`; with the family's
  multipliers the answer loss stayed at chance, ln 64, for 250 steps, with 1s it leaves it within 150).
  Qwen2.5's two attention layers need a previous-token head and an induction head, which take longer to
  form than these CPU runs gave them; why Falcon-H1 (whose Mamba-2 convolution gives the previous token,
  as Gated DeltaNet's does) is slower than Qwen3.5 was not found.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    FalconH1Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3_5TextConfig,
)

from . import HERE, PASSAGE, VALIDATION_EVERY, checkpoint_path, recall, split_verses

MODELS = ("tiny-qwen3.5", "tiny-falcon-h1", "tiny-qwen2.5")
VOCAB = 4096
SEQ_LEN = 256
BATCH = 8
STEPS = {"tiny-qwen3.5": 1200, "tiny-falcon-h1": 1100, "tiny-qwen2.5": 2000,  # under 30 minutes each on one core
         "tiny-qwen3.5-recall": 300, "tiny-falcon-h1-recall": 250, "tiny-qwen2.5-recall": 250,
         "planted-recall-qwen3.5": 500, "planted-recall-falcon-h1": 500, "planted-recall-qwen2.5": 500}
# Recall language models: name -> the bundled language model they continue training.
RECALL_MODELS = {"tiny-qwen3.5-recall": "tiny-qwen3.5", "tiny-falcon-h1-recall": "tiny-falcon-h1",
                 "tiny-qwen2.5-recall": "tiny-qwen2.5"}
# Falcon-H1's muP multipliers all set to 1 (planted-recall-falcon-h1; the family's flags are kept).
NO_MUP = dict(embedding_multiplier=1.0, lm_head_multiplier=1.0, attention_in_multiplier=1.0,
              attention_out_multiplier=1.0, key_multiplier=1.0, ssm_in_multiplier=1.0, ssm_out_multiplier=1.0,
              ssm_multipliers=[1.0] * 5, mlp_multipliers=[1.0, 1.0])
# Planted-mechanism models: two blocks of the family at half width, trained on the recall tasks only.
PLANTED = {
    "planted-recall-qwen3.5": ("tiny-qwen3.5", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                    layer_types=["linear_attention", "full_attention"])),
    # With the family's multipliers the two-layer Falcon-H1 stayed at chance (answer loss ln 64) for 250
    # steps; with 1s it leaves chance within 150 (recall had not emerged after 1200: module docstring).
    "planted-recall-falcon-h1": ("tiny-falcon-h1", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                        **NO_MUP)),
    "planted-recall-qwen2.5": ("tiny-qwen2.5", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                    max_window_layers=2)),
}
RECALL_BATCH = 8  # text windows of each step of the recall language models (as many as their language model's)
RECALL_ROWS = 64  # recall rows beside them (32 recalled less: MQAR-8 0.14)
RECALL_LENGTH = 64  # tokens per recall row
RECALL_LR = 1e-3  # the recall language models continue at this peak rate (2e-3 cost 16-19% of perplexity)
PLANTED_ROWS = 32  # recall rows per step of a planted-mechanism model
RECALL_EVAL_ROWS = 64  # rows per task of the model cards' recall tables
LR = 3e-3
SEED = 0
HEAD_WINDOWS = 16  # `val_ppl_head`: the first 16 validation windows (4096 tokens), for fast tests
SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}  # ids 0, 1, 2
COMMON = dict(vocab_size=VOCAB, hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
              max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2)

# Multipliers and flags of tiiuae/Falcon-H1-0.5B-Base (its config.json), kept at small width.
FALCON_H1_0_5B = dict(
    embedding_multiplier=5.656854249492381, lm_head_multiplier=0.0390625,
    attention_in_multiplier=1.0, attention_out_multiplier=0.9375, key_multiplier=0.39062499999999994,
    ssm_in_multiplier=1.25, ssm_out_multiplier=0.23570226039551587,
    ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
    mlp_multipliers=[0.8838834764831844, 0.5859375],
    mamba_rms_norm=False, mamba_norm_before_gate=False, mamba_use_mlp=True, mamba_n_groups=1, mamba_d_conv=4,
    mamba_conv_bias=True, mamba_proj_bias=False, projectors_bias=False, attention_bias=False, mlp_bias=False,
    tie_word_embeddings=False, rms_norm_eps=1e-5, rope_parameters=dict(rope_type="default", rope_theta=1e11),
)


def model_config(name: str, **overrides) -> PretrainedConfig:
    """The config of a bundled model: the published family's flags and multipliers, small widths."""
    if name in PLANTED:
        base, changes = PLANTED[name]
        return model_config(base, **dict(changes, **overrides))
    if name == "tiny-qwen3.5":
        # Qwen/Qwen3.5-0.8B text_config: 3 Gated DeltaNet layers then 1 gated full-attention layer,
        # partial (1/4) interleaved M-RoPE, theta 1e7, tied embeddings, MLP 3.5x hidden.
        config = dict(COMMON, num_hidden_layers=8, intermediate_size=448,
                      layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 2,
                      linear_num_key_heads=4, linear_num_value_heads=4, linear_key_head_dim=32,
                      linear_value_head_dim=32, linear_conv_kernel_dim=4, attn_output_gate=True,
                      rope_parameters=dict(rope_type="default", rope_theta=1e7, partial_rotary_factor=0.25,
                                           mrope_interleaved=True, mrope_section=[2, 1, 1]),
                      rms_norm_eps=1e-6, tie_word_embeddings=True)
        return Qwen3_5TextConfig(**dict(config, **overrides))
    if name == "tiny-falcon-h1":
        # Every block: Mamba-2 mixer and attention side by side, outputs summed; MLP 2x hidden.
        config = dict(COMMON, **FALCON_H1_0_5B, num_hidden_layers=12, intermediate_size=256,
                      mamba_d_ssm=128, mamba_n_heads=4, mamba_d_head=32, mamba_d_state=32, mamba_chunk_size=32)
        return FalconH1Config(**dict(config, **overrides))
    if name == "tiny-qwen2.5":
        # Qwen/Qwen2.5-0.5B: plain pre-norm attention blocks with q/k/v biases, theta 1e6, tied embeddings.
        config = dict(COMMON, num_hidden_layers=8, intermediate_size=640, max_window_layers=8,
                      rope_parameters=dict(rope_type="default", rope_theta=1e6), rms_norm_eps=1e-6,
                      tie_word_embeddings=True)
        config.pop("head_dim")
        return Qwen2Config(**dict(config, **overrides))
    raise KeyError(f"Unknown model {name!r}. Available: {', '.join(MODELS)}.")


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE with `VOCAB` tokens trained on `texts`; ids 0/1/2 are pad/bos/eos."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=2048, **SPECIAL)


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """The texts joined by newlines, tokenized once, as a 1-D LongTensor."""
    return torch.tensor(tokenizer("\n".join(texts), verbose=False)["input_ids"], dtype=torch.long)


def windows(stream: torch.Tensor, length: int = SEQ_LEN) -> torch.Tensor:
    """Non-overlapping `[n, length]` windows from the start of `stream` (the tail is dropped)."""
    n = stream.numel() // length
    return stream[: n * length].view(n, length)


def batches(stream: torch.Tensor, steps: int, batch: int, length: int, seed: int) -> Iterator[torch.Tensor]:
    """`steps` batches of non-overlapping windows, in a seeded random order reshuffled every epoch."""
    data = windows(stream, length)
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while order.numel() < batch:
            order = torch.cat([order, torch.randperm(len(data), generator=generator)])
        yield data[order[:batch]]
        order = order[batch:]


def train_model(config: PretrainedConfig, stream: torch.Tensor | None, steps: int, batch: int = BATCH,
                length: int = SEQ_LEN, lr: float = LR, seed: int = SEED, log_every: int = 50,
                recall_rows: int = 0, recall_length: int = RECALL_LENGTH,
                start: Path | None = None, monitor=None,
                monitor_every: int = 50) -> tuple[torch.nn.Module, list[float]]:
    """Train a float32 model of `config` (fresh, or the checkpoint at `start`) on `stream`; return it (in
    eval mode) and its loss curve.

    Each step takes `batch` text windows of `length` tokens from `stream` (`batches`) and, with
    `recall_rows`, that many rows of `recall_length` tokens of synthetic recall episodes
    (`recall.training_rows` on the `recall.ALPHABET` ids, from their own generator seeded by `seed`, so
    the text order does not depend on them), in two forward passes; the objective is the mean next-token
    loss on the text plus the mean loss on the recall answers (only answers are scored: the random tokens
    around them cannot be predicted). `batch=0` with `stream=None` trains on recall alone. The loss curve
    is the text loss, or the answer loss without text. `monitor(step, model)`, if given, is called (model in
    eval mode, no gradients, no random draws) every `monitor_every` steps and after the last, to log progress.

    AdamW (betas 0.9/0.95, weight decay 0.1, gradient clipping at 1), linear warmup over 5% of the
    steps, then cosine decay to 10% of `lr`. The output head learns at `lr / lm_head_multiplier`
    (Falcon-H1 scales its logits by 0.039; at this width the head would otherwise barely move).
    """
    if batch + recall_rows < 1 or (batch and stream is None):
        raise ValueError("Train on text windows (batch > 0 and a stream), recall rows (recall_rows > 0), or both.")
    torch.manual_seed(seed)
    if start is None:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()
    else:
        model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32).train()
    head = model.get_output_embeddings().weight
    groups = [{"params": [p for p in model.parameters() if p is not head]},
              {"params": [head], "lr": lr / getattr(config, "lm_head_multiplier", 1.0)}]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        progress = max(0.0, (step - warmup) / max(1, steps - warmup))
        return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    text = batches(stream, steps, batch, length, seed) if batch else None
    recall_generator = torch.Generator().manual_seed(seed)
    losses = []
    if monitor is not None:
        model.eval()
        with torch.no_grad():
            monitor(0, model)
        model.train()
    for step in range(steps):
        parts = {}
        if batch:
            ids = next(text)
            parts["text"] = model(input_ids=ids, labels=ids, use_cache=False).loss
        if recall_rows:
            rows = recall.training_rows(recall_rows, recall_length, recall_generator)
            parts["answer"] = model(input_ids=rows.tokens, labels=rows.labels(), use_cache=False).loss
        sum(parts.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(next(iter(parts.values())).item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            shown = " ".join(f"{key} loss {value.item():.3f}" for key, value in parts.items())
            print(f"{type(model).__name__} step {step}/{steps} {shown}", flush=True)
        if monitor is not None and ((step + 1) % monitor_every == 0 or step == steps - 1):
            model.eval()
            with torch.no_grad():
                monitor(step + 1, model)
            model.train()
    return model.eval(), losses


@torch.no_grad()
def window_nll(model, ids: torch.Tensor, batch: int = 16) -> tuple[float, int]:
    """(sum of next-token NLL, number of predicted tokens) of a `transformers` causal LM over `[n, length]` windows."""
    total, count = 0.0, 0
    for chunk in ids.split(batch):
        logits = model(input_ids=chunk, use_cache=False).logits[:, :-1].float()
        targets = chunk[:, 1:]
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return total, count


def unigram_perplexity(train_stream: torch.Tensor, val_ids: torch.Tensor) -> float:
    """Perplexity of the add-one-smoothed unigram model of the training tokens on the validation targets."""
    counts = torch.bincount(train_stream, minlength=VOCAB).double() + 1
    log_probs = (counts / counts.sum()).log()
    return math.exp(-log_probs[val_ids[:, 1:].flatten()].mean().item())


def _zero_output(module, args, output):
    """Forward hook: the module contributes nothing (tuple outputs: the first element is zeroed)."""
    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]), *output[1:])
    return torch.zeros_like(output)


def _identity_layer(module, args, kwargs, output):
    """Forward hook (with kwargs) on a decoder layer: the layer returns its input hidden states."""
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def ablations(model) -> dict[str, list[tuple[str, torch.nn.Module]]]:
    """The group ablations of the published protocol for this model, as (hook kind, module) lists.

    Kinds: "zero" (the module's output is zeroed) and "skip" (the decoder layer is the identity).
    """
    layers = model.model.layers
    if model.config.model_type == "falcon_h1":
        return {
            "ssm_off: zero the Mamba-2 path of every block": [("zero", layer.mamba) for layer in layers],
            "attn_off: zero the attention path of every block": [("zero", layer.self_attn) for layer in layers],
        }
    if model.config.model_type == "qwen3_5_text":
        kinds = model.config.layer_types
        linear = [layer for layer, kind in zip(layers, kinds) if kind == "linear_attention"]
        full = [layer for layer, kind in zip(layers, kinds) if kind == "full_attention"]
        return {
            f"linear_off: skip the {len(linear)} Gated DeltaNet layers": [("skip", layer) for layer in linear],
            f"attn_off: skip the {len(full)} full-attention layers": [("skip", layer) for layer in full],
            "linear_mixer_off: zero the Gated DeltaNet outputs, keep the MLPs": [
                ("zero", layer.linear_attn) for layer in linear],
            "attn_mixer_off: zero the full-attention outputs, keep the MLPs": [("zero", layer.self_attn) for layer in full],
        }
    return {
        "attn_mixer_off: zero the attention output of every layer, keep the MLPs": [
            ("zero", layer.self_attn) for layer in layers],
        "skip layers 3, 7 (the full-attention positions of tiny-qwen3.5)": [("skip", layers[i]) for i in (3, 7)],
        "skip layers 0-2, 4-6 (the linear-attention positions of tiny-qwen3.5)": [
            ("skip", layers[i]) for i in (0, 1, 2, 4, 5, 6)],
    }


@contextlib.contextmanager
def ablated(targets: list[tuple[str, torch.nn.Module]]):
    """Register the forward hooks of one ablation for the duration of the block."""
    handles = [module.register_forward_hook(_zero_output) if kind == "zero"
               else module.register_forward_hook(_identity_layer, with_kwargs=True) for kind, module in targets]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def evaluate(model, train_stream: torch.Tensor, val_ids: torch.Tensor) -> dict:
    """Validation perplexity (all windows and the first `HEAD_WINDOWS`), unigram baseline, ablation ratios."""
    nll, count = window_nll(model, val_ids)
    head_nll, head_count = window_nll(model, val_ids[:HEAD_WINDOWS])
    ratios = {}
    for label, targets in ablations(model).items():
        with ablated(targets):
            ablated_nll, _ = window_nll(model, val_ids)
        ratios[label] = math.exp((ablated_nll - nll) / count)
    return dict(
        val_ppl=math.exp(nll / count), val_tokens=count, val_ppl_head=math.exp(head_nll / head_count),
        val_tokens_head=head_count, unigram_ppl=unigram_perplexity(train_stream, val_ids),
        unigram_method="add-one-smoothed unigram distribution of the training tokens, on the same predicted tokens",
        ablation_ppl_ratios=ratios,
        val_method=(f"every {VALIDATION_EVERY}th passage of {PASSAGE} consecutive verses, joined by newlines (zoo.load_validation_text()), "
                    f"tokenized once, cut into non-overlapping {SEQ_LEN}-token windows (tail dropped); "
                    f"perplexity = exp(mean next-token NLL over all predicted tokens, {SEQ_LEN - 1} per window), "
                    "computed in float32; "
                    f"val_ppl_head: the same over the first {HEAD_WINDOWS} windows"),
        ablation_method=("validation perplexity with plain torch forward hooks on the transformers modules "
                         "(zero: the module returns zeros; skip: the decoder layer returns its input), "
                         "as a multiple of the unablated validation perplexity"),
    )


MIXER_MODULES = {"attn_zero": "self_attn", "linear_attn_zero": "linear_attn", "ssm_zero": "mamba"}


@torch.no_grad()
def recall_tables(model, n: int = RECALL_EVAL_ROWS, batch: int = 16):
    """Recall accuracy of a plain `transformers` model on the `recall.grid` tasks (`n` rows each), clean and
    with each mixer kind's output zeroed in every layer by plain forward hooks (`attn_zero`: `self_attn`,
    `linear_attn_zero`: Gated DeltaNet, `ssm_zero`: Mamba-2; MLPs kept), as `recall.tabulate` rows. The
    names are those of `hybrid_lens.evals.recall.group_ablations`, which must agree (tests)."""
    conditions = {"clean": []}
    for name, attribute in MIXER_MODULES.items():
        modules = [getattr(layer, attribute) for layer in model.model.layers if hasattr(layer, attribute)]
        if modules:
            conditions[name] = [("zero", module) for module in modules]
    parts = []
    for name, targets in conditions.items():
        with ablated(targets):
            for task in recall.grid(n):
                predicted = torch.cat([model(input_ids=rows, use_cache=False).logits.argmax(-1)
                                       for rows in task.tokens.split(batch)])
                parts.append(recall.scored(task, predicted, name))
    return recall.tabulate(pd.concat(parts))


def progress_monitor(head_ids: torch.Tensor, n: int = 32):
    """A `train_model` monitor that prints the perplexity on `head_ids` and greedy MQAR-8 and induction
    (distance 32) accuracy on `n` rows each (their own seeds, so the training draws do not change)."""
    tasks = {"mqar8": recall.mqar(n, pairs=8, seed=1), "ind32": recall.induction(n, recall.INDUCTION_LENGTH, gap=24, seed=1)}

    def monitor(step: int, model) -> None:
        nll, count = window_nll(model, head_ids)
        shown = " ".join(f"{name} {recall.scored(task, model(input_ids=task.tokens, use_cache=False).logits.argmax(-1)).correct.mean():.3f}"
                         for name, task in tasks.items())
        print(f"monitor step {step} ppl_head {math.exp(nll / count):.3f} {shown}", flush=True)

    return monitor


def recall_metrics(model, n: int = RECALL_EVAL_ROWS) -> dict:
    """The model card's recall accuracy by distance (induction) and number of pairs (MQAR), per condition."""
    table = recall_tables(model, n)

    def by(task: str) -> dict[str, dict[str, float]]:
        rows = table[table.task == task]
        return {condition: {str(int(size)): float(acc) for size, acc in zip(part["size" if task == "mqar" else "distance"],
                                                                            part.accuracy)}
                for condition, part in rows.groupby("condition", sort=False)}

    return dict(
        recall_induction_by_distance=by("induction"), recall_mqar_by_pairs=by("mqar"), recall_rows_per_task=n,
        recall_method=(f"greedy accuracy (the argmax of the logits is the answer) on hybrid_lens.zoo.recall tasks of "
                       f"random ids {recall.FIRST_ID}-{recall.VOCAB - 1}, {n} rows per cell (recall.grid(n={n}), "
                       f"seed 0): induction of {recall.INDUCTION_LENGTH} tokens repeated at each distance "
                       f"({recall.INDUCTION_LENGTH - 1} queries per row; the gap drawn from the other ids), MQAR with "
                       "each number of key-value pairs (every key queried once); clean, and with each mixer kind's "
                       "output zeroed in every layer by plain torch forward hooks (MLPs and other mixers kept; "
                       "`hybrid_lens.evals.recall.recall_tables` gives the same through HookedHybrid's `zero(kind)`)"),
    )


def build(name: str, out: Path, tokenizer: PreTrainedTokenizerFast, steps: int | None = None) -> dict:
    """Train one model (`STEPS[name]` steps unless given), save weights (safetensors) and tokenizer to
    `out`, write metrics.json and README.md; return the metrics.

    The language models (`MODELS`) train on the text from scratch; the recall language models
    (`RECALL_MODELS`) continue their language model on `RECALL_BATCH` text windows plus `RECALL_ROWS` recall
    rows a step at `RECALL_LR`; the planted-mechanism models (`PLANTED`) train from scratch on `PLANTED_ROWS` recall rows a
    step only."""
    steps = steps or STEPS[name]
    planted, base = name in PLANTED, RECALL_MODELS.get(name)
    train_texts, val_texts = split_verses()
    train_stream = token_stream(tokenizer, train_texts)
    val_ids = windows(token_stream(tokenizer, val_texts))
    start, cpu_start = time.perf_counter(), time.process_time()
    if planted:
        batch, rows, lr, text = 0, PLANTED_ROWS, LR, None
    else:
        batch, rows, lr, text = (RECALL_BATCH, RECALL_ROWS, RECALL_LR, train_stream) if base else (BATCH, 0, LR, train_stream)
    start_path = checkpoint_path(base) if base else None
    config = AutoConfig.from_pretrained(start_path) if base else model_config(name)
    monitor = progress_monitor(val_ids[:HEAD_WINDOWS]) if base else None
    model, losses = train_model(config, text, steps, batch=batch, lr=lr, recall_rows=rows, start=start_path,
                                monitor=monitor)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    out.mkdir(parents=True, exist_ok=True)
    # Weights are stored in bfloat16 (half the size); the config keeps float32, so the checkpoint
    # loads as float32 by default, and it is evaluated exactly as loaded.
    bf16 = {key: value.to(torch.bfloat16) for key, value in model.state_dict().items()}
    model.save_pretrained(out, safe_serialization=True, state_dict=bf16)
    tokenizer.save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    n_params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel() * (1 if model.config.tie_word_embeddings else 2)
    metrics = dict(
        model=f"hybrid-lens/{name}", architecture=type(model).__name__, n_params=n_params,
        n_params_non_embedding=n_params - embedding, n_layers=model.config.num_hidden_layers,
        hidden_size=model.config.hidden_size, vocab_size=VOCAB, train_dtype="float32", stored_dtype="bfloat16",
        steps=steps, batch=batch, seq_len=RECALL_LENGTH if planted else SEQ_LEN, tokens_seen=steps * batch * SEQ_LEN,
        train_tokens_available=train_stream.numel(), lr=lr, seed=SEED,
        train_loss_per_50_steps=[round(sum(losses[i : i + 50]) / len(losses[i : i + 50]), 3)
                                 for i in range(0, steps, 50)],
        mean_train_loss_last_50=sum(losses[-50:]) / len(losses[-50:]),
        train_seconds=round(seconds, 1), train_cpu_seconds=round(cpu_seconds, 1),
        hardware=f"{_cpu_name()} ({os.cpu_count()} cores), {torch.get_num_threads()} torch thread",
        versions=dict(torch=torch.__version__, transformers=transformers.__version__, tokenizers=tokenizers.__version__),
        **({} if planted else evaluate(model, train_stream, val_ids)),
    )
    if rows:
        metrics.update(recall_rows=rows, recall_length=RECALL_LENGTH, recall_alphabet=recall.ALPHABET,
                       recall_tokens_seen=steps * rows * RECALL_LENGTH, **recall_metrics(model))
    if base:
        reference = json.loads((start_path / "metrics.json").read_text())
        metrics.update(continued_from=f"hybrid-lens/{base}", base_val_ppl=reference["val_ppl"],
                       val_ppl_vs_base=metrics["val_ppl"] / reference["val_ppl"],
                       base_ablation_ppl_ratios=reference["ablation_ppl_ratios"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    card = planted_card if planted else recall_card if base else model_card
    (out / "README.md").write_text(card(metrics))
    return metrics


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _table(by: dict[str, dict[str, float]], header: str) -> str:
    """A markdown table of accuracies: one row per key of the inner dicts, one column per condition."""
    conditions = list(by)
    lines = [f"| {header} | {' | '.join(conditions)} |", "|---" * (len(conditions) + 1) + "|"]
    lines += [f"| {key} | {' | '.join(f'{by[c][key]:.2f}' for c in conditions)} |" for key in by[conditions[0]]]
    return "\n".join(lines)


def recall_section(m: dict) -> str:
    """The model card's recall tables (accuracy by distance and by number of pairs, per condition)."""
    return f"""## In-context recall

Method: {m['recall_method']}.

Induction, accuracy by distance (tokens from a query's first occurrence to the query):

{_table(m['recall_induction_by_distance'], 'distance')}

Multi-query associative recall (MQAR), accuracy by number of key-value pairs:

{_table(m['recall_mqar_by_pairs'], 'pairs')}
"""


def model_card(m: dict) -> str:
    """The model card (README.md) of a checkpoint, from its metrics."""
    ratios = "\n".join(f"| {label} | {ratio:,.2f}x |" for label, ratio in m["ablation_ppl_ratios"].items())
    return f"""# {m['model']}

A small `transformers.{m['architecture']}` ({m['n_layers']} layers, hidden size {m['hidden_size']}) trained
from scratch by hybrid-lens for offline demos and tests of interpretability tools. It has real learned
structure but is not a useful language model.

Rebuild: `python -m hybrid_lens.zoo.train --model {m['model'].split('/')[1]}` (seeded; same result on the same software).

| | |
|---|---|
| training text | King James Bible (public domain, Debian package bible-kjv-text), one verse a line, references stripped; every {VALIDATION_EVERY}th passage of {PASSAGE} consecutive verses held out for validation |
| tokenizer | byte-level BPE, {m['vocab_size']} tokens, trained on the training split (shared by the three bundled models) |
| parameters | {m['n_params']:,} ({m['n_params_non_embedding']:,} non-embedding) |
| training | {m['steps']} steps x batch {m['batch']} x {m['seq_len']} tokens = {m['tokens_seen']:,} tokens seen ({m['tokens_seen'] / m['train_tokens_available']:.2f} epochs); AdamW, lr {m['lr']}, warmup + cosine, {m['train_dtype']}, seed {m['seed']} |
| storage | safetensors, weights in {m['stored_dtype']}; the config says float32, so it loads (and was evaluated) in float32 |
| training time | {m['train_seconds']:.0f} s wall ({m['train_cpu_seconds']:.0f} s of CPU time) on {m['hardware']} |
| validation perplexity | **{m['val_ppl']:.2f}** over {m['val_tokens']:,} predicted tokens |
| unigram perplexity (same tokenizer, same tokens) | {m['unigram_ppl']:.1f} |
| final training loss (mean of last 50 steps) | {m['mean_train_loss_last_50']:.3f} (validation loss {math.log(m['val_ppl']):.3f}) |

Validation perplexity: {m['val_method']}.

## Validation perplexity under group ablation (multiple of the baseline)

{m['ablation_method']}.

| condition | perplexity ratio |
|---|---|
{ratios}

Versions: torch {m['versions']['torch']}, transformers {m['versions']['transformers']}, tokenizers {m['versions']['tokenizers']}.
"""


def _rows(m: dict) -> str:
    """The card rows every recall model has: parameters, storage, training time."""
    return f"""| parameters | {m['n_params']:,} ({m['n_params_non_embedding']:,} non-embedding) |
| storage | safetensors, weights in {m['stored_dtype']}; the config says float32, so it loads (and was evaluated) in float32 |
| training time | {m['train_seconds']:.0f} s wall ({m['train_cpu_seconds']:.0f} s of CPU time) on {m['hardware']} |"""


RECALL_ROWS_TEXT = ("`recall.training_rows`: induction, repeated-sequence and MQAR episodes of random ids of a "
                    "{alphabet}-id alphabet packed into {length}-token rows; the loss is on the answers only")
VERSIONS = ("Versions: torch {torch}, transformers {transformers}, tokenizers {tokenizers}.\n")


def recall_card(m: dict) -> str:
    """The model card (README.md) of a recall language model (`RECALL_MODELS`), from its metrics."""
    name = m["model"].split("/")[1]
    ratios = "\n".join(f"| {label} | {ratio:,.2f}x | {m['base_ablation_ppl_ratios'].get(label, float('nan')):,.2f}x |"
                       for label, ratio in m["ablation_ppl_ratios"].items())
    return f"""# {m['model']}

`{m['continued_from']}` (a small `transformers.{m['architecture']}`, {m['n_layers']} layers, hidden size
{m['hidden_size']}) trained further by hybrid-lens on its King James text mixed with synthetic in-context recall
rows, so that it recalls in context while keeping its perplexity: a language model whose recall circuits can be
studied beside its text ability (the planted-mechanism models recall without any text). Not a useful language
model.

Rebuild: `python -m hybrid_lens.zoo.train --model {name}` (seeded; starts from the bundled `{m['continued_from']}`).

| | |
|---|---|
| continued from | `{m['continued_from']}` (same architecture, weights and tokenizer) |
| training text | King James Bible, the training split of `{m['continued_from']}`; every {VALIDATION_EVERY}th passage of {PASSAGE} consecutive verses held out |
| recall rows | {RECALL_ROWS_TEXT.format(alphabet=m['recall_alphabet'], length=m['recall_length'])}; {m['recall_rows']} a step beside the text (objective: mean text loss + mean answer loss) |
| training | {m['steps']} steps x (batch {m['batch']} text windows of {m['seq_len']} tokens + {m['recall_rows']} recall rows of {m['recall_length']}) = {m['tokens_seen']:,} text tokens + {m['recall_tokens_seen']:,} recall tokens; AdamW, peak lr {m['lr']}, warmup + cosine, {m['train_dtype']}, seed {m['seed']} |
{_rows(m)}
| validation perplexity | **{m['val_ppl']:.2f}** ({m['val_ppl_vs_base']:.3f}x the {m['base_val_ppl']:.2f} of `{m['continued_from']}`) over {m['val_tokens']:,} predicted tokens |
| unigram perplexity (same tokenizer, same tokens) | {m['unigram_ppl']:.1f} |
| final training loss on the text (mean of last 50 steps) | {m['mean_train_loss_last_50']:.3f} (validation loss {math.log(m['val_ppl']):.3f}) |

Validation perplexity: {m['val_method']}.

## Validation perplexity under group ablation (multiple of the baseline)

{m['ablation_method']}.

| condition | perplexity ratio | `{m['continued_from']}` |
|---|---|---|
{ratios}

{recall_section(m)}
{VERSIONS.format(**m['versions'])}"""


def planted_card(m: dict) -> str:
    """The model card (README.md) of a planted-mechanism model (`PLANTED`), from its metrics."""
    name = m["model"].split("/")[1]
    return f"""# {m['model']}

A small `transformers.{m['architecture']}` ({m['n_layers']} layers, hidden size {m['hidden_size']}) trained from
scratch by hybrid-lens on synthetic in-context recall rows only (no text): a planted mechanism, the ground truth
of circuit discovery's validation (`benchmarks/circuit_validation.py`). Group ablations (below) show which mixer
carries recall.

Rebuild: `python -m hybrid_lens.zoo.train --model {name}` (seeded; same result on the same software).

| | |
|---|---|
| training data | {RECALL_ROWS_TEXT.format(alphabet=m['recall_alphabet'], length=m['recall_length'])}; {m['recall_rows']} rows a step, nothing else |
| tokenizer | the bundled byte-level BPE ({m['vocab_size']} tokens), shipped so that the model loads like the others; the model never saw text |
| training | {m['steps']} steps x {m['recall_rows']} rows x {m['recall_length']} tokens = {m['recall_tokens_seen']:,} tokens; AdamW, lr {m['lr']}, warmup + cosine, {m['train_dtype']}, seed {m['seed']} |
{_rows(m)}
| final training loss on the answers (mean of last 50 steps) | {m['mean_train_loss_last_50']:.3f} |

{recall_section(m)}
{VERSIONS.format(**m['versions'])}"""


def main(argv: list[str] | None = None) -> None:
    """Command line: train the named models (or the three language models, or the recall models) into `--out/<name>/`."""
    parser = argparse.ArgumentParser(description="Train the bundled hybrid-lens models.")
    parser.add_argument("--model", choices=(*MODELS, *RECALL_MODELS, *PLANTED), action="append",
                        help="Model to train (repeatable).")
    parser.add_argument("--all", action="store_true", help="Train the three language models.")
    parser.add_argument("--recall", action="store_true",
                        help="Train the recall models: the planted-mechanism ones, then the recall language models.")
    parser.add_argument("--steps", type=int, help=f"Optimizer steps for every model (default: {STEPS}).")
    parser.add_argument("--out", type=Path, default=HERE / "checkpoints",
                        help="Parent folder; each model goes to OUT/<name>/ (default: the bundled checkpoints).")
    args = parser.parse_args(argv)
    names = [*(MODELS if args.all else ()), *((*PLANTED, *RECALL_MODELS) if args.recall else ()), *(args.model or ())]
    if not names:
        parser.error("give --model NAME, --all or --recall")
    torch.set_num_threads(1)
    tokenizer = train_tokenizer(split_verses()[0])
    for name in names:
        metrics = build(name, args.out / name, tokenizer, args.steps)
        keys = ("model", "n_params", "val_ppl", "val_ppl_vs_base", "unigram_ppl", "train_seconds", "ablation_ppl_ratios",
                "recall_induction_by_distance", "recall_mqar_by_pairs")
        print(json.dumps({key: metrics[key] for key in keys if key in metrics}), flush=True)


if __name__ == "__main__":
    main()
