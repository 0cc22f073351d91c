"""Activation patching sweeps: patch clean activations into a corrupted run, hook by hook."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..vocabulary import COMPONENT_KINDS
from .reference import Patch
from .conditions import Condition
from .sweep import run_conditions
from .selectors import KINDS, Selector, Target
from .validation import check_metric, check_patch_positions, check_where

Metric = Callable[[Float[Tensor, "batch pos vocab"]], Float[Tensor, ""]]


def logit_diff_metric(correct: int, wrong: int, position: int = -1) -> Metric:
    """Mean over examples of `logit[correct] - logit[wrong]` at `position`.

    Args:
        correct: Token id of the correct answer.
        wrong: Token id of the wrong answer.
        position: Token position read.

    Returns:
        A metric `Float[Tensor, "batch pos vocab"] -> Float[Tensor, ""]` for `patch`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> moses, aaron = (int(model.to_tokens(f" {name}")[0, -1]) for name in ("Moses", "Aaron"))
        >>> metric = logit_diff_metric(moses, aaron)
        >>> metric(model("And God said unto")).shape
        torch.Size([])
    """
    return lambda logits: (logits[:, position, correct] - logits[:, position, wrong]).mean()


def kl_metric(reference_logits: Tensor, position: int = -1) -> Metric:
    """Mean over examples of KL(reference || run) of the next-token distribution at `position`.

    Args:
        reference_logits: `Float[Tensor, "batch pos vocab"]`, e.g. the clean run's logits.
        position: Token position compared.

    Returns:
        A metric `Float[Tensor, "batch pos vocab"] -> Float[Tensor, ""]` (in nats) for `patch`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with torch.no_grad():
        ...     clean_logits = model("And God said unto Moses")
        >>> float(kl_metric(clean_logits)(clean_logits))
        0.0
    """
    reference = reference_logits[:, position]
    return lambda logits: kl_divergence(reference, logits[:, position]).mean()


def kl_divergence(p_logits: Float[Tensor, "... vocab"], q_logits: Float[Tensor, "... vocab"]) -> Float[Tensor, "..."]:
    """KL(p || q) in nats between the softmax distributions of two logit tensors (computed in float32).

    Examples:
        >>> p, q = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
        >>> kl_divergence(p, q), kl_divergence(p, p)
        (tensor([0.3278]), tensor([0.]))
    """
    log_p = p_logits.float().log_softmax(-1)
    log_q = q_logits.float().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def component_selectors(model, kinds: Sequence[str] | None = None) -> list[Selector]:
    """One selector per kind present in the model (default: every mixer kind, mlp and resid_pre).

    Args:
        model: A `HookedHybrid`.
        kinds: Kinds to keep if the model has them.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> [selector.kind for selector in component_selectors(model)]
        ['attn', 'linear_attn', 'mlp', 'resid_pre']
    """
    kinds = kinds or (*COMPONENT_KINDS, "resid_pre")
    return [Selector(kind) for kind in kinds if model.layout.layers_with(kind)]


def same_shape_tokens(model, clean, corrupt) -> tuple[Tensor, Tensor]:
    """Token ids `Int[Tensor, "batch pos"]` of `clean` and `corrupt`; raises unless both are unpadded
    and of the same shape (positions are compared across the two runs).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> clean, corrupt = same_shape_tokens(model, "And God said unto Moses", "And God said unto Aaron")
        >>> clean.shape == corrupt.shape
        True
    """
    (clean_tokens, clean_mask), (corrupt_tokens, corrupt_mask) = model.encode(clean), model.encode(corrupt)
    if clean_mask is not None or corrupt_mask is not None:
        raise ValueError("Patching compares positions across runs, so every prompt must have the same number of "
                         "tokens (these are padded); group prompts by token length and patch per group.")
    if clean_tokens.shape != corrupt_tokens.shape:
        raise ValueError(f"clean and corrupt must tokenize to the same shape, got {tuple(clean_tokens.shape)} "
                         f"and {tuple(corrupt_tokens.shape)}.")
    return clean_tokens, corrupt_tokens


def patch_jobs(model, where: Selector | Sequence[Selector] | None, positions: Sequence[int] | str | None,
               length: int) -> list[tuple[Target, int | None]]:
    """The `(target, position)` pairs a patching sweep visits (see `patch` for `where` and `positions`),
    both checked (`validation.check_where`, `check_patch_positions`) before any forward pass.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> patch_jobs(model, Selector("ssm", layers=[0, 1]), [0, -1], length=5)[:2]
        [(Target(layer=0, kind='ssm', point=None), 0), (Target(layer=0, kind='ssm', point=None), -1)]
    """
    selectors = check_where(where) or component_selectors(model)
    positions = check_patch_positions(positions, length)
    if positions == "each":
        positions = range(length)
    jobs = [
        (target, None if positions is None else p)
        for selector in selectors
        for target in selector.targets(model.layout)
        for p in ([None] if positions is None else positions)
    ]
    if any(t.kind not in KINDS or t.kind == "block" for t, _ in jobs):
        raise ValueError("Patching acts on components or residual points, not whole blocks.")
    return jobs


@torch.no_grad()
def patch(
    model,
    clean,
    corrupt,
    where: Selector | Sequence[Selector] | None = None,
    positions: Sequence[int] | str | None = None,
    metric: Metric | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """Patch clean activations into the corrupted run, one (layer, component, position) at a time.

    Args:
        model: A `HookedHybrid`.
        clean: The clean input (text, texts or token ids `Int[Tensor, "batch pos"]`).
        corrupt: The corrupted input, of the same token shape as `clean`.
        where: Selector(s) of the components to patch; default every mixer, MLP and `resid_pre`
            of every layer (a full layer x component sweep).
        positions: None patches all positions at once; `"each"` patches every position
            separately; an int or a list patches each listed position separately.
        metric: Maps logits `Float[Tensor, "batch pos vocab"]` to one number; default
            KL(clean || patched) at the last position (0 = fully restored).
        batch_size: Patched runs per forward pass (condition batching).
        progress: Show a progress bar.

    Returns:
        A DataFrame with columns `layer, kind, hook, position, metric`; `attrs` holds the clean
        and corrupted metric values.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> clean, corrupt = "And God said unto Moses", "And God said unto Aaron"
        >>> table = patch(model, clean, corrupt, where=Selector("attn"), progress=False)
        >>> table.columns.tolist(), len(table)                 # one row per attention layer
        (['layer', 'kind', 'hook', 'position', 'metric'], 12)
        >>> sweep = patch(model, clean, corrupt, where=Selector("resid_pre", layers=[0, 6]),
        ...               positions="each", progress=False)    # 2 layers x 6 positions (BOS + 5)
        >>> len(sweep), sweep.attrs["clean"]
        (12, 0.0)
    """
    clean_tokens, corrupt_tokens = same_shape_tokens(model, clean, corrupt)
    jobs = patch_jobs(model, where, positions, clean_tokens.shape[1])
    clean_logits = model(clean_tokens)
    metric = metric or kl_metric(clean_logits)
    check_metric(metric, clean_logits, differentiable=False)
    source = Patch(clean_tokens)
    source.prepare(model, sorted({t for t, _ in jobs}, key=lambda t: (t.layer, t.kind)))

    rows = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="patching", disable=not progress):
        chunk = jobs[start : start + batch_size]
        conditions = [Condition.of(Selector(t.kind, t.layer, p, t.point), source) for t, p in chunk]
        logits = run_conditions(model, corrupt_tokens, conditions)
        for (target, position), run in zip(chunk, logits):
            rows.append(dict(layer=target.layer, kind=target.kind, hook=target.hook_names[0], position=position,
                             metric=float(metric(run))))
    table = pd.DataFrame(rows)
    table.attrs.update(clean=float(metric(clean_logits)), corrupt=float(metric(model(corrupt_tokens))))
    return table
