"""Mamba-2 (`Mamba2ForCausalLM`): a pure SSM; every block is `residual + mixer(norm(residual))`, no MLP.

The decoder is `backbone` with final norm `norm_f`; each block holds one Mamba-2 mixer (gated
RMSNorm, no multipliers), so there is no `hook_resid_mid` / `hook_mlp_out`. The norm's input is
cast to the norm's dtype first, and with `config.residual_in_fp32` (the default) the residual is
kept in float32. Whether `output_hidden_states` starts with the embeddings depends on the `transformers`
release (from 5.25 it does; before, its entry `i` is the output of block `i`): `hybrid_lens.conventions.hidden_states_point`
reads it from the installed one.
"""

from ..mixers import mamba2
from .spec import RECURRENT_ARGS, Block, Family, Mixer

MAMBA2 = Family(
    family="mamba2",
    architectures=("Mamba2ForCausalLM",),
    model_types=("mamba2",),
    blocks={"block": Block((Mixer("ssm", "mixer", mamba2.add_points, RECURRENT_ARGS, norm="norm"),), None)},
    tiny=dict(hidden_size=64, num_heads=8, head_dim=16, n_groups=2, state_size=16, chunk_size=8,
              num_hidden_layers=3),
    decoder_attr="backbone",
    final_norm_attr="norm_f",
    norm_cast=True,
    residual_fp32=True,
)
