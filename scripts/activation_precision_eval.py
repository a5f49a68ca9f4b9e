"""Which SmolLM2 projections could take int8 activations? Perplexity and greedy agreement, emulated in torch.

The GGUF block kernels (``arrowengine/runtime/native/gguf_blocks.c``) round each row of x to int16 per block of
32 (scale amax / 32767) before the integer products. int8 blocks (amax / 127, llama.cpp's choice) would halve the
multiply instructions of a decode batch, but cost fidelity. This script measures how much, per group of
projections: every chosen ``nn.Linear``'s input is rounded to the given levels per block of 32 and scaled back
(round half to even, as the kernels' ``_mm256_round_ps``), on the float reference (the GGUF's blocks dequantized,
``models/smollm2-135m-instruct``), and the result compared with the unrounded model:

- perplexity on held-out chat text (``--conversations`` conversations from the data set's far end: 40 is ~16,600
  tokens; the LLM suite's 6 are ~550, too few to tell +0.1% from noise for these perturbations);
- with ``--greedy``, greedy continuations of the suite's 20 chat prompts x 64 tokens identical to the reference's.

Usage: ``python scripts/activation_precision_eval.py [--conversations 40] [--greedy] [--configs all8 in8_rest16]``
(about 70 s per configuration for 40 conversations on 2 cores, plus ~3 min per configuration with ``--greedy``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

logger = logging.getLogger("activation_precision_eval")

INT8, INT16 = 127.0, 32767.0
BLOCK = 32
WINDOW = 1024  # tokens scored per forward pass (each window without the previous one's context)
INPUTS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # fed by an RMSNorm
LATER = ("o_proj", "down_proj", "lm_head")  # fed by attention / the gated MLP / the final norm
CONFIGS: dict[str, dict[str, float]] = {
    "all16": dict.fromkeys(INPUTS + LATER, INT16),
    "all8": dict.fromkeys(INPUTS + LATER, INT8),
    "in8_rest16": {**dict.fromkeys(INPUTS, INT8), **dict.fromkeys(LATER, INT16)},
    "in8_o8_rest16": {**dict.fromkeys((*INPUTS, "o_proj"), INT8), "down_proj": INT16, "lm_head": INT16},
    "in8_lm8_rest16": {**dict.fromkeys((*INPUTS, "lm_head"), INT8), "o_proj": INT16, "down_proj": INT16},
    "gu8_rest16": {**dict.fromkeys(INPUTS + LATER, INT16), "gate_proj": INT8, "up_proj": INT8},
    "qkv8_rest16": {**dict.fromkeys(INPUTS + LATER, INT16), "q_proj": INT8, "k_proj": INT8, "v_proj": INT8},
}


def round_blocks(x: torch.Tensor, levels: float) -> torch.Tensor:
    """``x`` rounded to ``levels`` steps of its block's absolute maximum per block of 32 along the last dim."""
    shape = x.shape
    blocks = x.reshape(*shape[:-1], shape[-1] // BLOCK, BLOCK)
    amax = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, levels / amax, torch.zeros_like(amax))
    return (torch.round(blocks * inverse) * (amax / levels)).reshape(shape)


class Rounding:
    """Forward pre-hooks on every ``nn.Linear`` of a model, rounding the inputs of the projections in ``active``
    (name suffix -> levels); empty ``active``: the model as is."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.active: dict[str, float] = {}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_pre_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]):
            for suffix, levels in self.active.items():
                if name.endswith(suffix):
                    return (round_blocks(args[0], levels), *args[1:])
            return None
        return hook


def greedy(model: torch.nn.Module, prompts: list[list[int]], eos: int, new_tokens: int = 64) -> list[list[int]]:
    """``new_tokens`` greedy tokens after each prompt (EOS not stopping)."""
    from arrowengine.bench.llm import hf_greedy

    return [hf_greedy(model, ids, new_tokens, eos) for ids in prompts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"),
                        help="the float reference model directory (python scripts/fetch_models.py makes it)")
    parser.add_argument("--conversations", type=int, default=40, help="held-out chat conversations for perplexity")
    parser.add_argument("--greedy", action="store_true", help="also compare greedy continuations of 20 prompts")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from tqdm import tqdm
    from transformers import AutoTokenizer

    from arrowengine.bench.datasets import chat_prompts, held_out_text
    from arrowengine.bench.llm import transformers_llama
    from quant.metrics import windowed_perplexity

    if not (args.model / "weights.parquet").is_file():
        print(f"{args.model} is missing; run python scripts/fetch_models.py", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    model = transformers_llama(args.model)
    rounding = Rounding(model)
    ids = torch.tensor(tokenizer(held_out_text(conversations=args.conversations, offset=6000))["input_ids"])
    prompts = chat_prompts(tokenizer, 20) if args.greedy else []
    base = windowed_perplexity(model, ids, WINDOW)
    reference = greedy(model, prompts, tokenizer.eos_token_id) if args.greedy else []
    results = []
    for name in tqdm(args.configs, desc="configurations", unit="config"):
        rounding.active = CONFIGS[name]
        row = {"config": name, "int8": sorted(k for k, v in CONFIGS[name].items() if v == INT8),
               "perplexity": windowed_perplexity(model, ids, WINDOW)}
        row["increase"] = row["perplexity"] / base - 1.0
        if args.greedy:
            tokens = greedy(model, prompts, tokenizer.eos_token_id)
            row["greedy_identical"] = sum(a == b for a, b in zip(tokens, reference, strict=True))
        results.append(row)
    rounding.active = {}
    print(f"held-out tokens: {ids.numel()}; reference perplexity {base:.4f}")
    print("| configuration | int8 inputs | perplexity | vs reference | greedy identical of 20 |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in results:
        print(f"| {row['config']} | {', '.join(row['int8']) or '-'} | {row['perplexity']:.4f} | "
              f"{100 * row['increase']:+.3f}% | {row.get('greedy_identical', '-')} |")
    if args.out:
        args.out.write_text(json.dumps({"tokens": ids.numel(), "reference_perplexity": base,
                                        "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
