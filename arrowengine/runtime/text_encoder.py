"""Sentence embeddings from a converted encoder (all-MiniLM-L6-v2 and other BERT-style models)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from arrowengine.errors import ConfigError, InputTypeError, ModelConfigError
from arrowengine.runtime.backends import BackendChoice, prepare_backend
from arrowengine.runtime.bert_fast import FastBert, FastBertConfig, unsupported_reason
from arrowengine.runtime.calibration import calibration_key, default_calibration_texts
from arrowengine.runtime.devices import select_dtype
from arrowengine.runtime.loading import load_config_dict, load_model
from arrowengine.runtime.model_kinds import require_kind
from arrowengine.runtime.precision import select_precision

__all__ = ["TextEncoder", "length_batches", "pool_hidden"]

logger = logging.getLogger(__name__)

_POOLING_MODES = ("mean", "cls", "max")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _pooling_from_dir(model_dir: Path) -> tuple[str, bool]:
    """(pooling mode, normalise) from sentence-transformers files; mean + L2 normalise when absent."""
    pooling = _read_json(model_dir / "1_Pooling" / "config.json")
    mode = "mean"
    if pooling.get("pooling_mode_cls_token"):
        mode = "cls"
    elif pooling.get("pooling_mode_max_tokens"):
        mode = "max"
    modules = model_dir / "modules.json"
    normalize = True
    if modules.is_file():
        entries = json.loads(modules.read_text(encoding="utf-8"))
        normalize = any(str(e.get("type", "")).endswith("Normalize") for e in entries)
    return mode, normalize


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean", normalize: bool = True
                ) -> torch.Tensor:
    """Sentence vectors ``[B, H]`` float32 from token states ``[B, S, H]`` and the attention mask ``[B, S]``.

    ``mode`` is ``mean`` (over the unmasked tokens), ``cls`` (the first token) or ``max``; ``normalize``
    L2-normalises each vector. Pools in float32 whatever the compute dtype.
    """
    hidden = hidden.float()
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).amax(dim=1)
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled


def length_batches(lengths: Sequence[int], max_count: int, max_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches, longest first: each batch at most ``max_count`` items and at most
    ``max_tokens`` tokens once padded to its longest member (an item longer than ``max_tokens`` goes alone).

    Sorting first keeps the padding small; the token cap keeps the long tail of a call (a 200-token message
    among chat lines) from padding a whole batch of short ones to its length.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches, start = [], 0
    while start < len(order):
        count = max(1, min(max_count, max_tokens // max(1, lengths[order[start]])))
        batches.append(order[start : start + count])
        start += count
    return batches


class TextEncoder:
    """Embed text with a converted encoder: tokenise, run the model batched, pool, L2-normalise.

    Batches are formed from length-sorted inputs and padded only to the longest member (dynamic padding), so
    short chat messages do not pay for long ones; a batch also holds at most ``max_batch_tokens`` padded tokens,
    so the few long texts of a call go in small batches of their own instead of padding 31 short ones to their
    length. Results come back in input order as float32 ``[n, dim]``.

    By default (``precision="auto"``) a BERT-style model on CPU runs the lean forward
    (:class:`arrowengine.runtime.bert_fast.FastBert`) in the fastest precision that holds cosine >= 0.99 to
    float32 on this CPU (:func:`arrowengine.runtime.precision.select_precision`: ``int8-mixed`` with int8 dot
    products and native bf16, ``bfloat16`` with native bf16 only, ``int8-weights`` with AVX2 + FMA, else
    ``float32``; the choice is logged).
    ``precision="fp32"`` gives float32 embeddings. Naming ``backend``, ``dtype`` or ``quant_mode`` asks for
    the ``transformers`` module forward instead, as does a model the lean forward cannot run (logged).

    Args:
        model_dir: a converted model directory (``models/all-MiniLM-L6-v2``).
        device: ``cpu``, ``auto`` or a device name (see :func:`arrowengine.runtime.devices.select_device`); the
            lean forward runs on CPU, other devices use the module forward.
        precision: ``auto``, ``float32`` (``fp32``), ``int8-weights`` (Q8_0 weight blocks run by the native
            AVX2 kernel, float32 activations, no calibration), ``bfloat16`` (``bf16``), ``int8-mixed`` (int8 matmuls for
            Q/K/V, attention output and FFN up, SmoothQuant-calibrated; bf16 FFN down) or ``int8`` (every
            projection int8, lower cosine); ``None`` for the module forward. Trade-offs measured in
            ``docs/benchmarks/``.
        dtype: module forward only: ``float32`` (exact, weights stay zero-copy), ``bfloat16`` or ``float16``
            (weights cast once); a dtype the device cannot run falls back with a warning.
        backend: module forward only: ``eager``, ``compile``, ``onnxruntime`` or ``ipex`` (falls back to eager
            with a warning).
        batch_size: sentences per forward pass (at most).
        max_batch_tokens: padded tokens per forward pass (at most; a longer text goes alone). 256 measured
            fastest for 64 real chat turns a call on an AVX-512 EPYC (Zen 4, 1 MiB L2 per core): 1.22x
            (``int8-mixed``), 1.13x (``bfloat16``), 1.07x (``float32``, ``int8-weights``) the throughput at 512
            (interleaved rounds; 128 and 192 no faster); 512 had measured 1.2-1.3x unlimited on an AVX2 EPYC.
        max_length: token limit per text (default: the model's ``max_seq_length``).
        pooling: ``mean``, ``cls`` or ``max`` (default: from the model's pooling config).
        normalize: L2-normalise the embeddings (default: from the model's modules config).
        quant_mode: module forward only: execution mode of a quantized (V2) model's layers (see
            :func:`load_model`).
        calibration_texts: sentences for the int8 precisions' SmoothQuant scales (default: the sentences
            shipped with arrowengine, :func:`arrowengine.runtime.calibration.default_calibration_texts`); the
            scales are cached per model and calibration set.

    Raises:
        ModelTypeError: the directory holds a speech, image or causal LM model.
        ConfigError: an unknown precision, dtype, backend or pooling, a batch size below 1, or a module-forward
            option combined with an explicit lean precision.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, device: str = "cpu", precision: str | None = "auto",
                 dtype: str | None = None, backend: str | None = None, batch_size: int = 32,
                 max_batch_tokens: int = 256, max_length: int | None = None, pooling: str | None = None,
                 normalize: bool | None = None, quant_mode: str | None = None,
                 calibration_texts: Sequence[str] | None = None, verify: bool | None = None) -> None:
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        config = load_config_dict(self.model_dir)
        require_kind(config, self.model_dir, "text")
        module_options = {k: v for k, v in (("dtype", dtype), ("backend", backend), ("quant_mode", quant_mode))
                          if v is not None}
        if module_options and precision not in (None, "auto"):
            raise ConfigError(f"precision={precision!r} runs the lean forward, which takes no "
                              f"{', '.join(module_options)}; pass precision=None to use them")
        tokenizer_file = self.model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelConfigError(f"{self.model_dir} has no tokenizer.json; re-convert the model with its "
                                   f"tokenizer files")
        default_mode, default_norm = _pooling_from_dir(self.model_dir)
        self.pooling = pooling or default_mode
        if self.pooling not in _POOLING_MODES:
            raise ConfigError(f"pooling must be one of {_POOLING_MODES}, got {self.pooling!r}")
        self.normalize = default_norm if normalize is None else normalize
        st_config = _read_json(self.model_dir / "sentence_bert_config.json")
        self.max_length = int(max_length or st_config.get("max_seq_length")
                              or config.get("max_position_embeddings", 512))
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.max_batch_tokens = int(max_batch_tokens)
        if self.max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        if precision not in (None, "auto"):  # validate before the model is loaded
            select_precision("text", precision)
        self.model = load_model(self.model_dir, device=device, quant_mode=quant_mode or "dequant-on-the-fly",
                                verify=verify)  # verify: checksums at load, None = runtime.verify_checksums
        self.device_choice = self.model.arrowengine_device
        self.device = self.device_choice.torch_device
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.pad_id = int(config.get("pad_token_id") or 0)
        self.dimension = int(config.get("hidden_size") or config.get("d_model") or 0)
        self.precision = self._resolve_precision(precision, module_options)
        if self.precision is not None:
            self.torch_dtype = torch.float32  # FastBert keeps its own per-projection copies
            self.dtype = self.precision
            self.backend = self._fast_backend(self.precision, calibration_texts)
            return
        self.torch_dtype = select_dtype(dtype or "float32", self.device_choice)
        self.dtype = str(self.torch_dtype).removeprefix("torch.")
        if self.torch_dtype != torch.float32:
            # Casting the weights once beats autocast's per-op casts; it costs one copy of the weights out of the
            # file mapping, which is logged.
            logger.info("casting %s weights to %s (a copy; float32 keeps them zero-copy)", self.model_dir.name,
                        self.dtype)
            self.model.to(self.torch_dtype)
        self.backend = prepare_backend(self.model, backend or "eager")

    def _resolve_precision(self, precision: str | None, module_options: dict[str, str]) -> str | None:
        """The lean forward's precision, or None for the module forward (``auto`` resolves here, logged)."""
        if precision is None:
            return None
        if precision != "auto":
            if torch.device(self.device).type != "cpu":
                raise ConfigError(f"precision={precision!r} runs on CPU only; use precision=None with dtype/backend "
                                  f"on {self.device}")
            lean_problem = unsupported_reason(self.model)
            if lean_problem:
                raise ConfigError(f"precision={precision!r} needs the lean BERT forward, which cannot run "
                                  f"{self.model_dir}: {lean_problem}; pass precision=None")
            return select_precision("text", precision).precision
        if module_options:
            logger.info("TextEncoder: %s given, so the transformers module forward runs (precision auto is for "
                        "the lean forward)", ", ".join(module_options))
            return None
        if torch.device(self.device).type != "cpu":
            logger.info("TextEncoder: precision auto on %s runs the transformers module forward in float32 (the "
                        "lean forward is CPU only)", self.device)
            return None
        lean_problem = unsupported_reason(self.model)
        if lean_problem:
            logger.info("TextEncoder: precision auto runs the transformers module forward in float32 for %s (%s)",
                        self.model_dir.name, lean_problem)
            return None
        choice = select_precision("text", "auto", component=f"TextEncoder({self.model_dir.name})").precision
        if choice == "int8-weights":
            from arrowengine.runtime.native.gguf import block_kernels

            if block_kernels() is None:  # no compiler, a failed build or runtime.native_kernels off (logged)
                logger.info("TextEncoder: the native block kernel is unavailable, so precision auto runs float32")
                return "float32"
        return choice

    def _fast_backend(self, precision: str, calibration_texts: Sequence[str] | None) -> BackendChoice:
        calibration, key = [], None
        if precision in ("int8", "int8-mixed"):  # SmoothQuant scales; int8-weights needs no calibration
            texts = list(calibration_texts) if calibration_texts is not None else default_calibration_texts()
            if not texts:
                raise ConfigError("calibration_texts is empty; pass a few hundred sentences or leave it unset for "
                                  "the shipped calibration set")
            encodings = self.tokenizer.encode_batch(texts)
            calibration = [self._tensors(encodings[i : i + 32]) for i in range(0, len(encodings), 32)]
            config = FastBertConfig(precision)
            key = calibration_key(self.model.arrowengine_weights,
                                  {"encoder": "text", "precision": precision, "alpha": config.smooth_alpha},
                                  (t.encode() for t in texts))
            return BackendChoice(FastBert(self.model, config, calibration, cache_key=key), "fast", "fast")
        return BackendChoice(FastBert(self.model, FastBertConfig(precision)), "fast", "fast")

    def encode(self, texts: Sequence[str] | str, *, batch_size: int | None = None) -> np.ndarray:
        """Embeddings of ``texts`` as float32 ``[len(texts), dimension]`` (a single string gives ``[1, dim]``)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputTypeError(f"texts[{i}] is a {type(text).__name__}, expected str")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        with torch.inference_mode():
            for index in length_batches(lengths, batch_size or self.batch_size, self.max_batch_tokens):
                embeddings = self._forward([encodings[i] for i in index])
                out[index] = embeddings.float().cpu().numpy()
        return out

    def _tensors(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, token_type_ids) of a batch of encodings, padded to its longest member."""
        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, enc in enumerate(batch):
            n = len(enc.ids)
            ids[row, :n] = torch.tensor(enc.ids)
            types[row, :n] = torch.tensor(enc.type_ids)
            mask[row, :n] = 1
        return ids, mask, types

    def _forward(self, batch: list) -> torch.Tensor:
        ids, mask, types = (t.to(self.device) for t in self._tensors(batch))
        hidden = self.backend.forward(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        return pool_hidden(hidden, mask, self.pooling, self.normalize)

    def __repr__(self) -> str:
        return (f"TextEncoder({str(self.model_dir)!r}, dim={self.dimension}, pooling={self.pooling!r}, "
                f"dtype={self.dtype!r}, backend={self.backend.name!r}, device={self.device!r})")
