# %% [markdown]
# # 6. Circuits inside linear mixers
# Which mixers carry a token-to-token route in the bundled hybrids (Gated DeltaNet + attention in
# tiny-qwen3.5, Mamba-2 + attention in tiny-falcon-h1)? Activation patching and its gradient
# approximation find the components, the implicit attention patterns of the linear mixers show
# which earlier token each position reads, edge knockout cuts one route, and state patching swaps
# what a recurrent memory holds.

# %%
import torch
from scipy.stats import spearmanr

from hybrid_lens import HookedHybrid
from hybrid_lens.interventions import (Condition, Patch, Selector, attribution_patch, knockout, logit_diff_metric,
                                       patch, patch_state, run_conditions)
from hybrid_lens.viz import SignedPattern
from hybrid_lens.zoo import load_validation_text

torch.set_num_threads(1)
models = {name: HookedHybrid.from_pretrained(f"hybrid-lens/{name}") for name in ("tiny-qwen3.5", "tiny-falcon-h1")}

# %% [markdown]
# ## Do they copy in context?
# The classic circuit task repeats a sequence: an induction mechanism predicts the second copy
# from the first. These 3M-parameter models barely do it: the loss on the repeat falls by about 0.1
# nats only, so we study a task they solve instead.

# %%
with torch.no_grad():
    for name, model in models.items():
        ids = model.to_tokens(load_validation_text()[:4000])[0]
        first = torch.stack([ids[i * 100 : i * 100 + 16] for i in range(8)])   # 8 passages of 16 tokens
        loss = model(torch.cat([first, first], 1), return_type="loss", loss_per_token=True)
        print(f"{name}: loss on the first copy {loss[:, :15].mean():.2f}, on the repeat {loss[:, 16:].mean():.2f}")

# %% [markdown]
# ## The task: "out of the land of" -> " Egypt"
# In the clean prompt the last token's prediction depends on the token two positions back
# ("land" vs "city"). The metric is the logit difference between " Egypt" and " the" (the corrupt
# prompt's favourite) at the last position.

# %%
clean = "the children of Israel went out of the land of"
corrupt = "the children of Israel went out of the city of"
for name, model in models.items():
    metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
    with torch.no_grad():
        print(f"{name}: logit diff clean {metric(model(clean)):.2f}, corrupt {metric(model(corrupt)):.2f}")

# %% [markdown]
# ## Activation patching and attribution patching
# `patch` runs one forward pass per (component, position); `attribution_patch` estimates the same
# table from one clean forward and one corrupted forward + backward.

# %%
tables = {}
for name, model in models.items():
    metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
    exact = patch(model, clean, corrupt, positions="each", metric=metric, progress=False)
    estimate = attribution_patch(model, clean, corrupt, positions="each", metric=metric)
    tables[name] = exact
    rho = spearmanr(exact.metric, estimate.metric).statistic
    print(f"{name}: {len(exact)} patched runs; rank correlation of attribution patching with them: {rho:.2f}")
    mixers = exact[exact.kind.isin(["attn", "linear_attn", "ssm"])]
    print(mixers.sort_values("metric", ascending=False).head(5).to_string(index=False))

# %% [markdown]
# ## Implicit attention: which token does the last position read?
# `hook_pattern` on `linear_attn` (Gated DeltaNet, delta rule folded in) and `ssm` (the Mamba-2
# semiseparable matrix) is an exact token-to-token matrix: the mixer's recurrence output is
# `pattern @ values`. Below: how strongly each layer's last position reads the "land" token.
# Unlike a softmax pattern it is signed and unnormalised, so `hybrid_lens.viz.SignedPattern` scales each
# head by its largest |weight| off the diagonal (in Mamba-2 the diagonal, each token reading itself, is
# far larger) and renders it with circuitsvis on a diverging scale: blue reads positively, red negatively.
# In a notebook `html` shows the heads; `open("pattern.html", "w").write(str(html))` saves them.

# %%
for name, model in models.items():
    kind = "linear_attn" if name == "tiny-qwen3.5" else "ssm"
    T = model.to_tokens(clean).shape[1]
    _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith(f"{kind}.hook_pattern"))
    for layer in model.layout.layers_with(kind):
        pattern = cache[f"blocks.{layer}.{kind}.hook_pattern"][0]          # [head, query, key]
        share = pattern[:, -1, T - 2].abs() / pattern[:, -1].abs().sum(-1)   # |weight on "land"| / total
        print(f"{name} {kind} layer {layer}: share of the last position's |weights| on 'land', per head "
              f"{[round(float(s), 2) for s in share]}")
    layer = model.layout.layers_with(kind)[0]
    pattern = cache[f"blocks.{layer}.{kind}.hook_pattern"][0]
    signed = SignedPattern.of(pattern, layer=layer)
    html = signed.html(model.to_str_tokens(clean))
    print(f"{name} {kind} layer {layer}: weights from {pattern.min():.3g} to {pattern.max():.3g}; shown per head as "
          f"{', '.join(signed.names)} ({len(str(html))} characters of circuitsvis HTML)")

# %% [markdown]
# ## Edge knockout: cut routes into the last position
# Softmax attention is masked before the softmax (renormalised); linear mixers run through their
# implicit attention matrix with the entries zeroed. All conditions run as one batched forward.
# Cutting the recurrence's route from "land" (or from every earlier token) in every linear mixer
# changes little: the recurrent memory is not where this route runs. Cutting every attention route
# into the last position costs more (attention reads the context), but not the route from "land".

# %%
for name, model in models.items():
    kind = "linear_attn" if name == "tiny-qwen3.5" else "ssm"
    metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
    earlier = list(range(model.to_tokens(clean).shape[1] - 1))
    cuts = [knockout(kind, keys=-2, queries=-1, name=f"{kind}: from 'land'"),
            knockout(kind, keys=earlier, queries=-1, name=f"{kind}: from every earlier token"),
            knockout("attn", keys=-2, queries=-1, name="attn: from 'land'"),
            knockout("attn", keys=earlier, queries=-1, name="attn: from every earlier token")]
    logits = run_conditions(model, clean, cuts)
    with torch.no_grad():
        print(f"{name}: clean {metric(model(clean)):.2f};",
              "; ".join(f"{cut.name} {metric(run):.2f}" for cut, run in zip(cuts, logits)))

# %% [markdown]
# ## State patching: give the corrupted run the clean memory after "land"
# `patch_state` replaces a recurrent mixer's state after one token by the clean run's; the
# recurrence then continues on the corrupted run's own later tokens ("of"). It restores nothing,
# consistent with the knockouts.

# %%
for name, model in models.items():
    kind = "linear_attn" if name == "tiny-qwen3.5" else "ssm"
    metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
    layers = model.layout.layers_with(kind)
    conditions = [patch_state(clean, kind, position=-2, layers=tuple(layers), name="every layer")]
    conditions += [patch_state(clean, kind, position=-2, layers=layer, name=f"layer {layer}") for layer in layers[:3]]
    logits = run_conditions(model, corrupt, conditions)
    with torch.no_grad():
        print(f"{name}: corrupt {metric(model(corrupt)):.2f}; state after 'land' patched in",
              ", ".join(f"{c.name} {metric(run):.2f}" for c, run in zip(conditions, logits)))

# %% [markdown]
# ## The route runs through the mixers' causal convolution
# Both mixers convolve their inputs over a 4-token window before the recurrence, so "land" reaches
# the last position's own values directly. Patching the post-convolution values of the last
# position alone (`hook_v` of Gated DeltaNet, `hook_x` of Mamba-2, in every layer) restores most of
# the clean logit difference; the keys / B projections do much less.

# %%
for name, model in models.items():
    kind, points = ("linear_attn", ["hook_v", "hook_k"]) if name == "tiny-qwen3.5" else ("ssm", ["hook_x", "hook_B"])
    metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
    conditions = [Condition.of(Selector(kind, positions=-1, point=point), Patch(clean), name=point) for point in points]
    logits = run_conditions(model, corrupt, conditions)
    print(f"{name}: last position's", ", ".join(f"{c.name} patched {metric(run):.2f}"
                                              for c, run in zip(conditions, logits)))
