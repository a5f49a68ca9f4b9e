"""The targets the issues set, evaluated on one run's results. A target not met is reported as not met."""

from __future__ import annotations

from typing import Any

from arrowengine.bench.context import BenchContext
from arrowengine.bench.llamacpp import AGREEMENT_ROW, BATCH_ROW, OURS, PEER
from arrowengine.bench.results import Target

__all__ = ["evaluate_targets"]


def _text_targets(ctx: BenchContext) -> list[Target]:
    rs = ctx.results
    group = "all-MiniLM-L6-v2 batch=32"
    ours = rs.find(suite="text", group=group, role="ours", metric="throughput")
    ours = [r for r in ours if r.group == group]
    best = rs.best(ours)
    ort_int8 = [r for r in rs.find(suite="text", group=group, strategy="onnxruntime int8") if r.value]
    out = [Target("minilm_2x_sentence_transformers",
                  "MiniLM sentences/s >= 2x sentence-transformers fp32 (batch 32) at cosine min >= 0.99",
                  best.ratio if best else None, 2.0, ">=",
                  f"{best.strategy}: {best.value:.0f} sentences/s, cosine min {best.fidelity.value:.4f}" if best
                  else "no arrowengine strategy measured at cosine >= 0.99")]
    if ort_int8 and best:
        peer = ort_int8[0]
        out.append(Target("minilm_vs_onnxruntime_int8",
                          "MiniLM sentences/s >= onnxruntime INT8 dynamic quantization, at cosine min >= 0.99",
                          best.value / peer.value, 1.0, ">=",
                          f"{best.strategy} {best.value:.0f}/s vs onnxruntime int8 {peer.value:.0f}/s "
                          f"(its cosine min {peer.fidelity.value:.3f})"))
    elif "all-MiniLM-L6-v2" in ctx.options.models:
        out.append(Target("minilm_vs_onnxruntime_int8", "MiniLM sentences/s >= onnxruntime INT8 dynamic "
                          "quantization, at cosine min >= 0.99", None, 1.0, ">=", "not measured in this run"))
    return out


def _audio_targets(ctx: BenchContext) -> list[Target]:
    out = []
    for model in ("whisper-tiny.en", "whisper-base"):
        if model not in ctx.options.models:
            continue
        rows = [r for r in ctx.results.find(suite="audio", group=model, role="ours") if r.group.startswith(model)]
        best = ctx.results.best(rows)
        out.append(Target(f"{model}_encoder_half_latency",
                          f"{model} encoder latency on 30 s <= 0.5x transformers fp32, cosine >= 0.99",
                          1.0 / best.ratio if best else None, 0.5, "<=",
                          f"{best.strategy}: {best.value:.0f} ms, cosine min {best.fidelity.value:.4f}" if best
                          else "no arrowengine strategy measured at cosine >= 0.99"))
    return out


def _llm_targets(ctx: BenchContext) -> list[Target]:
    if "smollm2-135m-instruct" not in ctx.options.models:
        return []
    rows = ctx.results.find(suite="llm", group="prompt=32", role="ours", metric="decode")
    best = ctx.results.best(rows)
    return [Target("llm_decode_3x_transformers",
                   "SmolLM2 greedy decode tokens/s >= 3x transformers.generate fp32 (prompt 32, 64 new tokens), "
                   "perplexity within +1% of fp32",
                   best.ratio if best else None, 3.0, ">=",
                   f"{best.strategy}: {best.value:.1f} tokens/s, perplexity {best.fidelity.value:+.2%} vs fp32, "
                   f"{100 * best.params['fraction_of_bound']:.0f}% of its bandwidth bound" if best
                   else "not measured")]


def _gguf_targets(ctx: BenchContext) -> list[Target]:
    """Issue 19's targets: arrowengine's default on the GGUF blocks against llama.cpp on the same file."""
    rs = ctx.results

    def value(strategy: str, metric: str, length: int) -> Any:
        rows = [r for r in rs.find(suite="llm", group=f"prompt={length}", strategy=strategy, metric=metric)
                if r.strategy == strategy and r.status == "ok" and r.value]
        return rows[0] if rows else None

    out = []
    decode = {length: (value(OURS, "decode", length), value(PEER, "decode", length)) for length in (32, 512)}
    ratios = [ours.value / peer.value for ours, peer in decode.values() if ours and peer]
    evidence = [f"prompt {length}: {ours.value:.1f} vs {peer.value:.1f} tokens/s"
                for length, (ours, peer) in decode.items() if ours and peer]
    ours32 = decode[32][0]
    ppl = (f"; perplexity {ours32.fidelity.value:+.3%} vs the dequantized float reference"
           if ours32 and ours32.fidelity and ours32.fidelity.value is not None else "")
    out.append(Target("llm_gguf_decode_vs_llamacpp", "Single-stream decode on the GGUF blocks >= 1.0x llama.cpp on "
                      "the same GGUF and threads (goal 1.5x), at prompt 32 and 512 (the lower ratio)",
                      min(ratios) if len(ratios) == 2 else None, 1.0, ">=",
                      "; ".join(evidence) + ppl if evidence else "llama.cpp or arrowengine not measured"))
    ours, peer = value(OURS, "ttft", 512), value(PEER, "ttft", 512)
    out.append(Target("llm_gguf_prefill_vs_llamacpp", "Prefill of a 512-token prompt >= 1.0x llama.cpp's (TTFT)",
                      peer.value / ours.value if ours and peer else None, 1.0, ">=",
                      f"TTFT {ours.value:.0f} vs {peer.value:.0f} ms" if ours and peer else "not measured"))
    batch = value(BATCH_ROW, "batch_decode", 32)
    out.append(Target("llm_gguf_batch8_4x", "Batch-8 decode tokens/s (summed over the rows) >= 4x single stream",
                      batch.params["vs_single_stream"] if batch else None, 4.0, ">=",
                      f"{batch.value:.0f} vs {batch.params['single_stream_tokens_per_s']:.0f} tokens/s, prefill "
                      f"excluded; with prefill {batch.params['with_prefill_vs_single_stream']:.2f}x" if batch
                      else "not measured"))
    agree = value(AGREEMENT_ROW, "greedy_agreement", 32)
    out.append(Target("llm_gguf_greedy_agreement", "Greedy tokens identical to the float reference on >= 18 of 20 "
                      "real chat prompts x 64 tokens", agree.value if agree else None, 18.0, ">=",
                      f"{agree.value:.0f} of {agree.params['prompts']} prompts identical, "
                      f"{agree.params['mean_matching_positions']:.1%} of positions" if agree else "not measured"))
    return out


def _int8_target(ctx: BenchContext) -> list[Target]:
    if "all-MiniLM-L6-v2" not in ctx.options.models or "load" not in ctx.options.suites:
        return []
    sizes = ctx.int8_bytes
    return [Target("int8_weights_quarter", "MiniLM INT8 quantized weights <= 1/4 of their fp32 bytes",
                   sizes["quantized_bytes"] / sizes["float32_bytes"] if sizes else None, 0.25, "<=",
                   f"{sizes['quantized_bytes']} of {sizes['float32_bytes']} bytes counting codes + scales + zero "
                   f"points; the codes alone are {sizes['codes_bytes'] / sizes['float32_bytes']:.4f}" if sizes
                   else "not measured")]


def evaluate_targets(ctx: BenchContext) -> list[Target]:
    """Every target whose inputs were part of this run (a suite not run contributes none)."""
    suites = ctx.options.suites
    out: list[Target] = []
    if "text" in suites and "all-MiniLM-L6-v2" in ctx.options.models:
        out += _text_targets(ctx)
    if "audio" in suites:
        out += _audio_targets(ctx)
    if "llm" in suites:
        out += _llm_targets(ctx)
        if "smollm2-135m-instruct" in ctx.options.models:
            out += _gguf_targets(ctx)
    return out + _int8_target(ctx)
