"""Evaluation through the hooked model, with any intervention active."""

from .data import wikitext2
from .perplexity import PerplexityResult, perplexity, window_spans

__all__ = ["PerplexityResult", "perplexity", "wikitext2", "window_spans"]
