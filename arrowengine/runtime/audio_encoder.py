"""Speech embeddings and transcripts from a converted Whisper model (tiny.en, base).

``encode`` runs Whisper's encoder on log-mel features and mean-pools the frames that hold audio (a clip of
``n`` samples fills ``ceil(n / 320)`` of the 1,500 encoder frames; the rest is padding), then L2-normalises.
``transcribe`` decodes greedily with the decoder and a key/value cache, 30 s window by window.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from arrowengine.errors import ConfigError, ModelConfigError
from arrowengine.runtime.audio_features import WHISPER_SAMPLE_RATE, LogMelConfig, as_waveform, log_mel, resample
from arrowengine.runtime.calibration import calibration_key, synthetic_speech
from arrowengine.runtime.loading import load_config_dict, load_model
from arrowengine.runtime.model_kinds import require_kind
from arrowengine.runtime.precision import select_precision

if TYPE_CHECKING:  # tokenizers and the lean encoder are imported lazily at run time
    from tokenizers import Tokenizer

    from arrowengine.runtime.whisper_fast import FastWhisperEncoder

__all__ = ["AudioEncoder"]

logger = logging.getLogger(__name__)

Waveform = np.ndarray | torch.Tensor | Sequence[float]
_DTYPES = ("float32", "bfloat16")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class AudioEncoder:
    """Embed and transcribe speech with a converted Whisper model from ``models/``.

    By default (``precision="auto"``) the encoder runs the lean forward
    (:class:`arrowengine.runtime.whisper_fast.FastWhisperEncoder`) on CPU in the fastest precision that holds
    cosine >= 0.99 to float32 on this CPU (:func:`arrowengine.runtime.precision.select_precision`: ``int8-mixed``
    with int8 dot products, native bf16 and oneDNN's quantized linear, ``bfloat16`` with native bf16, else
    ``float32``; the choice is logged). ``precision="fp32"`` gives float32 embeddings.

    Args:
        model_dir: a converted Whisper directory (``models/whisper-tiny.en``).
        device: torch device for the forward passes; the lean encoder runs on CPU, other devices use the
            ``transformers`` encoder.
        dtype: ``float32`` (exact) or ``bfloat16`` (autocast; fast on CPUs with AMX/AVX512-BF16) for the decoder
            of ``transcribe``, and for the encoder when ``precision=None``.
        batch_size: waveforms per encoder pass (each is a 30 s window).
        precision: ``auto``, ``float32`` (``fp32``), ``bfloat16`` (``bf16``: bf16 matmuls, blocked attention) or
            ``int8-mixed`` (int8 matmuls for Q/K/V and FFN up, SmoothQuant-calibrated on ``calibration_audio``;
            bf16 attention output and FFN down) for the lean encoder; ``None`` for transformers' encoder modules.
        calibration_audio: 16 kHz speech for ``int8-mixed``'s SmoothQuant scales (default: deterministic
            speech-like signals, :func:`arrowengine.runtime.calibration.synthetic_speech`; no data needed). The
            scales are cached per model and calibration set.

    Raises:
        ModelTypeError: the directory holds a text, image or causal LM model.
        ConfigError: an unknown precision or dtype, or a batch size below 1.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 8, precision: str | None = "auto",
                 calibration_audio: Sequence[Waveform] | None = None, verify: bool | None = None) -> None:
        self.model_dir = Path(model_dir)
        config = load_config_dict(self.model_dir)
        require_kind(config, self.model_dir, "audio")
        if dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if precision not in (None, "auto"):  # validate before the model is loaded
            select_precision("audio", precision)
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.features = LogMelConfig.from_dict(_read_json(self.model_dir / "preprocessor_config.json"))
        self.generation = _read_json(self.model_dir / "generation_config.json")
        self.model = load_model(self.model_dir, device=device, verify=verify)  # None: runtime.verify_checksums
        # load_model resolves "auto" and falls back to CPU when a device cannot run: follow where it landed
        self.device_choice = self.model.arrowengine_device
        self.device = str(self.device_choice.torch_device)
        self.dim = int(config["d_model"])
        self._tokenizer = None
        self.precision = self._resolve_precision(precision)
        self._encoder = self.model.model.encoder
        if self.precision is not None:
            self._encoder = self._fast_encoder(self.precision, calibration_audio)

    def _resolve_precision(self, precision: str | None) -> str | None:
        """The lean encoder's precision, or None for transformers' encoder (``auto`` resolves here, logged)."""
        if precision is None:
            return None
        on_cpu = torch.device(self.device).type == "cpu"
        if precision == "auto":
            if not on_cpu:
                logger.info("AudioEncoder: precision auto on %s runs the transformers encoder (the lean encoder is "
                            "CPU only)", self.device)
                return None
            return select_precision("audio", "auto", component=f"AudioEncoder({self.model_dir.name})").precision
        if not on_cpu:
            raise ConfigError(f"precision={precision!r} runs on CPU only; use precision=None and dtype= on "
                              f"{self.device}")
        return select_precision("audio", precision).precision

    def _fast_encoder(self, precision: str, calibration_audio: Sequence[Waveform] | None) -> FastWhisperEncoder:
        from arrowengine.runtime.whisper_fast import FastWhisperConfig, FastWhisperEncoder

        config = FastWhisperConfig(precision)
        if precision != "int8-mixed":
            return FastWhisperEncoder(self.model.model.encoder, config)
        waves = [as_waveform(w) for w in calibration_audio] if calibration_audio is not None else synthetic_speech()
        if not waves:
            raise ConfigError("calibration_audio is empty; pass 16 kHz speech or leave it unset for the built-in "
                              "calibration signals")
        calibration = [log_mel([resample(w, WHISPER_SAMPLE_RATE, self.sampling_rate)], self.features)[0]
                       for w in waves]
        key = calibration_key(self.model.arrowengine_weights,
                              {"encoder": "audio", "precision": precision, "alpha": config.smooth_alpha},
                              (np.ascontiguousarray(w, dtype=np.float32).tobytes() for w in waves))
        return FastWhisperEncoder(self.model.model.encoder, config, calibration, cache_key=key)

    @property
    def sampling_rate(self) -> int:
        """The rate the model expects (16 kHz); other rates are resampled on the way in."""
        return self.features.sampling_rate

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    def _window(self, window_s: int | None) -> LogMelConfig:
        """The feature settings for an encoder window of ``window_s`` seconds (None: Whisper's 30 s)."""
        if window_s is None:
            return self.features
        full = self.features.chunk_seconds
        if isinstance(window_s, bool) or not isinstance(window_s, int) or not 1 <= window_s <= full:
            raise ConfigError(f"window_s must be a whole number of seconds in 1..{full} "
                              f"(or None for the full window), got {window_s!r}")
        if self.precision is None:
            raise ConfigError("window_s needs the lean encoder (precision='auto', 'fp32', ...): transformers' "
                              "Whisper encoder accepts only full 30 s windows")
        return dataclasses.replace(self.features, chunk_seconds=window_s)

    def _prepare(self, waveforms: Waveform | Sequence[Waveform], sampling_rate: int,
                 features: LogMelConfig) -> list[np.ndarray]:
        if isinstance(waveforms, (np.ndarray, torch.Tensor)) and np.ndim(waveforms) == 1:
            waveforms = [waveforms]
        out = [resample(as_waveform(w), sampling_rate, self.sampling_rate) for w in waveforms]
        for i, w in enumerate(out):
            if len(w) > features.n_samples:
                logger.warning("waveform %d lasts %.1f s; only the first %d s are encoded", i,
                               len(w) / self.sampling_rate, features.chunk_seconds)
        return out

    def _batches(self, waves: list[np.ndarray], features_config: LogMelConfig
                 ) -> Iterator[tuple[torch.Tensor, list[int]]]:
        frames_per_token = 2  # conv2 has stride 2: two mel frames per encoder frame
        for start in range(0, len(waves), self.batch_size):
            features, valid = log_mel(waves[start : start + self.batch_size], features_config)
            with torch.inference_mode(), self._autocast():
                hidden = self._encoder(features.to(self.device)).last_hidden_state
            yield hidden.float().cpu(), [max(1, math.ceil(v / frames_per_token)) for v in valid]

    def encode(self, waveforms: Waveform | Sequence[Waveform], sampling_rate: int = WHISPER_SAMPLE_RATE, *,
               normalize: bool = True, window_s: int | None = None) -> np.ndarray:
        """Pooled embeddings ``[n, d_model]`` (float32): mean of the encoder frames that hold audio.

        ``window_s`` shortens the encoder's window from Whisper's 30 s (as whisper.cpp's ``audio_ctx`` does):
        a 2 s window encodes a short clip ~25x faster, with embeddings that differ from the 30 s ones
        (cosine ~0.9), so compare only embeddings taken with the same window.
        """
        features = self._window(window_s)
        waves = self._prepare(waveforms, sampling_rate, features)
        out = np.zeros((len(waves), self.dim), dtype=np.float32)
        row = 0
        for hidden, valid in self._batches(waves, features):
            for h, v in zip(hidden, valid, strict=True):
                out[row] = h[:v].mean(dim=0).numpy()
                row += 1
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def hidden_states(self, waveforms: Waveform | Sequence[Waveform],
                      sampling_rate: int = WHISPER_SAMPLE_RATE, *, window_s: int | None = None) -> list[np.ndarray]:
        """The encoder's last hidden state per waveform, trimmed to its valid frames: ``[frames_i, d_model]``
        (``window_s`` as in :meth:`encode`)."""
        features = self._window(window_s)
        waves = self._prepare(waveforms, sampling_rate, features)
        return [h[:v].numpy() for hidden, valid in self._batches(waves, features)
                for h, v in zip(hidden, valid, strict=True)]

    # -- transcription -------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's ``tokenizers.Tokenizer`` (loaded on first use)."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            path = self.model_dir / "tokenizer.json"
            if not path.is_file():
                raise ModelConfigError(f"{self.model_dir} has no tokenizer.json; re-convert the Whisper model")
            self._tokenizer = Tokenizer.from_file(str(path))
        return self._tokenizer

    def _prompt(self, language: str | None, task: str) -> list[int]:
        g = self.generation
        prompt = [int(g["decoder_start_token_id"])]
        if g.get("is_multilingual"):
            lang = f"<|{language or 'en'}|>"
            if lang not in g.get("lang_to_id", {}):
                raise ConfigError(f"language {language!r} is not one of this model's languages")
            if task not in g.get("task_to_id", {}):
                raise ConfigError(f"task must be 'transcribe' or 'translate', got {task!r}")
            prompt += [int(g["lang_to_id"][lang]), int(g["task_to_id"][task])]
        return [*prompt, int(g["no_timestamps_token_id"])]

    def transcribe(self, waveform: Waveform, sampling_rate: int = WHISPER_SAMPLE_RATE, *,
                   language: str | None = "en", task: str = "transcribe", max_new_tokens: int = 224,
                   window_s: int | None = None) -> str:
        """Greedy transcript of one waveform; audio past one window is decoded window by window and joined.

        ``window_s`` shortens the window as in :meth:`encode` (a short clip decodes much faster; Whisper was
        trained on 30 s windows, so very short windows cost some accuracy).
        """
        config = self._window(window_s)
        wave = resample(as_waveform(waveform), sampling_rate, self.sampling_rate)
        prompt = self._prompt(language, task)
        step = config.n_samples
        texts = []
        for start in range(0, max(len(wave), 1), step):
            features, _ = log_mel([wave[start : start + step]], config)
            tokens = self.generate_tokens(features, prompt, max_new_tokens)
            texts.append(self.tokenizer.decode(tokens, skip_special_tokens=True).strip())
        return " ".join(t for t in texts if t)

    def transcribe_many(self, waveforms: Sequence[Waveform], sampling_rate: int = WHISPER_SAMPLE_RATE, *,
                        language: str | None = "en", task: str = "transcribe", max_new_tokens: int = 224,
                        window_s: int | None = None) -> list[str]:
        """Greedy transcripts of many clips, decoded ``batch_size`` at a time (one window each: a clip longer
        than the window is cut, with a warning). Faster than :meth:`transcribe` per clip by about the batch size
        on CPU, where one decoder step costs nearly the same for 1 row as for 8."""
        config = self._window(window_s)
        waves = self._prepare(waveforms, sampling_rate, config)
        prompt = self._prompt(language, task)
        out: list[str] = []
        for start in range(0, len(waves), self.batch_size):
            features, _ = log_mel(waves[start : start + self.batch_size], config)
            for tokens in self.generate_batch(features, prompt, max_new_tokens):
                out.append(self.tokenizer.decode(tokens, skip_special_tokens=True).strip())
        return out

    def generate_tokens(self, features: torch.Tensor, prompt: list[int], max_new_tokens: int = 224) -> list[int]:
        """Greedy decoding of one window's features ``(1, n_mels, frames)``; returns the new tokens (no EOS)."""
        return self.generate_batch(features, prompt, max_new_tokens)[0]

    def generate_batch(self, features: torch.Tensor, prompt: list[int], max_new_tokens: int = 224
                       ) -> list[list[int]]:
        """Greedy decoding of windows ``(B, n_mels, frames)`` together; each row's new tokens (no EOS)."""
        g = self.generation
        eos = int(g["eos_token_id"])
        suppress = torch.tensor(g.get("suppress_tokens", []), dtype=torch.long)
        begin_suppress = torch.tensor(g.get("begin_suppress_tokens", []), dtype=torch.long)
        limit = min(max_new_tokens, int(self.model.config.max_target_positions) - len(prompt))
        model = self.model
        rows = features.shape[0]
        out: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        with torch.inference_mode(), self._autocast():
            encoded = self._encoder(features.to(self.device)).last_hidden_state
            if self.precision is not None:
                encoded = encoded.to(next(model.parameters()).dtype)
            cache = None  # the decoder creates its self- and cross-attention cache on the first call
            ids = torch.tensor([prompt] * rows, device=self.device)
            for i in range(limit):
                dec = model.model.decoder(input_ids=ids, encoder_hidden_states=encoded, past_key_values=cache,
                                          use_cache=True)
                cache = dec.past_key_values
                logits = model.proj_out(dec.last_hidden_state[:, -1]).float()
                logits[:, suppress] = -math.inf  # Whisper's non-speech symbols, as generate() suppresses them
                if i == 0:
                    logits[:, begin_suppress] = -math.inf  # no blank or EOS as the first token
                tokens = logits.argmax(dim=-1).tolist()
                for r, token in enumerate(tokens):
                    if done[r]:
                        continue
                    if token == eos:
                        done[r] = True
                    else:
                        out[r].append(token)
                if all(done):
                    break
                # a finished row keeps feeding EOS: its further tokens are ignored, the batch shape stays fixed
                ids = torch.tensor([[eos if done[r] else t] for r, t in enumerate(tokens)], device=self.device)
        return out
