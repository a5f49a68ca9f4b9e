"""End to end: causal LM time to first token and greedy decode tokens/s at prompt lengths 32 and 512.

Baseline: transformers ``LlamaForCausalLM.generate`` (greedy, fp32) on the same weights, built from the model's
config (loading the GGUF source through transformers takes ~15 s and gives the same module). Each strategy
generates exactly 64 new tokens (EOS ignored). Fidelity: greedy token agreement with the baseline (fraction of
the 64 positions that match) and, for arrowengine, perplexity on held-out chat text (full runs; the baseline's
perplexity is arrowengine fp32's, which computes the same function). A speed counts against the targets only
when the strategy's perplexity is within +1% of fp32's. Decode speed is also set
against the memory-bandwidth bound: measured copy bandwidth / weight bytes read per token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from arrowengine.bench.context import BenchContext
from arrowengine.bench.datasets import held_out_text
from arrowengine.bench.measure import Spread
from arrowengine.bench.results import Fidelity
from arrowengine.bench.variants import float_model_dir
from arrowengine.errors import UsageError

__all__ = ["LLM_STRATEGIES", "LLMStrategy", "Measured", "hf_greedy", "memory_bandwidth", "run_llm", "time_together",
           "transformers_llama"]

logger = logging.getLogger(__name__)

MODEL = "smollm2-135m-instruct"
NEW_TOKENS = 64
PPL_BAR = 0.01  # relative perplexity increase allowed for a speed to count against the targets
PROMPT_LENGTHS = (32, 512)


@dataclass(frozen=True)
class LLMStrategy:
    """An arrowengine ``LLM`` configuration (keyword arguments of :class:`arrowengine.LLM`)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


LLM_STRATEGIES = (
    LLMStrategy("arrowengine fp32", {"dtype": "float32"}),
    LLMStrategy("arrowengine bf16", {"dtype": "bfloat16"}),
    LLMStrategy("arrowengine int8 weights, bf16 activations", {"weight_quant": "int8"}),
    LLMStrategy("arrowengine int4 g32 weights (RTN), bf16 activations", {"weight_quant": "int4", "group_size": 32}),
)


@dataclass(frozen=True)
class Measured:
    """A strategy to time: ``generate(ids, n) -> n token ids``, the weight bytes it reads per token (for the
    bandwidth bound) and its perplexity on the held-out text (None: not computed; agreement is its fidelity)."""

    strategy: str
    role: str
    generate: Callable[[list[int], int], list[int]]
    weight_bytes: float
    perplexity: float | None


def transformers_llama(model_dir: Path) -> Any:
    """transformers' ``LlamaForCausalLM`` holding the weights of the arrowengine model directory ``model_dir``
    (tied embedding, eval mode): the float reference the LLM suite times and scores against."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from arrowengine.runtime.loading import load_config_dict, load_state_dict

    model = LlamaForCausalLM(LlamaConfig.from_dict(load_config_dict(model_dir)))
    model.load_state_dict({k: v.clone() for k, v in load_state_dict(model_dir).items()}, strict=False)
    model.tie_weights()
    return model.eval()


def hf_greedy(model: Any, ids: list[int], n: int, pad_token_id: int) -> list[int]:
    """``n`` greedy tokens after the prompt ``ids`` from a transformers causal LM (EOS does not stop it)."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad_token_id)
    return out[0, len(ids):].tolist()


def memory_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes/s of one large ``copy_`` (read + write counted), the best of ``repeats``."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def weights_read_per_token(model: Any) -> int:
    """Weight elements one decode step reads: every Linear weight plus the LM head (embeddings gather one row)."""
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return int(total)


def time_together(ctx: BenchContext, group: str, entries: list[Measured], ids: list[int],
                  new_tokens: int) -> list[tuple[Measured, Spread, Spread, list[int]]]:
    """Each entry's (first-token spread, full-run spread, full-run tokens) at prompt ``ids``, every entry's first
    token and full run timed in shared rounds (see ``run_llm``).

    When the shared rounds raise and there is more than one entry, each entry is timed again alone under
    ``ctx.attempt``: one strategy failing mid-run (llama.cpp out of context, a kernel error) gets its own failed
    row, and the others still get their figures. A lone entry's exception propagates to the caller's attempt.
    """
    fns: dict[str, Callable[[], Any]] = {}
    for i, entry in enumerate(entries):
        fns[f"{i} first"] = lambda g=entry.generate: g(ids, 1)
        fns[f"{i} full"] = lambda g=entry.generate: g(ids, new_tokens)
    try:
        timed = ctx.time_interleaved(fns)
    except Exception as exc:
        if len(entries) == 1:
            raise
        logger.warning("llm | %s | shared timing rounds failed (%s: %s); timing each strategy alone", group,
                       type(exc).__name__, exc)
        alone: list[tuple[Measured, Spread, Spread, list[int]]] = []
        for entry in entries:
            ctx.attempt("llm", group, entry.strategy, entry.role, "decode", "tokens/s",
                        lambda e=entry: alone.extend(time_together(ctx, group, [e], ids, new_tokens)))
        return alone
    return [(entry, timed[f"{i} first"][0], *timed[f"{i} full"]) for i, entry in enumerate(entries)]


def _prompts(tokenizer: Any) -> dict[int, list[int]]:
    ids = tokenizer(held_out_text(conversations=40, offset=6000))["input_ids"]
    if len(ids) < max(PROMPT_LENGTHS):
        raise UsageError(f"held-out text has {len(ids)} tokens, fewer than the {max(PROMPT_LENGTHS)} of the longest "
                         f"prompt; the chat data set is incomplete: reinstall it (pip install 'arrowengine[data]')")
    return {n: list(ids[:n]) for n in PROMPT_LENGTHS}


def _agreement(tokens: list[int], reference: list[int]) -> float:
    same = sum(a == b for a, b in zip(tokens, reference, strict=False))
    return same / max(1, len(reference))


def run_llm(ctx: BenchContext) -> None:
    """TTFT and decode tokens/s per prompt length for transformers (fp32, bf16) and every arrowengine strategy."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from arrowengine.runtime.llm import LLM, SamplingParams

    model_dir = float_model_dir(ctx.options.models_dir, MODEL)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = _prompts(tokenizer)
    bandwidth = memory_bandwidth()
    reference = transformers_llama(model_dir)
    params_read = weights_read_per_token(reference)
    held_out = held_out_text(conversations=6, offset=7000)
    references: dict[int, list[int]] = {}

    def hf_runner(model: Any):
        return lambda ids, n: hf_greedy(model, ids, n, tokenizer.eos_token_id)

    def ours_runner(llm: Any):
        def generate(ids: list[int], n: int) -> list[int]:
            params = SamplingParams(max_new_tokens=n, ignore_eos=True)
            return list(llm.generate_ids([ids], params)[0].token_ids)
        return generate

    # the fp32 perplexity every strategy's is compared with (arrowengine fp32: logits identical to transformers')
    reference_ppl = float(LLM(model_dir, device=ctx.options.device, dtype="float32").perplexity(held_out))

    def measure_together(entries: list[Measured]) -> None:
        """Time every entry's first token and full run at each prompt length in shared rounds, then record each."""
        for length, ids in prompts.items():
            group = f"{MODEL} prompt={length}"
            # decode = (full run - first token) / the tokens after it: the two timed in alternating rounds, so a
            # slow spell lands in both. Timed one after the other, at prompt 512 (prefill 1-4x the 63 decode
            # steps) a spell in the prefill-only runs read as decode speed: llama.cpp once measured 156 tokens/s
            # at 512 against 97 at 32 in the same run. Entries measured together (arrowengine on the GGUF blocks
            # and llama.cpp) share the rounds as well, so their ratio does not depend on which one a spell hit
            for entry, first, full, tokens in time_together(ctx, group, entries, ids, NEW_TOKENS):
                record(entry, length, group, first, full, tokens)

    def record(entry: Measured, length: int, group: str, first: Spread, full: Spread, tokens: list[int]) -> None:
        if entry.role == "baseline":
            references[length] = tokens
        agreement = _agreement(tokens, references.get(length, tokens))
        if entry.perplexity is not None:
            # the bar: perplexity within +1% of fp32 (issue 4's INT8 target); greedy tokens diverge early
            # under any rounding change, so agreement is reported but not the bar
            increase = entry.perplexity / reference_ppl - 1.0
            fidelity = Fidelity("perplexity_increase", increase, PPL_BAR, higher_is_better=False,
                                extra={"perplexity": entry.perplexity, "token_agreement": agreement})
        else:
            fidelity = Fidelity("token_agreement", agreement, None)
        ctx.record("llm", group, entry.strategy, entry.role, "ttft", "ms", first.median * 1e3,
                   higher_is_better=False, spread=first.scaled(1e3), fidelity=fidelity,
                   params={"prompt_tokens": length})
        decode_s = max(full.median - first.median, 1e-9) / (NEW_TOKENS - 1)
        bound = bandwidth / entry.weight_bytes
        ctx.record("llm", group, entry.strategy, entry.role, "decode", "tokens/s", 1.0 / decode_s,
                   higher_is_better=True, fidelity=fidelity,
                   params={"prompt_tokens": length, "new_tokens": NEW_TOKENS, "bandwidth_bytes_per_s": bandwidth,
                           "weight_bytes_per_token": entry.weight_bytes, "bandwidth_bound_tokens_per_s": bound,
                           "fraction_of_bound": (1.0 / decode_s) / bound})

    def measure(strategy: str, role: str, generate, weight_bytes: float, perplexity: float | None) -> None:
        measure_together([Measured(strategy, role, generate, weight_bytes, perplexity)])

    from tqdm import tqdm

    progress = tqdm(total=2 + len(LLM_STRATEGIES), desc="llm strategies", unit="strategy")
    measure("transformers generate fp32", "baseline", hf_runner(reference), 4.0 * params_read, None)
    progress.update()

    def hf_bf16() -> None:
        model = LlamaForCausalLM(reference.config)
        model.load_state_dict(reference.state_dict())
        measure("transformers generate bf16", "peer", hf_runner(model.to(torch.bfloat16).eval()), 2.0 * params_read,
                None)
    ctx.attempt("llm", f"{MODEL} prompt=32", "transformers generate bf16", "peer", "decode", "tokens/s", hf_bf16)
    progress.update()
    for strategy in LLM_STRATEGIES:
        def run(strategy=strategy) -> None:
            llm = LLM(model_dir, device=ctx.options.device, **strategy.kwargs)
            ppl = float(llm.perplexity(held_out))
            measure(strategy.name, "ours", ours_runner(llm), float(llm.forward.weight_bytes_per_token), ppl)
        ctx.attempt("llm", f"{MODEL} prompt=32", strategy.name, "ours", "decode", "tokens/s", run)
        progress.update()
    from arrowengine.bench.llamacpp import run_gguf_peers  # GGUF blocks vs llama.cpp on the same file

    run_gguf_peers(ctx, MODEL, measure_together, ours_runner, held_out, prompts, NEW_TOKENS, tokenizer)
    progress.close()
