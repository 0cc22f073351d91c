"""Generation speed: `HookedHybrid.generate` as a ratio to `hf_model.generate` of the plain model, same run.

Per bundled model (or a published config at full size with random weights, `--size reference`: bfloat16 on a
GPU, float32 on CPU unless `--dtype` says otherwise): greedy decoding of
`--new` tokens after a `--batch` x `--prompt` random prompt, four ways, interleaved, medians of
`--repeats`: the plain `transformers` model's `generate`; `generate` with no hooks; with a steering
condition (`add` on the residual stream entering the middle block: cache-safe, so it keeps the cache);
and with a hook reading the recurrent state (`hook_state` of the first linear mixer, fed by the eager
mixer forward: every step recomputes the whole sequence). Tokens/s counts new tokens of every row.

    python benchmarks/generation.py --out benchmarks/results/generation_cpu_bundled.md
    python benchmarks/generation.py --size reference --new 16 --repeats 3 \
        --out benchmarks/results/generation_cpu_reference.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import reference_config
from hybrid_lens.interventions import add
from hybrid_lens.mixers.state import state_points

from results_io import write_results

BUNDLED = ("hybrid-lens/tiny-qwen3.5", "hybrid-lens/tiny-falcon-h1", "hybrid-lens/tiny-qwen2.5")
CASES = ("hf_model.generate", "generate, no hooks", "generate, steering hook", "generate, state hook")


def load(name: str, size: str, device: str, dtype: torch.dtype) -> HookedHybrid:
    if size == "bundled":
        return HookedHybrid.from_pretrained(name).to(device)
    from transformers import AutoModelForCausalLM

    family = {"hybrid-lens/tiny-qwen3.5": "qwen3_5", "hybrid-lens/tiny-falcon-h1": "falcon_h1",
              "hybrid-lens/tiny-qwen2.5": "qwen2"}[name]
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(reference_config(family), dtype=dtype).to(device).eval()
    return HookedHybrid.from_hf(hf)


def runs(model: HookedHybrid, plain, tokens: torch.Tensor, new: int) -> dict:
    greedy = dict(max_new_tokens=new, do_sample=False, stop_at_eos=False, verbose=False)
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)).to(model.device)
    steer = add("resid_pre", direction, coeff=4.0, layers=model.n_layers // 2)
    states = list(state_points(model))

    def steered():
        with steer.apply(model):
            return model.generate(tokens, **greedy)

    def state_read():
        with model.hooks(fwd_hooks=[(states[0], lambda state, hook: None)]):
            return model.generate(tokens, **greedy)

    found = {
        "hf_model.generate": lambda: plain.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=new,
                                                    do_sample=False, eos_token_id=None, pad_token_id=0),
        "generate, no hooks": lambda: model.generate(tokens, **greedy),
        "generate, steering hook": steered,
    }
    if states:
        found["generate, state hook"] = state_read
    return found


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def measure(name: str, args) -> dict:
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    model, plain = load(name, args.size, args.device, dtype), load(name, args.size, args.device, dtype).unwrap()
    tokens = torch.randint(3, model.cfg.d_vocab, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1))
    tokens = tokens.to(model.device)
    cases = runs(model, plain, tokens, args.new)
    outputs = {case: fn() for case, fn in cases.items()}  # warm-up, and every run generates all tokens
    assert all(out.shape == (args.batch, args.prompt + args.new) for out in outputs.values()), "a run stopped early"
    assert torch.equal(outputs["hf_model.generate"], outputs["generate, no hooks"]), "no hooks: tokens differ"
    times = {case: [] for case in cases}
    for _ in range(args.repeats):
        for case, fn in cases.items():
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            times[case].append(time.perf_counter() - start)
    seconds = {case: statistics.median(values) for case, values in times.items()}
    return {"model": name, "size": args.size, "shape": f"{args.batch}x{args.prompt}+{args.new}",
            **{case: seconds.get(case) for case in CASES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(BUNDLED))
    parser.add_argument("--size", choices=("bundled", "reference"), default="bundled")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="--size reference only (default: bfloat16 on cuda, float32 otherwise)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generation_cpu_bundled.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(name, args) for name in args.models.split(",")]
    machine = f"{platform.processor() or platform.machine()}, {args.device}, torch {torch.__version__}, " \
              f"{args.threads} thread(s)"
    lines = [f"# Generation speed ({args.size} models, greedy, {args.device})", "",
             f"{machine}; `python benchmarks/generation.py` with {vars(args)}; medians of {args.repeats} interleaved "
             "repeats. Tokens/s counts the new tokens of every row; ratios are times relative to "
             "`hf_model.generate` in the same run.", "",
             "| model | batch x prompt + new | `hf_model.generate` tok/s | no hooks | steering hook (cache) | "
             "state hook (recomputes) |", "|---|---|---|---|---|---|"]
    new_tokens = args.batch * args.new
    for row in rows:
        base = row["hf_model.generate"]
        cells = [f"{new_tokens / base:.1f}"]
        for case in CASES[1:]:
            cells.append("n/a (no recurrent state)" if row[case] is None else
                         f"{new_tokens / row[case]:.1f} tok/s ({row[case] / base:.2f}x)")
        lines.append(f"| {row['model']} | {row['shape']} | " + " | ".join(cells) + " |")
    write_results(args.out, lines, machine, rows, vars(args))


if __name__ == "__main__":
    main()
