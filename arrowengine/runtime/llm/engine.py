"""``LLM``: a causal language model from ``models/`` (or a built transformers model) with our own serving loop."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from arrowengine.hardware import cpu_info
from arrowengine.runtime.llm.block_model import holds_blocks, load_block_model
from arrowengine.runtime.llm.chat import render_chat
from arrowengine.runtime.llm.decode import DecodeStep
from arrowengine.runtime.llm.errors import ContextOverflowError, InvalidPromptError, UnsupportedModelError
from arrowengine.runtime.llm.generate import GenerationRun, RowOutput
from arrowengine.runtime.llm.llama import LlamaForward
from arrowengine.runtime.llm.perplexity import perplexity_of_ids
from arrowengine.runtime.llm.precision import resolve_precision
from arrowengine.runtime.llm.sampling import SamplingParams

__all__ = ["LLM"]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LLM:
    """Generate, stream, chat and score text with a Llama-architecture model.

    ``LLM("models/smollm2-135m-instruct")`` maps the weights zero-copy through ``arrowengine.load_model`` and
    loads the tokenizer from the same directory; ``LLM.from_model(model, tokenizer)`` wraps an already built
    ``LlamaForCausalLM``. fp32 shares the model's tensors; bf16 / fp16 make one copy (with Q/K/V and gate/up
    fused).

    ``precision`` (:mod:`arrowengine.runtime.llm.precision`): ``LLM(dir)`` defaults to ``"auto"``, the fastest
    mode that holds the float reference's perplexity within +1% on this CPU (logged at INFO): for a model
    converted from GGUF with its blocks kept (``arrowengine convert model.gguf``) that is ``"gguf"``, the blocks
    themselves through native AVX2 kernels, one C call per decoder layer per token, with an fp16 KV cache for
    64-wide heads (as llama.cpp's default; SmolLM2-135M: perplexity +0.003% vs the float reference, greedy
    continuations of 20 chat prompts identical); for a float model on a CPU
    without native bf16 it is ``"q8_0"``: the matrices and token embedding become Q8_0 blocks at load and run
    through the same kernels (perplexity +0.36% on SmolLM2-135M); LoRA terms (``add_low_rank``) work on both,
    decoding through the torch step while one is applied. ``precision="fp32"`` is the float reference,
    token-identical to ``transformers.generate``.
    ``LLM.from_model`` defaults to fp32. ``dtype`` / ``weight_quant`` remain as the long form.

    Speed options (``docs/benchmarks/llm.json`` has the measured figures): ``weight_quant="int8"`` or ``"int4"``
    packs the matrices (lm_head included unless ``quantize_lm_head=False``) for weight-only integer matmuls with
    bf16 activations (``dtype`` then defaults to ``"bfloat16"``); int4 uses RTN groups of ``group_size``
    inputs. ``threads`` sets ``torch.set_num_threads`` (process-wide; use the number of physical cores).
    Greedy fp32 output is token-identical to ``transformers.generate``; bf16 / int8 / int4 trade a little
    agreement for speed (``scripts/bench_llm.py`` measures agreement and perplexity).
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, precision: str | None = None, dtype: str | None = None,
                 device: str = "cpu", fuse_projections: bool | None = None, max_context: int | None = None,
                 weight_quant: str | None = None, group_size: int = 32, quantize_lm_head: bool = True,
                 threads: int | None = None, verify: bool | None = None) -> None:
        from transformers import AutoTokenizer

        from arrowengine.config import resolve_verify_checksums
        from arrowengine.format.reader import WeightFile
        from arrowengine.runtime.loading import load_model
        from arrowengine.runtime.native.gguf import block_kernels

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tokenizer files come from the model dir, never a hub
        started = time.perf_counter()
        # verify: checksums at load (None = runtime.verify_checksums); checked once here for either build path
        weights = WeightFile.open(model_dir, verify=resolve_verify_checksums(verify))
        blocks = holds_blocks(weights)
        kernels = block_kernels() is not None
        mode = resolve_precision(precision, dtype, weight_quant, default="auto", isa=cpu_info().isa,
                                 has_blocks=blocks, block_kernels=kernels)
        if mode.weight_quant == "q8_0" and not kernels:
            raise UnsupportedModelError("precision='q8_0' needs the native block kernels (AVX2 + FMA and a C "
                                        "compiler; the reason is logged); use precision='fp32'")
        if mode.weight_quant in ("gguf", "q8_0"):
            # the matrices stay GGUF blocks in the mapping, or become Q8_0 blocks of a float file at load
            model = load_block_model(model_dir, weights, quantize=mode.weight_quant == "q8_0")
        else:
            model = load_model(model_dir, device=device, verify=False)  # GGUF blocks, if any, dequantized exactly
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(model_dir))
        self._setup(model, tokenizer, dtype=mode.dtype, fuse_projections=fuse_projections, max_context=max_context,
                    weight_quant="gguf" if mode.weight_quant == "q8_0" else mode.weight_quant, group_size=group_size,
                    quantize_lm_head=quantize_lm_head, threads=threads)
        self.precision = mode.name
        logger.info("LLM: loaded %s in %.2f s (%s, %s)", model_dir, time.perf_counter() - started,
                    self.forward.dtype, device)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, precision: str | None = None, dtype: str | None = None,
                   fuse_projections: bool | None = None, max_context: int | None = None,
                   weight_quant: str | None = None, group_size: int = 32, quantize_lm_head: bool = True,
                   threads: int | None = None) -> LLM:
        """Wrap a built ``LlamaForCausalLM`` and its tokenizer.

        The default is fp32 (the module's weights stay where they are); ``precision="auto"`` picks as
        ``LLM(dir)`` does.
        """
        self = cls.__new__(cls)
        mode = resolve_precision(precision, dtype, weight_quant, default="fp32", isa=cpu_info().isa)
        if mode.weight_quant in ("gguf", "q8_0"):
            raise UnsupportedModelError(f"precision={mode.name!r} needs a model directory: use LLM(dir)")
        self.precision = mode.name
        self._setup(model, tokenizer, dtype=mode.dtype, fuse_projections=fuse_projections, max_context=max_context,
                    weight_quant=mode.weight_quant, group_size=group_size, quantize_lm_head=quantize_lm_head,
                    threads=threads)
        return self

    def _setup(self, model: Any, tokenizer: Any, *, dtype: str, fuse_projections: bool | None,
               max_context: int | None, weight_quant: str | None, group_size: int, quantize_lm_head: bool,
               threads: int | None) -> None:
        if dtype not in _DTYPES:
            raise UnsupportedModelError(f"LLM dtype={dtype!r} is not supported; use one of {sorted(_DTYPES)}")
        if threads is not None:
            torch.set_num_threads(threads)
            logger.info("LLM: torch threads set to %d", threads)
        self.model = model
        self.tokenizer = tokenizer
        self.max_context = min(max_context or model.config.max_position_embeddings,
                               model.config.max_position_embeddings)
        self.forward = LlamaForward(model, dtype=_DTYPES[dtype], fuse=fuse_projections,
                                    max_positions=self.max_context, weight_quant=weight_quant,
                                    group_size=group_size, quantize_lm_head=quantize_lm_head)
        self.stop_token_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.stop_token_ids, default=0))
        self.decode_step = DecodeStep(self.forward)  # public: the server's batched decoder steps rows with it

    # ------------------------------------------------------------------ generation
    def _params(self, params: SamplingParams | None, overrides: dict[str, Any]) -> SamplingParams:
        params = params or SamplingParams()
        return params.with_overrides(**overrides) if overrides else params

    def _encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise InvalidPromptError(f"a prompt must be a str, got {type(prompt).__name__}")
        ids = list(self.tokenizer(prompt)["input_ids"])
        if not ids:
            raise InvalidPromptError("the prompt is empty after tokenization; pass some text")
        return ids

    def _run(self, prompts: list[list[int]], params: SamplingParams) -> GenerationRun:
        longest = max(len(p) for p in prompts)
        if longest >= self.max_context:
            raise ContextOverflowError(
                f"a prompt of {longest} tokens leaves no room in the {self.max_context}-token context window; "
                f"shorten it (or use chat(), which drops old turns)")
        room = self.max_context - longest
        if params.max_new_tokens > room:
            logger.info("LLM: max_new_tokens %d capped to %d by the context window", params.max_new_tokens, room)
            params = params.with_overrides(max_new_tokens=room)
        return GenerationRun(self.forward, self.tokenizer, prompts, params, self.stop_token_ids, self.pad_id,
                             decode_step=self.decode_step)

    def generate_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None,
                     **overrides: Any) -> list[RowOutput]:
        """Generate from already tokenized prompts; one ``RowOutput`` (text, token ids, reason) per prompt."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise InvalidPromptError("generate_ids needs a non-empty list of non-empty token id lists")
        run = self._run([list(map(int, p)) for p in prompts], self._params(params, overrides))
        for _ in run:
            pass
        return run.rows

    def generate(self, prompt: str | Sequence[str], params: SamplingParams | None = None,
                 **overrides: Any) -> str | list[str]:
        """Completion text of one prompt (a ``str``) or of a batch of prompts (a ``list[str]``)."""
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            raise InvalidPromptError("generate() got an empty list of prompts")
        rows = self.generate_ids([self._encode(p) for p in prompts], params, **overrides)
        texts = [row.text for row in rows]
        return texts[0] if single else texts

    def stream(self, prompt: str, params: SamplingParams | None = None, **overrides: Any) -> Iterator[str]:
        """Yield the completion of ``prompt`` piece by piece; pieces are whole UTF-8 characters."""
        run = self._run([self._encode(prompt)], self._params(params, overrides))
        for pieces in run:
            if pieces[0]:
                yield pieces[0]

    def chat(self, messages: Sequence[Mapping[str, Any]], params: SamplingParams | None = None, *,
             stream: bool = False, **overrides: Any) -> str | Iterator[str]:
        """Answer a conversation through the tokenizer's chat template; old turns are dropped to fit."""
        params = self._params(params, overrides)
        budget = self.max_context - min(params.max_new_tokens, self.max_context // 2)
        ids, _dropped = render_chat(self.tokenizer, messages, budget)
        run = self._run([ids], params)
        if stream:
            return (pieces[0] for pieces in run if pieces[0])
        for _ in run:
            pass
        return run.rows[0].text

    # ------------------------------------------------------------------ adapters
    def add_low_rank(self, key: str, module: str, down: torch.Tensor, up: torch.Tensor) -> None:
        """Add ``x @ down.T @ up.T`` to the output of linear ``module`` (a transformers name such as
        ``model.layers.0.self_attn.q_proj``) under ``key``, leaving the base weights untouched (a LoRA adapter:
        ``up`` carries the ``alpha / r`` scale). The model's own module is not changed; this LLM's forward is."""
        from arrowengine.runtime.llm.low_rank import add_low_rank

        add_low_rank(self.forward, key, module, down, up)

    def remove_low_rank(self, key: str) -> int:
        """Remove every low-rank term added under ``key`` (the base is exactly as loaded); the number removed."""
        from arrowengine.runtime.llm.low_rank import remove_low_rank

        return remove_low_rank(self.forward, key)

    # ------------------------------------------------------------------ scoring
    def logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """fp32 next-token logits ``[len(token_ids), vocab]`` of one sequence (a single prefill)."""
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.forward.device)
        cache = self.forward.new_cache(1, ids.shape[1])
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        return self.forward.forward(ids, positions, cache, 0, None, last_only=False)[0]

    def perplexity(self, text: str, *, window: int | None = None, stride: int | None = None) -> float:
        """``exp(mean NLL)`` of ``text``'s tokens; windows of ``window`` tokens (default: the context) by ``stride``."""
        window = window or self.max_context
        stride = stride or window
        return perplexity_of_ids(self.forward, self._encode(text), min(window, self.max_context), stride)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Stop tokens: the config's and generation config's ``eos_token_id`` plus the tokenizer's."""
    ids: set[int] = set()
    sources = [getattr(model.config, "eos_token_id", None),
               getattr(getattr(model, "generation_config", None), "eos_token_id", None),
               getattr(tokenizer, "eos_token_id", None)]
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
