# %% [markdown]
# # 2. Ablations and patching
# Zero an SSM path, skip a layer, mean-ablate, compose an ablation with activation patching, run
# many conditions in one batched forward, and do the same inside an nnsight trace.

# %%
import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.evals import perplexity
from hybrid_lens.interventions import mean, patch, patch_from, run_conditions, skip_layer, zero
from hybrid_lens.zoo import load_validation_text

model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
text = load_validation_text()[:6000]

# %% Perplexity under group ablations (the demo's headline numbers)
# Each condition gets its own name: the default names say which ablation (`ssm_zero`), not where.
baseline = perplexity(model, text, context_length=256, progress=False)
for condition in (zero("ssm", name="ssm_off (all layers)"), zero("attn", name="attn_off (all layers)"),
                  zero("ssm", layers="early", name="ssm_off (early third)"),
                  skip_layer([5, 6], name="skip layers 5, 6")):
    result = perplexity(model, text, context_length=256, condition=condition, progress=False)
    print(f"{condition.name:22s} ppl {result.ppl:9.1f}  ({result.ppl / baseline.ppl:.2f}x baseline)")

# %% Mean ablation from reference text, composed with patching the clean attention output of layer 8
clean, corrupt = "And God said unto Moses", "And God spake unto Aaron"  # same token length
reference = model.to_tokens(load_validation_text()[:2000])[:, :64]
condition = mean("ssm", reference, layers=[0, 1]) + patch_from(clean, "attn", layers=8)
with condition.apply(model):
    logits = model(corrupt)
print(condition.name, logits.shape)

# %% One batched forward for a whole layer sweep (equal to separate runs)
tokens = model.to_tokens(clean)
sweep = [zero("ssm", layer) for layer in range(model.n_layers)]
batched = run_conditions(model, tokens, sweep)
with sweep[3].apply(model):
    assert torch.allclose(batched[3], model(tokens), atol=1e-5)

# %% Activation patching over every layer x component (KL to the clean run; 0 = fully restored)
table = patch(model, clean, corrupt, progress=False)
print(table.pivot_table(index="layer", columns="kind", values="metric").round(3))

# %% The same condition inside an nnsight trace
edit = zero("ssm", layers="early").nnsight_editor(model)
view = model.nnsight()
with view.trace(tokens):
    edit(view)
    traced = view.output.save()
with zero("ssm", layers="early").apply(model):
    assert torch.equal(traced, model(tokens))
