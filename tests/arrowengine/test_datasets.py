"""The one chitchat-dataset loader: its views agree with each other, and a missing package is a named error."""

from __future__ import annotations

import pytest

from arrowengine import datasets
from arrowengine.errors import EngineError, OptionalDependencyError


def test_views_agree_on_real_conversations() -> None:
    turns = datasets.chitchat_turns()
    conversations = datasets.chitchat_conversations()
    assert len(turns) == 7168
    first = [t.strip() for turn in turns[0] for t in turn.texts if t.strip()]
    assert list(conversations[0]) == first
    assert datasets.chitchat_messages(len(first) + 3) == first + list(conversations[1][:3])
    assert all(m and m == m.strip() for conv in conversations[:200] for m in conv)
    assert turns[0][0].text == " ".join(turns[0][0].texts)


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # simulate an environment without the optional package: the lookup finds nothing
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    datasets._dataset_json.cache_clear()
    datasets.chitchat_turns.cache_clear()
    datasets.chitchat_conversations.cache_clear()
    try:
        with pytest.raises(OptionalDependencyError) as info:
            datasets.chitchat_messages()
        assert isinstance(info.value, EngineError) and isinstance(info.value, ImportError)
        assert str(info.value) == ("the chitchat-dataset package (real chat conversations) is not installed; "
                                   "pip install 'arrowengine[data]' (or pip install chitchat-dataset==0.9.0)")
    finally:
        monkeypatch.undo()
        datasets._dataset_json.cache_clear()
