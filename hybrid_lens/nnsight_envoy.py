"""The nnsight envoy of a `HookedHybrid` (`model.nnsight()`): `NNsight` with several invokes batched in
one trace and `.generate()`.

nnsight's plain `NNsight` runs one invoke per trace. Here the invokes' inputs (texts, token ids with an
optional `attention_mask`, as `HookedHybrid.forward` takes them) are tokenized, stripped of their own
padding and padded together on the left (on the right for a family that refuses left padding, as
RecurrentGemma does), so every row's last real token is column -1 and each invoke reads and writes
its own rows; positions of a `Condition` count real tokens per row as in any run. `.generate(...)`
traces `HookedHybrid.generate`: every decoding step is one more occurrence of each hook point
(`tracer.all()`, `tracer.iter[...]`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from nnsight import NNsight
from nnsight.intervention.envoy import traceable
from torch import Tensor

INVOKE_KEYWORDS = ("attention_mask", "prepend_bos", "padding_side")  # what one invoke's input may carry


class HybridEnvoy(NNsight):
    """`nnsight.NNsight` over a `HookedHybrid`, batching several invokes and tracing `.generate()`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> view = model.nnsight()
        >>> with view.trace() as tracer:
        ...     with tracer.invoke("In the beginning"):
        ...         first = view.hook_logits.output.save()
        ...     with tracer.invoke(["And God said unto Moses", "Let there be"]):
        ...         others = view.hook_logits.output.save()
        >>> first.shape, others.shape                  # left-padded to the longest prompt
        (torch.Size([1, 5, 4096]), torch.Size([2, 5, 4096]))
    """

    @traceable
    def generate(self, *inputs, **kwargs):
        """`HookedHybrid.generate`, traced when used as a `with` block (`tracer.result` is its output).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> view = model.nnsight()
            >>> with view.generate("In the beginning", max_new_tokens=3, do_sample=False, verbose=False) as tracer:
            ...     resid = list().save()
            ...     for step in tracer.iter[:3]:                  # the prompt pass, then one pass per new token
            ...         resid.append(view.blocks[4].hook_resid_post.output.shape)
            ...     text = tracer.result.save()
            >>> resid
            [torch.Size([1, 3, 128]), torch.Size([1, 1, 128]), torch.Size([1, 1, 128])]
            >>> text
            'In the beginning of the LORD'
        """
        return self._module.generate(*inputs, **kwargs)

    def _batch_size(self, *inputs, **kwargs) -> int:
        """Rows of one invoke's input: 1 for a text or one row of ids, else one per text or row."""
        if not inputs:
            return 0
        data = inputs[0]
        if isinstance(data, str) or (isinstance(data, Tensor) and data.ndim <= 1):
            return 1
        if isinstance(data, Tensor):
            return data.shape[0]
        one_row = isinstance(data, Sequence) and all(isinstance(item, int) for item in data)
        return 1 if one_row else len(data)

    def _batch(self, invokes: list[tuple], fn) -> tuple:
        """The invokes' inputs as one batch: `((tokens,), {"attention_mask": mask})`."""
        if len(invokes) <= 1:
            return super()._batch(invokes, fn)
        model, rows = self._module, []
        for inputs, kwargs in invokes:
            other = set(kwargs) - set(INVOKE_KEYWORDS)
            if other or len(inputs) != 1:
                raise ValueError(f"A batched invoke takes one input and only {INVOKE_KEYWORDS}; got "
                                 f"{len(inputs)} inputs and {sorted(other)}: pass run arguments to trace()/generate().")
            tokens, mask = model.encode(inputs[0], **{key: kwargs.get(key) for key in INVOKE_KEYWORDS})
            mask = torch.ones_like(tokens) if mask is None else mask
            rows += [row[real.bool()] for row, real in zip(tokens, mask)]
        width, left = max(len(row) for row in rows), model.adapter.left_padding
        pad = model.tokenizer.pad_token_id if model.tokenizer is not None and model.tokenizer.pad_token_id is not None else 0
        tokens = torch.full((len(rows), width), pad, dtype=torch.long, device=model.device)
        mask = torch.zeros_like(tokens)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            tokens[i, span], mask[i, span] = row, 1
        return (tokens,), {"attention_mask": mask}
