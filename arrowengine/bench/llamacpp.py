"""The GGUF side of the LLM suite: arrowengine on the GGUF's own blocks against llama.cpp on the same file.

llama.cpp (through ``llama-cpp-python``, an optional dependency: ``pip install 'arrowengine[llamacpp]'``, best
built from source with ``CMAKE_ARGS="-DGGML_NATIVE=ON"``) runs the GGUF as shipped; arrowengine runs ``LLM(dir)``
with its default precision on a model directory converted with the blocks kept (``models/.bench/<name>-gguf``,
converted on first use). Both use ``torch.get_num_threads()`` threads, greedy decoding, EOS ignored, and are timed
in the same rounds, one call of each in turn (on a shared 2-core host the speed drifts by tens of percent from one
minute to the next: timed one after the other, a slow spell landed on one side of the ratio); one that raises
in the shared rounds is timed again alone and gets its own failed row (``arrowengine.bench.llm.time_together``).
When ``llama_cpp`` is not importable the suite records a failed row that says so and how to install it.
Batch-8 decode throughput (tokens/s summed over the rows, prefill excluded as in the single-stream decode figure;
the with-prefill figures are kept in its params) is recorded for arrowengine against its own single stream, and
its greedy tokens are compared with the float reference's (the blocks dequantized) on 20 real chat prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from arrowengine.bench.context import BenchContext
from arrowengine.bench.llm import Measured

__all__ = ["AGREEMENT_ROW", "BATCH_ROW", "LLAMACPP_MISSING", "OURS", "PEER", "blocks_model_dir", "llamacpp_generator",
           "run_gguf_peers"]

logger = logging.getLogger(__name__)

LLAMACPP_MISSING = ("llama.cpp peer missing: llama_cpp is not importable; install it with "
                    "CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install llama-cpp-python==0.3.36 (a source build, ~10 min on "
                    "2 cores)")
BATCH = 8
AGREEMENT_PROMPTS = 20  # real chat prompts whose greedy tokens are compared with the float reference's
# the rows' strategy names (arrowengine.bench.targets reads the rows by these)
OURS, PEER = "arrowengine LLM(dir) default on the GGUF blocks", "llama.cpp on the GGUF"
BATCH_ROW, AGREEMENT_ROW = f"{OURS}, batch 8", f"{OURS}, greedy vs its float reference"


def blocks_model_dir(models_dir: Path, name: str) -> Path:
    """``models_dir/.bench/<name>-gguf``: the model package's GGUF converted with its blocks kept (cached)."""
    from arrowengine.converters import convert
    from arrowengine.converters.packages import locate_source

    dst = Path(models_dir) / ".bench" / f"{name}-gguf"
    if not (dst / "weights.parquet").is_file():
        logger.info("converting %s with its GGUF blocks kept into %s", name, dst)
        convert(locate_source(name), dst, force=True)
    return dst


def llamacpp_generator(gguf: Path, threads: int, n_ctx: int = 1024) -> Callable[[list[int], int], list[int]]:
    """``generate(ids, n) -> n greedy token ids`` from llama.cpp on ``gguf`` (ImportError when not installed)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=512,
                verbose=False)

    def generate(ids: list[int], n: int) -> list[int]:
        # llama-cpp-python reuses the KV cache of the longest common prefix with the previous call: a repeated
        # prompt would skip its prefill (a "TTFT" of 0.5 ms measured). Forget the previous tokens first.
        llm.reset()
        out: list[int] = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if len(out) == n:
                break
        return out

    return generate


def run_gguf_peers(ctx: BenchContext, model: str, measure_together: Callable[[list[Measured]], None],
                   ours_runner: Callable[[Any], Callable[[list[int], int], list[int]]], held_out: str,
                   prompts: dict[int, list[int]], new_tokens: int, tokenizer: Any) -> None:
    """Record arrowengine's default on the GGUF blocks, llama.cpp on the GGUF, arrowengine's batch-8 decode and its
    greedy agreement with the float reference on :data:`AGREEMENT_PROMPTS` chat prompts (``tokenizer``: the model's
    ``transformers`` tokenizer).

    ``measure_together(entries)`` is the suite's recorder (TTFT and decode per prompt length, fidelity against the
    fp32 reference): arrowengine and llama.cpp are timed in the same rounds, alternating call by call, so a slow
    spell of this shared machine lands on both sides of their ratio.
    """
    from arrowengine.bench.datasets import chat_prompts
    from arrowengine.converters.packages import locate_source
    from arrowengine.runtime.llm import LLM, SamplingParams

    group = f"{model} prompt={min(prompts)}"
    holder: dict[str, Any] = {}
    entries: list[Measured] = []

    def ours() -> None:
        llm = LLM(blocks_model_dir(ctx.options.models_dir, model), device=ctx.options.device)
        holder["llm"] = llm
        holder["weight_bytes"] = float(llm.forward.weight_bytes_per_token)
        entries.append(Measured(OURS, "ours", ours_runner(llm), holder["weight_bytes"],
                                float(llm.perplexity(held_out))))

    ctx.attempt("llm", group, OURS, "ours", "decode", "tokens/s", ours)

    def peer() -> None:
        try:
            generate = llamacpp_generator(locate_source(model), torch.get_num_threads())
        except ImportError as exc:
            logger.warning(LLAMACPP_MISSING)
            raise RuntimeError(LLAMACPP_MISSING) from exc
        # same weights read per token as arrowengine's block model: the GGUF's own blocks
        entries.append(Measured(PEER, "peer", generate, holder.get("weight_bytes", float("nan")), None))

    ctx.attempt("llm", group, PEER, "peer", "decode", "tokens/s", peer)
    if entries:
        ctx.attempt("llm", group, entries[0].strategy, entries[0].role, "decode", "tokens/s",
                    lambda: measure_together(entries))

    def loaded() -> Any:
        """The LLM the "ours" row loaded (the batch and agreement rows reuse it)."""
        if "llm" not in holder:
            raise RuntimeError("arrowengine on the GGUF blocks did not load; see its row")
        return holder["llm"]

    def batch() -> None:
        llm = loaded()
        ids = prompts[min(prompts)]

        def rows(n: int, tokens: int) -> Callable[[], None]:
            params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
            return lambda: llm.generate_ids([ids] * n, params)

        # decode alone = (full run - prefill and first token) / the tokens after the first, as the suite's
        # single-stream "decode" is measured; the with-prefill figures are kept beside it
        timed = ctx.time_interleaved({"batch": rows(BATCH, new_tokens), "batch_first": rows(BATCH, 1),
                                      "single": rows(1, new_tokens), "single_first": rows(1, 1)})
        med = {name: spread.median for name, (spread, _) in timed.items()}
        batched = BATCH * (new_tokens - 1) / max(med["batch"] - med["batch_first"], 1e-9)
        single = (new_tokens - 1) / max(med["single"] - med["single_first"], 1e-9)
        with_prefill = (BATCH * new_tokens / med["batch"], new_tokens / med["single"])
        ctx.record("llm", group, BATCH_ROW, "ours",
                   "batch_decode", "tokens/s", batched, higher_is_better=True, params={
                       "batch": BATCH, "new_tokens": new_tokens, "single_stream_tokens_per_s": single,
                       "vs_single_stream": batched / single, "includes_prefill": False,
                       "with_prefill_tokens_per_s": with_prefill[0],
                       "with_prefill_single_stream_tokens_per_s": with_prefill[1],
                       "with_prefill_vs_single_stream": with_prefill[0] / with_prefill[1]})

    ctx.attempt("llm", group, BATCH_ROW, "ours", "batch_decode", "tokens/s", batch)

    def agreement() -> None:
        llm = loaded()
        reference = LLM(blocks_model_dir(ctx.options.models_dir, model), device=ctx.options.device, dtype="float32")
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        chats = chat_prompts(tokenizer, AGREEMENT_PROMPTS)
        same, positions = 0, []
        for ids in chats:  # one by one: no batch padding on either side
            ours_ids = list(llm.generate_ids([ids], params)[0].token_ids)
            ref_ids = list(reference.generate_ids([ids], params)[0].token_ids)
            same += ours_ids == ref_ids
            positions.append(sum(a == b for a, b in zip(ours_ids, ref_ids, strict=False)) / max(1, len(ref_ids)))
        ctx.record("llm", group, AGREEMENT_ROW, "ours", "greedy_agreement", "prompts",
                   float(same), higher_is_better=True, params={
                       "prompts": len(chats), "new_tokens": new_tokens,
                       "mean_matching_positions": sum(positions) / len(positions),
                       "reference": "LLM(dir, dtype='float32'): the blocks dequantized exactly"})

    ctx.attempt("llm", group, AGREEMENT_ROW, "ours", "greedy_agreement", "prompts",
                agreement)
