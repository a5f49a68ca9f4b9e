"""Measure the memory-compression SDK on real conversations (PyPI ``chitchat-dataset``); JSON to ``--out``.

Lossless tier, per message: zstd -19, zstd -19 with a dictionary trained on other conversations, zstd -19 over
all messages concatenated, and the LM arithmetic coder (SmolLM2-135M-Instruct) coding each message with its
conversation so far as context. Ratios are reported two ways: over payload bytes (the coder alone, what a bare
zstd frame is compared with) and over the whole Arrow record (the row the store keeps: payload + metadata).
Every message is decoded again and compared with the original. The LM coder runs on CPU at a few dozen ms per
token, so it covers a subset: the first ``--lm-per-conversation`` messages of each conversation, in dataset
order, until ``--lm-messages`` messages; the zstd figures are repeated on that same subset.

Semantic tier: one memory per whole conversation, using the first ``--semantic-memories`` conversations of at
least ``--semantic-min-bytes`` bytes (shorter ones cannot reach 10x: the row's fixed fields alone are ~156 bytes).
The store's text model (:mod:`memory.compression.text_model`) and zstd dictionary are trained on the messages of
``--semantic-training-conversations`` conversations after the last evaluated one (disjoint). The summary + entity
list are coded with the text model; the whole Arrow row (payload, binary or int8 embedding, checksums, metrics) is
what the ratio divides by, and the summary is sized so the row meets ``--semantic-target-ratio``. The compressor
embeds with MiniLM ``--embedder-precision`` (int8-mixed: fast, cosine >= 0.99 to fp32); every record is then
decoded and the reported cosine is fp32 MiniLM of original vs decoded reconstruction. Reports ratio (also as it
would be with an int8 embedding, and without any embedding), cosine and entity retention as min / p5 / p25 /
median / mean, how many were flagged, and a histogram PNG.

    python scripts/compression_eval.py --out docs/benchmarks/compression.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import zstandard
from tqdm import tqdm

from arrowengine.converters.packages import locate_source
from memory.compression import CompressionConfig, Compressor, Reconstructor, load_causal_lm
from memory.compression.zstd_dict import ZstdDictionary

os.environ.setdefault("HF_HUB_OFFLINE", "1")
logger = logging.getLogger("compression_eval")


def load_conversations() -> list[list[str]]:
    """Every conversation as its list of non-empty messages, in dataset order."""
    from arrowengine.datasets import chitchat_turns

    # unstripped, as the figures in docs/benchmarks/compression.json were measured
    out = [[t for turn in conv for t in turn.texts if t] for conv in chitchat_turns()]
    return [c for c in out if c]


def stats(values: list[float]) -> dict[str, float]:
    """min / p5 / p25 / median / mean / max of ``values``."""
    a = np.asarray(values, dtype=np.float64)
    return {"min": float(a.min()), "p5": float(np.percentile(a, 5)), "p25": float(np.percentile(a, 25)),
            "p50": float(np.median(a)), "mean": float(a.mean()), "max": float(a.max()), "n": len(values)}


def zstd_figures(messages: list[str], dictionary: ZstdDictionary) -> dict[str, dict[str, float]]:
    """Payload and record ratios of zstd -19 and zstd -19 + dictionary per message, round trip asserted."""
    raw = sum(len(m.encode()) for m in messages)
    out = {}
    for name, compressor in (
        ("zstd19_per_message", Compressor(CompressionConfig(lossless_method="zstd"))),
        ("zstd19_dict_per_message", Compressor(CompressionConfig(lossless_method="zstd_dict"), dictionary=dictionary)),
    ):
        records = compressor.compress(messages)
        assert Reconstructor(dictionary=dictionary).reconstruct(records) == messages, name
        payload = sum(len(r.payload) for r in records)
        stored = sum(r.stored_bytes for r in records)
        out[name] = {"raw_bytes": raw, "payload_bytes": payload, "payload_ratio": raw / payload,
                     "bits_per_byte": 8 * payload / raw, "record_bytes": stored, "record_ratio": raw / stored}
    joined = "\n".join(messages).encode()
    concat = len(zstandard.ZstdCompressor(level=19).compress(joined))
    out["zstd19_all_concatenated"] = {"raw_bytes": len(joined), "payload_bytes": concat,
                                      "payload_ratio": len(joined) / concat, "bits_per_byte": 8 * concat / len(joined)}
    return out


def lm_figures(conversations: list[list[str]], max_messages: int, per_conversation: int,
               model_dir: Path | None) -> tuple[dict, list[str]]:
    """LM coder per message with its conversation as context, exact round trip asserted on every message."""
    if model_dir is not None:
        lm = load_causal_lm(model_dir)
    else:
        gguf = locate_source("smollm2-135m-instruct")
        lm = load_causal_lm(gguf.parent, gguf_file=gguf.name)
    compressor, reconstructor = Compressor(lm=lm), Reconstructor(lm=lm)
    subset, n = [], 0
    for conv in conversations:
        if n >= max_messages:
            break
        subset.append(conv[: min(max_messages - n, per_conversation)])
        n += len(subset[-1])
    raw = payload = stored = 0
    byte_path = 0
    encode_s = decode_s = 0.0
    for conv in tqdm(subset, desc="LM coder (conversations)"):
        t0 = time.perf_counter()
        records = compressor.compress(conv)
        t1 = time.perf_counter()
        assert reconstructor.reconstruct(records) == conv, "LM coder round trip failed"
        decode_s += time.perf_counter() - t1
        encode_s += t1 - t0
        raw += sum(len(m.encode()) for m in conv)
        payload += sum(len(r.payload) for r in records)
        stored += sum(r.stored_bytes for r in records)
        byte_path += sum(r.token_path == "bytes" for r in records)
    messages = [m for conv in subset for m in conv]
    return {
        "model_checksum": lm.checksum, "conversations": len(subset), "messages": len(messages),
        "raw_bytes": raw, "payload_bytes": payload, "payload_ratio": raw / payload,
        "bits_per_byte": 8 * payload / raw, "record_bytes": stored, "record_ratio": raw / stored,
        "byte_path_messages": byte_path, "encode_s": encode_s, "decode_s": decode_s,
        "encode_ms_per_message": 1000 * encode_s / len(messages), "round_trip_exact": True,
    }, messages


def semantic_split(conversations: list[list[str]], n_memories: int, min_bytes: int,
                   n_training: int) -> tuple[list[str], list[str]]:
    """The first ``n_memories`` conversations of >= ``min_bytes`` bytes, and the messages of ``n_training``
    conversations after the last of them: the store's text the dictionary and text model learn from, disjoint
    from what they code."""
    texts = ["\n".join(c) for c in conversations]
    chosen = [i for i, t in enumerate(texts) if len(t.encode()) >= min_bytes][:n_memories]
    after = chosen[-1] + 1 if chosen else 0
    training = [m for c in conversations[after : after + n_training] for m in c]
    return [texts[i] for i in chosen], training


def semantic_figures(memories: list[str], training: list[str], embedder, reference_embedder,
                     config: CompressionConfig, histogram: Path | None) -> dict:
    """Semantic tier on whole conversations; every record decoded again and scored by the fp32 reference."""
    from memory.compression import ContextTextModel
    from memory.compression.semantic import embed_documents

    start = time.perf_counter()
    text_model = ContextTextModel.train(training)
    dictionary = ZstdDictionary.train(training)
    train_s = time.perf_counter() - start
    compressor = Compressor(config, embedder=embedder, dictionary=dictionary, text_model=text_model)
    reconstructor = Reconstructor(config, dictionary=dictionary, text_model=text_model)
    records = [compressor.compress(m, tier="semantic") for m in tqdm(memories, desc="semantic (conversations)")]
    rebuilt = []
    for memory, record in zip(tqdm(memories, desc="decode + fp32 cosine"), records, strict=True):
        restored = reconstructor.reconstruct(record)
        assert not record.flagged or restored == memory, "flagged record did not restore the raw text"
        rebuilt.append(restored)
    # the headline cosine: fp32 MiniLM on the original and on the reconstruction decoded from the stored record
    cos_fp32 = [float(a @ b) for a, b in zip(embed_documents(reference_embedder, memories),
                                              embed_documents(reference_embedder, rebuilt), strict=True)]
    unflagged = [r for r in records if not r.flagged]
    unflagged_cos = [c for c, r in zip(cos_fp32, records, strict=True) if not r.flagged]
    int8_bytes = 384 + 4  # what an int8 embedding (+ its float32 scale, already in the row) would add instead
    ratio_int8 = [r.original_length / (r.stored_bytes - len(r.embedding) + int8_bytes - 4) for r in records]
    ratio_no_embedding = [r.original_length / (r.stored_bytes - len(r.embedding)) for r in records]
    parts = [reconstructor.semantic_parts(r) for r in unflagged]
    report = {
        "memories": len(records), "training_messages": len(training), "text_model_order": text_model.order,
        "text_model_and_dictionary_train_s": train_s, "target_ratio": config.semantic_target_ratio,
        "embedding_format": config.semantic_embedding,
        "payload_coding": sorted({r.token_path.split("/")[0] for r in unflagged}),
        "quality_threshold": config.quality_threshold, "summary_shortlist": config.summary_shortlist,
        "summary_search_steps": config.summary_search_steps,
        "raw_bytes": stats([r.original_length for r in records]),
        "stored_bytes": stats([r.stored_bytes for r in records]),
        "ratio": stats([r.ratio for r in records]),
        "ratio_if_int8_embedding": stats(ratio_int8),
        "ratio_without_embedding": stats(ratio_no_embedding),
        "aggregate_ratio": sum(r.original_length for r in records) / sum(r.stored_bytes for r in records),
        "cosine_fp32": stats(cos_fp32),
        "cosine_fp32_at_least_0.90": int(sum(c >= 0.90 for c in cos_fp32)),
        "cosine_compressor_embedder": stats([r.cosine for r in records]),
        "entity_retention": stats([r.entity_retention for r in records]),
        "entities_per_memory": stats([len(e) for _, e in parts] or [0]),
        "summary_fraction_of_raw": stats([len(s.encode()) / r.original_length
                                          for (s, _), r in zip(parts, unflagged, strict=True)] or [0]),
        "payload_ratio": stats([r.payload_ratio for r in unflagged] or [float("nan")]),
        "flagged": int(sum(r.flagged for r in records)),
        "unflagged_ratio": stats([r.ratio for r in unflagged] or [float("nan")]),
        "unflagged_cosine_fp32": stats(unflagged_cos or [float("nan")]),
        "latency_ms": stats([r.latency_ms for r in records]),
    }
    if histogram is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        axes[0].hist([r.ratio for r in records], bins=40)
        axes[0].set_xlabel("ratio (raw bytes / stored row bytes)")
        axes[1].hist(cos_fp32, bins=40)
        axes[1].axvline(config.quality_threshold, color="red", linestyle="--", label="quality threshold")
        axes[1].set_xlabel("cosine(original, reconstruction), MiniLM fp32")
        axes[1].legend()
        fig.suptitle(f"semantic tier, {len(records)} chitchat conversations >= "
                     f"{min(r.original_length for r in records)} bytes")
        fig.tight_layout()
        fig.savefig(histogram, dpi=100)
    return report


def main() -> None:
    """Run the evaluation and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/compression.json"))
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--lm-messages", type=int, default=300, help="messages coded by the LM (0: skip)")
    parser.add_argument("--lm-per-conversation", type=int, default=12,
                        help="the LM codes the first N messages of each conversation until --lm-messages")
    parser.add_argument("--lm-model-dir", type=Path, default=None, help="a transformers dir (default: the GGUF)")
    parser.add_argument("--semantic-memories", type=int, default=500)
    parser.add_argument("--semantic-min-bytes", type=int, default=4096)
    parser.add_argument("--semantic-target-ratio", type=float, default=CompressionConfig.semantic_target_ratio)
    parser.add_argument("--semantic-embedding", choices=("binary", "int8"), default="binary")
    parser.add_argument("--semantic-histogram", type=Path, default=Path("docs/benchmarks/compression_semantic.png"))
    parser.add_argument("--semantic-shortlist", type=int, default=CompressionConfig.summary_shortlist,
                        help="candidates re-scored on real embeddings per greedy step (0: fastest)")
    parser.add_argument("--semantic-search-steps", type=int, default=CompressionConfig.summary_search_steps,
                        help="rounds of the local search on real embeddings after the greedy stage")
    parser.add_argument("--semantic-training-conversations", type=int, default=2000,
                        help="conversations after the evaluated ones that train the text model and dictionary")
    parser.add_argument("--embedder-precision", default="int8-mixed",
                        help="TextEncoder precision the compressor embeds with (cosines re-measured in fp32)")
    parser.add_argument("--embedder-dir", type=Path, default=Path("models/all-MiniLM-L6-v2"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    conversations = load_conversations()
    evaluated = conversations[: args.conversations]
    # the dictionary learns from other conversations, as a store trains on what it already holds
    dictionary = ZstdDictionary.train([m for c in conversations[args.conversations: args.conversations + 2000]
                                       for m in c])
    messages = [m for c in evaluated for m in c]
    report: dict = {
        "dataset": "chitchat-dataset 0.9.0", "platform": platform.platform(), "torch_threads": args.threads,
        "lossless": {"conversations": len(evaluated), "messages": len(messages),
                     "dictionary_bytes": len(dictionary.data), **zstd_figures(messages, dictionary)},
    }
    if args.lm_messages:
        lm, subset = lm_figures(evaluated, args.lm_messages, args.lm_per_conversation, args.lm_model_dir)
        report["lossless"]["lm_coder_with_context"] = lm
        report["lossless"]["same_subset_zstd"] = zstd_figures(subset, dictionary)
        zstd_ratio = report["lossless"]["same_subset_zstd"]["zstd19_per_message"]["payload_ratio"]
        report["lossless"]["lm_vs_zstd19_payload_ratio"] = lm["payload_ratio"] / zstd_ratio
    if args.semantic_memories:
        from arrowengine import TextEncoder

        memories, training = semantic_split(conversations, args.semantic_memories, args.semantic_min_bytes,
                                            args.semantic_training_conversations)
        embedder = TextEncoder(args.embedder_dir, precision=args.embedder_precision)
        config = CompressionConfig(semantic_target_ratio=args.semantic_target_ratio,
                                   summary_shortlist=args.semantic_shortlist,
                                   summary_search_steps=args.semantic_search_steps,
                                   semantic_embedding=args.semantic_embedding)
        report["semantic"] = semantic_figures(memories, training, embedder, TextEncoder(args.embedder_dir),
                                              config, args.semantic_histogram)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
