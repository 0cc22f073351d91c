"""Plain pre-norm transformers, the controls: Qwen2 / Qwen2.5, Llama and Qwen3 (attention, then MLP).

Qwen3's attention normalises q and k per head (`q_norm`, `k_norm`) after `hook_q` / `hook_k`.
"""

from .spec import Block, Family, attention

PRE_NORM = {"block": Block((attention(),))}
DENSE_TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=3)

QWEN2 = Family(family="qwen2", architectures=("Qwen2ForCausalLM",), model_types=("qwen2",), blocks=PRE_NORM,
               prepend_bos=False)
LLAMA = Family(family="llama", architectures=("LlamaForCausalLM",), model_types=("llama",),
               blocks=PRE_NORM, tiny=DENSE_TINY)
QWEN3 = Family(family="qwen3", architectures=("Qwen3ForCausalLM",), model_types=("qwen3",),
               blocks=PRE_NORM, tiny=dict(DENSE_TINY, head_dim=16), prepend_bos=False)
