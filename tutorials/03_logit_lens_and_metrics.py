# %% [markdown]
# # 3. Logit lens, hidden-state metrics and per-token component contribution

# %%
from hybrid_lens import HookedHybrid
from hybrid_lens.analysis import contributions_html, layer_metrics, logit_lens_top_k, token_contributions
from hybrid_lens.zoo import load_validation_text

model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
tokens = model.to_tokens(load_validation_text()[:4000])[:, :512]   # the study uses 512 tokens

# %% Per-layer metrics: norm change, cosine, output ratio per component, ablation KL, logit-lens KL
table = layer_metrics(model, tokens)
print(table.pivot_table(index="layer", columns=["metric", "component"], values="value").round(3))

# %% Plain logit lens: what each layer would predict after "And God"
_, cache = model.run_with_cache("And God said unto")
print(logit_lens_top_k(model, cache, k=3).head(12))

# %% Per-token view: which path (SSM or attention) dominates each layer's update at each token
short = tokens[:, :48]
_, cache = model.run_with_cache(short)
contributions = token_contributions(model, cache, short)
html = contributions_html(contributions)
print(contributions.head(), f"\n{len(html)} characters of HTML (display with IPython.display.HTML)")
