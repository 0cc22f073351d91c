# %% [markdown]
# # 5. Sparse autoencoders with SAE-Lens on a Gated DeltaNet and a Mamba-2 mixer
# SAE-Lens trains SAEs on any `HookedRootModule` that speaks TransformerLens's calling conventions
# (`to_tokens(..., truncate=, prepend_bos=)`, `run_with_cache(..., stop_at_layer=)`,
# `forward(..., return_type="both", loss_per_token=True)`, `run_with_hooks`). `HookedHybrid` does,
# so SAE-Lens's own training runner and `run_evals` work on it unchanged. Here: a TopK SAE on the
# Gated DeltaNet output of tiny-qwen3.5 and one on the Mamba-2 output of tiny-falcon-h1, trained on
# the models' training text, evaluated on held-out text, then spliced back into the model.
#
# Needs `pip install -e ".[sae]"`: SAE-Lens 6 needs TransformerLens 3.x (hybrid-lens supports 3.0-4.x).

# %%
import importlib.util
import time

if importlib.util.find_spec("sae_lens") is None:
    raise SystemExit('Tutorial 05 needs SAE-Lens: pip install -e ".[sae]" (SAE-Lens 6, with TransformerLens 3.x).')

import torch
from datasets import Dataset
from sae_lens import (
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    TopKTrainingSAEConfig,
)
from sae_lens.evals import EvalConfig, run_evals
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.activations_store import ActivationsStore

from hybrid_lens import HookedHybrid
from hybrid_lens.zoo import split_verses

torch.manual_seed(0)
train_verses, held_out_verses = split_verses()


def passages(verses: list[str], size: int = 40) -> Dataset:
    """Raw text rows of `size` verses (joined by newlines, as the models were trained)."""
    return Dataset.from_dict({"text": ["\n".join(verses[i:i + size]) for i in range(0, len(verses), size)]})


train_text, held_out_text = passages(train_verses[:12_000]), passages(held_out_verses)
TARGETS = {"hybrid-lens/tiny-qwen3.5": "blocks.2.hook_linear_attn_out",
           "hybrid-lens/tiny-falcon-h1": "blocks.0.hook_ssm_out"}
CONTEXT, STEPS, TRAIN_BATCH = 128, 300, 512


def runner_config(name: str, hook: str) -> LanguageModelSAERunnerConfig:
    """SAE-Lens's training config: raw text, no BOS, CPU, no W&B, no checkpoints."""
    return LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=128, d_sae=1024, k=16),
        model_name=name, hook_name=hook, dataset_path="", is_dataset_tokenized=False, streaming=False,
        context_size=CONTEXT, prepend_bos=False, sequence_separator_token=None,
        training_tokens=STEPS * TRAIN_BATCH, train_batch_size_tokens=TRAIN_BATCH,
        store_batch_size_prompts=16, n_batches_in_buffer=8, lr=1e-3, lr_warm_up_steps=20,
        device="cpu", dtype="float32", seed=0, n_checkpoints=0, checkpoint_path=None, output_path=None,
        logger=LoggingConfig(log_to_wandb=False), verbose=False,
    )


# %% Train with SAE-Lens's runner on our model, then evaluate on held-out text with run_evals
results = {}
for name, hook in TARGETS.items():
    model = HookedHybrid.from_pretrained(name)
    cfg = runner_config(name, hook)
    start = time.perf_counter()
    sae = LanguageModelSAETrainingRunner(cfg, override_dataset=train_text, override_model=model).run()
    seconds = time.perf_counter() - start
    store = ActivationsStore.from_config(model, cfg, override_dataset=held_out_text)
    evals = EvalConfig(batch_size_prompts=8, n_eval_reconstruction_batches=4, n_eval_sparsity_variance_batches=4,
                       compute_ce_loss=True, compute_kl=True, compute_variance_metrics=True,
                       compute_sparsity_metrics=True)
    metrics, _ = run_evals(sae, store, model, ActivationScaler(), evals, exclude_special_tokens=False)
    results[name] = (model, sae, store, metrics)
    quality, ce = metrics["reconstruction_quality"], metrics["model_performance_preservation"]
    print(f"{name} {hook}: {STEPS} steps in {seconds:.0f}s; held-out explained variance "
          f"{quality['explained_variance']:.3f}, MSE {quality['mse']:.4f}, L0 {metrics['sparsity']['l0']:.1f}; "
          f"CE loss {ce['ce_loss_without_sae']:.3f} -> {ce['ce_loss_with_sae']:.3f} spliced "
          f"({ce['ce_loss_with_ablation']:.3f} zero-ablated; CE loss score {ce['ce_loss_score']:.3f})")
    assert quality["explained_variance"] > 0.5
    assert ce["ce_loss_with_sae"] < ce["ce_loss_with_ablation"]

# %% Splice the SAE into the model: every later forward pass runs through it until reset_saes()
for name, (model, sae, store, _) in results.items():
    hook = sae.cfg.metadata.hook_name
    tokens = store.get_batch_tokens(8)
    clean = model(tokens, return_type="loss")
    model.add_sae(sae)
    spliced = model(tokens, return_type="loss")
    logits, cache = model.run_with_cache(tokens, names_filter=f"{hook}.hook_sae_acts_post")
    features = cache[f"{hook}.hook_sae_acts_post"]                   # [batch, pos, d_sae]
    model.reset_saes()
    with model.saes(sae, use_error_term=True):                      # reconstruction + error = clean
        with_error = model(tokens, return_type="loss")
    # the same replacement as a plain hook, as SAE-Lens's run_evals does it
    hooked = model.run_with_hooks(tokens, return_type="loss",
                                  fwd_hooks=[(hook, lambda value, hook: sae.decode(sae.encode(value)))])
    print(f"{name}: loss {clean.item():.4f} clean, {spliced.item():.4f} with the SAE spliced in "
          f"({hooked.item():.4f} replacing the activation by a hook), {with_error.item():.4f} with its error "
          f"term; {int((features > 0).sum(-1).float().mean())} of {features.shape[-1]} features active per token")
    assert torch.allclose(spliced, hooked, atol=1e-5) and torch.allclose(with_error, clean, atol=1e-4)
    assert torch.equal(model(tokens, return_type="loss"), clean)     # reset: the model is untouched

# %% The most active features of the Mamba-2 SAE on a held-out passage, with their top tokens
model, sae, store, _ = results["hybrid-lens/tiny-falcon-h1"]
hook = sae.cfg.metadata.hook_name
tokens = model.to_tokens(held_out_verses[5])
_, cache = model.run_with_cache_with_saes(tokens, saes=[sae], names_filter=f"{hook}.hook_sae_acts_post")
acts = cache[f"{hook}.hook_sae_acts_post"][0]                        # [pos, d_sae]
words = model.to_str_tokens(tokens)
for feature in acts.sum(0).topk(3).indices.tolist():
    top = acts[:, feature].topk(3).indices.tolist()
    print(f"feature {feature}: strongest on {[words[i] for i in top]}")
