"""A federated fine-tuning run: node processes train LoRA (peft) on disjoint shards and sync through a server.

``run_federation(mode, config)`` starts a :class:`SyncServer` on 127.0.0.1:0 in this process and ``config.nodes``
node processes. The initial adapter is pushed once; each node pulls it (the bootstrap), then per round trains
``steps`` optimizer steps on its own conversations, syncs (``mode="delta"``: ``config.method`` deltas with error
feedback both ways; ``"full"``: whole cards, plain FedAvg) and continues from the merged card. Node 0 also
scores every merged card on held-out conversations through ``arrowengine.LLM`` with the card applied
(``federation.apply_card``: the base is loaded once). ``scripts/federation_eval.py`` runs both modes and writes
the report.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["ExperimentConfig", "RoundStats", "run_federation", "token_sequences"]

logger = logging.getLogger(__name__)

ADAPTER = "chitchat"


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run depends on; both modes of a comparison share one config."""

    model_dir: str = "models/smollm2-135m-instruct"
    nodes: int = 3
    rounds: int = 5
    steps: int = 4
    batch: int = 4
    seq_len: int = 64
    lr: float = 1e-3
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    train_conversations: int = 900
    eval_conversations: int = 60
    eval_sequences: int = 24
    method: str = "int4"  # the delta encoding, both ways (federation.encoding.METHODS)
    density: float = 0.05  # kept fraction for topk_int8
    seed: int = 0
    threads: int = 1


@dataclass
class RoundStats:
    """One round of one mode: bytes through Flight summed over the nodes, held-out perplexity of the merged card."""

    round: int
    bytes_sent: int = 0
    bytes_received: int = 0
    perplexity: float = math.nan
    train_loss: float = math.nan
    sync_seconds: float = 0.0
    statuses: list[str] = field(default_factory=list)

    @property
    def bytes_moved(self) -> int:
        """Sent plus received."""
        return self.bytes_sent + self.bytes_received


def token_sequences(tokenizer: Any, conversations: Any, seq_len: int) -> torch.Tensor:
    """Conversations as one token stream (messages on lines, conversations ended by EOS) cut into
    ``[N, seq_len]`` rows; the tail shorter than a row is dropped."""
    stream: list[int] = []
    for conv in conversations:
        stream.extend(tokenizer("\n".join(conv))["input_ids"])
        stream.append(tokenizer.eos_token_id)
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _data(config: ExperimentConfig, tokenizer: Any, index: int | None) -> torch.Tensor:
    from arrowengine.datasets import chitchat_conversations

    conversations = chitchat_conversations()
    if index is None:  # held out: the last conversations, never in any shard
        return token_sequences(tokenizer, conversations[-config.eval_conversations:],
                               config.seq_len)[: config.eval_sequences]
    pool = conversations[: config.train_conversations]
    return token_sequences(tokenizer, pool[index:: config.nodes], config.seq_len)


def _peft_model(config: ExperimentConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    from arrowengine.runtime.loading import load_model

    model = load_model(config.model_dir)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.targets), lora_dropout=0.0)
    return get_peft_model(model, lora)


def _heldout_perplexity(llm: Any, sequences: torch.Tensor) -> float:
    nll, count = 0.0, 0
    for ids in sequences:
        logits = llm.logits(ids.tolist())
        nll += float(torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum"))
        count += len(ids) - 1
    return math.exp(nll / count)


def _node(index: int, config: ExperimentConfig, location: str, token: str, mode: str, queue: Any) -> None:
    """One node process (spawned): pull, then train / sync / (node 0) evaluate every round."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(config.threads)
    from transformers import AutoTokenizer

    from arrowengine.runtime.llm import LLM
    from arrowengine.runtime.loading import load_model
    from federation.adapt import apply_card
    from federation.card import LoRACard
    from federation.client import ClientConfig, SyncClient
    from federation.delta import DeltaConfig, ErrorFeedback

    tokenizer = AutoTokenizer.from_pretrained(config.model_dir)
    model = _peft_model(config)
    data = _data(config, tokenizer, index)
    client = SyncClient(ClientConfig(location, node=f"node{index}", token=token,
                                     delta=DeltaConfig(method=config.method, density=config.density)))
    base = client.pull(ADAPTER)
    base.load_into_peft(model)
    feedback = ErrorFeedback()
    llm = heldout = None
    if index == 0:
        llm = LLM.from_model(load_model(config.model_dir), tokenizer)  # the base, loaded once
        heldout = _data(config, tokenizer, None)
        apply_card(llm, base)
    queue.put((index, 0, {"perplexity": _heldout_perplexity(llm, heldout) if llm else math.nan}))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed * 1000 + index)
    model.train()
    for rnd in range(1, config.rounds + 1):
        losses = []
        for _ in range(config.steps):
            batch = data[torch.randint(len(data), (config.batch,), generator=gen)]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
        local = LoRACard(base.meta, LoRACard.from_peft(model, adapter=ADAPTER, base_model=base.meta.base_model,
                                                       base_checksum=base.meta.base_checksum).tensors)
        result = client.sync(local, base, samples=config.steps * config.batch, mode=mode, feedback=feedback)
        base = result.card
        base.load_into_peft(model)
        stats = {"bytes_sent": result.bytes_sent, "bytes_received": result.bytes_received,
                 "sync_seconds": result.seconds, "status": result.status, "train_loss": sum(losses) / len(losses)}
        if llm is not None:
            apply_card(llm, base)  # replaces the previous version's terms; the base stays mapped as loaded
            stats["perplexity"] = _heldout_perplexity(llm, heldout)
        queue.put((index, rnd, stats))
    client.close()


def run_federation(mode: str, config: ExperimentConfig, *, workdir: str | os.PathLike[str] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[RoundStats], dict[str, Any]]:
    """Run one mode; returns per-round stats (round 0: the bootstrap pull and the initial perplexity) and
    totals (bytes from the server's sync log too, seconds). ``progress(node, round)`` is called per report."""
    from federation.card import LoRACard
    from federation.checksum import model_checksum
    from federation.client import ClientConfig, SyncClient
    from federation.delta import DeltaConfig
    from federation.server import ServerConfig, SyncServer

    started = time.perf_counter()
    root = Path(workdir or tempfile.mkdtemp(prefix=f"federation-{mode}-"))
    token = os.urandom(16).hex()
    broadcast = DeltaConfig(method=config.method, density=config.density) if mode == "delta" else DeltaConfig("dense")
    server = SyncServer(ServerConfig(root=root / "server", token=token, round_size=config.nodes,
                                     round_timeout_s=3600, broadcast=broadcast))
    thread = threading.Thread(target=server.serve, name="federation-server", daemon=True)
    thread.start()
    try:
        torch.manual_seed(config.seed)  # the initial adapter (A random, B zero) is the same for both modes
        initial = LoRACard.from_peft(_peft_model(config), adapter=ADAPTER, base_model=Path(config.model_dir).name,
                                     base_checksum=model_checksum(config.model_dir))
        SyncClient(ClientConfig(server.location, node="admin", token=token)).push(initial)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_node, args=(i, config, server.location, token, mode, queue), name=f"node{i}")
                 for i in range(config.nodes)]
        for p in procs:
            p.start()
        rounds = [RoundStats(r) for r in range(config.rounds + 1)]
        for _ in range(config.nodes * (config.rounds + 1)):
            index, rnd, stats = _get(queue, procs)
            row = rounds[rnd]
            row.bytes_sent += stats.get("bytes_sent", 0)
            row.bytes_received += stats.get("bytes_received", 0)
            row.sync_seconds = max(row.sync_seconds, stats.get("sync_seconds", 0.0))
            if "status" in stats:
                row.statuses.append(stats["status"])
            if index == 0:
                row.perplexity = stats["perplexity"]
                row.train_loss = stats.get("train_loss", math.nan)
            if progress is not None:
                progress(index, rnd)
        for p in procs:
            p.join(60)
        log = server.log.table().to_pylist()
    finally:
        server.shutdown()
        thread.join(10)
    pulls = [r for r in log if r["op"] == "pull"]
    syncs = [r for r in log if r["op"] == "sync"]
    rounds[0].bytes_received = sum(r["bytes_sent"] for r in pulls)  # the bootstrap: every node pulls the card
    totals = {"mode": mode, "seconds": time.perf_counter() - started, "card_bytes": initial.nbytes,
              "server_log_sync_bytes": sum(r["bytes_sent"] + r["bytes_received"] for r in syncs),
              "server_log_bootstrap_bytes": rounds[0].bytes_received, "config": asdict(config)}
    return rounds, totals


def _get(queue: Any, procs: list[Any]) -> tuple[int, int, dict]:
    import queue as queue_module

    while True:
        try:
            return queue.get(timeout=5)
        except queue_module.Empty:
            dead = [p.name for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"node processes {dead} died; run with -v for their logs") from None
