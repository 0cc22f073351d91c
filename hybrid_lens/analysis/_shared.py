"""Helpers shared by the analyses: token reduction into tidy tables."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from jaxtyping import Float
from torch import Tensor

Reduction = Literal["mean", "none"]
REDUCTIONS = ("mean", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unknown reduction {reduction!r}; choose one of {REDUCTIONS}.")


def tidy_table(entries: list[tuple[dict, Float[Tensor, "batch pos"]]], reduction: Reduction) -> pd.DataFrame:
    """One row per entry (`reduction="mean"`: the mean over every token of every example), or one
    row per entry and token (`"none"`: with `batch` and `position` columns before `value`)."""
    check_reduction(reduction)
    if reduction == "mean":
        return pd.DataFrame([{**keys, "value": float(values.float().mean())} for keys, values in entries])
    frames = []
    for keys, values in entries:
        batch, pos = values.shape
        frame = pd.DataFrame(keys, index=range(batch * pos))
        frame["batch"] = np.repeat(np.arange(batch), pos)
        frame["position"] = np.tile(np.arange(pos), batch)
        frame["value"] = values.detach().float().cpu().numpy().ravel()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)

