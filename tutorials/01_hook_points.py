# %% [markdown]
# # 1. Hook points on three architectures
# The same canonical names on a sequential hybrid (Qwen3.5), a parallel hybrid (Falcon-H1) and a
# transformer (Qwen2.5): list them, cache a run, decompose the residual stream.

# %%
import torch

from hybrid_lens import HookedHybrid

models = {name: HookedHybrid.from_pretrained(f"hybrid-lens/{name}")
          for name in ("tiny-qwen3.5", "tiny-falcon-h1", "tiny-qwen2.5")}
text = "And God said, Let there be light: and there was light."

# %% Layer kinds are read from each config
for name, model in models.items():
    print(f"{name:15s} {model.layer_types}")

# %% Block-level names of block 3 in each family
for name, model in models.items():
    print(name, [n for n in model.hook_names(inner=False) if n.startswith("blocks.3.")])

# %% Cache a run and decompose the final residual stream into labelled contributions
for name, model in models.items():
    logits, cache = model.run_with_cache(text)
    parts, labels = cache.decompose_resid(return_labels=True)
    final = cache[f"blocks.{model.n_layers - 1}.hook_resid_post"]
    assert torch.allclose(parts.sum(0), final, atol=1e-4)
    norms = parts[:, 0, -1].norm(dim=-1)
    top = sorted(zip(labels, norms.tolist()), key=lambda item: -item[1])[:4]
    print(f"{name}: largest contributions at the last token: {[(l, round(v, 2)) for l, v in top]}")

# %% Compare mixer kinds side by side: mean output norm per component kind
for name, model in models.items():
    _, cache = model.run_with_cache(text)
    kinds = model.layout.kinds()  # the component kinds of the model's layers, e.g. ['ssm', 'attn', 'mlp']
    print(name, {kind: round(cache.stack(kind).norm(dim=-1).mean().item(), 3) for kind in sorted(kinds)})
