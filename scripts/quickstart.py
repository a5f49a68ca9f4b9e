"""The main job on embedded defaults: models into models/, zero-copy loading, then the memory job.

Fetches and converts MiniLM and SmolLM2 into models/, maps MiniLM zero-copy and embeds sentences, then stores
real chat conversations in a memory store (LanceDB, in a temporary directory unless --store is given),
searches it, compresses a conversation losslessly (zstd with a trained dictionary, and the arithmetic coder
driven by SmolLM2) with exact round trips, and compresses the longest one semantically (summary + exact entities
coded by a text model trained on other conversations, >= 10x, scored by cosine).

Usage: python scripts/quickstart.py [--models-dir models] [--store DIR] [--conversations 20] [--lm-messages 6]
Prints what happened and how long each step took.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from arrowengine.converters.packages import describe_fetch, fetch_model
from arrowengine.format.reader import WeightFile
from arrowengine.logging_setup import configure_logging, silence_third_party_warnings
from arrowengine.runtime.text_encoder import TextEncoder

SENTENCES = [
    "The meeting with Alice moved to Tuesday at 3 pm.",
    "Alice's meeting is now on Tuesday afternoon.",
    "A cat is sleeping on the warm windowsill.",
    "Parquet files store columns of data on disk.",
    "Model weights can be memory-mapped straight from a columnar file.",
]


def main(argv: list[str] | None = None) -> int:
    """Run the demo and print a short report; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--store", default=None, help="memory store directory (default: a new temporary one)")
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--lm-messages", type=int, default=6)
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    silence_third_party_warnings()  # as the CLI does: warnings the user cannot act on
    for var in ("LANCE_LOG", "LANCEDB_LOG", "RUST_LOG"):  # the script, not the library, decides what shows
        os.environ.setdefault(var, "error")
    process = psutil.Process()

    t0 = time.perf_counter()
    print(f"fetch {describe_fetch('all-MiniLM-L6-v2')}", flush=True)
    model_dir = fetch_model("all-MiniLM-L6-v2", args.models_dir, progress=True)
    print(f"[1] model store: {model_dir} ({(model_dir / 'weights.parquet').stat().st_size / 2**20:.1f} MiB "
          f"Parquet) ready in {time.perf_counter() - t0:.2f} s")

    rss_before = process.memory_info().rss
    t0 = time.perf_counter()
    weights = WeightFile.open(Path(model_dir))
    open_ms = (time.perf_counter() - t0) * 1e3
    rss_growth = (process.memory_info().rss - rss_before) / 2**20
    lo, hi = weights.mapping_range()
    inside = sum(lo <= weights[n].data_ptr() < hi for n in weights.keys() if weights[n].numel())
    print(f"[2] opened weights.parquet in {open_ms:.1f} ms: schema V{weights.schema_version}, {len(weights)} tensors, "
          f"zero_copy={weights.zero_copy}, RSS +{rss_growth:.1f} MiB, {inside}/{len(weights)} tensors inside the "
          f"file mapping")

    t0 = time.perf_counter()
    encoder = TextEncoder(model_dir)
    print(f"[3] built {type(encoder.model).__name__} on the mapped weights in {time.perf_counter() - t0:.2f} s")

    t0 = time.perf_counter()
    vectors = encoder.encode(SENTENCES)
    ms = (time.perf_counter() - t0) * 1e3
    print(f"[4] embedded {len(SENTENCES)} sentences -> {vectors.shape} float32 in {ms:.1f} ms")
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    for i, text in enumerate(SENTENCES):
        j = int(sims[i].argmax())
        print(f"    {text!r}\n      nearest: {SENTENCES[j]!r} (cosine {sims[i, j]:.3f})")
    memory_job(encoder, args)
    return 0


def _conversations(limit: int) -> list[tuple[str, list[str]]]:
    from arrowengine.datasets import chitchat_conversations

    return [(f"conversation-{i}", list(msgs)) for i, msgs in enumerate(chitchat_conversations()[:limit])]


def memory_job(encoder: TextEncoder, args: argparse.Namespace) -> None:
    """Store, search and compress real conversations; prints figures."""
    import zstandard
    from transformers import AutoTokenizer

    from arrowengine.runtime.loading import load_model
    from memory import CompressionConfig, Compressor, HFCausalLM, MemoryStore, Reconstructor

    conversations = _conversations(args.conversations)
    store_dir = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="arrowengine-memory-"))
    t0 = time.perf_counter()
    store = MemoryStore(store_dir, embedder=encoder)
    items = [{"content": m, "session": cid} for cid, msgs in conversations for m in msgs]
    store.add_many(items)
    add_s = time.perf_counter() - t0
    print(f"[5] memory store at {store_dir}: added {len(items)} real chat messages from {len(conversations)} "
          f"conversations in {add_s:.1f} s ({len(items) / add_s:.0f} memories/s, embedding included)")
    for query in ("what do you do on weekends", "favorite movie"):
        t0 = time.perf_counter()
        hits = store.search(query, k=3)
        ms = (time.perf_counter() - t0) * 1e3
        print(f"    search {query!r} ({ms:.0f} ms):")
        for hit in hits:
            scores = f"sim {hit.similarity:.3f}, text {hit.text_score:.2f}, link {hit.link_score:.2f}"
            print(f"      {hit.score:.3f} ({scores}) {hit.content[:70]!r}")
    store.close()

    messages = conversations[0][1][: args.lm_messages]
    raw = sum(len(m.encode()) for m in messages)
    zstd_bytes = sum(len(zstandard.ZstdCompressor(level=19).compress(m.encode())) for m in messages)
    compressor = Compressor(CompressionConfig(lossless_method="zstd_dict"))
    compressor.train_dictionary([m for _, msgs in conversations[1:] for m in msgs])
    records = compressor.compress(messages)
    restored = Reconstructor(dictionary=compressor.dictionary).reconstruct(records)
    assert restored == messages, "zstd dictionary round trip failed"
    dict_bytes = sum(len(r.payload) for r in records)
    print(f"[6] lossless compression of {len(messages)} messages ({raw} bytes): zstd -19 {raw / zstd_bytes:.2f}x, "
          f"zstd + trained dictionary {raw / dict_bytes:.2f}x (exact round trip)")
    print(f"    fetch {describe_fetch('smollm2-135m-instruct')}", flush=True)
    lm_dir = fetch_model("smollm2-135m-instruct", args.models_dir, progress=True)
    t0 = time.perf_counter()
    lm = HFCausalLM(load_model(lm_dir), AutoTokenizer.from_pretrained(str(lm_dir)))
    coder = Compressor(CompressionConfig(lossless_method="lm"), lm=lm)
    records = coder.compress(messages)
    restored = Reconstructor(lm=lm).reconstruct(records)
    assert restored == messages, "LM coder round trip failed"
    lm_bytes = sum(len(r.payload) for r in records)
    print(f"    SmolLM2 arithmetic coder (conversation as context): {raw / lm_bytes:.2f}x, "
          f"{8 * lm_bytes / raw:.2f} bits/byte, exact round trip, {time.perf_counter() - t0:.1f} s")
    semantic_job(encoder, conversations)


def semantic_job(encoder: TextEncoder, stored: list[tuple[str, list[str]]]) -> None:
    """Semantic tier: one long conversation to >= 10x, with its cosine and entity retention."""
    from memory import CompressionConfig, Compressor, Reconstructor

    t0 = time.perf_counter()
    # the store's text model learns from conversations it already holds (here: the next 1,500 of the data set)
    training = [m for _, msgs in _conversations(len(stored) + 1500)[len(stored):] for m in msgs]
    compressor = Compressor(CompressionConfig(semantic_target_ratio=10.0), embedder=encoder)
    compressor.train_text_model(training)
    train_s = time.perf_counter() - t0
    text = max(("\n".join(msgs) for _, msgs in stored), key=len)
    record = compressor.compress(text, tier="semantic")
    summary, entities = Reconstructor(text_model=compressor.text_model).semantic_parts(record)
    print(f"[7] semantic compression of a {record.original_length}-byte conversation (text model trained on "
          f"{len(training)} messages in {train_s:.1f} s): {record.ratio:.1f}x the stored row "
          f"({record.stored_bytes} bytes), cosine {record.cosine:.3f}, entity retention {record.entity_retention:.0%}"
          f"{' (flagged: raw text kept)' if record.flagged else ''}, {record.latency_ms / 1e3:.1f} s")
    print(f"    summary: {summary[:150]!r}...; entities: {list(entities)[:8]}")


if __name__ == "__main__":
    sys.exit(main())
