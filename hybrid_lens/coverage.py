"""The coverage table: every registered family, its `transformers` class, layer kinds and hook points.

Generated from the adapter registry (`hybrid_lens.adapters.FAMILIES`) and a tiny random model of each
family, so it lists what the code provides; the README's table is this output
(`hybrid-lens models --coverage`), and `tests/test_readme.py` checks that they agree. Every family in
it runs through `tests/test_families.py`, which is parameterized over the same registry.

`families.json` holds `family_index()` (names, classes, layer kinds), so that `hybrid-lens models`
answers without importing torch; `python -m hybrid_lens.coverage` rewrites it after a family changes
(`tests/test_readme.py` checks that it is current).
"""

from __future__ import annotations

import json
from pathlib import Path

from .adapters import ADAPTERS, Family

INDEX = Path(__file__).with_name("families.json")  # `family_index()`, read by `hybrid-lens models` without torch

VERIFIED = ("Verified for every family by `tests/test_families.py` on a tiny random model whose every component "
            "visibly moves the logits (zeroing any kind changes them by > 1e-3 of their scale): (1) logits "
            "`torch.equal` to the plain transformers model, and so is `unembed` of the final-normed residual "
            "(logit multipliers, divisors and soft caps included); (2) cached `hook_resid_pre` `torch.equal` to "
            "`output_hidden_states` (`hook_resid_post` where the installed `transformers` omits the embeddings there: "
            "Mamba and FalconMamba, and Mamba-2 before 5.25; `conventions.hidden_states_point` reads it from the "
            "release, and CI runs both ends of the supported range); (3) `resid_post` = `resid_pre` + the block outputs (MiniMax: each added to "
            "`alpha * norm(stream)`; Zamba2: the shared block's outputs feed the Mamba input, `hook_ssm_out` is "
            "the residual term), and `decompose_resid` sums to the stream (MiniMax: refused); (4) a write at every "
            "block point reaches the logits, writing the same value changes nothing; (5) hooking every inner "
            "point keeps the logits; (6) zero ablations and skip-layer sweeps equal plain-hook runs; (7) an "
            "nnsight trace reads and writes the points; (8) perplexity under the study's conditions in one Sweep "
            "equals each condition alone, and the analyses and the study runner run; (9) texts of unequal "
            "length batched with right or left padding get their own values (RecurrentGemma refuses left padding, "
            "which its convolution does not mask). Layer kinds: components per "
            "layer type (`+mlp`: the block has an MLP or MoE, output in `hook_mlp_out`); every block also has "
            "`hook_resid_pre` / `hook_resid_post`, and `hook_resid_mid` when it has mixers and an MLP.")


def family_points(family: Family) -> tuple[list[str], dict[str, list[str]]]:
    """The block-level point names (`hook_ssm_out`, ...) and, per mixer kind, the inner point names
    of a tiny random model of `family`.

    Examples:
        >>> from hybrid_lens.adapters import FAMILIES
        >>> block, inner = family_points(FAMILIES["falcon_h1"])
        >>> block[:3], inner["attn"][:3]
        (['hook_resid_pre', 'hook_ssm_out', 'hook_attn_out'], ['hook_q', 'hook_k', 'hook_v'])
    """
    from .configs import tiny_config
    from .model import HookedHybrid

    model = HookedHybrid.from_config(tiny_config(family.family), seed=0)
    block: dict[str, None] = {}
    inner: dict[str, dict[str, None]] = {}
    for name in model.hook_dict:
        parts = name.split(".")
        if parts[0] != "blocks":
            continue
        if len(parts) == 3:
            block[parts[2]] = None
        else:
            inner.setdefault(parts[2], {})[parts[3]] = None
    return list(block), {kind: list(names) for kind, names in inner.items()}


def coverage_markdown() -> str:
    """The coverage table in Markdown, one row per registered family, then what was verified.

    Examples:
        >>> print(coverage_markdown().splitlines()[0])
        | family | `transformers` class | layer kinds | block outputs | inner points (`blocks.{i}.{kind}.`) |
    """
    rows = ["| family | `transformers` class | layer kinds | block outputs | inner points (`blocks.{i}.{kind}.`) |",
            "|---|---|---|---|---|"]
    for family in ADAPTERS:
        block, inner = family_points(family)
        outputs = [f"`{name}`" for name in block if name.endswith("_out")]
        inner_text = "; ".join(f"`{kind}`: {', '.join(names)}" for kind, names in inner.items()) or "–"
        rows.append(f"| {family.family} | {', '.join(f'`{a}`' for a in family.architectures)} | "
                    f"{', '.join(family.layer_kinds)} | {', '.join(outputs)} | {inner_text} |")
    return "\n".join(rows) + "\n\n" + VERIFIED


def family_index() -> list[dict]:
    """Every registered family's name, `transformers` classes and layer kinds, in registry order:
    what `hybrid-lens models` lists (from its copy in `families.json`).

    Examples:
        >>> family_index()[1]
        {'family': 'falcon_h1', 'architectures': ['FalconH1ForCausalLM'], 'layer_kinds': ['ssm+attn+mlp']}
    """
    return [dict(family=f.family, architectures=list(f.architectures), layer_kinds=f.layer_kinds) for f in ADAPTERS]


if __name__ == "__main__":
    INDEX.write_text("[\n" + ",\n".join(json.dumps(family) for family in family_index()) + "\n]\n")
    print(f"wrote {INDEX}")
