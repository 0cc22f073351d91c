"""The published values of the component-ablation paper, to print beside a study's own numbers.

Source: Borobia, Seguí-Mas, Tormo-Carbó, "Functional Component Ablation Reveals Specialization
Patterns in Hybrid Language Model Architectures", arXiv:2603.22473 (2026), Tables 1, 2, 4, 5 and 6
(absolute benchmark scores; WikiText-2 perplexity of one window of up to 8192 tokens with the loss
clamped at 20, as the authors' notebook computes it). Condition names are translated to the
study's (`linear off` -> `linear_attn_off`, `SSM off` -> `ssm_off`, `attention off` -> `attn_off`).
"""

from __future__ import annotations

CITATION = "Borobia et al., arXiv:2603.22473, Tables 1-6"
QWEN35, FALCON, QWEN25 = "Qwen/Qwen3.5-0.8B", "tiiuae/Falcon-H1-0.5B-Base", "Qwen/Qwen2.5-0.5B"
# the bundled models are small analogues of the paper's three (same classes and layer patterns)
ANALOGUES = {"hybrid-lens/tiny-qwen3.5": QWEN35, "hybrid-lens/tiny-falcon-h1": FALCON,
             "hybrid-lens/tiny-qwen2.5": QWEN25}
BENCHMARKS = ("mmlu", "gsm8k", "arc", "hellaswag", "truthfulqa")


def _scores(*values: float) -> dict[str, float]:
    return dict(zip(BENCHMARKS, values))


# Table 1 (group ablation) and Table 6 (Falcon positional thirds): model -> condition -> task -> score
SCORES = {
    QWEN35: {"baseline": _scores(.489, .350, .742, .516, .285),
             "linear_attn_off": _scores(.250, .000, .261, .268, .230),
             "attn_off": _scores(.214, .000, .227, .341, .267)},
    FALCON: {"baseline": _scores(.568, .400, .736, .512, .223),
             "ssm_off": _scores(.224, .030, .211, .265, .263),
             "attn_off": _scores(.228, .000, .214, .369, .227),
             "ssm_off_early": _scores(.255, .020, .294, .274, .248),
             "ssm_off_middle": _scores(.454, .280, .592, .457, .224),
             "ssm_off_late": _scores(.538, .160, .676, .485, .234),
             "attn_off_early": _scores(.278, .040, .244, .442, .230),
             "attn_off_middle": _scores(.441, .000, .555, .412, .225),
             "attn_off_late": _scores(.553, .260, .659, .492, .235)},
}

# Table 2 (WikiText-2 perplexity under group ablation): model -> condition -> (loss, PPL, x baseline)
PERPLEXITY = {
    QWEN35: {"baseline": (2.03, 7.6, 1.0), "linear_attn_off": (12.50, 268_337, 35_200),
             "attn_off": (6.44, 625, 82)},
    FALCON: {"baseline": (1.73, 5.6, 1.0), "ssm_off": (5.69, 295, 53), "attn_off": (2.88, 17.7, 3.2)},
}

# Table 3 (mean score over 5 benchmarks, targeted vs matched random, 3 trials): (targeted, random mean, std)
TARGETED_VS_RANDOM_SCORE = {
    QWEN35: {"linear_attn_off": (.202, .199, .009), "attn_off": (.210, .206, .004)},
    FALCON: {"ssm_off": (.198, .203, .010)},
}

# Table 4 (Qwen3.5 WikiText-2 PPL, targeted vs random, 5 trials): (targeted, random mean, std)
TARGETED_VS_RANDOM_PPL = {
    QWEN35: {"linear_attn_off": (268_337, 1_748_920, 766_270), "attn_off": (625, 41_154, 81_609)},
}

# Table 5 (random removal of k of 24 layers, PPL as a multiple of baseline): model -> k -> multiple
REMOVAL_MULTIPLES = {
    QWEN35: {6: 5_401, 18: 229_517},
    QWEN25: {6: 640_763, 18: 4_700_430},
}


def paper_model(model: str) -> tuple[str | None, bool]:
    """(the paper's model this study's model is or stands in for, whether it is that model itself).

    Examples:
        >>> paper_model("tiiuae/Falcon-H1-0.5B-Base"), paper_model("hybrid-lens/tiny-qwen3.5")
        (('tiiuae/Falcon-H1-0.5B-Base', True), ('Qwen/Qwen3.5-0.8B', False))
        >>> paper_model("HuggingFaceTB/SmolLM2-135M")
        (None, False)
    """
    if model in (QWEN35, FALCON, QWEN25):
        return model, True
    return ANALOGUES.get(model), False


def score_change(paper: str | None, condition: str, task: str) -> float | None:
    """The paper's score change (ablated - baseline) of `condition` on `task` (None: not published).

    Examples:
        >>> score_change(QWEN35, "attn_off", "arc"), score_change(QWEN25, "attn_off", "arc")
        (-0.515, None)
    """
    scores = SCORES.get(paper, {})
    if condition not in scores or "baseline" not in scores:
        return None
    return round(scores[condition][task] - scores["baseline"][task], 3)


def removal_multiple(paper: str | None, removed: int, n_layers: int | None) -> float | None:
    """The paper's perplexity multiple for the same fraction of layers removed (6 or 18 of 24;
    None: not published).

    Examples:
        >>> removal_multiple(QWEN25, 2, 8), removal_multiple(QWEN25, 6, 8), removal_multiple(QWEN25, 1, 8)
        (640763, 4700430, None)
    """
    if not n_layers or paper not in REMOVAL_MULTIPLES:
        return None
    return REMOVAL_MULTIPLES[paper].get(round(24 * removed / n_layers))
