"""The step API the LM coder drives, built on any Hugging Face causal LM module plus its tokenizer.

Both directions of the arithmetic coder must see bit-identical distributions, so every probability comes from
the same computation: one forward over the context prefix (batch 1), then one token per step through the KV
cache, in float32, under a fixed number of threads. The model is identified by a checksum over its weights and
tokenizer, which the compressed record carries so that another model refuses to decode.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import xxhash

from memory.compression.errors import CoderStateError, EmptyContentError, InvalidCoderSettingError

__all__ = ["HFCausalLM", "TokenStepper", "load_causal_lm"]

logger = logging.getLogger(__name__)


@runtime_checkable
class TokenStepper(Protocol):
    """What the LM coder needs from a language model: a tokenizer that round-trips and a KV-cache step API."""

    checksum: str
    stop_id: int

    def tokenize(self, text: str) -> list[int] | None:
        """Token ids of ``text``, or ``None`` when decoding them would not give ``text`` back exactly."""

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of ``ids``."""

    def prefix_ids(self, context: Sequence[str]) -> list[int]:
        """The (non-empty) token ids that condition the next message on ``context``."""

    def begin(self, prefix_ids: Sequence[int]) -> np.ndarray:
        """Reset the cache, run the prefix and return the float32 logits of the first token."""

    def next_token_logits(self, token_id: int) -> np.ndarray:
        """Feed one token through the cache and return the float32 logits of the next."""


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    # GEMM reductions may split differently with another thread count; pin it while coding
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


class HFCausalLM:
    """Adapts a transformers causal LM (``LlamaForCausalLM`` and kin) and its tokenizer to :class:`TokenStepper`.

    Messages are framed the way the instruct model was trained: each context message becomes a
    ``<|im_start|>user`` turn and the message being coded follows its own turn header; the end-of-turn token
    (the tokenizer's EOS) terminates it. ``max_context_tokens`` keeps only the last tokens of the context.
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, *, threads: int = 1, max_context_tokens: int = 384
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise InvalidCoderSettingError(
                "tokenizer has no eos_token_id; the LM coder needs one to end each message: use a causal LM whose "
                "tokenizer defines an end-of-sequence token"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.threads = threads
        self.max_context_tokens = max_context_tokens
        self.stop_id = int(tokenizer.eos_token_id)
        self._turn_start = self._special("<|im_start|>", tokenizer.bos_token_id)
        self._newline = tokenizer.encode("\n", add_special_tokens=False)
        self._role = tokenizer.encode("user", add_special_tokens=False)
        self._cache: Any = None
        self._checksum: str | None = None

    def _special(self, token: str, fallback: int | None) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            token_id = fallback if fallback is not None else self.stop_id
        return int(token_id)

    @property
    def checksum(self) -> str:
        """xxh3-64 hex of every parameter (name, dtype, shape, bytes) plus the tokenizer's definition."""
        if self._checksum is None:
            h = xxhash.xxh3_64()
            for name, tensor in sorted(self.model.state_dict().items()):
                t = tensor.detach().to("cpu").contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            h.update(backend.to_str().encode() if backend is not None else repr(sorted(
                self.tokenizer.get_vocab().items())).encode())
            self._checksum = h.hexdigest()
        return self._checksum

    def tokenize(self, text: str) -> list[int] | None:
        """Token ids of ``text`` (no special tokens added), or ``None`` when they do not decode back to it."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if self.stop_id in ids or self.detokenize(ids) != text:
            return None
        return [int(i) for i in ids]

    def detokenize(self, ids: Sequence[int]) -> str:
        """The exact text of ``ids`` (special tokens kept, no space clean-up)."""
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def _turn(self, ids: list[int]) -> list[int]:
        return [self._turn_start, *self._role, *self._newline, *ids]

    def prefix_ids(self, context: Sequence[str]) -> list[int]:
        """Context turns (each closed by the stop token), truncated from the left, then the next turn header."""
        ids: list[int] = []
        for message in context:
            body = self.tokenizer.encode(message, add_special_tokens=False)
            ids += [*self._turn(body), self.stop_id, *self._newline]
        header = self._turn([])
        keep = max(self.max_context_tokens - len(header), 0)
        return [*(ids[len(ids) - keep:] if len(ids) > keep else ids), *header]

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        with _torch_threads(self.threads), torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([list(ids)], dtype=torch.long),
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self._cache = out.past_key_values
        return out.logits[0, -1].to(torch.float32).numpy()

    def begin(self, prefix_ids: Sequence[int]) -> np.ndarray:
        """Drop the cache, run ``prefix_ids`` in one forward (batch 1) and return the next token's logits."""
        if not prefix_ids:
            raise EmptyContentError("prefix_ids is empty; the LM needs at least one token to condition on")
        self._cache = None
        return self._forward(prefix_ids)

    def next_token_logits(self, token_id: int) -> np.ndarray:
        """One step through the KV cache: feed ``token_id``, return the next token's float32 logits."""
        if self._cache is None:
            raise CoderStateError("next_token_logits() called before begin(); start each message with begin()")
        return self._forward([token_id])


def load_causal_lm(
    model_dir: str | Path, *, gguf_file: str | None = None, threads: int = 1, max_context_tokens: int = 384
) -> HFCausalLM:
    """Load a transformers causal LM (float32) and its tokenizer from a local directory, never the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **kwargs)
    logger.info("loaded causal LM from %s (%s)", model_dir, gguf_file or "transformers files")
    return HFCausalLM(model, tokenizer, threads=threads, max_context_tokens=max_context_tokens)
