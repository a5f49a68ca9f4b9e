"""Benchmark ``arrowengine serve``: throughput against concurrency, TTFT, inter-token latency, batching speed-up.

Starts the server as a subprocess (``python -m arrowengine serve`` on 127.0.0.1, a free port), then over the
OpenAI streaming API (``/v1/chat/completions``, ``stream_options.include_usage``):

* the 8 chat prompts served one after another (each alone in the batch: the ``LLM.chat`` path);
* each concurrency level (default 1 2 4 8 16): that many streaming clients at once;
* the speed-up of 8 concurrent streams over the same 8 requests in sequence (target >= 3x), and whether the
  greedy texts under batching equal the sequential ones;
* the server's RSS with the model loaded and after ``keep_alive: 0`` unloads it;
* ``--soak SECONDS``: mixed traffic (streams cancelled midway, bad requests, embeddings) of ``--soak-requests``
  requests, RSS sampled (flat within 10% after warm-up is the bar);
* ``--llama-server PATH --gguf FILE``: the same load against llama.cpp's ``llama-server`` as a peer (skipped,
  and said so, when not given or not found).

Writes ``bench_serve.json``, ``bench_serve.md`` and ``bench_serve.png`` under ``--out``. Run:
``python scripts/bench_serve.py`` (about 5 minutes on 2 cores; the machine's load is recorded).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

logger = logging.getLogger("bench_serve")

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What are three tips for staying focused while working from home?",
    "Explain in simple terms how a refrigerator keeps food cold.",
    "My friend's birthday is tomorrow and I forgot to buy a gift. Any ideas?",
    "Can you summarize the plot of Romeo and Juliet in a few sentences?",
    "What is the difference between weather and climate?",
    "I want to start running. How should I plan my first two weeks?",
    "Write a short, friendly message inviting my neighbours to a barbecue.",
    "Why do leaves change colour in autumn?",
    "How do I politely decline a meeting invitation from my manager?",
    "What are some good habits for keeping a tidy kitchen?",
    "Give me a simple recipe for pancakes.",
    "What should I pack for a weekend camping trip?",
    "How does compound interest work?",
    "Suggest three board games for a family evening.",
    "What is a healthy breakfast I can make in five minutes?",
    "How can I improve my sleep schedule?",
]


@dataclass
class StreamResult:
    """One streamed request: its text, tokens and timeline."""

    text: str = ""
    tokens: int = 0
    start: float = 0.0
    first: float | None = None
    end: float = 0.0
    gaps: list[float] = field(default_factory=list)
    error: str | None = None


def stream_chat(base: str, model: str, prompt: str, max_tokens: int, *, cancel_after: int | None = None,
                timeout: float = 600.0, client: httpx.Client | None = None) -> StreamResult:
    """One streaming chat completion (greedy); ``cancel_after`` closes the connection after that many chunks.

    ``client``: an open client to send it with (the timed loads open theirs before the clock starts: building an
    ``httpx.Client`` takes 40-160 ms of CPU here, mostly its TLS context, and eight of them at once delayed the
    requests of a concurrent load by ~250 ms, on the server's two cores); None opens one for this request.
    """
    if client is None:
        with httpx.Client(timeout=timeout) as own:
            return stream_chat(base, model, prompt, max_tokens, cancel_after=cancel_after, client=own)
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    out = StreamResult(start=time.perf_counter())
    last = None
    chunks = 0
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            resp.read()
            out.error = f"{resp.status_code} {resp.text[:200]}"
            out.end = time.perf_counter()
            return out
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                out.tokens = data["usage"]["completion_tokens"]
            for choice in data.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    now = time.perf_counter()
                    if out.first is None:
                        out.first = now
                    else:
                        out.gaps.append(now - last)
                    last = now
                    out.text += piece
                    chunks += 1
            if cancel_after is not None and chunks >= cancel_after:
                break
    out.end = time.perf_counter()
    return out


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` and its threads so far (0 without a pid)."""
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run_concurrent(base: str, model: str, prompts: list[str], max_tokens: int,
                   pid: int | None = None) -> dict[str, Any]:
    """All ``prompts`` streamed at once; total tokens/s, TTFT and inter-token percentiles."""
    results: list[StreamResult | None] = [None] * len(prompts)
    clients = [httpx.Client(timeout=600.0) for _ in prompts]  # one per concurrent client, opened off the clock

    def one(i: int) -> None:
        results[i] = stream_chat(base, model, prompts[i], max_tokens, client=clients[i])

    try:
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        return summarize([r for r in results if r is not None], wall, cpu_seconds(pid) - cpu)
    finally:
        for client in clients:
            client.close()


def run_sequential(base: str, model: str, prompts: list[str], max_tokens: int,
                   pid: int | None = None) -> dict[str, Any]:
    """The same requests one after another."""
    # a client of its own per request, as in the concurrent load (one kept-alive connection for all of them was
    # dropped by llama-server between requests), opened off the clock
    clients = [httpx.Client(timeout=600.0) for _ in prompts]
    try:
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        results = [stream_chat(base, model, p, max_tokens, client=c) for p, c in zip(prompts, clients, strict=True)]
        return summarize(results, time.perf_counter() - started, cpu_seconds(pid) - cpu)
    finally:
        for client in clients:
            client.close()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summarize(results: list[StreamResult], wall: float, cpu: float = 0.0) -> dict[str, Any]:
    """Throughput and latency figures of one load; ``cpu``: the server's CPU seconds during it.

    Tokens per server CPU-second hardly depends on what else runs on the machine, so it is the fairer
    ratio on a shared box; tokens per wall second is what a client sees.
    """
    ttft = [r.first - r.start for r in results if r.first is not None]
    gaps = [g for r in results for g in r.gaps]
    tokens = sum(r.tokens for r in results)
    return {"requests": len(results), "errors": [r.error for r in results if r.error], "tokens": tokens,
            "wall_s": wall, "tokens_per_s": tokens / wall if wall else 0.0, "server_cpu_s": cpu,
            "tokens_per_cpu_s": tokens / cpu if cpu else None,
            "ttft_p50_ms": _ms(_pct(ttft, 0.5)), "ttft_p95_ms": _ms(_pct(ttft, 0.95)),
            "itl_p50_ms": _ms(_pct(gaps, 0.5)), "itl_p95_ms": _ms(_pct(gaps, 0.95)),
            "texts": [r.text for r in results]}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def free_port() -> int:
    """A port free right now on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, path: str, timeout: float = 300.0) -> None:
    """Poll ``path`` until the server answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + path, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{base} did not answer {path} within {timeout} s")


def start_server(models: Path, max_batch: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    """``python -m arrowengine serve`` on a free port; returns the process and its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "arrowengine", "--log-level", "WARNING", "serve", "--port", str(port),
           "--models", str(models), "--max-batch", str(max_batch)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, "/api/version")
    return proc, base


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB."""
    return psutil.Process(pid).memory_info().rss / 2**20


def soak(base: str, model: str, embed_model: str, pid: int, seconds: float, count: int,
         max_tokens: int) -> dict[str, Any]:
    """Mixed traffic for ``seconds``: good streams, streams cancelled midway, bad requests, embeddings."""
    rng = random.Random(0)
    kinds = ["stream", "cancel", "bad", "embed"]
    samples: list[tuple[float, float]] = []
    unexpected: list[str] = []
    lock = threading.Lock()
    started = time.perf_counter()

    def one(i: int) -> None:
        kind = kinds[i % len(kinds)]
        prompt = rng.choice(PROMPTS)
        try:
            if kind == "stream":
                r = stream_chat(base, model, prompt, max_tokens)
                ok = r.error is None and r.tokens > 0
            elif kind == "cancel":
                r = stream_chat(base, model, prompt, max_tokens, cancel_after=3)
                ok = r.error is None
            elif kind == "bad":
                resp = httpx.post(f"{base}/v1/chat/completions", content=b"{bad json", timeout=60)
                ok = resp.status_code == 400
            else:
                resp = httpx.post(f"{base}/api/embed", json={"model": embed_model, "input": [prompt]}, timeout=120)
                ok = resp.status_code == 200
            if not ok:
                with lock:
                    unexpected.append(f"{kind} #{i}")
        except httpx.HTTPError as exc:
            with lock:
                unexpected.append(f"{kind} #{i}: {exc}")

    threads: list[threading.Thread] = []
    for i in range(count):
        target = started + seconds * i / count
        while time.perf_counter() < target:
            time.sleep(0.05)
        t = threading.Thread(target=one, args=(i,))
        t.start()
        threads.append(t)
        samples.append((time.perf_counter() - started, rss_mb(pid)))
    for t in threads:
        t.join()
    samples.append((time.perf_counter() - started, rss_mb(pid)))
    warm = [mb for t, mb in samples if t >= seconds * 0.2]
    drift = (max(warm) - min(warm)) / min(warm) if warm else 0.0
    return {"requests": count, "seconds": time.perf_counter() - started, "unexpected": unexpected,
            "rss_mb_min": min(warm), "rss_mb_max": max(warm), "rss_drift": drift, "rss_samples": samples}


def llama_peer(args: argparse.Namespace, prompts: list[str]) -> dict[str, Any]:
    """The same load against llama.cpp's llama-server, when it is installed and a GGUF is given."""
    exe = args.llama_server or shutil.which("llama-server")
    if not exe or not args.gguf:
        return {"available": False, "reason": "llama.cpp's llama-server is not installed here (or no --gguf "
                                              "given); pass --llama-server PATH --gguf FILE to measure the peer"}
    port = free_port()
    proc = subprocess.Popen([exe, "-m", args.gguf, "--port", str(port), "-np", "8", "-t", str(os.cpu_count()),
                             "-c", "4096"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, "/health")
        seq = run_sequential(base, "peer", prompts, args.max_tokens)
        conc = run_concurrent(base, "peer", prompts, args.max_tokens)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"available": True, "sequential": seq, "concurrent_8": conc}


def llm_chat_parity(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    """Whether the server's greedy texts equal ``LLM.chat`` with the server's construction options."""
    import torch

    from arrowengine import LLM
    from arrowengine.serve import ServeConfig

    name, _, tag = args.model.partition(":")
    options: dict[str, Any] = {"max_context": ServeConfig().context_tokens}
    if tag and tag != "latest":
        options["precision"] = tag
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = LLM(Path(args.models) / name, **options)
    equal = [llm.chat([{"role": "user", "content": p}], temperature=0.0, max_new_tokens=args.max_tokens) == t
             for p, t in zip(PROMPTS, texts, strict=False)]
    return {"checked": len(equal), "equal": sum(equal)}


def write_outputs(report: dict[str, Any], out: Path) -> None:
    """JSON, markdown table and the throughput / latency plot."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_serve.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# arrowengine serve benchmark ({report['model']}, {report['max_tokens']} tokens, greedy)", "",
             f"Machine: {report['machine']['cpu']} ({report['machine']['cores']} cores), load average "
             f"{report['machine']['loadavg_before']} before / {report['machine']['loadavg_after']} after "
             "(other jobs shared the cores).", "",
             "| clients | tokens/s | tokens per server CPU-s | TTFT p50 ms | TTFT p95 ms | inter-token p50 ms "
             "| inter-token p95 ms | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c, row in report["concurrency"].items():
        per_cpu = f"{row['tokens_per_cpu_s']:.1f}" if row.get("tokens_per_cpu_s") else "-"
        lines.append(f"| {c} | {row['tokens_per_s']:.1f} | {per_cpu} | {row['ttft_p50_ms']} | {row['ttft_p95_ms']} | "
                     f"{row['itl_p50_ms']} | {row['itl_p95_ms']} | {len(row['errors'])} |")
    seq, sp = report["sequential_8"], report["speedup_8"]
    lines += ["", f"8 requests one after another: {seq['tokens_per_s']:.1f} tokens/s; the same 8 streaming at once: "
              f"{report['concurrency']['8']['tokens_per_s']:.1f} tokens/s: **{sp:.2f}x** (target >= 3x); per server "
              f"CPU-second: {report.get('speedup_8_per_cpu_s', float('nan')):.2f}x.",
              f"Greedy texts under batching equal to the sequential ones (each = LLM.chat): "
              f"{report['greedy_equal_8']}/8; sequential texts equal to `LLM.chat` in the bench process: "
              f"{report.get('llm_chat_parity', {}).get('equal', '-')}/"
              f"{report.get('llm_chat_parity', {}).get('checked', '-')}.", "",
              f"Memory (server RSS): {report['memory']['before_load_mb']:.0f} MiB before loading, "
              f"{report['memory']['loaded_mb']:.0f} MiB loaded and after the runs, "
              f"{report['memory']['after_unload_mb']:.0f} MiB after keep_alive 0 unloaded it."]
    peer = report["llama_cpp"]
    lines += ["", "llama.cpp peer: " + (peer["reason"] if not peer["available"] else
                                        f"sequential {peer['sequential']['tokens_per_s']:.1f} tokens/s, 8 concurrent "
                                        f"{peer['concurrent_8']['tokens_per_s']:.1f} tokens/s; ours / peer at 8: "
                                        f"{peer['ratio_8']:.2f}x")]
    if report.get("soak"):
        s = report["soak"]
        lines += ["", f"Soak: {s['requests']} mixed requests in {s['seconds']:.0f} s, unexpected: "
                  f"{len(s['unexpected'])}, RSS {s['rss_mb_min']:.0f}-{s['rss_mb_max']:.0f} MiB after warm-up "
                  f"(drift {s['rss_drift'] * 100:.1f}%, bar 10%)."]
    lines += ["", f"Command: `{report['command']}`", ""]
    (out / "bench_serve.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [int(c) for c in report["concurrency"]]
    rows = list(report["concurrency"].values())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(levels, [r["tokens_per_s"] for r in rows], "o-", label="arrowengine serve")
    ax1.axhline(seq["tokens_per_s"], ls="--", color="gray", label="8 requests in sequence")
    ax1.set(xscale="log", xticks=levels, xticklabels=levels, xlabel="concurrent streams", ylabel="tokens/s",
            title="total decode throughput")
    ax1.legend()
    ax2.plot(levels, [r["ttft_p50_ms"] for r in rows], "o-", label="TTFT p50")
    ax2.plot(levels, [r["ttft_p95_ms"] for r in rows], "o--", label="TTFT p95")
    ax2.plot(levels, [r["itl_p95_ms"] for r in rows], "s-", label="inter-token p95")
    ax2.set(xscale="log", xticks=levels, xticklabels=levels, xlabel="concurrent streams", ylabel="ms",
            title="latency")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "bench_serve.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name (name:tag picks a precision)")
    parser.add_argument("--embed-model", default="all-MiniLM-L6-v2")
    parser.add_argument("--models", default=str(REPO / "models"))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--soak", type=float, default=0.0, help="soak seconds (0: no soak)")
    parser.add_argument("--soak-requests", type=int, default=200)
    parser.add_argument("--soak-max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads")
    parser.add_argument("--parity-prompts", type=int, default=2,
                        help="compare this many sequential greedy texts with LLM.chat in this process (0: skip)")
    parser.add_argument("--llama-server", default=None)
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "serve"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    levels = [int(c) for c in args.concurrency.split(",")]
    from arrowengine.hardware import cpu_info

    cpu = cpu_info()
    report: dict[str, Any] = {"model": args.model, "max_tokens": args.max_tokens, "command": " ".join(sys.argv),
                              "machine": {"cpu": cpu.model, "cores": cpu.cores,
                                          "loadavg_before": [round(x, 2) for x in os.getloadavg()]}}
    proc, base = start_server(Path(args.models), args.max_batch, args.threads)
    try:
        memory = {"before_load_mb": rss_mb(proc.pid)}
        stream_chat(base, args.model, "Hello!", 8)  # load + warm-up
        memory["loaded_mb"] = rss_mb(proc.pid)
        eight = PROMPTS[:8]
        logger.info("sequential: 8 requests one after another")
        report["sequential_8"] = run_sequential(base, args.model, eight, args.max_tokens, proc.pid)
        report["concurrency"] = {}
        for c in levels:
            logger.info("concurrency %d", c)
            prompts = eight if c == 8 else [PROMPTS[i % len(PROMPTS)] for i in range(c)]
            report["concurrency"][str(c)] = run_concurrent(base, args.model, prompts, args.max_tokens, proc.pid)
            logger.info("  %.1f tokens/s", report["concurrency"][str(c)]["tokens_per_s"])
        conc8 = report["concurrency"].get("8") or run_concurrent(base, args.model, eight, args.max_tokens, proc.pid)
        report["speedup_8"] = conc8["tokens_per_s"] / report["sequential_8"]["tokens_per_s"]
        if conc8["tokens_per_cpu_s"] and report["sequential_8"]["tokens_per_cpu_s"]:
            report["speedup_8_per_cpu_s"] = conc8["tokens_per_cpu_s"] / report["sequential_8"]["tokens_per_cpu_s"]
        report["greedy_equal_8"] = sum(a == b for a, b in zip(conc8["texts"], report["sequential_8"]["texts"],
                                                               strict=True))
        if args.soak > 0:
            logger.info("soak: %d requests over %.0f s", args.soak_requests, args.soak)
            report["soak"] = soak(base, args.model, args.embed_model, proc.pid, args.soak, args.soak_requests,
                                  args.soak_max_tokens)
        memory["loaded_mb"] = max(memory["loaded_mb"], rss_mb(proc.pid))
        httpx.post(f"{base}/api/generate", json={"model": args.model, "keep_alive": 0}, timeout=60)
        time.sleep(1.0)
        memory["after_unload_mb"] = rss_mb(proc.pid)
        report["memory"] = memory
    finally:
        proc.terminate()
        proc.wait(60)
    if args.parity_prompts:
        report["llm_chat_parity"] = llm_chat_parity(args, report["sequential_8"]["texts"][:args.parity_prompts])
    peer = llama_peer(args, PROMPTS[:8])
    if peer["available"]:
        peer["ratio_8"] = report["concurrency"]["8"]["tokens_per_s"] / peer["concurrent_8"]["tokens_per_s"]
    report["llama_cpp"] = peer
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_outputs(report, Path(args.out))
    print((Path(args.out) / "bench_serve.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
