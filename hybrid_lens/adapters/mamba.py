"""Mamba and FalconMamba: attention-free stacks of Mamba-1 blocks (`norm`, then the selective-scan `mixer`).

The decoder is `backbone`, its final norm `norm_f`; blocks have no MLP. Each block casts its input
to the norm's weight dtype before `norm` and, with `residual_in_fp32` (the default), keeps the
residual in float32, so `hook_resid_*` are float32 in a half-precision model. FalconMamba adds
weightless RMS norms on dt, B and C inside the mixer (`hook_B` / `hook_C` are after them).
`output_hidden_states` of these models omits the embeddings in the supported `transformers` releases
(its entry `i` is the output of block `i`, `hook_resid_post`); `hybrid_lens.conventions.hidden_states_point` reads the
convention from the installed release rather than assuming it.
"""

from ..mixers import mamba1
from .spec import RECURRENT_ARGS, Block, Family, Mixer

MAMBA_LAYOUT = dict(
    blocks={"block": Block((Mixer("ssm", "mixer", mamba1.add_points, RECURRENT_ARGS, rest=False, norm="norm"),),
                           mlp=None)},
    tiny=dict(hidden_size=64, state_size=16, expand=2, num_hidden_layers=2),
    decoder_attr="backbone", final_norm_attr="norm_f", norm_cast=True, residual_fp32=True,
)

MAMBA = Family(family="mamba", architectures=("MambaForCausalLM",), model_types=("mamba",), **MAMBA_LAYOUT)
FALCON_MAMBA = Family(family="falcon_mamba", architectures=("FalconMambaForCausalLM",), model_types=("falcon_mamba",),
                      **MAMBA_LAYOUT)
