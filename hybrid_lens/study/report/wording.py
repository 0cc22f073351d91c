"""The report's wording: section headings and reading lines, the names of tasks, metrics, components
and methods, table cells (numbers, intervals) and the `Section` / `Fragment` the report is made of.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ...vocabulary import KIND_NAMES

ABSENT = "—"
METRIC_NAMES = {"norm_change": "norm change", "cosine": "cosine", "output_ratio": "output ratio",
                "ablation_kl": "ablation KL", "kl_to_final": "logit-lens KL to final"}
TASK_NAMES = {"ppl": "perplexity", "mmlu": "MMLU", "arc": "ARC-C", "hellaswag": "HellaSwag",
              "truthfulqa": "TruthfulQA MC1", "gsm8k": "GSM8K"}
COMPONENT_NAMES = {"block": "block", "ablated": "the zeroed path", "mixer": "the layer's mixer",
                   "resid_post": "residual after the block"}
METHOD_NAMES = {"skip": "sequential skip (whole layer)", "zero": "parallel zeroing (one path)",
                "mixer_off": "mixer-only zeroing (MLP kept)"}

# Section key -> (title, how to read it), in report order.
HEADINGS = {
    "summary": ("Summary",
        "What was run, the headline effects with their 95% CIs, and the paper's published values beside them (for a "
        "bundled model, its full-size analogue's: other text, a far smaller model; compare directions, not "
        "magnitudes)."),
    "table1": ("Table 1 analogue: group ablation, absolute scores",
        "Score per benchmark with all instances of one component kind removed; Δ = ablated - baseline score "
        "(negative: worse) with its 95% CI. Radar (three or more benchmarks): one polygon per condition; the further "
        "out, the higher the score."),
    "table2": ("Table 2 analogue: perplexity under group ablation",
        "Loss and perplexity with all instances of one component kind removed; x baseline is the perplexity ratio "
        "with its 95% CI. Bars: log scale, baseline first, error bars the 95% CI; labels are multiples of the "
        "baseline."),
    "table3": ("Table 3 analogue: mean benchmark score, targeted vs matched random",
        "Mean score over the benchmarks run, targeted ablation vs the same number of randomly chosen layers; random /"
        " targeted > 1 means the targeted components matter more (the random controls keep a higher score). No CIs:"
        " a few random draws per condition; their mean, std and range are shown. Bars: error bars span the draws."),
    "table4": ("Table 4 analogue: perplexity, targeted vs matched random",
        "Perplexity of the targeted ablation (with the 95% CI of its multiple of baseline) vs the mean of its matched "
        "random controls; random / targeted > 1 means random layers hurt more than the targeted ones. The random "
        "side has no CI (a few draws): its mean, std and range (min to max) are shown, and the bars' error bars span "
        "the draws."),
    "table5": ("Table 5 analogue: random layer removal, perplexity as a multiple of baseline",
        "Whole layers skipped at random (sequential skip); mean, std and range of the perplexity multiple over the "
        "random draws (no CI: a few draws per size)."),
    "table6": ("Table 6 analogue: positional thirds",
        "One component kind removed in the early, middle or late third of the layers only; which third carries the "
        "component's contribution."),
    "layers": ("Layer-wise ablation",
        "One layer (or one path of a layer) removed at a time; each column says what was removed and how. Heatmap: "
        "layers left to right, one row per kind of removal, darker = larger effect, each model on its own colour "
        "scale; grey = the layer has no such component."),
    "hidden": ("Hidden-state metrics of the clean model",
        "Per layer: norm change ||h_post - h_pre|| / ||h_pre||, cosine(h_pre, h_post), component output ratio "
        "||f_c(h)|| / ||h||, ablation KL(p_clean || p_ablated) and the logit lens' KL to the final distribution; — = "
        "the layer has no such component."),
    "correlations": ("Hidden-state metric vs layer-ablation impact",
        "Does a layer's metric predict what removing it costs? Each point pairs one removal (a whole layer, or one "
        "path) with the metric of what was removed; n counts distinct points. Pearson and Spearman side by side; "
        "'one point drives it': the correlation is significant (p < 0.05) with every point but not without that "
        "one (or changes sign); the range is Pearson r over the n leave-one-out subsets."),
    "drops": ("Score drops with 95% bootstrap CIs (all conditions)",
        "Every condition on every benchmark: score, Δ = ablated - baseline score (negative: worse) and its paired "
        "bootstrap 95% CI; significant = the CI excludes 0. Heatmap: blue = better, red = worse than baseline, each "
        "model on its own colour scale."),
    "contributions": ("Per-token component contribution",
        "Each token coloured by the component kind that contributes most to the residual stream there (clean "
        "model); one row per layer. In report.md: a link to each model's HTML view."),
}


@dataclass
class Section:
    """One part of the report: a heading, how to read it, what was measured, and its tables and figures.

    Attributes:
        key: anchor id (unique in the report).
        title: the heading.
        read: one line on how to read it.
        parts: `(subheading, a line on what the numbers are (led by its own label, e.g. "Measured on:"),
            display table or None, figure or `Fragment` or None)` tuples.

    Examples:
        >>> section = Section("table2", "Table 2 analogue", "Perplexity ratio to baseline.")
        >>> section.parts.append(("hybrid-lens/tiny-qwen2.5", "Measured on: 8 windows of 256 tokens", None, None))
        >>> len(section.parts)
        1
    """

    key: str
    title: str
    read: str
    parts: list[tuple[str, str, pd.DataFrame | None, object | None]] = field(default_factory=list)


@dataclass
class Fragment:
    """An HTML view kept in its own file (a model's per-token contributions): inlined in report.html,
    linked from report.md.

    Examples:
        >>> Fragment("hybrid-lens_tiny-qwen2.5/contributions.html", "<div>...</div>").path
        'hybrid-lens_tiny-qwen2.5/contributions.html'
    """

    path: str
    html: str


def empty_section(key: str) -> Section:
    """An empty section with the heading and reading line of `HEADINGS[key]`.

    Examples:
        >>> empty_section("table2").title
        'Table 2 analogue: perplexity under group ablation'
    """
    return Section(key, *HEADINGS[key])


def measured(what: str) -> str:
    """The line under a subheading that says what its numbers were measured on.

    Examples:
        >>> measured("8 windows of 256 tokens")
        'Measured on: 8 windows of 256 tokens'
    """
    return f"Measured on: {what}"


def removal(kind: str | None, method: str) -> str:
    """What a layer-wise condition removes and how, as a column or heatmap row name: a whole-layer
    skip is never named after one component.

    Examples:
        >>> removal("attn", "skip"), removal("ssm", "zero"), removal("attn", "mixer_off")
        ('whole layer skipped (attention layer)', 'SSM path zeroed', 'attention output zeroed (MLP kept)')
    """
    name = KIND_NAMES.get(kind, kind or "block")
    return {"skip": f"whole layer skipped ({name} layer)", "zero": f"{name} path zeroed",
            "mixer_off": f"{name} output zeroed (MLP kept)"}.get(method, f"{name} removed ({method})")


def number(x) -> str:
    """A table cell: 4 significant digits, thousands separators for large values, `—` for absent.

    Examples:
        >>> number(0.48913), number(268337.2), number(float("nan")), number(float("inf")), number(3)
        ('0.4891', '268,337', '—', '∞', '3')
    """
    if x is None or isinstance(x, float) and np.isnan(x):
        return ABSENT
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    if np.isinf(x):
        return "∞"
    return f"{x:,.0f}" if abs(x) >= 10_000 else f"{x:.4g}"


def interval(low: float, high: float) -> str:
    """A 95% CI cell.

    Examples:
        >>> interval(1.2345, 1.5)
        '[1.234, 1.5]'
    """
    return f"[{number(low)}, {number(high)}]"
