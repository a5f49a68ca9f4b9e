"""Sentence embeddings from a converted encoder (all-MiniLM-L6-v2 and other BERT-style models)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from arrowengine.errors import ModelConfigError
from arrowengine.runtime.backends import BackendChoice, prepare_backend
from arrowengine.runtime.devices import select_dtype
from arrowengine.runtime.loading import load_config_dict, load_model

__all__ = ["TextEncoder", "pool_hidden"]

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


def _default_calibration_texts(count: int = 256) -> list[str]:
    """The last ``count`` messages of the chitchat-dataset package (benchmarks and tests use the first ones)."""
    from arrowengine.datasets import chitchat_messages
    from arrowengine.errors import OptionalDependencyError

    try:
        return chitchat_messages()[-count:]
    except OptionalDependencyError as exc:
        raise ModelConfigError("the int8 precisions need calibration text: pass calibration_texts=[...] (a few "
                               "hundred real sentences) or pip install 'arrowengine[data]'") from exc


class TextEncoder:
    """Embed text with a converted encoder: tokenise, run the model batched, pool, L2-normalise.

    Batches are formed from length-sorted inputs and padded only to the longest member (dynamic padding), so
    short chat messages do not pay for long ones. Results come back in input order as float32 ``[n, dim]``.

    Args:
        model_dir: a converted model directory (``models/all-MiniLM-L6-v2``).
        device: ``cpu``, ``auto`` or a device name (see :func:`arrowengine.runtime.devices.select_device`).
        dtype: ``float32`` (exact, weights stay zero-copy), ``bfloat16`` or ``float16`` (weights cast once;
            bf16 is fast on CPUs with AMX/AVX512-BF16); a dtype the device cannot run falls back with a warning.
        backend: ``eager``, ``compile``, ``onnxruntime`` or ``ipex`` (falls back to eager with a warning).
        batch_size: sentences per forward pass.
        max_length: token limit per text (default: the model's ``max_seq_length``).
        pooling: ``mean``, ``cls`` or ``max`` (default: from the model's pooling config).
        normalize: L2-normalise the embeddings (default: from the model's modules config).
        quant_mode: execution mode of a quantized (V2) model's layers (see :func:`load_model`).
        precision: run the lean BERT forward (:class:`arrowengine.runtime.bert_fast.FastBert`, backend name
            ``fast``) in this precision instead of ``backend``/``dtype``: ``float32`` (exact), ``bfloat16``,
            ``int8-mixed`` (fastest at cosine >= 0.99: int8 VNNI matmuls for Q/K/V, attention output and FFN up,
            SmoothQuant-calibrated on ``calibration_texts``; bf16 FFN down) or ``int8`` (all int8, lower cosine).
            Measured trade-offs: ``scripts/bench_text_encoder.py``. BERT-style models only.
        calibration_texts: real sentences for the int8 precisions' SmoothQuant scales (default: 256 messages
            from the chitchat-dataset package, disjoint from the benchmark's).
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, device: str = "cpu", dtype: str = "float32",
                 backend: str = "eager", batch_size: int = 32, max_length: int | None = None,
                 pooling: str | None = None, normalize: bool | None = None,
                 quant_mode: str = "dequant-on-the-fly", precision: str | None = None,
                 calibration_texts: Sequence[str] | None = None) -> None:
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        config = load_config_dict(self.model_dir)
        tokenizer_file = self.model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelConfigError(f"{self.model_dir} has no tokenizer.json; re-convert the model with its "
                                   f"tokenizer files")
        default_mode, default_norm = _pooling_from_dir(self.model_dir)
        self.pooling = pooling or default_mode
        if self.pooling not in _POOLING_MODES:
            raise ValueError(f"pooling must be one of {_POOLING_MODES}, got {self.pooling!r}")
        self.normalize = default_norm if normalize is None else normalize
        st_config = _read_json(self.model_dir / "sentence_bert_config.json")
        self.max_length = int(max_length or st_config.get("max_seq_length")
                              or config.get("max_position_embeddings", 512))
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = load_model(self.model_dir, device=device, quant_mode=quant_mode)
        self.device_choice = self.model.arrowengine_device
        self.device = self.device_choice.torch_device
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.pad_id = int(config.get("pad_token_id") or 0)
        self.dimension = int(config.get("hidden_size") or config.get("d_model") or 0)
        self.precision = precision
        if precision is not None:
            self.torch_dtype = torch.float32  # FastBert keeps its own per-projection copies
            self.dtype = precision
            self.backend = self._fast_backend(precision, calibration_texts)
            return
        self.torch_dtype = select_dtype(dtype, self.device_choice)
        self.dtype = str(self.torch_dtype).removeprefix("torch.")
        if self.torch_dtype != torch.float32:
            # Casting the weights once beats autocast's per-op casts (1.76x -> ~2.2x sentence-transformers on
            # an AVX512-BF16 CPU); it costs one copy of the weights out of the file mapping, which is logged.
            logger.info("casting %s weights to %s (a copy; float32 keeps them zero-copy)", self.model_dir.name,
                        self.dtype)
            self.model.to(self.torch_dtype)
        self.backend = prepare_backend(self.model, backend)

    def _fast_backend(self, precision: str, calibration_texts: Sequence[str] | None) -> BackendChoice:
        from arrowengine.runtime.bert_fast import PRECISIONS, FastBert, FastBertConfig

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if torch.device(self.device).type != "cpu":
            raise ModelConfigError(f"precision={precision!r} runs on CPU only; use dtype/backend on {self.device}")
        calibration = []
        if precision.startswith("int8"):
            texts = list(calibration_texts) if calibration_texts is not None else _default_calibration_texts()
            encodings = self.tokenizer.encode_batch(texts)
            calibration = [self._tensors(encodings[i : i + 32]) for i in range(0, len(encodings), 32)]
        return BackendChoice(FastBert(self.model, FastBertConfig(precision), calibration), "fast", "fast")

    def encode(self, texts: Sequence[str] | str, *, batch_size: int | None = None) -> np.ndarray:
        """Embeddings of ``texts`` as float32 ``[len(texts), dimension]`` (a single string gives ``[1, dim]``)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, expected str")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids), reverse=True)
        size = batch_size or self.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), size):
                index = order[start : start + size]
                batch = [encodings[i] for i in index]
                embeddings = self._forward(batch)
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
