"""SAE splicing: put a sparse autoencoder where a hook point was, as SAE-Lens's `HookedSAETransformer` does.

`model.add_sae(sae)` replaces the hook point named by `sae.cfg.metadata.hook_name` (an SAE-Lens
`SAE`) or by `hook_name=` (any module mapping activations to activations of the same shape) with an
`SAESplice`, so the SAE's reconstruction flows on instead of the activation. Any point carrying
`[batch, pos, ...]` activations takes one: block-level points and inner points alike
(`blocks.{i}.attn.hook_z` `[batch, pos, head, d_head]`, which SAE-Lens's `hook_z` SAEs read with
`reshape_activations="hook_z"`, `blocks.{i}.ssm.hook_y`, ...; the taps feeding an inner point call
whatever stands there, see `HookPoint.set_stand_in`). The methods (`add_sae`, `reset_saes`, `saes`,
`run_with_saes`, `run_with_cache_with_saes`, `run_with_hooks_with_saes`, `acts_to_saes`,
`_acts_to_saes`, `_reset_sae`) take `HookedSAETransformer`'s arguments in its order, with its
semantics (SAE-Lens 6):

- the SAE's own hook points appear under the spliced name (`blocks.3.hook_ssm_out.hook_sae_acts_post`,
  ..., plus `hook_sae_error` and `hook_sae_output`), and the spliced name itself leaves `hook_dict`;
- `use_error_term=True` adds the SAE's error `x - sae(x)` (computed without gradient and with the
  SAE's hook points disabled) so the output equals the clean activation while the SAE's hook points
  still see, and can edit, the features; None takes the SAE's own `use_error_term`;
- `exclude_special_tokens=True` (or a list of ids) passes the activation through unchanged at the
  tokenizer's BOS/EOS/PAD/SEP/decoder-start tokens (error term 0 there);
- a transcoder (`hook_name_out` different from `hook_name`) stands at its output point and encodes
  the value its input point carried in the same pass; it is keyed by its input point;
- `saes(...)` puts back on exit what stood at each point before; the SAE is not a submodule of the
  model (its parameters are not the model's).

Differences, on purpose (a clear error instead of a silent no-op, as everywhere in hybrid-lens): an
unknown hook name raises `KeyError` listing the closest valid names (SAE-Lens logs a warning and
attaches nothing), and so does resetting a point with no SAE; before anything is spliced in, each
SAE is checked against its point (`fit`): a non-module, a wrong `d_in`, an output of another shape,
a tuple output, a point that carries no `[batch, pos, ...]` activations (`hook_pattern`,
`hook_state`) or that belongs to a spliced SAE raise, and nothing is attached. `reset_saes` puts the
original hook point object back (SAE-Lens installs a fresh one), so permanent hooks on it survive;
the reconstruction is cast back to the activation's dtype. `add_sae` returns the splice (SAE-Lens:
None). `HookedSAETransformer` also adds `blocks.{i}.mlp.hook_in` for circuit-tracer transcoders; we
have no such point (the MLP input is the second norm's output).
"""

from .fit import PointSample, check_sae_fits, point_samples
from .methods import SAESplicing
from .splice import SAESplice, special_token_ids
from .splicing import add_sae, attached_saes, reset_saes, sae_hook_names, saes

__all__ = ["PointSample", "SAESplice", "SAESplicing", "add_sae", "attached_saes", "check_sae_fits", "point_samples",
           "reset_saes", "sae_hook_names", "saes", "special_token_ids"]
