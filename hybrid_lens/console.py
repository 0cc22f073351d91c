"""What the command line prints besides its answers: `transformers`' own output during a command.

`transformers_output(quiet)` turns off its "Loading weights" bars, replaces its "falling back to its
reference PyTorch implementation" warnings (one per kernel) with one line of ours, and with `quiet`
lets only errors through. `long_texts_fit(tokenizer, longest)` keeps its "Token indices sequence length
is longer than the specified maximum" warning out where the text is tokenized whole but run in
windows that fit.
"""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager

from tqdm.auto import tqdm

KERNEL_NOTICE = ("hybrid-lens: no fast kernel (flash-linear-attention, causal-conv1d, mamba-ssm: the `gpu` extra) "
                 "for this model on this device: reference PyTorch path (exact, slower).")
_FALLBACK = "falling back to its reference PyTorch implementation"
_LONG_TEXT = "sequence-length-is-longer-than-the-specified-maximum"  # the tokenizer's "warned once" key


class _KernelFallbacks(logging.Filter):
    """Drops `transformers`' kernel-fallback warnings; the first one prints `KERNEL_NOTICE` (unless quiet)."""

    def __init__(self, quiet: bool):
        super().__init__()
        self.quiet, self.noted = quiet, False

    def filter(self, record: logging.LogRecord) -> bool:
        if _FALLBACK not in record.getMessage():
            return True
        if not (self.quiet or self.noted):
            tqdm.write(KERNEL_NOTICE, file=sys.stderr)  # above any progress bar
        self.noted = True
        return False


@contextmanager
def transformers_output(quiet: bool = False):
    """Within the block: no `transformers` progress bars, one line of ours for every kernel fallback,
    and with `quiet` only errors from `transformers` and no Python warnings. Everything is restored after.

    Examples:
        >>> from transformers.utils import logging as hf_logging
        >>> with transformers_output(quiet=True):
        ...     hf_logging.get_logger("transformers.integrations.hub_kernels").warning(
        ...         "`f` is falling back to its reference PyTorch implementation because ...")
        >>> with transformers_output():
        ...     hf_logging.is_progress_bar_enabled()
        False
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    kernels, fallbacks = logging.getLogger("transformers.integrations.hub_kernels"), _KernelFallbacks(quiet)
    hf_logging.disable_progress_bar()
    kernels.addFilter(fallbacks)
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            yield
    finally:
        kernels.removeFilter(fallbacks)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextmanager
def long_texts_fit(tokenizer, longest: int):
    """Within the block, `tokenizer` does not warn that a text is longer than the model's maximum length,
    if `longest` (the most tokens the caller runs at once) fits it: the text is cut into windows, so the
    warning would be false. A window that does not fit keeps the warning. Restored after.

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from hybrid_lens.zoo import checkpoint_path
        >>> tokenizer = AutoTokenizer.from_pretrained(checkpoint_path("tiny-qwen2.5"))
        >>> with long_texts_fit(tokenizer, 256):
        ...     len(tokenizer("In the beginning " * 1000).input_ids) > tokenizer.model_max_length
        True
    """
    fits = tokenizer is not None and longest <= getattr(tokenizer, "model_max_length", 0)
    warned = getattr(tokenizer, "deprecation_warnings", {})
    before = warned.get(_LONG_TEXT)
    if fits:
        warned[_LONG_TEXT] = True
    try:
        yield
    finally:
        if fits and before is None:
            warned.pop(_LONG_TEXT, None)
        elif fits:
            warned[_LONG_TEXT] = before
