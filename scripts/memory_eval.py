"""Memory store evaluation on real conversations (chitchat-dataset): ingest throughput, search latency at
10k / 100k / 1M memories, index recall vs exact search, and retrieval quality of vector vs hybrid vs + links.

Held-out set: from each of ``--eval-convs`` conversations one turn t_i (i >= 1, at least 4 words) is held
out as the *query*; the target is the turn t_{i-1} it answers. The held-out turn is never stored; every other
turn of every used conversation is stored with its conversation as session (so session links connect the
target with the turns around it). recall@5 = share of queries whose target is among the top 5 hits.

Ingest: ``--ingest`` turns (a turn = a speaker's consecutive messages joined) through ``add_many`` in batches
of 64, embedding by arrowengine's TextEncoder included in the throughput. Growth to 10k / 100k memories:
noisy copies (Gaussian noise sigma 0.02, renormalised) of the stored turns' embeddings with their text,
copied only from non-evaluation conversations so no target is duplicated. Per size, a fresh store object
builds its in-process index (time and bytes reported), then search latency p50/p95 of the full pipeline
(vector + full-text + score fusion + link context, k=10) is measured (a) from a precomputed query embedding
(cached) and (b) end to end, the query text embedded by TextEncoder on every call; recall@10 of the index's
vector search vs exact brute force over the same rows. ``--maintain`` also runs ``maintain()`` (table
compaction) per size. The report is JSON, markdown and a PNG of latency against store size (``--report-from``
re-renders saved JSON reports).

    python scripts/memory_eval.py --out docs/benchmarks/memory/memory_eval.json [--sizes 10000 100000 1000000]

LoCoMo (``--locomo DIR``, e.g. ``../shared/data/locomo-dev``; evaluation data only, never in the repository):
the protocol of the README in that directory. Every turn of a conversation is one memory (``(<session date>)
<speaker>: <text>`` plus `` [shares a photo: <caption>]``; its session; its ``dia_id`` in metadata), added
session by session in order; each question of categories 1-4 with evidence searches its conversation's store
with default settings; a hit at k when any evidence turn is among the top k. In the same run, over the same
texts and embeddings: BM25 (Okapi k1 1.5, b 0.75, rank_bm25's idf floor; lowercase alphanumeric tokens),
MiniLM dense (cosine) and RRF of the two (k 60, top 200 of each). Reports recall@1/5/10 overall and per
category and the store's search latency p50/p95 (query embedding included), as JSON and markdown.

    python scripts/memory_eval.py --locomo ../shared/data/locomo-dev
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


class CachedEncoder:
    """TextEncoder with a text -> vector cache (so latency runs measure the store, not the encoder)."""

    def __init__(self, encoder):
        self.encoder, self.cache = encoder, {}

    def encode(self, texts):
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            self.cache.update(zip(todo, self.encoder.encode(todo), strict=True))
        return np.stack([self.cache[t] for t in texts])


def load_turns() -> list[list[str]]:
    from arrowengine.datasets import chitchat_turns

    convs = [[" ".join(m.strip() for m in turn.texts).strip() for turn in conv] for conv in chitchat_turns()]
    return [[t for t in conv if t] for conv in convs]  # a few real turns are empty


def build(convs, n_ingest, n_eval, seed):
    """(items to store, eval queries [(query, target index in items)], indices of growth-source items)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(convs))
    items, queries, growth = [], [], []
    for rank, ci in enumerate(order):
        turns = convs[ci]
        held = None
        if rank < n_eval:
            cands = [i for i in range(1, len(turns)) if len(turns[i].split()) >= 4 and len(turns[i - 1].split()) >= 3]
            held = int(rng.choice(cands)) if cands else None
        for i, text in enumerate(turns):
            if i == held:
                continue
            if held is not None and i == held - 1:
                queries.append((turns[held], len(items)))
            if held is None and rank >= n_eval:
                growth.append(len(items))
            items.append({"content": text, "session": f"conv{ci}"})
        if len(items) >= n_ingest and rank >= n_eval:
            break
    return items, queries, growth


def recall_at(store, queries, ids, k, **kw):
    hits = [store.search(q, k=k, **kw) for q, _ in tqdm(queries, desc=f"recall {kw}", leave=False)]
    return float(np.mean([ids[t] in {h.id for h in hs} for hs, (_, t) in zip(hits, queries, strict=True)]))


def latency(store, queries, n=200, **kw):
    qs = [q for q, _ in queries][:n]
    store.search(qs[0], k=10, **kw)  # warm caches and index
    times = []
    for q in tqdm(qs, desc=f"latency {kw}", leave=False):
        t0 = time.perf_counter()
        store.search(q, k=10, **kw)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "p99_ms": float(np.percentile(times, 99)), "n": len(times)}


def index_recall(store, qvecs, k=10):
    """recall@k of the index's vector search vs exact brute force over the same live rows."""
    index = store._search_index()
    with index.lock:
        allowed = index.allowed(None, None, None)
        live = np.flatnonzero(allowed)
        mat = index.vectors.matrix()
        hits = []
        for q in qvecs:
            got = set(index.vector_search(q, k, allowed)[0].tolist())
            scores = mat[live] @ q
            exact = set(live[np.argpartition(-scores, k - 1)[:k]].tolist())
            hits.append(len(got & exact) / k)
    return float(np.mean(hits))


# ---------------------------------------------------------------------------------------------------- LoCoMo
LOCOMO_CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
KS = (1, 5, 10)


def locomo_conversations(root: Path) -> list[dict]:
    """Each conversation as {name, items (store items in order), dia (dia_id per item), questions}."""
    out = []
    for path in sorted(root.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        conv = data.get("conversation", data)
        items, dia = [], []
        n = 1
        while f"session_{n}" in conv:
            date = conv.get(f"session_{n}_date_time", "")
            for turn in conv[f"session_{n}"]:
                text = f"{turn['speaker']}: {turn['text']}"
                if turn.get("blip_caption"):
                    text += f" [shares a photo: {turn['blip_caption']}]"
                items.append({"content": f"({date}) {text}", "session": f"session_{n}",
                              "metadata": {"dia_id": turn["dia_id"]}})
                dia.append(turn["dia_id"])
            n += 1
        questions = [q for q in data["qa"] if q.get("category") in LOCOMO_CATEGORIES and q.get("evidence")]
        out.append({"name": path.stem, "items": items, "dia": dia, "questions": questions})
    return out


def okapi_bm25(docs: list[str], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
    """rank_bm25's BM25Okapi (negative idf floored at epsilon x mean idf), lowercase alphanumeric tokens."""
    import re
    from collections import Counter

    tok = [re.findall(r"[a-z0-9]+", d.lower()) for d in docs]
    tfs = [Counter(t) for t in tok]
    lens = np.array([len(t) for t in tok], dtype=np.float64)
    df = Counter(w for t in tfs for w in t)
    n = len(docs)
    idf = {w: np.log(n - f + 0.5) - np.log(f + 0.5) for w, f in df.items()}
    floor = epsilon * (sum(idf.values()) / len(idf))
    idf = {w: (v if v >= 0 else floor) for w, v in idf.items()}
    norm = k1 * (1 - b + b * lens / lens.mean())

    def scores(query: str) -> np.ndarray:
        out = np.zeros(n)
        for w in re.findall(r"[a-z0-9]+", query.lower()):
            if w in idf:
                tf = np.array([t.get(w, 0) for t in tfs], dtype=np.float64)
                out += idf[w] * tf * (k1 + 1) / (tf + norm)
        return out

    return scores


def _recalls(ranked: list[list[str]], questions: list[dict]) -> dict[str, dict[str, float]]:
    """recall@k overall and per category: a hit when any evidence id is in the top k."""
    out: dict[str, dict[str, float]] = {}
    groups = {"all": range(len(questions))}
    for cat, name in LOCOMO_CATEGORIES.items():
        groups[name] = [i for i, q in enumerate(questions) if q["category"] == cat]
    for group, idx in groups.items():
        out[group] = {f"recall@{k}": float(np.mean([bool(set(questions[i]["evidence"]) & set(ranked[i][:k]))
                                                     for i in idx])) if len(idx) else float("nan") for k in KS}
        out[group]["n"] = len(idx)
    return out


def run_locomo(root: Path, out: Path, models: Path) -> None:
    """The LoCoMo evaluation (see the module docstring); skips with a message when ``root`` has no data."""
    if not root.is_dir() or not list(root.glob("*.json")):
        print(f"LoCoMo data not found in {root} (expected <id>.json files, see its README); skipping the LoCoMo eval")
        return
    from memory import MemoryStore
    from memory.config import load_memory_config
    from memory.embedder import default_embedder

    cfg = load_memory_config()
    enc = CachedEncoder(default_embedder(models, cfg.text_model))
    convs = locomo_conversations(root)
    systems = ("store", "bm25", "dense", "rrf")
    ranked: dict[str, list[list[str]]] = {name: [] for name in systems}
    questions: list[dict] = []
    times: list[float] = []
    tmp = Path(tempfile.mkdtemp(prefix="locomo_eval_"))
    try:
        for conv in tqdm(convs, desc="conversations"):
            texts = [it["content"] for it in conv["items"]]
            qtexts = [q["question"] for q in conv["questions"]]
            doc_vecs = enc.encode(texts)
            bm25 = okapi_bm25(texts)
            with MemoryStore(tmp / conv["name"], embedder=enc) as store:
                ids: list[str] = []
                for session in dict.fromkeys(it["session"] for it in conv["items"]):
                    ids += store.add_many([it for it in conv["items"] if it["session"] == session])
                dia_of = dict(zip(ids, conv["dia"], strict=True))
                enc.encode(qtexts)  # cached: the latency below is the store's own, measured again end to end
                store.search(qtexts[0], k=10)
                for q, qvec in zip(conv["questions"], enc.encode(qtexts), strict=True):
                    t0 = time.perf_counter()
                    hits = store.search(q["question"], k=10)
                    times.append((time.perf_counter() - t0) * 1000)
                    ranked["store"].append([dia_of[h.id] for h in hits])
                    lex = bm25(q["question"])
                    dense = doc_vecs @ qvec
                    top_lex, top_dense = np.argsort(-lex, kind="stable")[:200], np.argsort(-dense, kind="stable")[:200]
                    fused: dict[int, float] = {}
                    for lst in (top_lex, top_dense):
                        for rank, i in enumerate(lst.tolist(), start=1):
                            fused[i] = fused.get(i, 0.0) + 1.0 / (60 + rank)
                    ranked["bm25"].append([conv["dia"][i] for i in top_lex[:10]])
                    ranked["dense"].append([conv["dia"][i] for i in top_dense[:10]])
                    ranked["rrf"].append([conv["dia"][i] for i in sorted(fused, key=lambda i: -fused[i])[:10]])
                    questions.append(q)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"data": str(root), "conversations": [c["name"] for c in convs], "questions": len(questions),
              "store_config": "defaults (load_memory_config())",
              "store_search_ms": {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)),
                                  "note": "query embedding cached: the store's search alone"},
              "recall": {name: _recalls(ranked[name], questions) for name in systems}}
    end_to_end = []
    store_enc = enc.encoder
    with MemoryStore(tmp / "latency", embedder=store_enc) as store:
        store.add_many(convs[0]["items"])
        qs = [q["question"] for q in convs[0]["questions"]][:100]
        store.search(qs[0], k=10)
        for q in qs:
            t0 = time.perf_counter()
            store.search(q + " ", k=10)
            end_to_end.append((time.perf_counter() - t0) * 1000)
    shutil.rmtree(tmp, ignore_errors=True)
    report["store_search_end_to_end_ms"] = {"p50": float(np.percentile(end_to_end, 50)),
                                            "p95": float(np.percentile(end_to_end, 95)), "n": len(end_to_end)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(locomo_markdown(report))
    print(locomo_markdown(report))


def locomo_markdown(report: dict) -> str:
    """recall@1/5/10 per system and category as a markdown table, plus the store's latency."""
    groups = ["all", *LOCOMO_CATEGORIES.values()]
    lines = [f"# LoCoMo-dev evidence recall ({report['questions']} questions, "
             f"{len(report['conversations'])} conversations)", "",
             "| system | " + " | ".join(f"{g} r@1 / r@5 / r@10" for g in groups) + " |",
             "| --- |" + " --- |" * len(groups)]
    for name, rec in report["recall"].items():
        cells = [" / ".join(f"{rec[g][f'recall@{k}']:.3f}" for k in KS) for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lat, e2e = report["store_search_ms"], report["store_search_end_to_end_ms"]
    lines += ["", f"Store search p50 {lat['p50']:.1f} ms / p95 {lat['p95']:.1f} ms (query embedding cached); "
                  f"end to end (query embedded) p50 {e2e['p50']:.1f} / p95 {e2e['p95']:.1f} ms.", ""]
    return "\n".join(lines)


def open_probe(store_dir: Path, query: str, models: Path) -> dict:
    """In this (new) process: open the store, answer one search from a query vector, then one from text (the
    default embedder loads on that first text search); seconds from opening and the process's RSS after each."""
    from memory import MemoryConfig, MemoryStore

    proc = psutil.Process()
    out: dict = {"rss_before_mb": proc.memory_info().rss / 2**20}
    t0 = time.perf_counter()
    store = MemoryStore(store_dir, config=MemoryConfig(models_dir=models))  # the default embedder, loaded lazily
    vector = np.random.default_rng(0).normal(size=store.dim).astype(np.float32)
    store.search(vector, k=10)
    out["first_search_from_vector_s"] = time.perf_counter() - t0
    out["rss_after_vector_search_mb"] = proc.memory_info().rss / 2**20
    store.search(query, k=10)
    out["first_text_search_s"] = time.perf_counter() - t0
    out["rss_after_text_search_mb"] = proc.memory_info().rss / 2**20
    out["snapshot_loaded"] = store._index.stats["snapshot_loaded"]
    out["index_builds"] = store._index.stats["builds"]
    return out


def probe_in_new_process(store_dir: Path, query: str, models: Path) -> dict:
    """:func:`open_probe` in a fresh interpreter (nothing of this process's caches or pages)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, __file__, "--open-probe", str(store_dir), "--probe-query", query,
                           "--models", str(models)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON report (default docs/benchmarks/memory/memory_eval.json, or locomo_dev.json)")
    ap.add_argument("--locomo", type=Path, default=None, help="run the LoCoMo evaluation on this directory")
    ap.add_argument("--report-from", type=Path, nargs="*", default=None,
                    help="only write the markdown + PNG of these JSON reports (to --out's stem)")
    ap.add_argument("--ingest", type=int, default=5000)
    ap.add_argument("--eval-convs", type=int, default=300)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--maintain", action="store_true", help="run maintain() (table compaction) at each size")
    ap.add_argument("--recall-sizes", type=int, nargs="*", default=None,
                    help="sizes at which recall@5 of the modes is measured (default: all)")
    ap.add_argument("--open-probe", type=Path, default=None, help=argparse.SUPPRESS)  # see probe_in_new_process
    ap.add_argument("--probe-query", default="what did you do this weekend", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.open_probe is not None:
        print(json.dumps(open_probe(args.open_probe, args.probe_query, args.models)))
        return
    if args.locomo is not None:
        run_locomo(args.locomo, args.out or REPO / "docs/benchmarks/memory/locomo_dev.json", args.models)
        return
    args.out = args.out or REPO / "docs/benchmarks/memory/memory_eval.json"
    if args.report_from:
        write_scale_report([json.loads(p.read_text()) for p in args.report_from], args.out.with_suffix(""))
        return

    from arrowengine import TextEncoder
    from memory import MemoryConfig, MemoryStore

    raw_encoder = TextEncoder(args.models / "all-MiniLM-L6-v2")
    enc = CachedEncoder(raw_encoder)
    items, queries, growth = build(load_turns(), args.ingest, args.eval_convs, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="memory_eval_"))
    report: dict = {"ingested": len(items), "eval_queries": len(queries)}
    try:
        store = MemoryStore(tmp / "store", embedder=enc)
        ids: list[str] = []
        t0 = time.perf_counter()
        for start in tqdm(range(0, len(items), 64), desc="ingest"):
            ids += store.add_many(items[start : start + 64])
        elapsed = time.perf_counter() - t0
        report["add_memories_per_s"] = len(items) / elapsed
        report["ingest_s"] = elapsed
        t0 = time.perf_counter()
        enc.encode([q for q, _ in queries])
        report["query_embedding_ms_mean"] = (time.perf_counter() - t0) * 1000 / len(queries)
        report["maintain_after_ingest"] = {k: (len(v) if isinstance(v, list) else v)
                                           for k, v in store.maintain(now=time.time()).items()}
        modes = {"vector": {"mode": "vector", "links": False}, "hybrid": {"mode": "hybrid", "links": False},
                 "hybrid+links": {"mode": "hybrid", "links": True}, "vector+links": {"mode": "vector", "links": True}}
        report[f"recall@5_{len(ids)}"] = {name: recall_at(store, queries, ids, 5, **kw) for name, kw in modes.items()}

        grower = MemoryStore(tmp / "store", embedder=enc, config=MemoryConfig(near_duplicate_threshold=None))
        rng = np.random.default_rng(args.seed)
        src = enc.encode([items[i]["content"] for i in growth])
        for size in sorted(args.sizes):
            need = size - len(grower)
            for start in tqdm(range(0, max(need, 0), 5000), desc=f"grow to {size}"):
                n = min(5000, need - start)
                pick = rng.integers(0, len(growth), n)
                vec = src[pick] + rng.normal(0, 0.02, (n, src.shape[1])).astype(np.float32)
                grower.add_many([{"content": items[growth[p]]["content"], "embedding": v,
                                  "session": f"grow{size}-{start}"} for p, v in zip(pick, vec, strict=True)])
            entry = {"rows": len(grower)}
            if args.maintain:
                t0 = time.perf_counter()
                entry["lance_index"] = grower.maintain(now=time.time())["index"]
                entry["maintain_s"] = time.perf_counter() - t0
            store = MemoryStore(tmp / "store", embedder=enc)
            rss0 = psutil.Process().memory_info().rss
            t0 = time.perf_counter()
            index = store._search_index()
            entry["index_build_s"] = time.perf_counter() - t0
            entry["index_rss_mb"] = (psutil.Process().memory_info().rss - rss0) / 2**20
            entry["index_nbytes_mb"] = index.nbytes() / 2**20
            entry["index_mode"] = f"ivf {len(index.vectors._centroids)} lists" if index.vectors.is_ivf else "exact"
            qvecs = enc.encode([q for q, _ in queries])
            entry["index_recall@10_vs_exact"] = index_recall(store, qvecs)
            entry["search_from_vector"] = {
                "hybrid+links": latency(store, queries), "vector": latency(store, queries, mode="vector", links=False)}
            store._embedder = raw_encoder  # end to end: the query text is embedded on every call
            entry["search_end_to_end"] = {"hybrid+links": latency(store, queries, n=100)}
            store._embedder = enc
            if args.recall_sizes is None or size in args.recall_sizes:
                entry["recall@5"] = {name: recall_at(store, queries, ids, 5, **kw) for name, kw in modes.items()}
            store.close()  # saves the index snapshot beside the table, as a user's process does on exit
            entry["new_process_open"] = probe_in_new_process(tmp / "store", queries[0][0], args.models)
            report[f"at_{size}"] = entry
            del store, index
            print(json.dumps({f"at_{size}": report[f"at_{size}"]}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    write_scale_report([report], args.out.with_suffix(""))
    print(json.dumps(report, indent=2))


def write_scale_report(reports: list[dict], stem: Path) -> None:
    """``stem.md`` (a table per store size) and ``stem.png`` (search latency against store size, log x)."""
    sizes = sorted({(v["rows"], json.dumps(v)) for r in reports for k, v in r.items() if k.startswith("at_")})
    entries = [json.loads(v) for _, v in sizes]
    lines = ["# Memory store at scale", "",
             "| rows | index build s | index RSS MB | vector p50/p95 ms | hybrid+links p50/p95 ms | "
             "end to end p50/p95 ms | recall@10 vs exact |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        vec, hyb = e["search_from_vector"]["vector"], e["search_from_vector"]["hybrid+links"]
        e2e = e["search_end_to_end"]["hybrid+links"]
        lines.append(f"| {e['rows']:,} | {e['index_build_s']:.1f} | {e['index_rss_mb']:.0f} | "
                     f"{vec['p50_ms']:.1f} / {vec['p95_ms']:.1f} | {hyb['p50_ms']:.1f} / {hyb['p95_ms']:.1f} | "
                     f"{e2e['p50_ms']:.1f} / {e2e['p95_ms']:.1f} | {e['index_recall@10_vs_exact']:.3f} |")
    opened = [e for e in entries if "new_process_open" in e]
    if opened:
        lines += ["", "A new process opening the store (index snapshot saved by the previous process's close()):", "",
                  "| rows | first search from a vector s | RSS after MB | first text search s (embedder loads) | "
                  "RSS after MB | index scans |", "| --- | --- | --- | --- | --- | --- |"]
        for e in opened:
            o = e["new_process_open"]
            lines.append(f"| {e['rows']:,} | {o['first_search_from_vector_s']:.2f} | "
                         f"{o['rss_after_vector_search_mb']:.0f} | {o['first_text_search_s']:.2f} | "
                         f"{o['rss_after_text_search_mb']:.0f} | {o['index_builds']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = [e["rows"] for e in entries]
    for i, (label, get) in enumerate((("from a vector: vector only", lambda e: e["search_from_vector"]["vector"]),
                       ("from a vector: hybrid + links", lambda e: e["search_from_vector"]["hybrid+links"]),
                       ("end to end (query embedded)", lambda e: e["search_end_to_end"]["hybrid+links"]))):
        for pct, style in (("p50_ms", "-o"), ("p95_ms", "--x")):
            ax.plot(rows, [get(e)[pct] for e in entries], style, color=f"C{i}", label=f"{label} {pct[:3]}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("memories in the store")
    ax.set_ylabel("search latency (ms)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
