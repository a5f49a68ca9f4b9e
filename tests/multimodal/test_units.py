"""Pieces of the joint space that need no trained model: pooling, windows, recall, heads, config, errors."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.errors import ConfigError, EngineError
from arrowengine.runtime.model_kinds import model_kind
from multimodal.config import JointConfig
from multimodal.evaluate import chance_recall, recall_at_k
from multimodal.features import FeatureCache, pool_frames, window_for
from multimodal.heads import FusionMLP, JointHeads


def test_window_is_the_shortest_that_holds_the_clip():
    windows = (2, 5, 10, 20, 30)
    assert window_for(1, windows) == 2
    assert window_for(2 * 16_000, windows) == 2
    assert window_for(2 * 16_000 + 1, windows) == 5
    assert window_for(29 * 16_000, windows) == 30
    assert window_for(45 * 16_000, windows) == 30  # longer clips are cut to the longest window


@given(st.integers(1, 60), st.integers(1, 8))
def test_pool_frames_is_mean_then_segment_means(frames, segments):
    x = np.arange(frames * 3, dtype=np.float32).reshape(frames, 3)
    out = pool_frames(x, segments)
    assert out.shape == (3 * (1 + segments),)
    if frames >= segments:
        np.testing.assert_allclose(out[:3], x.mean(0), rtol=1e-6)
        np.testing.assert_allclose(out[3:6], np.array_split(x, segments)[0].mean(0), rtol=1e-6)
        np.testing.assert_allclose(out[-3:], np.array_split(x, segments)[-1].mean(0), rtol=1e-6)


def test_recall_at_k_counts_a_group_match_in_the_top_k():
    q = np.eye(3, dtype=np.float32)
    gallery = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float32)
    r = recall_at_k(q, ["a", "b", "c"], gallery, ["x", "a", "c"], ks=(1, 2))
    assert r["recall@1"] == pytest.approx(2 / 3)  # "b" has no match at all
    assert r["recall@2"] == pytest.approx(2 / 3)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from("abc"), min_size=1, max_size=6), st.sampled_from("abcd"), st.integers(1, 4))
def test_chance_recall_matches_enumerating_every_ranking(gallery, query, k):
    hits = [any(gallery[i] == query for i in perm[:k]) for perm in itertools.permutations(range(len(gallery)))]
    assert chance_recall([query], gallery, k) == pytest.approx(sum(hits) / math.factorial(len(gallery)))


def test_fusion_starts_as_the_mean_of_present_modalities_and_ignores_missing_slots():
    torch.manual_seed(0)
    fusion = FusionMLP(8, 16)
    v = torch.nn.functional.normalize(torch.randn(4, 3, 8), dim=-1)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=torch.float32)
    out = fusion(v, mask)
    expected = torch.nn.functional.normalize((v * mask[..., None]).sum(1), dim=-1)
    torch.testing.assert_close(out, expected)
    garbage = v.clone()
    garbage[mask == 0] = 123.0  # whatever sits in a missing slot must not matter
    torch.testing.assert_close(fusion(garbage, mask), out)


def test_joint_config_round_trips_and_checks_windows():
    c = JointConfig(audio_segments=3)
    assert JointConfig.from_dict(c.to_dict()) == c
    assert JointConfig.from_dict({**c.to_dict(), "added_later": 1}) == c
    with pytest.raises(ConfigError, match="audio_windows must be increasing"):
        JointConfig(audio_windows=(5, 2))
    heads = JointHeads(c)
    assert heads.audio.norm.normalized_shape == (c.audio_dim * 4 + c.dim,)  # + the transcript's embedding


def test_joint_models_are_their_own_kind():
    assert model_kind({"model_type": "arrowengine-joint"}) == "joint"


def test_feature_cache_computes_only_missing_keys_and_reads_back(tmp_path):
    class Counting:
        progress = False

        def __init__(self):
            self.calls: list[list[int]] = []

        def signature(self, modality):
            return "sig"

        def encode(self, modality, inputs):
            self.calls.append(list(inputs))
            return np.asarray([[i, i + 0.5] for i in inputs], np.float32)

    enc, cache = Counting(), FeatureCache(tmp_path)
    keys = ["a", "b", "a", "c"]
    out = cache.features(enc, "audio", keys, lambda i: i, chunk=2)
    np.testing.assert_array_equal(out, [[0, 0.5], [1, 1.5], [0, 0.5], [3, 3.5]])
    assert enc.calls == [[0, 1], [3]]
    again = cache.features(enc, "audio", ["c", "b", "d"], lambda i: 10 + i)
    np.testing.assert_array_equal(again, [[3, 3.5], [1, 1.5], [12, 12.5]])
    assert enc.calls[-1] == [12]
    parts = sorted((tmp_path / "audio-sig").glob("part-*.parquet"))
    assert [pq.read_table(p).column("key").to_pylist() for p in parts] == [["a", "b"], ["c"], ["d"]]


def test_audio_window_must_be_whole_seconds_within_whisper_s(tmp_path):
    from pathlib import Path

    from arrowengine.runtime.audio_encoder import AudioEncoder

    model = Path(__file__).resolve().parents[2] / "models" / "whisper-tiny.en"
    if not (model / "weights.parquet").is_file():
        pytest.skip("models/whisper-tiny.en is missing; run python scripts/fetch_models.py")
    enc = AudioEncoder(model, precision="fp32")
    with pytest.raises(ConfigError) as info:
        enc.encode(np.zeros(8000, np.float32), window_s=0)
    assert str(info.value) == "window_s must be a whole number of seconds in 1..30 (or None for the full window), got 0"
    short = enc.encode(np.sin(np.arange(16_000) / 9.0).astype(np.float32), window_s=2)
    assert short.shape == (1, 384) and abs(float(np.linalg.norm(short)) - 1) < 1e-5


def test_fusion_command_is_registered():
    out = subprocess.run([sys.executable, "-m", "arrowengine", "fusion", "train", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--out" in out.stdout and "--force" in out.stdout


def test_errors_are_engine_errors():
    from multimodal.errors import JointModelMissingError, ModalityInputError, TrainingDataError

    assert issubclass(JointModelMissingError, (EngineError, FileNotFoundError))
    assert issubclass(ModalityInputError, ValueError) and issubclass(TrainingDataError, FileNotFoundError)
