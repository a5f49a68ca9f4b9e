"""Audio and image memories without a trained joint model: every mistake is a named error and writes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from memory import MemoryConfig, MemoryStore
from memory.errors import EmptyContentError, InvalidMetadataError, InvalidSearchError
from multimodal.errors import JointModelMissingError


@pytest.fixture
def store(tmp_path, embedder):
    config = MemoryConfig(path=tmp_path / "mem", models_dir=tmp_path / "no-models")
    with MemoryStore(embedder=embedder, config=config) as s:
        yield s


def test_media_without_a_trained_joint_model_says_how_to_train_one_and_writes_nothing(store, tmp_path):
    store.add("a text memory first")
    with pytest.raises(JointModelMissingError) as info:
        store.add_many(["another text", {"modality": "audio", "data": np.zeros(16_000, np.float32)}])
    assert str(info.value).startswith(f"no trained joint-fusion model in {tmp_path / 'no-models' / 'joint-fusion'}; "
                                      "train one with: arrowengine fusion train")
    assert len(store) == 1  # the text of the same batch was not written either
    with pytest.raises(JointModelMissingError):
        store.search(image=np.ones((8, 8), np.float32))


def test_media_arguments_are_checked(store):
    with pytest.raises(InvalidMetadataError) as info:
        store.add_many([{"content": "hello", "data": np.zeros(10)}])
    assert str(info.value) == "data= is for audio and image memories; a text memory's data is its content"
    with pytest.raises(InvalidSearchError) as info:
        store.search(np.ones(384, np.float32), audio=np.zeros(100, np.float32))
    assert str(info.value) == "a composite query takes text, not an embedding, beside audio= / image="
    with pytest.raises(EmptyContentError) as info:
        store.search()
    assert str(info.value) == "search needs a query: text, an embedding, audio= or image="


def test_media_content_defaults_to_the_path_or_a_description():
    from memory.media import media_content

    assert media_content("audio", "/data/a.wav", None) == "/data/a.wav"
    assert media_content("image", np.zeros((2, 2)), "  ") == "image memory"
    assert media_content("audio", np.zeros(3), "a bark") == "a bark"
