# %% [markdown]
# # 7. Generation under hooks, and steering
# `model.generate` (TransformerLens's signature) decodes with the `transformers` cache of every mixer
# while hooks, conditions and SAEs act in the prompt pass and in every step. We ablate a model's
# linear attention while it writes, steer it with a direction read off two prompts, watch a
# recurrent state token by token, and do the same steering inside an nnsight `.generate()` trace.

# %%
import warnings

import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.decoding import cache_blocker
from hybrid_lens.interventions import add, zero

torch.set_num_threads(1)
model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
prompts = ["And it came to pass", "In the beginning", "Then said"]  # a ragged batch: left-padded for you
greedy = dict(max_new_tokens=12, do_sample=False, verbose=False)

clean = model.generate(prompts, **greedy)
with zero("linear_attn", layers="early").apply(model):  # the early Gated DeltaNet layers off, in every step
    ablated = model.generate(prompts, **greedy)
for before, after in zip(clean, ablated):
    print(f"{before!r:70} -> {after!r}")

# %% [markdown]
# ## Steering with a difference of means
# The direction is the difference between the mean residual stream entering block 4 over two prompts
# that differ in who speaks (the LORD, or the king). `add(kind, direction, coeff, layers)` adds
# `coeff * direction` there; it acts on each token alone, so generation keeps its cache, and the
# steered continuation is exactly what recomputing the whole sequence at every step gives.

# %%
layer, name = 4, "blocks.4.hook_resid_pre"
tokens, mask = model.to_tokens_and_mask(["And the LORD spake unto Moses, saying",
                                         "And the king spake unto his servants, saying"], padding_side="left")
_, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=name)
real = mask[..., None].float()
lord, king = (cache[name] * real).sum(1) / real.sum(1)  # each prompt's mean over its real tokens
toward_the_lord = add("resid_pre", lord - king, coeff=2.0, layers=layer)

with toward_the_lord.apply(model):
    assert cache_blocker(model) is None  # cache-safe: decoded with the cache
    steered = model.generate(prompts, **greedy)
    recomputed = model.generate(prompts, use_past_kv_cache=False, **greedy)
assert steered == recomputed and steered != clean
for before, after in zip(clean, steered):
    print(f"{before!r:70} -> {after!r}")
print("JSON:", toward_the_lord.to_json()[:80], "...")

# %% [markdown]
# ## A recurrent state, token by token
# A hook on `hook_state` (fed by the eager mixer forward) fires in every step with the state after
# the newest token; such a hook makes each step recompute the sequence (`cache_blocker` says why).

# %%
norms = []
with model.hooks(fwd_hooks=[("blocks.0.linear_attn.hook_state", lambda state, hook: norms.append(state.norm()))]):
    print(cache_blocker(model))
    text = model.generate("In the beginning", **greedy)
print(text, [round(float(n), 2) for n in norms])

# %% [markdown]
# ## The same steering in an nnsight generation
# Every decoding step is one more occurrence of each hook point: `tracer.all()` edits them all. (An
# open `tracer.all()` loop ends by asking for a step that never comes, which nnsight reports as a
# warning by design; what follows the loop goes into its own invoke.)

# %%
warnings.filterwarnings("ignore", message=".*was never reached")
view = model.nnsight()
shift = (2.0 * (lord - king)).detach()
with view.generate(max_new_tokens=12, do_sample=False, verbose=False) as tracer:
    with tracer.invoke(prompts):
        for _ in tracer.all():
            view.blocks[layer].hook_resid_pre.output = view.blocks[layer].hook_resid_pre.output + shift
    with tracer.invoke():
        traced = tracer.result.save()
assert traced == steered  # the texts, since the invoke's input is texts
print("nnsight .generate() with tracer.all() gives the hook path's tokens")
