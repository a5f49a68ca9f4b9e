"""Shared pieces of the federation tests: a tiny real-architecture LoRA card and servers on 127.0.0.1:0."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

from federation.card import LoRACard
from federation.checksum import model_checksum
from federation.server import ServerConfig, SyncServer
from tests.arrowengine.llm_support import tiny_llama

ADAPTER = "chat"


def peft_model(seed: int = 0, *, rank: int = 4) -> Any:
    """A tiny Llama (real LlamaConfig) with a peft LoRA on q/v, B initialised non-zero so it changes outputs."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = get_peft_model(tiny_llama(seed), config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # peft starts B at zero (a no-op adapter); a trained one is not
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return model


def tiny_card(seed: int = 0, *, rank: int = 4, adapter: str = ADAPTER) -> LoRACard:
    """The LoRA card of :func:`peft_model`."""
    model = peft_model(seed, rank=rank)
    # the base's identity, taken before peft wraps its projections (the wrapped state dict holds the LoRA too)
    return LoRACard.from_peft(model, adapter=adapter, base_model="tiny-llama",
                              base_checksum=model_checksum(tiny_llama(seed)))


def nudged(card: LoRACard, seed: int, scale: float = 0.01) -> LoRACard:
    """``card`` with small random changes (a node's local training step), same version."""
    gen = torch.Generator().manual_seed(seed)
    return LoRACard(card.meta, {n: t + scale * torch.randn(t.shape, generator=gen) for n, t in card.tensors.items()})


@contextlib.contextmanager
def running_server(config: ServerConfig, server_class: type[SyncServer] = SyncServer) -> Iterator[SyncServer]:
    """A :class:`SyncServer` (or ``server_class``) serving on its own thread for the block, then shut down."""
    server = server_class(config)
    thread = threading.Thread(target=server.serve, name="test-sync-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)
