"""Qwen3.5: a sequential hybrid; each block holds one mixer, Gated DeltaNet or gated attention (3:1).

Layer kinds come from `config.layer_types` (`linear_attention` / `full_attention`). The attention
is gated: `q_proj` also produces the output-gate logits (`hook_gate`).
"""

from ..mixers import gated_deltanet
from .spec import RECURRENT_ARGS, Block, Family, Mixer, attention

QWEN3_5 = Family(
    family="qwen3_5",
    architectures=("Qwen3_5ForCausalLM",),
    model_types=("qwen3_5_text", "qwen3_5"),
    blocks={
        "linear_attention": Block((Mixer("linear_attn", "linear_attn", gated_deltanet.add_points, RECURRENT_ARGS),)),
        "full_attention": Block((attention(),)),
    },
    block_keys=lambda config: config.layer_types[: config.num_hidden_layers],
    prepend_bos=False,
)
