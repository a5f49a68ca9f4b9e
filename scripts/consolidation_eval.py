"""Consolidation on LoCoMo-dev: short-tier shrink and evidence recall@10 before vs after one consolidation per
conversation, and LLM calls per archived memory.

Protocol (``../shared/data/locomo-dev/README.md``, loaded and scored by ``scripts/memory_eval.py``'s
``locomo_conversations`` and ``_recalls``): every turn of a conversation is one memory, added session by session;
recall@k of its questions (categories 1-4 with evidence) is measured, then one consolidation runs on the store
and recall is measured again. After it, a hit is a memory whose ``dia_id`` is an evidence turn, or a principle
whose ``source_ids`` hold one. Two searches after: the default one (every tier: archived sources stay
searchable) and the active tiers only (``short`` + ``long``: what is left if archived memories were dropped).

    python scripts/consolidation_eval.py --llm embedded --conversations 1     # SmolLM2 on arrowengine serve
    python scripts/consolidation_eval.py --llm extractive                     # no LLM: the fallback principles

Results go to ``docs/benchmarks/memory/consolidation.json`` and ``.md`` (``--out``); with ``--append`` a run
is added to the existing report instead of replacing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_eval import CachedEncoder, _recalls, locomo_conversations  # the LoCoMo protocol's one copy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def _ranked(store, hits, dia_of: dict[str, str], evidence: list[str]) -> list[str]:
    """One id per hit: the evidence turn it covers (itself or, for a principle, a source), else its own turn."""
    out = []
    for hit in hits:
        turns = [dia_of[hit.id]] if hit.id in dia_of else [dia_of[s] for s in store.get(hit.id).source_ids
                                                            if s in dia_of]
        covered = [t for t in turns if t in evidence]
        out.append(covered[0] if covered else (turns[0] if turns else hit.id))
    return out


def evaluate(args: argparse.Namespace) -> dict:
    """Run the protocol; returns the report."""
    from memory import MemoryStore
    from memory.config import load_memory_config
    from memory.consolidation import ConsolidationConfig, Consolidator, LLMConfig, open_llm
    from memory.embedder import default_embedder

    enc = CachedEncoder(default_embedder(args.models, load_memory_config().text_model))
    llm_cfg = LLMConfig(provider=args.llm, model=args.model, models_dir=args.models, server_threads=args.threads,
                        host=args.host, base_url=args.base_url)
    cfg = ConsolidationConfig(similarity_threshold=args.threshold, min_cluster_size=args.min_cluster_size,
                              max_cluster_size=args.max_cluster_size, max_clusters=10**6, llm=llm_cfg)
    llm = open_llm(llm_cfg)
    convs = locomo_conversations(args.locomo)[: args.conversations]
    tmp = Path(tempfile.mkdtemp(prefix="consolidation_eval_"))
    ranked: dict[str, list[list[str]]] = {"before": [], "after_all_tiers": [], "after_active_tiers": []}
    questions: list[dict] = []
    runs = []
    try:
        for conv in tqdm(convs, desc="conversations"):
            with MemoryStore(tmp / conv["name"], embedder=enc) as store:
                ids: list[str] = []
                for session in dict.fromkeys(it["session"] for it in conv["items"]):
                    ids += store.add_many([it for it in conv["items"] if it["session"] == session])
                dia_of = dict(zip(ids, conv["dia"], strict=True))
                for q in conv["questions"]:
                    ranked["before"].append(_ranked(store, store.search(q["question"], k=10), dia_of, q["evidence"]))
                report = Consolidator(store, llm, cfg).run()
                for q in tqdm(conv["questions"], desc="questions after", leave=False):
                    hits = store.search(q["question"], k=10)
                    ranked["after_all_tiers"].append(_ranked(store, hits, dia_of, q["evidence"]))
                    active = store.search(q["question"], k=10, tiers=["short", "long"])
                    ranked["after_active_tiers"].append(_ranked(store, active, dia_of, q["evidence"]))
                questions += conv["questions"]
                row = report.row()
                row["reasons"] = json.loads(row["reasons"])
                row.update(conversation=conv["name"], memories=len(ids),
                           short_shrink=1 - report.short_after / report.short_before)
                runs.append(row)
                tqdm.write(f"{conv['name']}: {len(ids)} memories, {report.clusters} clusters, {report.principles} "
                           f"principles, {report.archived} archived ({row['short_shrink']:.1%} of the short tier), "
                           f"{report.llm_calls} LLM calls, {report.rejected} rejected, {report.duration_s:.0f} s")
    finally:
        close = getattr(llm, "close", None)
        if close is not None:
            close()
        shutil.rmtree(tmp, ignore_errors=True)
    recall = {name: _recalls(r, questions) for name, r in ranked.items()}
    archived = sum(r["archived"] for r in runs)
    calls = sum(r["llm_calls"] for r in runs)
    answer_rejections = sum(1 for r in runs for x in r["reasons"] if not x["reason"].startswith(("LLM", "sources")))
    accepted = calls - answer_rejections
    return {
        "data": str(args.locomo), "conversations": [c["name"] for c in convs], "questions": len(questions),
        "llm": runs[0]["llm"] if runs else args.llm,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("llm", "triggers", "journal_dir")},
        "json_format": cfg.llm.json_format and args.llm in ("embedded", "ollama"),
        "per_principle_relevance": True,  # an off-topic principle is dropped, its on-topic siblings written
        "short_before": sum(r["short_before"] for r in runs), "short_after": sum(r["short_after"] for r in runs),
        "short_shrink": 1 - sum(r["short_after"] for r in runs) / max(1, sum(r["short_before"] for r in runs)),
        "archived": archived, "principles": sum(r["principles"] for r in runs), "llm_calls": calls,
        "llm_calls_per_archived_memory": calls / archived if archived else None,
        "answers_accepted": accepted, "answers_repaired": sum(r["repaired"] for r in runs),
        "answers_rejected": sum(r["rejected"] for r in runs),
        "duration_s": sum(r["duration_s"] for r in runs),
        "recall": recall,
        "recall10_delta_all_tiers": (recall["after_all_tiers"]["all"]["recall@10"]
                                     - recall["before"]["all"]["recall@10"]),
        "recall10_delta_active_tiers": (recall["after_active_tiers"]["all"]["recall@10"]
                                        - recall["before"]["all"]["recall@10"]),
        "runs": runs, "command": " ".join(["python", "scripts/consolidation_eval.py", *sys.argv[1:]]),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def markdown(reports: list[dict]) -> str:
    """The reports as a markdown table, one row per run, with the targets of issue 21."""
    lines = ["# Memory consolidation on LoCoMo-dev", "",
             "Targets (issue 21): short tier shrinks by >= 50% while evidence recall@10 stays within 0.03 of the store "
             "before consolidation; LLM calls per archived memory reported. A principle is a hit when its "
             "`source_ids` hold an evidence turn. 'all tiers': default search (archived sources stay searchable); "
             "'active': short + long tiers only.", "",
             "| LLM | conversations | questions | short tier before -> after (shrink) | principles | LLM calls "
             "(accepted / repaired / rejected) | calls per archived | recall@10 before | after, all tiers | "
             "after, active | time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in reports:
        rec = r["recall"]
        per = r["llm_calls_per_archived_memory"]
        lines.append(
            f"| {r['llm']}, clusters of {r['config']['min_cluster_size']}-{r['config']['max_cluster_size']} at cosine "
            f"{r['config']['similarity_threshold']}{', JSON-constrained (format)' if r.get('json_format') else ''}"
            f"{', off-topic principles dropped one by one' if r.get('per_principle_relevance', True) else ''} | "
            f"{', '.join(r['conversations'])} | {r['questions']} | "
            f"{r['short_before']} -> "
            f"{r['short_after']} ({r['short_shrink']:.1%}) | {r['principles']} | {r['llm_calls']} "
            f"({r['answers_accepted']} / {r['answers_repaired']} / {r['answers_rejected']}) | "
            f"{'-' if per is None else f'{per:.3f}'} | {rec['before']['all']['recall@10']:.3f} | "
            f"{rec['after_all_tiers']['all']['recall@10']:.3f} | {rec['after_active_tiers']['all']['recall@10']:.3f} | "
            f"{r['duration_s']:.0f} s |")
    lines += ["", "Reading it: `extractive` keeps each cluster's most central turn as its principle (no LLM), so it "
              "shows what the clustering and the archive step do to recall; with an LLM only accepted answers "
              "archive anything (a rejected cluster stays in the short tier), so the shrink is bounded by the "
              "share of answers that pass the checks. 'calls per archived' is LLM calls / archived memories. "
              "LLM rows without 'JSON-constrained' ran before the embedded server constrained decoding to the "
              "answer schema (Ollama's `format`; `memory.consolidation.llm.json_format`, now on by default). Rows "
              "without 'dropped one by one' rejected a whole answer when any of its principles was off-topic; "
              "now an off-topic principle is dropped and the answer's on-topic principles are written.",
              "", "Commands:", ""] + [f"    {r['command']}" for r in reports] + [""]
    lines += ["Rejection reasons:", ""]
    for r in reports:
        reasons = [x["reason"].split(":")[0].split(" (")[0] for run in r["runs"] for x in run["reasons"]]
        counts = {k: reasons.count(k) for k in dict.fromkeys(reasons)}
        constrained = ", JSON-constrained" if r.get("json_format") else ""
        lines.append(f"- {r['llm']}, clusters of at most {r['config']['max_cluster_size']}{constrained}: "
                     f"{counts or 'none'}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--locomo", type=Path, default=REPO.parent / "shared" / "data" / "locomo-dev")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "memory" / "consolidation.json")
    ap.add_argument("--append", action="store_true", help="add this run to the existing report")
    ap.add_argument("--llm", default="embedded", choices=["embedded", "ollama", "openai", "extractive"])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--host", default=None, help="ollama host (else $OLLAMA_HOST)")
    ap.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint")
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--threads", type=int, default=None, help="embedded server: torch threads")
    ap.add_argument("--conversations", type=int, default=None, help="only the first N conversations")
    ap.add_argument("--threshold", type=float, default=0.4, help="cosine to a cluster's seed")
    ap.add_argument("--min-cluster-size", type=int, default=3)
    ap.add_argument("--max-cluster-size", type=int, default=12)
    args = ap.parse_args()
    if not args.locomo.is_dir() or not list(args.locomo.glob("*.json")):
        print(f"LoCoMo data not found in {args.locomo} (see its README); nothing to evaluate")
        return
    report = evaluate(args)
    reports = [report]
    if args.append and args.out.is_file():
        old = json.loads(args.out.read_text())
        reports = (old if isinstance(old, list) else [old]) + reports
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reports, indent=2))
    args.out.with_suffix(".md").write_text(markdown(reports))
    print(markdown(reports))


if __name__ == "__main__":
    main()
