"""Train the bundled models: same data, seed and settings give the same checkpoint.

    python -m hybrid_lens.zoo.train --all                 # all three, into hybrid_lens/zoo/checkpoints
    python -m hybrid_lens.zoo.train --model tiny-qwen3.5 --out DIR

The three architectures are the real `transformers` classes at small size: Qwen3.5 with its 3:1
Gated DeltaNet : gated-attention pattern, Falcon-H1 with parallel Mamba-2 + attention blocks and
the published muP multipliers, Qwen2.5 with plain blocks. One byte-level BPE tokenizer (4096
tokens) is trained on the training split and shipped with each model.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from ..configs import reference_config
from . import HERE, split_verses

VOCAB = 4096
SEQ_LEN = 256
SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
COMMON = dict(hidden_size=128, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
              max_position_embeddings=2048, dtype="float32", torch_dtype="float32")
ARCHITECTURES = {
    "tiny-qwen3.5": ("qwen3_5", dict(
        num_hidden_layers=8, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        linear_num_key_heads=4, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32,
        layer_types=["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"],
        tie_word_embeddings=True)),
    "tiny-falcon-h1": ("falcon_h1", dict(
        num_hidden_layers=12, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        mamba_d_ssm=128, mamba_n_heads=4, mamba_d_head=32, mamba_d_state=32, mamba_chunk_size=64)),
    "tiny-qwen2.5": ("qwen2", dict(
        num_hidden_layers=8, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2,
        max_window_layers=8, tie_word_embeddings=True)),
}


def model_config(name: str):
    """The published config of the family with the small sizes above (multipliers and flags kept)."""
    family, sizes = ARCHITECTURES[name]
    data = reference_config(family).to_dict()
    data.pop("layer_types", None)
    data.update(COMMON, **sizes)
    if family == "qwen3_5":
        data["rope_parameters"] = dict(data["rope_parameters"], mrope_section=[2, 1, 1])
    return AutoConfig.for_model(data.pop("model_type"), **data)


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE with `VOCAB` tokens; ids 0/1/2 are pad/bos/eos."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL)


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts joined by newlines, tokenized once, as a 1-D LongTensor."""
    return torch.tensor(tokenizer("\n".join(texts))["input_ids"], dtype=torch.long)


def windows(stream: torch.Tensor, length: int = SEQ_LEN) -> torch.Tensor:
    """Non-overlapping `[n, length]` windows (the tail is dropped)."""
    n = stream.numel() // length
    return stream[: n * length].view(n, length)


def train_model(name: str, train_stream: torch.Tensor, steps: int, batch: int = 8, lr: float = 3e-3,
                seed: int = 0, log_every: int = 50) -> tuple[torch.nn.Module, list[float]]:
    """AdamW with warmup and cosine decay on random windows drawn from a seeded generator."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(name), dtype=torch.float32)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    losses = []
    for step in range(steps):
        starts = torch.randint(0, train_stream.numel() - SEQ_LEN - 1, (batch,), generator=generator)
        ids = torch.stack([train_stream[s : s + SEQ_LEN] for s in starts.tolist()])
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log_every and step % log_every == 0:
            print(f"{name} step {step}/{steps} loss {loss.item():.3f}", flush=True)
    return model.eval(), losses


@torch.no_grad()
def window_nll(model, ids: torch.Tensor, batch: int = 16) -> tuple[float, int]:
    """Sum of next-token NLL and number of predicted tokens over `[n, length]` windows."""
    total, count = 0.0, 0
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        logits = model(chunk)[:, :-1] if callable(getattr(model, "run_with_hooks", None)) else model(chunk, use_cache=False).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), chunk[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += chunk[:, 1:].numel()
    return total, count


def unigram_perplexity(train_stream: torch.Tensor, val_ids: torch.Tensor) -> float:
    """Perplexity of an add-one-smoothed unigram model of the training tokens on the validation targets."""
    counts = torch.bincount(train_stream, minlength=VOCAB).double() + 1
    log_probs = (counts / counts.sum()).log()
    return float(torch.exp(-log_probs[val_ids[:, 1:].reshape(-1)].mean()))


def ablation_ratios(folder: Path, val_ids: torch.Tensor, base_nll: float) -> dict[str, float]:
    """Validation perplexity ratios under the group ablations of the published protocol."""
    from ..interventions import skip_layer, zero
    from ..model import HookedHybrid

    model = HookedHybrid.from_pretrained(str(folder), dtype=torch.float32)
    kinds = {k for mixers in model.layer_mixers for k in mixers}
    conditions = {}
    if "ssm" in kinds:
        conditions["ssm_off (zero SSM path, all blocks)"] = zero("ssm")
        conditions["attn_off (zero attention path, all blocks)"] = zero("attn")
    elif "linear_attn" in kinds:
        linear = [c.layer for c in model.components("linear_attn")]
        full = [c.layer for c in model.components("attn")]
        conditions["linear_off (skip linear-attention layers)"] = skip_layer(linear)
        conditions["attn_off (skip full-attention layers)"] = skip_layer(full)
        conditions["linear_mixer_off (zero Gated DeltaNet outputs, keep MLPs)"] = zero("linear_attn")
        conditions["attn_mixer_off (zero attention outputs, keep MLPs)"] = zero("attn")
    else:
        conditions["attn_off (zero attention outputs, all layers)"] = zero("attn")
        conditions["skip 2 of 8 layers (1, 5)"] = skip_layer([1, 5])
    ratios = {}
    for label, condition in conditions.items():
        with condition.apply(model):
            nll, count = window_nll(model, val_ids)
        ratios[label] = math.exp(nll / count - base_nll)
    return ratios


def build(name: str, out: Path, steps: int, tokenizer=None) -> dict:
    """Train one model, save it with tokenizer, model card and metrics; return the metrics."""
    train_texts, val_texts = split_verses()
    tokenizer = tokenizer or train_tokenizer(train_texts)
    train_stream = token_stream(tokenizer, train_texts)
    val_ids = windows(token_stream(tokenizer, val_texts))
    start = time.perf_counter()
    model, losses = train_model(name, train_stream, steps)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    nll, count = window_nll(model, val_ids)
    head_nll, head_count = window_nll(model, val_ids[:16])
    metrics = dict(
        model=name, architecture=type(model).__name__, n_params=sum(p.numel() for p in model.parameters()),
        steps=steps, batch=8, seq_len=SEQ_LEN, tokens_seen=steps * 8 * SEQ_LEN, train_seconds=round(seconds, 1),
        hardware=f"{platform.machine()} CPU, {torch.get_num_threads()} threads", final_train_loss=losses[-1],
        val_tokens=count, val_ppl=math.exp(nll / count), val_ppl_head=math.exp(head_nll / head_count),
        val_method=f"non-overlapping {SEQ_LEN}-token windows over the held-out verses; mean NLL of all predicted tokens",
        unigram_ppl=unigram_perplexity(train_stream, val_ids),
        ablation_ppl_ratios=ablation_ratios(out, val_ids, nll / count),
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "README.md").write_text(model_card(metrics))
    return metrics


def model_card(m: dict) -> str:
    ratios = "\n".join(f"| {k} | {v:,.2f}x |" for k, v in m["ablation_ppl_ratios"].items())
    return f"""# hybrid-lens/{m['model']}

A small `{m['architecture']}` trained by hybrid-lens (`python -m hybrid_lens.zoo.train --model {m['model']}`)
for offline demos and tests. Not a useful language model: a fixture with real, non-random structure.

- Training text: King James Bible (public domain), every 40th verse held out for validation.
- Tokenizer: byte-level BPE, 4096 tokens, trained on the training split.
- Parameters: {m['n_params']:,}; steps: {m['steps']} x batch {m['batch']} x {m['seq_len']} tokens = {m['tokens_seen']:,} tokens seen.
- Training time: {m['train_seconds']:.0f} s on {m['hardware']}.
- Validation perplexity: **{m['val_ppl']:.2f}** ({m['val_tokens']:,} tokens; {m['val_method']}).
- Unigram model of the same tokenizer on the same tokens: {m['unigram_ppl']:.1f}.

## Validation perplexity under group ablation (multiple of baseline)

| condition | ratio |
|---|---|
{ratios}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the bundled hybrid-lens models.")
    parser.add_argument("--model", choices=list(ARCHITECTURES), action="append")
    parser.add_argument("--all", action="store_true", help="Train all three.")
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--out", type=Path, default=HERE / "checkpoints", help="Parent folder of the checkpoints.")
    args = parser.parse_args()
    names = list(ARCHITECTURES) if args.all else (args.model or parser.error("give --model NAME or --all"))
    tokenizer = train_tokenizer(split_verses()[0])
    for name in names:
        metrics = build(name, args.out / name, args.steps, tokenizer)
        print(json.dumps({k: metrics[k] for k in ("model", "n_params", "val_ppl", "unigram_ppl", "train_seconds")}))


if __name__ == "__main__":
    main()
